"""Streamed feature extraction split across processes, for real: two
processes on localhost joined by jax.distributed (CPU collectives through
gloo) each decode only their share of the split, and both end with the same
features and labels as one process that read it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import records
from tests.test_distributed import _free_port
from tests.test_main import ROOT

pytestmark = pytest.mark.slow

N = 13  # With batches of 8: process 1's share of the last batch is one record.

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    from ssl_jax import config_lib, distributed, inference
    from ssl_jax.data import pipeline, records, streaming
    from ssl_jax.evaluators.probes import outputs

    spec, process_id, count, address = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if count > 1:
        distributed.initialize(
            coordinator_address=address, num_processes=count, process_id=process_id
        )
    read = []
    original = records.RecordSource.__getitem__
    records.RecordSource.__getitem__ = lambda self, i: read.append(int(i)) or original(self, i)
    config = config_lib.get_config("rotation", "runlocal")
    trained = inference.split_task(inference.build_task(config))
    split = streaming.StreamSplit(spec, "train", image_size=config.image_size)
    x, y = outputs(trained, pipeline.make_mesh(), split, batch_size=8)
    print(json.dumps({"x": x.tolist(), "y": y.tolist(), "read": read}))
    """
)


def _start(spec: str, count: int) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, spec, str(i), str(count), address],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


def _results(processes: list[subprocess.Popen]) -> list[dict]:
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


def test_two_processes_extract_their_shares_and_gather_the_same_features(tmp_path):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(N):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        examples.append(records.Example(str(i), path.read_bytes(), i % 3))
    records.write_records(str(tmp_path / "records"), {"train": examples}, num_classes=3)
    spec = f"arrayrecord:{tmp_path / 'records'}"

    started = _start(spec, 1), _start(spec, 2)  # Side by side: the wall time of one.
    (single,), pair = (_results(processes) for processes in started)
    assert sorted(single["read"]) == list(range(N))
    # Each process decoded only its rows of each batch of 8: [0, 4) and [4, 8), ...
    assert sorted(pair[0]["read"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert sorted(pair[1]["read"]) == [4, 5, 6, 7, 12]
    for result in pair:  # ... and both hold every example's features, in order.
        assert result["y"] == single["y"] == [i % 3 for i in range(N)]
        np.testing.assert_allclose(result["x"], single["x"], rtol=1e-5, atol=1e-6)
