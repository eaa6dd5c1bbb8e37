"""The GPU check's CPU dry run (`experiments/gpu_check.py --tiny`): every
section runs and lands in the JSON, so the script is ready when a device is
lent."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_tiny(tmp_path):
    out = tmp_path / "check.json"
    subprocess.run(
        [sys.executable, "experiments/gpu_check.py", "--tiny", f"--out={out}"],
        check=True,
        timeout=900,
    )
    report = json.loads(out.read_text())
    assert report["environment"]["backend"] == "cpu" and report["environment"]["jax"]
    assert report["tests"]["exit_code"] == 0 and "passed" in report["tests"]["summary"]
    for name, point in report["throughput"].items():
        assert point["exit_code"] == 0 and point["images_per_sec"] > 0, name
        assert point["flops_per_image"] > 0, name
    assert report["run"]["exit_code"] == 0 and 0 < report["run"]["top1"] <= 1
