"""experiments/fault_injection.py: its verdicts on made-up runs, and a quick
selection of real trials end to end."""

import importlib.util
import json
import sys

import pytest

from tests import forkserver
from tests.test_main import ROOT

_spec = importlib.util.spec_from_file_location(
    "fault_injection", ROOT / "experiments" / "fault_injection.py"
)
fi = importlib.util.module_from_spec(_spec)
sys.modules["fault_injection"] = fi  # dataclasses look their module up there
_spec.loader.exec_module(fi)


def _finished(workdir, steps, fingerprint="abc"):
    """A workdir as a run that exited 0 leaves it (the parts the audit reads)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)
    )
    (workdir / "results.json").write_text(json.dumps({"state_fingerprint": fingerprint}))


def test_the_audit_calls_a_failure_that_looks_like_success_silent(tmp_path):
    ref = fi.Reference(tmp_path / "ref", "abc", {})
    steps = list(range(1, fi.STEPS + 1))
    _finished(tmp_path / "good", steps)
    assert fi.audit(fi.Result(0, "I1129 resumed\n"), tmp_path / "good", ref) == []

    _finished(tmp_path / "twice", steps[:20] + steps[15:])
    (why,) = fi.audit(fi.Result(0, ""), tmp_path / "twice", ref)
    assert "logged twice [16, 17, 18, 19, 20]" in why

    _finished(tmp_path / "other", steps, fingerprint="def")
    assert fi.audit(fi.Result(0, ""), tmp_path / "other", ref) == [
        "exit 0 with a state that differs from the reference"
    ]
    (tmp_path / "other" / "results.json").unlink()
    assert fi.audit(fi.Result(0, ""), tmp_path / "other", ref) == ["exit 0 without results.json"]

    # A failure is fine as one line; a traceback, two lines or none are not.
    one = "ssl_jax: error: Cannot write x: No space left on device.\n"
    assert fi.audit(fi.Result(2, one), tmp_path / "new", ref) == []
    assert fi.audit(fi.Result(2, "Traceback (most recent call last):\n" + one), tmp_path, ref) == [
        "a traceback on stderr"
    ]
    assert fi.audit(fi.Result(2, one + "E1129 12:00:00 boom\n"), tmp_path, ref) == ["2 error lines"]
    assert fi.audit(fi.Result(2, ""), tmp_path, ref) == ["exit 2 without a message"]


def test_a_checkpoint_may_only_rotate_out_or_move_aside_intact(tmp_path):
    def checkpoint(root, step, data=b"weights"):
        (root / str(step) / "state").mkdir(parents=True)
        (root / str(step) / "state" / "d").write_bytes(data + str(step).encode())

    for step in (5, 10, 15):
        checkpoint(tmp_path / "checkpoints", step)
    before = fi.snapshot(tmp_path)
    assert fi.lost_checkpoints(before, tmp_path) == []

    # 15 moved intact to corrupt_checkpoints/, 5 rotated out by three newer ones.
    (tmp_path / "corrupt_checkpoints").mkdir()
    (tmp_path / "checkpoints" / "15").rename(tmp_path / "corrupt_checkpoints" / "15")
    for step in (15, 20):
        checkpoint(tmp_path / "checkpoints", step, b"retrained")
    (tmp_path / "checkpoints" / "5" / "state" / "d").unlink()
    assert fi.lost_checkpoints(before, tmp_path) == []

    # A changed file in a kept checkpoint is lost; so is a vanished newest one.
    (tmp_path / "checkpoints" / "10" / "state" / "d").write_bytes(b"changed")
    assert fi.lost_checkpoints(before, tmp_path) == ["checkpoint 10 changed or vanished"]


@pytest.mark.slow
def test_the_script_runs_trials_and_prints_their_table(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "experiments/fault_injection.py",
        f"--out={out}",
        "--trials=lock/concurrent,config/seed",
    ]
    result = forkserver.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| trial",
        "| lock/concurrent",
        "| config/seed",
    ]
    concurrent, seed = rows[1].split(" | "), rows[2].split(" | ")
    assert concurrent[2] == "2, A 0" and "is in use by process" in concurrent[3]
    assert seed[2] == "2" and "seed 0 -> 1" in seed[3]
    for row in rows[1:]:
        assert row.endswith("| no | no | yes |"), row  # lost, silent, ok
    assert "2 trials run; 2 failures reported as such" in result.stdout
    assert "0 silent failures; 0 lost anything; 0 not as promised" in result.stdout
    with open("/proc/mounts") as mounts:
        assert str(out) not in mounts.read()  # a tmpfs of the script is unmounted
