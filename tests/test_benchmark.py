"""`experiments/benchmark.py` end to end on a runlocal config (tiny sizes, few steps)."""

import csv
import json
import os
import pathlib
import sys

import pytest

from tests import forkserver

ROOT = pathlib.Path(__file__).parents[1]


def _benchmark(*args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "experiments/benchmark.py", "--steps=2", *args]
    result = forkserver.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_benchmark_reports_throughput_flops_mfu_and_the_time_split(tmp_path):
    rows = _benchmark(
        "--config=configs/rotation.py:runlocal",
        "--warmup=1",
        "--batch_sizes=8,16",
        "--peak_tflops=0.25",
        "--probe",
        f"--out={tmp_path}",
        tmp_path=tmp_path,
    )
    assert [r["batch_size"] for r in rows] == [8, 16]
    for row in rows:
        assert row["task"] == "rotation" and row["peak_source"] == "given"
        assert row["images_per_sec"] > 0 and row["step_ms"] > 0 and row["compile_seconds"] > 0
        assert row["images_per_sec"] * row["step_ms"] / 1e3 == pytest.approx(
            row["batch_size"], rel=1e-3
        )
        # XLA counts the FLOPs; MFU follows from them, the time and the given peak.
        assert row["flops_per_image"] > 1e5
        achieved = row["flops_per_image"] * row["images_per_sec"] / 1e12
        assert row["mfu"] == pytest.approx(achieved / 0.25, rel=5e-3)
        assert row["step_memory_mb"] > 0
        assert row["augment_ms"] > 0 and row["views_per_sec"] > 0
        assert 0 <= row["host_share_serial"] < 1 and 0 <= row["input_slowdown"] < 1
        assert 0 <= row["host_blocked_share"] < 1
        assert row["probe_features_per_sec"] > 0 and row["probe_fit_seconds"] > 0
        # Rotation feeds the encoder four rotated views of every image.
        views_per_step = row["views_per_sec"] * row["augment_ms"] / 1e3
        assert views_per_step == pytest.approx(4 * row["batch_size"], rel=5e-3)
    table = list(csv.DictReader((tmp_path / "benchmark.csv").open()))
    assert [int(r["batch_size"]) for r in table] == [8, 16]
    assert (tmp_path / "scaling_batch_size.png").stat().st_size > 1000


@pytest.mark.slow  # 12 s: a sweep of compiled steps
def test_benchmark_sweeps_mae_mask_ratio_and_refuses_it_for_other_tasks(tmp_path):
    rows = _benchmark(
        "--config=configs/mae.py:runlocal",
        "--mask_ratios=0.25,0.75",
        "--warmup=0",
        tmp_path=tmp_path,
    )
    assert [r["mask_ratio"] for r in rows] == [0.25, 0.75]
    # The encoder sees only the visible patches: fewer FLOPs at the higher ratio.
    assert rows[1]["flops_per_image"] < rows[0]["flops_per_image"]
    assert rows[0]["peak_source"] == "measured matmul" and rows[0]["mfu"] > 0

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = forkserver.run(
        [
            sys.executable,
            "experiments/benchmark.py",
            "--config=configs/rotation.py:runlocal",
            "--mask_ratios=0.5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "--mask_ratios needs an MAE config" in result.stderr


@pytest.mark.slow  # 6 s: one more compiled step
def test_benchmark_counts_the_images_of_a_task_whose_views_are_not_images(tmp_path):
    # Jigsaw's augmentation makes 9 tiles of each image under "tiles".
    (row,) = _benchmark(
        "--config=configs/jigsaw.py:runlocal", "--warmup=0", "--peak_tflops=0.25", tmp_path=tmp_path
    )
    views_per_step = row["views_per_sec"] * row["augment_ms"] / 1e3
    assert views_per_step == pytest.approx(9 * row["batch_size"], rel=5e-3)
