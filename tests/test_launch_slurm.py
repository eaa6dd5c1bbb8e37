"""Sweeps as SLURM job arrays: the batch script the launcher writes, what one
array task runs, and the experiment scripts' --slurm, --dry_run and --gather
flags, against a stand-in `sbatch` on PATH. Nothing trains."""

import csv
import json
import os
import re
import shlex
import sys

import pytest

from ssl_jax import launch
from tests import forkserver
from tests.test_main import ROOT

# An argument a shell would mangle if the launcher quoted it carelessly.
AWKWARD = """it's a "quoted" arg; $HOME `false` * \\ (1,)"""

# A stand-in for `python -m ssl_jax.main`: prints where it ran and with what.
RECORD = "import json, os, sys; print(json.dumps({'cwd': os.getcwd(), 'argv': sys.argv[1:]}))"


def _sbatch_lines(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH ")]


def _cases(script):
    """{array index: the command its case runs}, as bash will split it."""
    cases = {}
    for line in script.splitlines():
        if re.match(r"\s*\d+\) run ", line):
            index, run, *command, end = shlex.split(line)
            assert (run, end) == ("run", ";;")
            cases[int(index.rstrip(")"))] = command
    return cases


def test_script_has_one_task_per_run_and_only_the_options_given(tmp_path):
    runs = [(f"sweep/run{k}", ["python", "-m", "ssl_jax.main", f"--seed={k}"]) for k in range(3)]
    options = {"partition": "gpu", "time": "1:00:00", "gpus": None, "cpus": "", "mem": None}
    extra = ["--qos=high", "#SBATCH --constraint=a100"]
    script = launch.slurm_script(runs, "sweep", 2, options, extra, cwd=str(tmp_path))

    logs = tmp_path / "sweep" / "slurm"
    assert _sbatch_lines(script) == [
        "#SBATCH --job-name=sweep",
        "#SBATCH --array=0-2%2",
        f"#SBATCH --output={logs}/%A_%a.out",
        f"#SBATCH --error={logs}/%A_%a.err",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
    ]
    # sbatch ignores #SBATCH lines after the first command.
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and line[0] != "#")
    assert all(lines.index(line) < first_command for line in _sbatch_lines(script))
    assert _cases(script) == {k: [d, *c] for k, (d, c) in enumerate(runs)}

    with pytest.raises(ValueError, match="line break"):
        launch.slurm_script(runs, "sweep", options={"time": "1:00\nrm -rf x"})


def _task(script_path, index, cwd):
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index)}
    return forkserver.run(
        ["bash", str(script_path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_array_task_runs_its_own_run_from_the_launch_directory_and_skips_finished(tmp_path):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    runs = [
        (f"sweep/run {k}", [sys.executable, "-c", RECORD, f"--workdir=sweep/run {k}", AWKWARD])
        for k in range(3)
    ]
    script = tmp_path / "array.sh"
    script.write_text(launch.slurm_script(runs, "sweep", cwd=str(repo)))

    assert _task(script, 1, elsewhere).returncode == 0
    assert sorted(p.name for p in (repo / "sweep").iterdir()) == ["run 1"]
    log = (repo / "sweep" / "run 1" / "launch_log.txt").read_text().splitlines()
    assert json.loads(log[0]) == {"cwd": str(repo), "argv": ["--workdir=sweep/run 1", AWKWARD]}

    # Rerunning an unfinished run starts it again (main resumes it) ...
    assert _task(script, 1, elsewhere).returncode == 0
    assert len((repo / "sweep" / "run 1" / "launch_log.txt").read_text().splitlines()) == 2
    # ... a finished one is skipped.
    (repo / "sweep" / "run 2").mkdir()
    (repo / "sweep" / "run 2" / "results.json").write_text("{}")
    skipped = _task(script, 2, elsewhere)
    assert skipped.returncode == 0 and "skip (finished): sweep/run 2" in skipped.stdout
    assert not (repo / "sweep" / "run 2" / "launch_log.txt").exists()

    assert _task(script, 3, elsewhere).returncode != 0  # no such run


@pytest.fixture
def sbatch(tmp_path, monkeypatch):
    """A stand-in sbatch first on PATH; returns the directory of its records."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch_record"
    bin_dir.mkdir()
    record.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, shutil, sys\n"
        f"record = pathlib.Path({str(record)!r})\n"
        "(record / 'args.json').write_text(json.dumps(sys.argv[1:]))\n"
        "shutil.copy(sys.argv[-1], record / 'script.sh')\n"
        "print('Submitted batch job 12345')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def _experiment(script, *flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, f"experiments/{script}", *flags]
    return forkserver.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _sweep_flags(workdir):
    # The sweep of rotation.py:runlocal has two runs; the --set value needs quoting.
    return [
        "--config=configs/rotation.py:runlocal",
        f"--workdir={workdir}",
        "--set=probe.labels_per_class=(2,)",
    ]


def test_sweep_submits_the_array_and_prints_the_job_id(tmp_path, sbatch):
    workdir = tmp_path / "my sweep"
    result = _experiment(
        "sweep.py",
        *_sweep_flags(workdir),
        "--slurm",
        "--parallel=2",
        "--slurm_partition=gpu",
        "--slurm_time=0:30:00",
        "--slurm_gpus=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted SLURM job 12345" in result.stdout

    path = workdir / "slurm" / "array.sh"
    assert json.loads((sbatch / "args.json").read_text()) == [str(path)]
    script = (sbatch / "script.sh").read_text()
    assert script == path.read_text()
    options = {line.split("=")[0] for line in _sbatch_lines(script)}
    assert "#SBATCH --array=0-1%2" in script
    assert {"#SBATCH --partition", "#SBATCH --time", "#SBATCH --gpus-per-task"} <= options
    assert not options & {"#SBATCH --mem", "#SBATCH --account", "#SBATCH --cpus-per-task"}
    # sbatch splits an #SBATCH line at spaces outside quotes, as a shell does.
    output = next(line for line in _sbatch_lines(script) if line.startswith("#SBATCH --output"))
    assert shlex.split(output) == ["#SBATCH", f"--output={workdir}/slurm/%A_%a.out"]

    # Task k runs exactly the k-th command a local launch would run.
    dry = _experiment("sweep.py", *_sweep_flags(workdir), "--dry_run")
    commands = [shlex.split(line) for line in dry.stdout.splitlines()]
    assert len(commands) == 2
    names = ["optimizer.learning_rate=0.05", "optimizer.learning_rate=0.2"]
    assert _cases(script) == {
        k: [str(workdir / names[k]), *command] for k, command in enumerate(commands)
    }
    assert sorted(p.name for p in workdir.iterdir()) == ["slurm"]  # nothing ran here


@pytest.mark.parametrize("script", ["sweep.py", "compare.py"])
def test_dry_run_prints_and_launches_nothing(tmp_path, sbatch, script):
    workdir = tmp_path / "study"
    flags = (
        _sweep_flags(workdir)
        if script == "sweep.py"
        else [f"--workdir={workdir}", "--configs=configs/rotation.py,configs/mae.py"]
    )
    commands = _experiment(script, *flags, "--dry_run")
    assert commands.returncode == 0, commands.stderr[-3000:]
    lines = commands.stdout.splitlines()
    assert len(lines) == 2 and all(" -m ssl_jax.main " in line for line in lines)

    printed = _experiment(script, *flags, "--dry_run", "--slurm", "--slurm_mem=8G")
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert printed.stdout.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-1%1" in printed.stdout and "#SBATCH --mem=8G" in printed.stdout
    assert len(_cases(printed.stdout)) == 2
    assert not (sbatch / "args.json").exists() and not workdir.exists()


@pytest.mark.parametrize("script", ["sweep.py", "compare.py"])
def test_slurm_without_sbatch_is_one_line_and_exit_2(tmp_path, monkeypatch, script):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there; python is found by path
    workdir = tmp_path / "study"
    flags = _sweep_flags(workdir) if script == "sweep.py" else [f"--workdir={workdir}"]
    result = _experiment(script, *flags, "--slurm")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "SLURM not found" in result.stderr


def test_gather_summarises_finished_runs_and_launches_nothing(tmp_path, sbatch):
    workdir = tmp_path / "sweep"
    done = workdir / "optimizer.learning_rate=0.05"
    done.mkdir(parents=True)
    results = {"final_loss": 0.5, "linear_probe": {"top1": 0.9, "knn_top1": 0.8}}
    (done / "results.json").write_text(json.dumps(results))

    # The submitting command plus --gather.
    result = _experiment("sweep.py", *_sweep_flags(workdir), "--slurm", "--gather")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "summary.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert rows["optimizer.learning_rate=0.05"]["status"] == "finished"
    assert rows["optimizer.learning_rate=0.05"]["linear_probe.top1"] == "0.9"
    assert rows["optimizer.learning_rate=0.2"]["status"] == "not finished"
    assert not (workdir / "optimizer.learning_rate=0.2").exists()
    assert not (sbatch / "args.json").exists()

    compare = _experiment("compare.py", f"--workdir={tmp_path / 'cmp'}", "--gather")
    assert compare.returncode == 1 and "no run finished" in compare.stderr
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == []
