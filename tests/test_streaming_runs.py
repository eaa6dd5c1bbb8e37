"""Training on streamed records end to end: `python -m ssl_jax.prepare` writes
shards from an image folder, `python -m ssl_jax.main` trains on them with
crops taken on the host from the original images."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment, decode
from ssl_jax.tasks.base import augmented_views, view_crops, view_recipes
from tests import forkserver
from tests.test_main import ROOT, _photo_folder, losses, run_main

QUICK = (
    "--config.baselines.random_init=false",
    "--config.probe.steps=20",
    "--config.probe.few_label_draws=1",
    "--config.input.workers=0",
)


def _records(tmp_path, *, broken=False):
    photos = tmp_path / "photos"
    _photo_folder(photos)
    if broken:
        (photos / "train" / "china" / "zz_broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "records"
    result = forkserver.run(
        [sys.executable, "-m", "ssl_jax.prepare", f"--source=imagefolder:{photos}", f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_views_cropped_on_the_host_are_not_cropped_again():
    recipes = view_recipes([{"crop_scale": (0.2, 0.5), "flip": False}] * 2)
    assert view_crops(recipes, 16) == {"image": (decode.CropSpec(16, (0.2, 0.5)),) * 2}
    crops = jax.random.randint(jax.random.key(0), (4, 2, 16, 16, 3), 0, 256).astype(jnp.uint8)
    views = augmented_views(jax.random.key(1), crops, recipes)
    expected = augment.normalize(augment.to_float(jnp.concatenate([crops[:, 0], crops[:, 1]])))
    np.testing.assert_allclose(views, expected, atol=1e-6)


# MAE's case (the costliest) runs with the slow checks; rotation (centre crops)
# and SimCLR (host crops) cover both record paths in the fast suite.
@pytest.mark.parametrize(
    "config", ["rotation", "simclr", pytest.param("mae", marks=pytest.mark.slow)]
)
def test_main_trains_on_records_from_an_image_folder(tmp_path, config):
    records = _records(tmp_path)
    workdir = tmp_path / "run"
    run_main(workdir, *QUICK, config=f"configs/{config}.py:runlocal,dataset=arrayrecord:{records}")
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"] == f"arrayrecord:{records}"
    assert results["probe_train_size"] == 24 and 0 <= results["linear_probe"]["top1"] <= 1


def test_a_bad_record_stops_in_one_line_or_is_skipped_and_counted(tmp_path):
    records = _records(tmp_path, broken=True)
    config = f"configs/rotation.py:runlocal,dataset=arrayrecord:{records}"
    result = run_main(
        tmp_path / "stop", *QUICK, "--config.train_steps=30", config=config, check=False
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("ssl_jax: error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "zz_broken.jpg" in errors[0]
    assert "Remove or replace it. [record " in errors[0] and ".;" not in errors[0]
    assert errors[0].endswith(
        "] Or pass --config.input.on_bad_record=skip (on_bad_record='skip' in Python) to skip it."
    )

    # "skip": the run goes on, and the metrics count what was replaced (the
    # probe still stops on it: it reads every record; skip there too).
    workdir = tmp_path / "skip"
    result = run_main(
        workdir,
        *QUICK,
        "--config.train_steps=30",
        "--config.input.on_bad_record=skip",
        # One broken file in 25 is 4% of the draws: over the default limit
        # of 1% (tests/test_train.py fails a run past it).
        "--config.input.max_bad_record_fraction=0.2",
        config=config,
    )
    records_ = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    replaced = sum(r["skipped_examples"] for r in records_)
    assert replaced >= 1
    assert all(r["skipped_steps"] == 0 for r in records_)
    # Seen, not only counted: summed in results.json, one warning per log
    # interval that replaced any, each with the running total.
    results = json.loads((workdir / "results.json").read_text())
    assert results["skipped_examples"] == replaced and results["skipped_steps"] == 0
    warnings = [line for line in result.stderr.splitlines() if "unreadable record(s)" in line]
    assert len(warnings) == sum(1 for r in records_ if r["skipped_examples"])
    assert warnings[-1].endswith(f"; {int(replaced)} in the run so far.")


@pytest.mark.slow
def test_workers_and_a_sigkill_do_not_change_the_result(tmp_path):
    records = _records(tmp_path)
    config = f"configs/simclr.py:runlocal,dataset=arrayrecord:{records}"
    quick = [a for a in QUICK if "few_label_draws" not in a]
    args = (*quick, "--config.train_steps=30", "--config.checkpoint_every=5")
    straight = tmp_path / "straight"
    run_main(straight, *args, "--config.input.workers=0", config=config)

    # Two worker processes, killed mid-run, then resumed with none.
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "ssl_jax.main", f"--config={config}", f"--workdir={killed}"]
    process = subprocess.Popen(
        [*command, *args, "--config.input.workers=2"],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < len(metrics.read_text().splitlines()) < 30, "the kill came too late to test"
    run_main(killed, *args, "--config.input.workers=0", config=config)

    a = json.loads((straight / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["state_fingerprint"] == b["state_fingerprint"]
    assert losses(killed) == losses(straight)
