"""Segmentation data: the embedded digit scenes, image + mask folders and
their records written by `ssl_jax.prepare`."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from ssl_jax import prepare
from ssl_jax.data import records
from ssl_jax.data import segmentation as seg
from ssl_jax.data.base import DatasetError


def test_digit_scenes_are_deterministic_and_their_masks_mark_the_strokes():
    name = "digit_scenes:train_size=40,test_size=20,digits=3"
    train = seg.load_segmentation(name, "train", image_size=16)
    again = seg.load_segmentation(name, "train", image_size=16)
    test = seg.load_segmentation(name, "test", image_size=16)
    assert train.images.shape == (40, 16, 16, 3) and test.masks.shape == (20, 16, 16)
    np.testing.assert_array_equal(train.images, again.images)
    np.testing.assert_array_equal(train.masks, again.masks)
    assert train.num_classes == 11 and train.class_names[0] == "background"
    # A pixel belongs to a digit exactly where a stroke shows.
    for split in (train, test):
        np.testing.assert_array_equal(split.masks > 0, split.images[..., 0] > seg.STROKE)
    # Scenes hold several digits, of many classes.
    per_scene = [len(np.unique(m)) - 1 for m in train.masks]
    assert max(per_scene) == 3 and np.mean(per_scene) > 2
    assert set(np.unique(train.masks)) == set(range(11))
    assert not np.array_equal(train.images[:20], test.images)


def test_digit_scenes_masks_hold_the_digits_classes():
    digits = np.zeros((2, 8, 8), np.uint8)
    digits[0, 2:6, 3] = 200  # a "1" drawn as a bar
    digits[1, 1, 1:7] = 40  # too faint to be a stroke
    scenes, masks = seg.make_scenes(digits, np.array([7, 3]), 5, 2, seed=0)
    assert set(np.unique(masks)) <= {0, 8}  # class 1 + 7; the faint digit is background
    np.testing.assert_array_equal(masks == 8, scenes == 200)


def _write_folder(root, *, mask_mode="L", test_value=2, classes=None):
    rng = np.random.default_rng(0)
    for split, names in (("train", ("a", "b")), ("test", ("c",))):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for n in names:
            image = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{n}.png")
            mask = np.zeros((10, 12), np.uint8)
            mask[:, 6:] = 1 if split == "train" else test_value
            mask[1, :] = 255
            if n == "b":
                mask[5:, :] = 2
            Image.fromarray(mask, "L").convert(mask_mode).save(root / split / "masks" / f"{n}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_segfolder_reads_images_and_masks_at_the_run_size(tmp_path):
    _write_folder(tmp_path)
    train = seg.load_segmentation(f"segfolder:{tmp_path}", "train", image_size=5)
    test = seg.load_segmentation(f"segfolder:{tmp_path}", "test", image_size=5)
    assert train.images.shape == (2, 5, 5, 3) and train.masks.shape == (2, 5, 5)
    assert train.num_classes == 3 and test.num_classes == 3  # 0-2 in the train masks
    # The central 10x10 square, nearest-neighbour: classes stay classes.
    mask = np.asarray(Image.open(tmp_path / "train" / "masks" / "a.png"))[:, 1:11]
    np.testing.assert_array_equal(train.masks[0], mask[1::2, 1::2])
    assert set(np.unique(train.masks)) == {0, 1, 2, seg.IGNORE}


def test_segfolder_class_names_come_from_classes_txt(tmp_path):
    _write_folder(tmp_path, classes=["sky", "road", "car", "person"])
    train = seg.load_segmentation(f"segfolder:{tmp_path}", "train", image_size=8)
    assert train.class_names == ("sky", "road", "car", "person") and train.num_classes == 4


@pytest.mark.parametrize(
    "kind, match",
    [
        ("rgb_mask", r"Mask .*a.png is a RGB image; masks are single-channel"),
        ("unknown_test_class", r"Mask .*c.png holds class 7, beyond the 3 classes of the train"),
        ("missing_mask", r"Image .*b.png has no mask .*b.png"),
    ],
)
def test_segfolder_refuses_bad_folders_in_one_line(tmp_path, kind, match):
    _write_folder(
        tmp_path,
        mask_mode="RGB" if kind == "rgb_mask" else "L",
        test_value=7 if kind == "unknown_test_class" else 2,
    )
    if kind == "missing_mask":
        (tmp_path / "train" / "masks" / "b.png").unlink()
    split = "test" if kind == "unknown_test_class" else "train"
    with pytest.raises(DatasetError, match=match) as error:
        seg.load_segmentation(f"segfolder:{tmp_path}", split, image_size=8)
    assert "\n" not in str(error.value)


def test_prepare_writes_a_segfolder_that_segrecords_read_back_the_same(tmp_path):
    root = tmp_path / "seg"
    _write_folder(root)
    # A JPEG image, stored as it is; a class outside the central square, which
    # still counts: the classes come from whole masks, whatever the size.
    Image.open(root / "train" / "images" / "b.png").save(root / "train" / "images" / "b.jpg")
    (root / "train" / "images" / "b.png").unlink()
    # A mask of random pixels, so that any other geometry gives another array.
    mask = np.random.default_rng(1).choice(np.uint8([0, 1, 2, 255]), size=(10, 12))
    mask[4, 0] = 3
    Image.fromarray(mask, "L").save(root / "train" / "masks" / "a.png")
    (root / "val").mkdir()
    (root / "test").rename(root / "val")  # written under the folder's name, read as "test"
    out = tmp_path / "records"
    info = prepare.prepare(f"segfolder:{root}", str(out), verify=True, threads=2)
    assert info["masks"] and info["class_names"] == ["0", "1", "2", "3"]
    assert json.loads((out / records.INFO_FILE).read_text())["splits"].keys() == {"train", "val"}
    stored = records.RecordSource(str(out), "train")
    assert [stored[i]["key"] for i in range(2)] == ["train/images/a.png", "train/images/b.jpg"]
    assert stored[1]["image"] == (root / "train" / "images" / "b.jpg").read_bytes()
    assert stored[0]["mask"] == (root / "train" / "masks" / "a.png").read_bytes()
    for split in ("train", "test"):
        folder = seg.load_segmentation(f"segfolder:{root}", split, image_size=5)
        again = seg.load_segmentation(f"segrecords:{out}", split, image_size=5)
        np.testing.assert_array_equal(again.images, folder.images)
        np.testing.assert_array_equal(again.masks, folder.masks)
        assert again.class_names == folder.class_names and folder.num_classes == 4
        assert again.name == f"segrecords:{out}"
    # Not a labelled image dataset: every label is 0 there.
    with pytest.raises(DatasetError, match=r"holds segmentation records .*dataset=segrecords:"):
        records.open_source(f"arrayrecord:{out}", "train")


def test_segrecords_refuse_records_without_masks_and_name_a_damaged_mask(tmp_path):
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 3)).save(png)
    image, mask = png.read_bytes(), _png(np.zeros((3, 4), np.uint8))
    plain = tmp_path / "plain"
    records.write_records(str(plain), {"train": [records.Example("a", image, 0)]}, num_classes=2)
    with pytest.raises(DatasetError, match=r"holds image records without masks.*segfolder:"):
        seg.load_segmentation(f"segrecords:{plain}", "train", image_size=4)
    damaged = tmp_path / "damaged"
    examples = [
        records.Example("a.png", image, 0, mask=mask),
        records.Example("b.png", image, 0, mask=b"not a png"),
    ]
    records.write_records(str(damaged), {"train": examples}, num_classes=2)
    with pytest.raises(DatasetError) as error:
        seg.load_segmentation(f"segrecords:{damaged}", "train", image_size=4)
    assert str(error.value).startswith(f"The mask of record 1 of arrayrecord:{damaged} split train")
    assert "(b.png) cannot be decoded" in str(error.value) and "\n" not in str(error.value)
    # The readers open local files: a bucket is one line (mount it).
    for name, data_dir in (("segrecords:gs://b/seg", None), ("segfolder:seg", "gs://b")):
        with pytest.raises(DatasetError, match="read from local files only; mount the bucket"):
            seg.load_segmentation(name, "train", image_size=4, data_dir=data_dir)
    # A dataset's examples have masks all or none.
    with pytest.raises(DatasetError, match="Example b has no mask, unlike the first"):
        records.write_records(
            str(tmp_path / "mixed"),
            {"train": [examples[0], records.Example("b", image, 0)]},
            num_classes=2,
        )


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask, "L").save(buffer, format="PNG")
    return buffer.getvalue()
