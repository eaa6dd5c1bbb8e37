"""Launching many runs of `python -m ssl_jax.main`: here, or as a SLURM job array.

Shared by the experiment scripts (`experiments/sweep.py`,
`experiments/compare.py`), which build the runs (a workdir and a command line
each) and hand them to `start`. A run whose workdir holds `results.json` is
finished and skipped; any other is (re)started, and `main` resumes it from
its last checkpoint, so relaunching a whole study repeats no work, whether
its runs are local processes or the tasks of a SLURM array.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from ssl_jax import sweeps

Run = tuple[str, list[str]]  # (workdir, command line)

# --slurm_<name> -> (the sbatch option it sets, help). Unset ones are left to
# SLURM's defaults; values pass through unchecked (`--slurm_gpus=a100:1` is fine).
SBATCH_OPTIONS = {
    "partition": ("partition", "Partition (queue) of the array tasks."),
    "time": ("time", "Time limit of each array task, e.g. 4:00:00."),
    "gpus": ("gpus-per-task", "GPUs per array task, e.g. 1 or a100:1."),
    "cpus": ("cpus-per-task", "CPU cores per array task."),
    "mem": ("mem", "Memory per array task, e.g. 32G."),
    "account": ("account", "Account charged for the array."),
}


def define_flags() -> None:
    """Defines the launch flags every experiment script shares (once, at import);
    `start` reads them."""
    flags.DEFINE_integer(
        "parallel", 1, "Runs at a time: local processes, or array tasks with --slurm."
    )
    flags.DEFINE_bool(
        "dry_run", False, "Print the commands (with --slurm: the batch script) and exit."
    )
    flags.DEFINE_bool(
        "slurm", False, "Submit the runs to SLURM with sbatch, one array task per run."
    )
    flags.DEFINE_bool(
        "gather", False, "Launch nothing; summarise the finished runs (after --slurm)."
    )
    for name, (option, text) in SBATCH_OPTIONS.items():
        flags.DEFINE_string(f"slurm_{name}", None, f"{text} (sbatch --{option})")
    flags.DEFINE_multi_string(
        "slurm_extra", [], "A raw #SBATCH line for the array, e.g. --qos=high (repeatable)."
    )


def start(runs: Sequence[Run], workdir: str) -> dict[str, str] | None:
    """Does with `runs` what the launch flags ask. Returns each workdir's status
    for the summary, or None when there is nothing to summarise yet (a dry run,
    a submitted array)."""
    values = flags.FLAGS
    if values.gather:  # wins over --slurm, so "the same command plus --gather" works
        os.makedirs(workdir, exist_ok=True)  # the summary goes there
        return {d: "finished" if finished(d) else "not finished" for d, _ in runs}
    if values.slurm:
        options = {name: values[f"slurm_{name}"].value for name in SBATCH_OPTIONS}
        script = slurm_script(runs, workdir, values.parallel, options, values.slurm_extra)
        if values.dry_run:
            print(script, end="")
            return None
        if shutil.which("sbatch") is None:
            print(
                "--slurm: SLURM not found (no sbatch on PATH); --slurm --dry_run prints the script",
                file=sys.stderr,
            )
            sys.exit(2)
        job = submit(script, workdir)
        print(
            f"submitted SLURM job {job}: {len(runs)} array tasks, {values.parallel} at a "
            f"time, logs in {os.path.join(workdir, 'slurm')}; when it has finished, rerun "
            "this command with --gather for the summary"
        )
        return None
    if values.dry_run:
        for _, command in runs:
            print(shlex.join(command))
        return None
    os.makedirs(workdir, exist_ok=True)
    return run_pending(runs, values.parallel)


def finished(workdir: str) -> bool:
    # The array script's `run` uses the same test: keep the two in step.
    return os.path.exists(os.path.join(workdir, "results.json"))


def main_command(
    config: str, workdir: str, overrides: Mapping[str, Any] = {}, common: Sequence[str] = ()
) -> list[str]:
    """The command line of one run; `common` items are `field=value` strings."""
    return [
        sys.executable,
        "-m",
        "ssl_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *[f"--config.{item}" for item in common],
        *[f"--config.{k}={sweeps.format_value(v)}" for k, v in overrides.items()],
    ]


def run_pending(runs: Sequence[Run], parallel: int = 1) -> dict[str, str]:
    """Runs the unfinished `(workdir, command)` pairs, `parallel` at a time, each
    logging to `workdir/launch_log.txt`. Returns a status per workdir."""
    status: dict[str, str] = {}
    pending = []
    for workdir, command in runs:
        if finished(workdir):
            status[workdir] = "done before"
            print(f"skip (finished): {workdir}", flush=True)
        else:
            pending.append((workdir, command))
    active: list[tuple[str, subprocess.Popen, Any, float]] = []
    while pending or active:
        while pending and len(active) < max(parallel, 1):
            workdir, command = pending.pop(0)
            os.makedirs(workdir, exist_ok=True)
            log = open(os.path.join(workdir, "launch_log.txt"), "a")  # noqa: SIM115
            print(f"start: {workdir}", flush=True)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            active.append((workdir, process, log, time.time()))
        time.sleep(0.2)
        for entry in list(active):
            workdir, process, log, started = entry
            if process.poll() is None:
                continue
            log.close()
            active.remove(entry)
            ok = process.returncode == 0
            status[workdir] = (
                "ran" if ok else f"failed (exit {process.returncode}, see launch_log.txt)"
            )
            print(
                f"{'done' if ok else 'FAILED'} in {time.time() - started:.0f}s: {workdir}",
                flush=True,
            )
    return status


# The body of every array script below its header. `run WORKDIR COMMAND...`
# skips a finished run, else starts it (main resumes an interrupted one) with
# its output in WORKDIR/launch_log.txt, where the local launcher puts it.
_RUN_FUNCTION = r"""
run() {
  if [ -e "$1/results.json" ]; then
    echo "skip (finished): $1"
    exit 0
  fi
  mkdir -p "$1" || exit 1
  echo "start: $1 on $(hostname), output in $1/launch_log.txt"
  local workdir=$1
  shift
  exec "$@" >>"$workdir/launch_log.txt" 2>&1
}
"""


def slurm_script(
    runs: Sequence[Run],
    workdir: str,
    parallel: int = 1,
    options: Mapping[str, str | None] = {},
    extra: Sequence[str] = (),
    cwd: str | None = None,
) -> str:
    """A bash script for `sbatch`: a job array whose task k runs `runs[k]`, at
    most `parallel` at a time, logging to WORKDIR/slurm/. `options` maps names
    of SBATCH_OPTIONS to values (None: unset); `extra` are raw sbatch options.
    The script first changes to `cwd` (default: the current directory), so the
    relative paths in the commands mean what they meant here."""
    if not runs:
        raise ValueError("slurm: no runs to put in a job array")
    cwd = os.path.abspath(cwd or os.getcwd())
    root = os.path.normpath(os.path.join(cwd, workdir))
    # SLURM opens these before the script runs, relative to where sbatch was
    # called: absolute paths keep them under WORKDIR wherever that is.
    directives = {
        "job-name": os.path.basename(root),
        "array": f"0-{len(runs) - 1}%{max(parallel, 1)}",
        "output": os.path.join(root, "slurm", "%A_%a.out"),
        "error": os.path.join(root, "slurm", "%A_%a.err"),
        **{SBATCH_OPTIONS[name][0]: value for name, value in options.items() if value},
    }
    # sbatch reads quotes in #SBATCH lines as a shell would (spaces in a path).
    lines = [f"--{key}={shlex.quote(str(value))}" for key, value in directives.items()]
    lines += [line.strip().removeprefix("#SBATCH").strip() for line in extra]
    if any("\n" in line for line in lines):
        raise ValueError("slurm: an option holds a line break, which would end its #SBATCH line")
    cases = [
        f"  {k}) run {shlex.join([run_dir, *command])} ;;"
        for k, (run_dir, command) in enumerate(runs)
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# A SLURM job array of {len(runs)} runs: task k runs case k below.",
            "# Submitting it again resumes the study: finished runs are skipped and",
            "# interrupted ones resume from their last checkpoint.",
            # sbatch reads #SBATCH lines only before the first command.
            *[f"#SBATCH {line}" for line in lines],
            "",
            f"cd {shlex.quote(cwd)} || exit 1",
            _RUN_FUNCTION,
            'case "${SLURM_ARRAY_TASK_ID:?not set: submit this script with sbatch}" in',
            *cases,
            '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
            "esac",
            "",
        ]
    )


def submit(script: str, workdir: str) -> str:
    """Writes the script to WORKDIR/slurm/array.sh, submits it with sbatch and
    returns the job id sbatch answers."""
    logs = os.path.join(workdir, "slurm")
    os.makedirs(logs, exist_ok=True)  # SLURM does not create its log directory
    path = os.path.join(logs, "array.sh")
    with open(path, "w") as f:
        f.write(script)
    answer = subprocess.run(["sbatch", path], capture_output=True, text=True)
    job = re.search(r"\d+", answer.stdout)  # "Submitted batch job 12345"
    if answer.returncode != 0 or job is None:
        sys.exit(f"sbatch failed (exit {answer.returncode}): {answer.stderr.strip()}")
    return job.group()


def lookup(results: Mapping[str, Any], dotted: str) -> Any:
    """`results["a"]["b"]` for `"a.b"`; None where a key is missing."""
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
