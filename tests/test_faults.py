"""The workdir under faults, end to end through `python -m ssl_jax.main`:
a second writer, a changed config, a signal, a full disk, a truncated log, a
diverging run. Each ends in one line (or a clean stop) and loses nothing."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.test_main import QUICK, ROOT, losses, run_main

# Wall-clock figures of a log line: the only fields a resumed run's
# metrics.jsonl may differ in from the uninterrupted run's.
WALL_TIME = ("images_per_sec", "mfu")


def _rows(workdir):
    """metrics.jsonl's rows without their wall-clock fields."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in rows]


def _start(workdir, *overrides, preexec_fn=None):
    command = [
        sys.executable,
        "-m",
        "ssl_jax.main",
        "--config=configs/rotation.py:runlocal",
        f"--workdir={workdir}",
        *overrides,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def _wait_for_steps(workdir, process, steps, timeout=300):
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {steps}: {process.poll()}")


def _error_lines(stderr):
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("ssl_jax: error:")]


def _files(workdir):
    return {
        p.relative_to(workdir): p.read_bytes()
        for p in workdir.rglob("*")
        if p.is_file() and p.name != "ssl_jax.lock"
    }


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    first = _start(workdir, *QUICK, "--config.train_steps=5000", "--config.checkpoint_every=100")
    try:
        _wait_for_steps(workdir, first, 2)
        second = run_main(workdir, *QUICK, check=False)
        (error,) = _error_lines(second.stderr)
        assert second.returncode == 2
        assert f"in use by process {first.pid} on " in error and "another --workdir" in error
    finally:
        first.kill()
        first.wait()


def test_a_changed_config_is_refused_and_touches_nothing(finished_run):
    workdir = finished_run
    before = _files(workdir)
    for change in ("--config.seed=1", "--config.batch_size=8", "--config.train_steps=9"):
        result = run_main(workdir, *QUICK, change, check=False)
        (error,) = _error_lines(result.stderr)
        assert result.returncode == 2 and "--allow_config_change" in error
        field, value = change.removeprefix("--config.").split("=")
        assert f"{field} " in error and f"-> {value}" in error
    assert _files(workdir) == before  # config.json included

    # Asked for explicitly, the change goes through and is recorded.
    run_main(workdir, *QUICK, "--config.train_steps=9", "--allow_config_change")
    (entry,) = map(json.loads, (workdir / "config_history.jsonl").read_text().splitlines())
    assert entry["from_step"] == 6 and entry["changes"] == {"train_steps": [6, 9]}
    assert json.loads((workdir / "config.json").read_text())["train_steps"] == 9
    assert list(losses(workdir)) == list(range(1, 10))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_and_the_rerun_is_exact(tmp_path, signum):
    args = (*QUICK, "--config.train_steps=40", "--config.checkpoint_every=10")
    args += ("--config.log_every=5",)  # a stop between two log lines, mostly
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_main(straight, *args)

    process = _start(stopped, *args)
    _wait_for_steps(stopped, process, 3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    name = signal.Signals(signum).name
    (line,) = [line for line in stderr.splitlines() if line.startswith("ssl_jax:")]
    assert line.startswith(f"ssl_jax: stopped by {name} at step ") and "Rerun" in line
    step = int(line.split(" at step ")[1].split(";")[0])
    assert 15 <= step < 40 and f"checkpoints/{step}" in line
    assert (stopped / "checkpoints" / str(step)).is_dir()
    assert not (stopped / "results.json").exists()

    result = run_main(stopped, *args)
    assert f"Resumed from the checkpoint of step {step}" in result.stderr
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((stopped / "results.json").read_text())
    assert a["state_fingerprint"] == b["state_fingerprint"]
    # The log as the uninterrupted run's: the same rows (no row at the stop
    # step), the same averages, bit for bit.
    assert [row["step"] for row in _rows(stopped)] == list(range(5, 41, 5))
    assert _rows(stopped) == _rows(straight)


def _file_size_limit(limit_bytes):
    """A full disk as the process sees it: writes past the limit fail (EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message, steps",
    [
        # The metrics file grows past the limit first (the main thread's write).
        (
            ("--config.train_steps=400", "--config.checkpoint_every=5"),
            "metrics.jsonl: File too large",
            400,
        ),
        # A checkpoint's data file does (orbax's background writer).
        (("--config.model=convnet", "--config.checkpoint_every=3"), "checkpoint of step 3", 6),
    ],
)
def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, overrides, message, steps):
    from ssl_jax.data.datasets import load_dataset

    # The digits in the session's dataset cache first: a cold cache's write
    # would fail under the limit too (a warning, then a decode every run).
    for split in ("train", "test"):
        load_dataset("digits", split, image_size=16)
    workdir = tmp_path / "run"
    process = _start(workdir, *QUICK, *overrides, preexec_fn=_file_size_limit(60_000))
    _, stderr = process.communicate(timeout=300)
    (error,) = _error_lines(stderr)
    assert process.returncode == 2 and message in error and "Free disk space" in error
    # The per-step progress lines (stderr is not a terminal), a few log lines,
    # then the error: nothing from background writer threads.
    others = [line for line in stderr.splitlines() if "metrics.py" not in line]
    assert len(others) <= 6, stderr[-3000:]

    result = run_main(workdir, *QUICK, *overrides)
    assert (workdir / "results.json").exists(), result.stderr[-2000:]
    assert list(losses(workdir)) == list(range(1, steps + 1))


def test_a_run_stopped_mid_interval_resumes_to_the_same_log_row_for_row(tmp_path, monkeypatch):
    """A stop at step 6 of a log interval 5-8: no row at 6, and the resumed
    run's row 8 averages steps 5-8 bit for bit as the run that never stopped."""
    from ssl_jax import preemption, train
    from tests.test_train import _arrays, _config

    config = _config(train_steps=8, log_every=4, checkpoint_every=8)
    train.train(config, str(tmp_path / "straight"), _arrays())

    boundaries, should_stop = iter(range(1, 9)), preemption.should_stop

    def signal_at_step_6(*, sync_point):
        if next(boundaries) == 6:
            preemption._handle(signal.SIGTERM, None)  # as the installed handler would
        return should_stop(sync_point=sync_point)

    monkeypatch.setattr(preemption, "should_stop", signal_at_step_6)
    try:
        with pytest.raises(preemption.Interrupted, match="at step 6;"):
            train.train(config, str(tmp_path / "stopped"), _arrays())
    finally:
        preemption.reset()
    monkeypatch.undo()
    assert [row["step"] for row in _rows(tmp_path / "stopped")] == [4]

    _, summary = train.train(config, str(tmp_path / "stopped"), _arrays())
    assert summary["resumed_from_step"] == 6
    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "stopped")
    assert [row["step"] for row in resumed] == [4, 8]
    assert resumed == straight  # every non-wall-clock field, bit for bit


def test_a_truncated_metrics_line_does_not_block_the_resume(finished_run):
    workdir = finished_run
    # As a kill during step 6 leaves it: no checkpoint 6, half a line for step 6.
    subprocess.run(["rm", "-r", str(workdir / "checkpoints" / "6")], check=True)
    metrics = workdir / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    result = run_main(workdir, *QUICK)
    assert "Resumed from the checkpoint of step 3" in result.stderr
    assert f"Ignoring line 6 of {metrics}" in result.stderr
    assert list(losses(workdir)) == [1, 2, 3, 4, 5, 6]


def test_an_overflowing_step_is_never_saved_and_the_message_is_true(tmp_path):
    # 1e41 x 16/256 is finite in the config but inf in float32: step 1 makes NaN weights.
    workdir = tmp_path / "run"
    bad = (
        "--config.optimizer.learning_rate=1e41",
        "--config.optimizer.warmup_steps=0",
        "--config.checkpoint_every=1",
    )
    result = run_main(workdir, *QUICK, *bad, "--config.log_every=1", check=False)
    (error,) = _error_lines(result.stderr)
    assert result.returncode == 2
    assert "NaN/Inf at step 1; no checkpoint was saved yet" in error
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Step 1's warm-up learning rate is 0 and step 2's (6e37 x 0.5) blows
        # the weights up without overflowing: steps 3 on are NaN, which is
        # more than 10% of the 6 steps.
        (("--config.optimizer.learning_rate=1e39",), "1 of the first 3 steps were skipped"),
        # A learning rate that is inf in float32: every step is NaN, a
        # failure whatever the limit.
        (
            ("--config.optimizer.learning_rate=1e41", "--config.max_skipped_fraction=1.0"),
            "1 of the first 1 steps were skipped",
        ),
    ],
)
def test_skipping_too_many_steps_is_a_failed_run_not_a_success(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    result = run_main(workdir, *QUICK, "--config.nonfinite=skip", *overrides, check=False)
    (error,) = _error_lines(result.stderr)
    assert result.returncode == 2 and message in error
    assert not (workdir / "results.json").exists()


def test_an_extra_argument_is_one_line(tmp_path):
    result = run_main(tmp_path / "run", "extra", check=False)
    (error,) = _error_lines(result.stderr)
    assert result.returncode == 2 and "'extra'" in error
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow  # 15 s: a run stopped twice in a subprocess
def test_a_second_signal_stops_at_once_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    process = _start(workdir, *QUICK, "--config.train_steps=300", "--config.checkpoint_every=5")
    _wait_for_steps(workdir, process, 12)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("ssl_jax:")]
    assert len(lines) in (1, 2) and "Rerun the same command" in lines[-1]  # 2: the first stop won
    result = run_main(workdir, *QUICK, "--config.train_steps=300", "--config.checkpoint_every=5")
    assert "Resumed from the checkpoint of step" in result.stderr
