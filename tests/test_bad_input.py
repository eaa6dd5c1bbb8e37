"""The bad-input catalogue: each mistake ends with one clear line on stderr,
exit code 2, no traceback, and leaves existing checkpoints untouched."""

import pytest

from tests.test_main import QUICK, run_main


def _image_folder(root, *, garbage=False, empty=False):
    from PIL import Image

    for split in ("train", "test"):
        folder = root / split / "cat"
        folder.mkdir(parents=True)
        if empty and split == "train":
            continue
        for i in range(4):
            Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(folder / f"{i}.png")
    if garbage:
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


CASES = {
    "unknown task": (
        ["--config.task=rotatoin"],
        "Unknown task 'rotatoin'. Did you mean 'rotation'?",
    ),
    "unknown model": (["--config.model=resnet_typo"], "Unknown model 'resnet_typo'"),
    "unknown dataset": (["--config.dataset=cifar11"], "cifar11"),
    "typo in a config field": (["--config.batch_sise=8"], 'Did you mean "batch_size"'),
    "wrong type": (["--config.batch_size=abc"], "--config.batch_size=abc"),
    "unknown config option": (["--config=configs/rotation.py:runlcal"], "runlcal"),
    "negative learning rate": (
        ["--config.optimizer.learning_rate=-0.1"],
        "learning_rate must be > 0",
    ),
    "bad non-finite policy": (["--config.nonfinite=ignore"], "config.nonfinite must be"),
    "checkpoint not a multiple of log": (
        ["--config.checkpoint_every=5", "--config.log_every=2"],
        "multiple of config.log_every",
    ),
    "missing workdir flag": (["--workdir="], "workdir"),
    "mask ratio out of range": (
        ["--config=configs/mae.py:runlocal", "--config.task_kwargs.mask_ratio=1.5"],
        "mask_ratio",
    ),
    "image size not divisible by the patch size": (
        ["--config=configs/mae.py:runlocal", "--config.image_size=18"],
        "divisible",
    ),
    "patch size that does not divide the image": (
        ["--config=configs/mae.py:runlocal", "--config.model_kwargs.patch_size=5"],
        "Image size 16x16 is not divisible by the patch size 5: choose config.image_size as a "
        "multiple of model_kwargs.patch_size",
    ),
    "a field the config does not have": (
        ["--config=configs/mae.py:runlocal", "--config.model_kwargs.depth=3"],
        "config field 'model_kwargs.depth' does not exist in",
    ),
    "NaN in a float field": (["--config.knn.temperature=nan"], "config.knn.temperature must be a"),
    "inf in a float field of a task": (
        ["--config=configs/simclr.py:runlocal", "--config.task_kwargs.temperature=inf"],
        "config.task_kwargs.temperature must be a finite number, got inf",
    ),
    "inf in a tuple of floats": (
        ["--config.probe.l2_grid=(0.1,1e999)"],
        "config.probe.l2_grid.1 must be a finite number",
    ),
    "skipped-step limit out of range": (
        ["--config.max_skipped_fraction=1.5"],
        "config.max_skipped_fraction must be in [0, 1]",
    ),
    "image folder without a path": (["--config.dataset=imagefolder:"], "needs the folder's path"),
    "an audio folder that does not exist": (
        ["--config=configs/audio.py:runlocal", "--config.dataset=audiofolder:/nonexistent"],
        "Audio folder /nonexistent has no train/ folder",
    ),
    "an unknown evaluator type": (
        ["--config.evals.linear_probe.type=probe"],
        "config.evals.linear_probe.type='probe' is not one of",
    ),
    "a cloud workdir without its package": (
        ["--workdir=nosuch://bucket/run"],
        "--workdir=nosuch://bucket/run: no filesystem is known for nosuch://",
    ),
    "a cloud dataset": (
        ["--config.dataset=arrayrecord:memory://b/recs"],
        "arrayrecord data is read from local files only",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_config_mistakes(tmp_path, case):
    args, message = CASES[case]
    config = next((a for a in args if a.startswith("--config=")), None)
    args = [a for a in args if a != config]
    kwargs = {"config": config.split("=", 1)[1]} if config else {}
    workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
    args = [a for a in args if not a.startswith("--workdir=")]
    with_cwd = tmp_path / "cwd"
    with_cwd.mkdir()
    workdir = tmp_path / "run" if workdir is None else workdir
    result = run_main(workdir, *args, check=False, cwd=with_cwd, **kwargs)
    _assert_one_clear_line(result, message)
    assert not any(with_cwd.iterdir())  # no stray `gs:` folder


def test_batch_size_not_divisible_by_devices(tmp_path):
    result = run_main(tmp_path / "run", "--config.batch_size=12", devices=8, check=False)
    _assert_one_clear_line(
        result, "batch_size=12 must be a positive multiple of the device count (8)"
    )


@pytest.mark.parametrize(
    "layout, message",
    [("missing", "does not exist"), ("empty", "train"), ("garbage", "broken.jpg")],
)
def test_image_folder_problems(tmp_path, monkeypatch, layout, message):
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    if layout != "missing":
        _image_folder(root, garbage=layout == "garbage", empty=layout == "empty")
    result = run_main(tmp_path / "run", f"--config.dataset=imagefolder:{root}", check=False)
    _assert_one_clear_line(result, message)
    # No guess about the recipe of a folder with no image to measure.
    assert "recipe" not in result.stderr, result.stderr


def test_another_model_on_a_workdir_is_refused_and_nothing_is_touched(finished_run):
    workdir = finished_run
    snapshot = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    result = run_main(workdir, *QUICK, "--config.model=resnet_tiny", check=False)
    _assert_one_clear_line(result, "model 'convnet_tiny' -> 'resnet_tiny'")
    after = {
        p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != "ssl_jax.lock"
    }
    assert after == {p: b for p, b in snapshot.items() if p.name != "ssl_jax.lock"}


def _assert_one_clear_line(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ssl_jax: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert message in errors[0], errors[0]
