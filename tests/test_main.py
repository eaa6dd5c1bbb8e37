"""End-to-end: `python -m ssl_jax.main` on the `runlocal` config, in subprocesses
so that each run starts JAX fresh (device count, flags), as a user's would."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from tests import forkserver

ROOT = pathlib.Path(__file__).parents[1]

# The runlocal rotation run with its evaluations cut to what workdir tests
# need; `finished_run` (conftest) is one such run, finished.
QUICK = (
    "--config.baselines.random_init=false",
    "--config.eval_every=0",
    "--config.probe.steps=20",
    "--config.probe.few_label_draws=1",
    # No matplotlib plots: the tests that check them run with the default.
    "--config.save_plots=false",
)


def run_main(
    workdir, *overrides, devices=1, config="configs/rotation.py:runlocal", check=True, cwd=None
):
    """`python -m ssl_jax.main` in a subprocess; `cwd` other than the repository
    root takes the config file by its absolute path."""
    if cwd is not None:
        config = str(ROOT / config)
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    command = [
        sys.executable,
        "-m",
        "ssl_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]
    result = forkserver.run(
        command, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"main failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_main_trains_probes_and_writes_results(tmp_path):
    workdir = tmp_path / "run"
    result = run_main(
        workdir,
        "--config.baselines.supervised=true",
        "--config.baselines.supervised_few_labels=true",
        "--config.probe.labels_per_class=(2,)",
        "--config.peak_tflops=0.5",
    )
    results = json.loads((workdir / "results.json").read_text())
    # The step is compiled once, ahead of time, and XLA's analysis is recorded.
    step_perf = results["step_perf"]
    assert step_perf["compilations"] == 1
    assert step_perf["flops_per_image"] > 1e5 and step_perf["step_memory_mb"] > 0
    assert step_perf["peak_flops_per_device"] == 0.5e12
    assert results["task"] == "rotation" and results["dataset"] == "digits"
    assert results["train_steps"] == 6
    for key in ("linear_probe", "random_init", "supervised"):
        probe = results[key] if key == "linear_probe" else results[key]["linear_probe"]
        assert 0.0 <= probe["top1"] <= probe["top5"] <= 1.0
    assert "random init" in result.stdout and "supervised" in result.stdout
    # Supervised from scratch on 2 labels per class: its own classifier's top-1.
    assert 0.0 <= results["supervised"]["top1"] <= 1.0
    (scratch,) = results["supervised_from_scratch"]
    assert scratch["per_class"] == 2 and scratch["train_size"] == 2 * results["num_classes"]
    assert 0.0 <= scratch["top1"] <= 1.0
    assert (workdir / "supervised_2_per_class" / "metrics.jsonl").exists()
    assert "supervised from scratch" in result.stdout
    curve = (workdir / "label_efficiency.csv").read_text()
    assert curve.count("supervised from scratch") == 2  # 2/class and all labels

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # stderr is no terminal here: one plain line per log step, with an ETA from step 2.
    for step in range(1, 7):
        assert f"step {step}/6 loss " in result.stderr
    assert "ETA" in result.stderr
    # TensorBoard: the config, every figure of results.json, the pictures.
    from tests.test_metrics import read_events

    shown, images, texts = read_events(workdir)
    assert {"config/text_summary"} <= texts and {"embedding_pca", "label_efficiency"} <= images
    figures = {tag: value for tag, _, value in shown if tag.startswith("eval/")}
    assert figures["eval/linear_probe/top1"] == pytest.approx(
        json.loads((workdir / "results.json").read_text())["linear_probe"]["top1"]
    )
    for record in records:
        assert {"step", "loss", "learning_rate", "images_per_sec", "mfu"} <= set(record)
        assert np.isfinite(record["loss"]) and record["images_per_sec"] > 0
        expected_mfu = record["images_per_sec"] * step_perf["flops_per_image"] / 0.5e12
        assert record["mfu"] == pytest.approx(expected_mfu, rel=1e-6)
    assert any(
        p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir()
    )
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "3",
        "6",
    ]
    assert (workdir / "supervised" / "metrics.jsonl").exists()
    for name in (
        "embedding_pca.png",
        "embedding_pca_random_init.png",
        "supervised/embedding_pca.png",
    ):
        assert (workdir / name).stat().st_size > 1000


def _photo_folder(root, per_class=12):
    """An image folder of real photographs: JPEG crops of the two photos that
    scikit-learn ships (a temple in China, a flower), one class each."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = int(rng.integers(80, 200))
                y, x = (
                    rng.integers(0, photo.shape[0] - size),
                    rng.integers(0, photo.shape[1] - size),
                )
                crop = Image.fromarray(photo[y : y + size, x : x + size])
                crop.save(folder / f"{i}.jpg", quality=90)


def test_main_on_an_image_folder_of_real_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path / "cache"))
    _photo_folder(tmp_path / "photos")
    workdir = tmp_path / "run"
    run_main(
        workdir,
        f"--config.dataset=imagefolder:{tmp_path / 'photos'}",
        "--config.probe.labels_per_class=(2,)",
        "--config.peak_tflops=0.5",
    )
    results = json.loads((workdir / "results.json").read_text())
    # The step is compiled once, ahead of time, and XLA's analysis is recorded.
    step_perf = results["step_perf"]
    assert step_perf["compilations"] == 1
    assert step_perf["flops_per_image"] > 1e5 and step_perf["step_memory_mb"] > 0
    assert step_perf["peak_flops_per_device"] == 0.5e12
    assert results["dataset"] == f"imagefolder:{tmp_path / 'photos'}"
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    assert results["linear_probe"]["few_labels"][0]["per_class"] == 2
    assert any((tmp_path / "cache").iterdir())  # decoded once, cached


def test_probe_can_use_another_dataset(tmp_path):
    workdir = tmp_path / "run"
    probe_data = "synthetic:num_classes=4,train_size=64,test_size=32"
    run_main(
        workdir, f"--config.probe.dataset={probe_data}", "--config.probe.labels_per_class=(3,)"
    )
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"] == "digits" and results["probe_dataset"] == probe_data
    assert results["linear_probe"]["few_labels"][0]["per_class"] == 3
    # 4 classes: top-5 is over all classes
    assert results["linear_probe"]["top5"] == 1.0


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(finished_run):
    workdir = finished_run
    files = [p for p in (workdir / "checkpoints" / "6").rglob("*") if p.is_file()]
    for path in files:
        path.write_bytes(b"garbage")
    result = run_main(workdir, *QUICK)
    warnings = [line for line in result.stderr.splitlines() if "moved to" in line]
    assert len(warnings) == 1 and "checkpoints/6 cannot be read" in warnings[0]
    assert "Resumed from the checkpoint of step 3" in result.stderr
    # Kept for inspection, not deleted; the run trained steps 4-6 again.
    moved = workdir / "corrupt_checkpoints" / "6"
    assert sorted(p.read_bytes() for p in moved.rglob("*") if p.is_file()) == [b"garbage"] * len(
        files
    )
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "3",
        "6",
    ]


def test_when_no_checkpoint_is_usable_the_run_stops_and_moves_nothing(finished_run):
    workdir = finished_run
    files = [p for p in (workdir / "checkpoints").rglob("*") if p.is_file()]
    for path in files:
        path.write_bytes(b"garbage")
    result = run_main(workdir, *QUICK, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No usable checkpoint" in result.stderr
    assert "step 6 cannot be read" in result.stderr and "step 3 cannot be read" in result.stderr
    assert all(p.read_bytes() == b"garbage" for p in files)
    assert not (workdir / "corrupt_checkpoints").exists()


def test_missing_tfds_dataset_is_one_clear_line(tmp_path):
    result = run_main(
        tmp_path / "run",
        "--config.dataset=tfds:cifar10",
        f"--config.data_dir={tmp_path / 'no_data'}",
        check=False,
    )
    assert result.returncode == 2
    assert "tfds build cifar10" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_same_command_twice_is_deterministic(finished_run, tmp_path):
    first, second = finished_run, tmp_path / "b"
    run_main(second, *QUICK)
    a = json.loads((first / "results.json").read_text())
    b = json.loads((second / "results.json").read_text())
    assert a["state_fingerprint"] == b["state_fingerprint"]
    assert losses(first) == losses(second)


def test_knn_accuracy_is_logged_during_pretraining(tmp_path):
    workdir = tmp_path / "run"
    run_main(workdir, "--config.baselines.random_init=false", "--config.eval_every=3")
    records = {
        r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    }
    assert [s for s, r in records.items() if "knn_top1" in r] == [3, 6]
    results = json.loads((workdir / "results.json").read_text())
    assert (
        results["linear_probe"]["knn_top1"] == records[6]["knn_top1"]
    )  # same model, same features


def test_save_plots_false_writes_the_figures_but_no_plot(finished_run):
    """`tests.test_main.QUICK` turns the plots off: the results and the curve's
    CSV are written, the PNGs (and matplotlib's second of each run) are not."""
    results = json.loads((finished_run / "results.json").read_text())
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    assert (finished_run / "label_efficiency.csv").exists()
    assert not list(finished_run.glob("*.png"))
