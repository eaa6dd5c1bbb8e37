"""Multi-host for real: two processes on localhost joined by jax.distributed
(CPU collectives through gloo), against one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_main import ROOT, losses, run_main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    args = (
        "--config.baselines.random_init=false",
        "--config.train_steps=4",
        "--config.probe.steps=20",
    )
    single = tmp_path / "single"
    run_main(single, *args, devices=2)

    multi = tmp_path / "multi"
    address = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ssl_jax.main",
                "--config=configs/rotation.py:runlocal",
                f"--workdir={multi}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]

    assert losses(multi).keys() == losses(single).keys()
    for step, loss in losses(single).items():
        assert abs(losses(multi)[step] - loss) <= 2e-4 * abs(loss)
    a = json.loads((single / "results.json").read_text())
    b = json.loads((multi / "results.json").read_text())
    assert abs(a["linear_probe"]["top1"] - b["linear_probe"]["top1"]) <= 0.01
    # Only process 0 prints the results table.
    assert "Linear probe" in outputs[0][0] and "Linear probe" not in outputs[1][0]
