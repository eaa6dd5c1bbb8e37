"""End-to-end tests of `python -m ssl_jax.prepare` on small image folders."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssl_jax import prepare
from ssl_jax.data import image_folder, records
from ssl_jax.data.datasets import DatasetError, load_dataset
from tests import forkserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    return forkserver.run(
        [sys.executable, "-m", "ssl_jax.prepare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare: error: "), result.stderr
    return lines[0]


@pytest.fixture
def folder(tmp_path):
    """train/{cat,dog} (3 + 2 images), val/{cat,dog} (1 + 1), mixed formats and sizes."""
    rng = np.random.default_rng(0)
    layout = {
        "train/cat": ["a.jpg", "b.png", "c.JPEG"],
        "train/dog": ["d.png", "e.jpg"],
        "val/cat": ["f.png"],
        "val/dog": ["g.jpg"],
    }
    for directory, names in layout.items():
        os.makedirs(tmp_path / "root" / directory)
        for name in names:
            pixels = rng.integers(0, 256, (int(rng.integers(8, 20)), 13, 3), dtype=np.uint8)
            fmt = "PNG" if name.endswith("png") else "JPEG"
            Image.fromarray(pixels).save(tmp_path / "root" / directory / name, format=fmt)
    (tmp_path / "root" / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path / "root"


def test_prepare_image_folder_end_to_end(folder, tmp_path):
    out = tmp_path / "records"
    result = _run(
        f"--source=imagefolder:{folder}",
        f"--out={out}",
        "--examples_per_shard=2",
        "--verify",
        "--threads=1",  # A window of 4 files in flight: smaller than the split.
    )
    assert result.returncode == 0, result.stderr
    assert "train: 5 examples, 3 shard(s)" in result.stdout
    assert "val: 2 examples, 1 shard(s)" in result.stdout and "2 classes" in result.stdout

    train = records.open_source(f"arrayrecord:{out}", "train")
    assert train.class_names == ("cat", "dog") and len(train) == 5
    for i in range(len(train)):
        record = train[i]
        assert record["image"] == (folder / record["key"]).read_bytes()  # Byte for byte.
        assert record["label"] == ("cat", "dog").index(record["key"].split(os.sep)[1])
    # In listing order (sorted classes, then files), whatever the thread pool does.
    assert [train[i]["key"] for i in range(5)] == [
        os.path.join("train", c, n)
        for c, n in [("cat", "a.jpg"), ("cat", "b.png"), ("cat", "c.JPEG")]
        + [("dog", "d.png"), ("dog", "e.jpg")]
    ]
    test = records.open_source(f"arrayrecord:{out}", "test")
    assert test.split == "val" and [test[i]["label"] for i in range(2)] == [0, 1]


def test_missing_folder_is_one_line(tmp_path):
    line = _one_line_error(_run(f"--source=imagefolder:{tmp_path}/none", f"--out={tmp_path}/o"))
    assert f"{tmp_path}/none does not exist" in line
    assert "--source" in _one_line_error(_run(f"--out={tmp_path}/o"))
    assert "Unknown source" in _one_line_error(_run("--source=cifar10", f"--out={tmp_path}/o"))


def test_verify_stops_at_a_broken_image(folder, tmp_path):
    broken = folder / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "records"
    line = _one_line_error(_run(f"--source=imagefolder:{folder}", f"--out={out}", "--verify"))
    assert str(broken) in line
    assert not (out / records.INFO_FILE).exists() and not os.listdir(out)
    # Without --verify the bytes are copied as they are (a streaming run meets them later).
    assert _run(f"--source=imagefolder:{folder}", f"--out={out}").returncode == 0
    line = _one_line_error(_run(f"--source=imagefolder:{folder}", f"--out={out}"))
    assert "already holds a dataset" in line and "--overwrite" in line


def test_list_image_folder_rules(folder):
    classes, splits = image_folder.list_image_folder(str(folder))
    assert classes == ["cat", "dog"] and list(splits) == ["train", "val"]
    os.makedirs(folder / "test" / "cat")
    Image.new("RGB", (4, 4)).save(folder / "test" / "cat" / "x.png")
    _, splits = image_folder.list_image_folder(str(folder))
    assert list(splits) == ["train", "test"]  # test before val
    os.makedirs(folder / "test" / "bird")
    with pytest.raises(DatasetError, match="no counterpart"):
        image_folder.list_image_folder(str(folder))


def _image(path, fmt="PNG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (90, 20, 200)).save(path, format=fmt)


def _no_train(root):
    _image(root / "test/cat/a.png")


def _no_test(root):
    _image(root / "train/cat/a.png")


def _stray_class(root):
    _image(root / "train/cat/a.png")
    _image(root / "val/cow/b.png")


def _empty_train(root):
    os.makedirs(root / "train/cat")
    (root / "train/cat/readme.txt").write_text("no images here")
    _image(root / "test/cat/a.png")


def _broken_image(root):
    _image(root / "train/cat/a.png")
    (root / "train/cat/b.jpg").write_bytes(b"\x00garbage, not a jpeg\x01" * 10)
    _image(root / "test/cat/c.png")


# (how to break a folder, the split whose loading meets it, what the message says)
BROKEN_FOLDERS = [
    (lambda root: None, "train", "does not exist"),
    (_no_train, "test", "has no"),
    (_no_test, "test", "/test or"),
    (_stray_class, "test", "no counterpart"),
    (_empty_train, "train", "No images"),
    (_broken_image, "train", "Cannot read image"),
]


@pytest.mark.parametrize("build, split, says", BROKEN_FOLDERS)
def test_prepare_and_the_loader_refuse_a_broken_folder_alike(build, split, says, tmp_path):
    # One check of the layout (image_folder.list_image_folder) and one error
    # for unreadable images serve both: the same folder, the same line.
    root = tmp_path / "root"
    build(root)
    with pytest.raises(DatasetError) as loading:
        load_dataset(f"imagefolder:{root}", split, image_size=4, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError) as preparing:
        prepare.prepare(f"imagefolder:{root}", str(tmp_path / "out"), verify=True)
    assert says in str(loading.value) and "\n" not in str(loading.value)
    assert str(preparing.value) == str(loading.value)


def test_prepare_converts_a_tfds_dataset(tmp_path):
    from tests.data.test_records import TFDS_NAME, TFDS_SIZES, make_tfds

    data_dir = make_tfds(str(tmp_path / "tfds"))
    info = prepare.prepare(
        f"tfds:{TFDS_NAME}", str(tmp_path / "out"), data_dir=data_dir, verify=True, threads=2
    )
    assert {s: v["num_examples"] for s, v in info["splits"].items()} == TFDS_SIZES
    ours = records.open_source(f"arrayrecord:{tmp_path / 'out'}", "test")
    theirs = records.open_source(f"tfds:{TFDS_NAME}", "test", data_dir=data_dir)
    assert ours.class_names == theirs.class_names and ours.split == "validation"
    assert [ours[i] for i in range(len(ours))] == [theirs[i] for i in range(len(theirs))]


def _seg_mask(root, name="a", size=(12, 10), mode="L", value=0):
    Image.new(mode, size, value).save(root / "train" / "masks" / f"{name}.png")


# (how to break a segmentation folder, the split whose loading meets it, what the message says)
BROKEN_SEGMENTATION_FOLDERS = [
    (lambda r: _seg_mask(r, size=(10, 12)), "train", "a.png is 10x12 but its image is 12x10"),
    (lambda r: _seg_mask(r, mode="RGB"), "train", "a.png is a RGB image"),
    (lambda r: (r / "train/masks/b.png").write_bytes(b"\x89PNG broken"), "train", "decoded"),
    (lambda r: (r / "train/masks/b.png").unlink(), "train", "b.png has no mask"),
    (lambda r: (r / "classes.txt").write_text("sky\nroad\n"), "train", "beyond the 2 classes"),
    (lambda r: (r / "test/images/c.png").unlink(), "test", "No images under"),
]


@pytest.mark.parametrize("build, split, says", BROKEN_SEGMENTATION_FOLDERS)
def test_prepare_and_segfolder_refuse_a_broken_segmentation_folder_alike(
    build, split, says, tmp_path
):
    from ssl_jax.data import segmentation
    from tests.data.test_segmentation_data import _write_folder

    root = tmp_path / "seg"
    _write_folder(root)
    build(root)
    with pytest.raises(DatasetError) as loading:
        segmentation.load_segmentation(f"segfolder:{root}", split, image_size=4)
    with pytest.raises(DatasetError) as preparing:
        prepare.prepare(f"segfolder:{root}", str(tmp_path / "out"), threads=2)
    assert says in str(loading.value) and "\n" not in str(loading.value)
    assert str(preparing.value) == str(loading.value)
    assert not (tmp_path / "out" / records.INFO_FILE).exists()
