"""What a run reports: TensorBoard events that a resume leaves with each
step once, plain log lines off a terminal, an ETA without compile time."""

import glob
import json
import struct

import pytest

from ssl_jax import metrics


def read_events(workdir):
    """(tag, step, value) of every scalar TensorBoard would show, reading the
    event files in order and applying its purge rule: a SessionLog START at
    step s drops the run's earlier events at steps >= s."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    shown, images, texts = [], set(), set()
    for path in sorted(glob.glob(str(workdir / "tensorboard" / "events*"))):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            if event.session_log.status == SessionLog.START:
                shown = [entry for entry in shown if entry[1] < event.step]
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    shown.append((value.tag, event.step, value.simple_value))
                elif kind == "image":
                    images.add(value.tag)
                else:
                    texts.add(value.tag)
    return shown, images, texts


def test_eta_counts_from_the_end_of_the_first_step(tmp_path, monkeypatch):
    clock = iter([100.0, 110.0])  # step 1 ended at t=100 (after compiling); step 11 at 110
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    writer = metrics.MetricWriter(str(tmp_path), total_steps=51, start_step=0)
    writer.advance()  # step 1: compiled, slow; the ETA starts here
    assert writer.eta_seconds() is None
    writer.advance(10)
    # 10 steps in 10 s since step 1; 40 steps left: 40 s, whatever step 1 took.
    assert writer.eta_seconds() == pytest.approx(40.0)
    writer.close()


def test_results_sections_are_scalars_under_their_prefix_and_constants_as_text():
    results = {
        "linear_probe": {"top1": 0.9, "few_labels": [{"per_class": 10, "top1": 0.8}]},
        "task": "simclr",
        "num_classes": 10,
        "skipped": None,
    }
    scalars, table = metrics._section("eval/x", results)
    assert scalars == {
        "eval/x/linear_probe/top1": 0.9,
        "eval/x/linear_probe/few_labels/10_per_class/top1": 0.8,
    }
    # Budgets, class counts and strings are constants: one text table.
    for row in ("linear_probe/few_labels/10_per_class/per_class` | 10", "task` | simclr"):
        assert row in table
    assert "num_classes` | 10" in table and "skipped" not in table


def test_truncated_lines_are_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    assert metrics.read_records(str(path)) == [{"step": 1, "loss": 1.0}]
    assert f"Ignoring line 2 of {path}" in caplog.text


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it is installed (1-4 s per run); the
    writer hides it for that import, and torch imports normally afterwards."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: nothing to hide")
    code = (
        "import sys\n"
        "from ssl_jax import metrics\n"
        f"metrics.MetricWriter({str(tmp_path)!r}, total_steps=2, start_step=0).close()\n"
        "assert 'tensorboardX' in sys.modules and 'torch' not in sys.modules\n"
        "import torch\n"
        "print(torch.zeros(1).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1])" in result.stdout
    assert glob.glob(str(tmp_path / "tensorboard" / "events*"))
