"""Tests for ssl_jax.data.datasets: every loader, its cache and its error messages.

Nothing here touches the network: the tfds tests build a tiny ArrayRecord
dataset in a temporary directory, the image-folder tests write their own files.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import datasets, decode
from ssl_jax.data.datasets import DatasetError, ImageDataset, load_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # No test may write into the real ~/.cache/ssl_jax.
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path / "default_cache"))


def _error(fn, *args, **kwargs) -> str:
    """Runs fn, expects a DatasetError and returns its (single-line) message."""
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- names, splits


def test_unknown_name_lists_valid_forms():
    message = _error(load_dataset, "cifar10", "train", image_size=8)
    assert "'cifar10'" in message
    for form in datasets.dataset_names():
        assert form in message
    assert any(f.startswith("tfds:") for f in datasets.dataset_names())
    assert any(f.startswith("imagefolder:") for f in datasets.dataset_names())


@pytest.mark.parametrize("split", ["val", "validation", "TRAIN", ""])
def test_bad_split(split):
    message = _error(load_dataset, "synthetic", split, image_size=8)
    assert "train" in message and "test" in message


def test_bad_image_size():
    _error(load_dataset, "synthetic", "train", image_size=0)


def test_image_dataset_validates_its_arrays():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError):
        ImageDataset(images.astype(np.float32), np.zeros(2, np.int32), 2, "x")
    with pytest.raises(ValueError):
        ImageDataset(images, np.zeros(3, np.int32), 2, "x")
    with pytest.raises(ValueError):
        ImageDataset(images, np.array([0, 2], np.int32), 2, "x")
    ds = ImageDataset(images[:, ::2], np.array([0, 1], np.int32), 2, "x")
    assert ds.images.flags.c_contiguous and len(ds) == 2


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits8():
    # At 8 px no resampling happens, so images are the exact scaled sklearn pixels.
    return load_dataset("digits", "train", image_size=8), load_dataset(
        "digits", "test", image_size=8
    )


def test_digits_shapes_and_split_sizes():
    train = load_dataset("digits", "train", image_size=16)
    test = load_dataset("digits", "test", image_size=16)
    assert train.images.shape == (1438, 16, 16, 3) and test.images.shape == (359, 16, 16, 3)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        assert ds.images.flags.c_contiguous
        assert ds.num_classes == 10 and ds.name == "digits"
        assert ds.class_names == tuple("0123456789")
        assert ds.images.max() == 255 and ds.images.min() == 0
        # Grey source replicated to RGB.
        np.testing.assert_array_equal(ds.images[..., 0], ds.images[..., 2])


def test_digits_split_is_a_stratified_partition(digits8):
    from sklearn.datasets import load_digits

    train, test = digits8
    # Per class, 20% (rounded) of the images are in test.
    sk = load_digits()
    per_class = np.bincount(sk.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.round(0.2 * per_class))
    np.testing.assert_array_equal(
        np.bincount(train.labels, minlength=10) + np.bincount(test.labels), per_class
    )
    # No image is in both splits, and together they are exactly sklearn's images and labels.
    key = lambda ds: {
        (img[..., 0].tobytes(), int(y)) for img, y in zip(ds.images, ds.labels, strict=True)
    }
    assert not key(train) & key(test)
    expected = np.rint(sk.images * 255 / 16).astype(np.uint8)
    assert key(train) | key(test) == {
        (img.tobytes(), int(y)) for img, y in zip(expected, sk.target, strict=True)
    }


def test_digits_is_deterministic(digits8):
    again = load_dataset("digits", "test", image_size=8)
    np.testing.assert_array_equal(again.images, digits8[1].images)
    np.testing.assert_array_equal(again.labels, digits8[1].labels)


def test_digits_are_cached_after_the_first_load(tmp_path, monkeypatch):
    from ssl_jax.data import digits

    first = load_dataset("digits", "test", image_size=8, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("digits-*.npz"))) == 1

    def no_decode(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(digits, "_decode", no_decode)
    again = load_dataset("digits", "test", image_size=8, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    # Another split or size is another entry, never the cached one.
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("digits", "train", image_size=8, cache_dir=str(tmp_path))


def test_digits_takes_no_options():
    _error(load_dataset, "digits:foo=1", "train", image_size=8)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_options():
    train = load_dataset("synthetic", "train", image_size=20)
    test = load_dataset("synthetic", "test", image_size=20)
    assert train.images.shape == (512, 20, 20, 3) and test.images.shape == (256, 20, 20, 3)
    assert train.num_classes == 10 and len(train.class_names) == 10
    assert train.name == "synthetic:num_classes=10,train_size=512,test_size=256,seed=0"

    ds = load_dataset("synthetic:num_classes=4,train_size=30,seed=3", "train", image_size=12)
    assert ds.images.shape == (30, 12, 12, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and set(ds.labels.tolist()) == {0, 1, 2, 3}
    assert ds.num_classes == 4
    # Balanced: class counts differ by at most one.
    counts = np.bincount(ds.labels)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize(
    "spec", ["synthetic:colour=3", "synthetic:seed=x", "synthetic:num_classes=1"]
)
def test_synthetic_bad_options(spec):
    _error(load_dataset, spec, "train", image_size=8)


def test_synthetic_determinism_by_seed():
    def load(seed, split="train"):
        return load_dataset(
            f"synthetic:seed={seed},train_size=64,test_size=64", split, image_size=16
        )

    a, b, c = load(1), load(1), load(2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    # Train and test are different draws from the same distribution.
    assert not np.array_equal(a.images, load(1, "test").images)


def _fourier_features(images: np.ndarray) -> np.ndarray:
    """Colour- and translation-invariant features: |FFT| of the standardised grey image."""
    grey = images.astype(np.float32).mean(-1)
    grey -= grey.mean((1, 2), keepdims=True)
    grey /= grey.std((1, 2), keepdims=True) + 1e-6
    return np.log1p(np.abs(np.fft.rfft2(grey))).reshape(len(images), -1)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes) -> float:
    centroids = np.stack([train_x[train_y == k].mean(0) for k in range(num_classes)])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == test_y).mean())


def test_synthetic_is_learnable_but_not_from_colour():
    train = load_dataset("synthetic:train_size=1000", "train", image_size=32)
    test = load_dataset("synthetic", "test", image_size=32)
    # Shape and texture carry the label: a crude invariant classifier is far above chance (0.1).
    accuracy = _nearest_centroid_accuracy(
        _fourier_features(train.images),
        train.labels,
        _fourier_features(test.images),
        test.labels,
        10,
    )
    assert accuracy > 0.4, accuracy
    # Colour carries none: classifying by mean colour is near chance.
    mean_colour = lambda ds: ds.images.reshape(len(ds), -1, 3).mean(1)
    accuracy = _nearest_centroid_accuracy(
        mean_colour(train), train.labels, mean_colour(test), test.labels, 10
    )
    assert accuracy < 0.25, accuracy


# ----------------------------------------------------------------------------- tfds

_TFDS_NAME = "ssl_jax_test_tiny"
_TFDS_SIZES = {"train": 7, "validation": 5}  # No "test" split: exercises the fallback.


def _tfds_pixel(split: str, i: int) -> int:
    return 10 * i + (0 if split == "train" else 100)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A real ArrayRecord tfds dataset, written without TensorFlow and without network.

    The builder class is defined with registration skipped, so loading it goes
    through tfds's read-from-files path, as for any dataset prepared elsewhere.
    Images are grey, 12x9 (not square), each one a constant value.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 9), value, np.uint8), "L").save(buffer, format="PNG")
        return buffer.getvalue()

    with tfds.core.registered.skip_registration():

        class SslJaxTestTiny(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")
            # tfds 4.9.10 resolves code_path through `importlib_resources`, which it does not
            # declare (tensorflow/datasets#11212); this builder has no code files anyway.
            code_path = None

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 1)),
                        "label": tfds.features.ClassLabel(names=["zero", "one", "two"]),
                    }
                )
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(split) for split in _TFDS_SIZES}

            def _generate_examples(self, split):
                for i in range(_TFDS_SIZES[split]):
                    # tfds would need TensorFlow to encode arrays; PNG bytes go in as-is.
                    yield i, {"image": png(_tfds_pixel(split, i)), "label": i % 3}

    SslJaxTestTiny(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _by_pixel(ds: ImageDataset) -> dict[int, int]:
    """Maps each image's (constant) value to its label, checking it is constant and grey."""
    assert (ds.images == ds.images[:, :1, :1, :1]).all()
    return {int(img[0, 0, 0]): int(y) for img, y in zip(ds.images, ds.labels, strict=True)}


def test_tfds_train_and_validation_fallback(tfds_dir, tmp_path):
    kwargs = dict(image_size=8, data_dir=tfds_dir, cache_dir=str(tmp_path))
    train = load_dataset(f"tfds:{_TFDS_NAME}", "train", **kwargs)
    test = load_dataset(f"tfds:{_TFDS_NAME}", "test", **kwargs)
    assert train.images.shape == (7, 8, 8, 3) and test.images.shape == (5, 8, 8, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert train.num_classes == 3 and train.class_names == ("zero", "one", "two")
    assert train.name == f"tfds:{_TFDS_NAME}"
    assert _by_pixel(train) == {_tfds_pixel("train", i): i % 3 for i in range(7)}
    assert _by_pixel(test) == {_tfds_pixel("validation", i): i % 3 for i in range(5)}


def test_tfds_version_in_name_and_cache_reuse(tfds_dir, tmp_path, monkeypatch):
    kwargs = dict(image_size=6, data_dir=tfds_dir, cache_dir=str(tmp_path))
    first = load_dataset(f"tfds:{_TFDS_NAME}:1.0.0", "train", **kwargs)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def fail(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(decode, "decode_square", fail)
    second = load_dataset(f"tfds:{_TFDS_NAME}:1.0.0", "train", **kwargs)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "empty"
    message = _error(load_dataset, "tfds:mnist", "train", image_size=8, data_dir=str(empty))
    assert "not prepared" in message
    assert f"tfds build mnist --data_dir={empty}" in message
    assert "--file_format=array_record" in message
    assert "network" in message and "TensorFlow" in message
    # Nothing was downloaded.
    assert not any(empty.rglob("*.array_record*"))


def test_tfds_unknown_dataset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    message = _error(
        load_dataset, "tfds:no_such_dataset_xyz", "train", image_size=8, data_dir=str(tmp_path)
    )
    assert "no_such_dataset_xyz" in message


# ----------------------------------------------------------------------------- imagefolder

RED, BLUE = (200, 30, 30), (30, 30, 200)


def _write(path, size, color, fmt=None, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """train/{cat,dog} and test/{cat,dog}, PNG and JPEG, various sizes, one grey image."""
    root = tmp_path / "pets"
    _write(root / "train/cat/a.png", (20, 30), RED)
    _write(root / "train/cat/b.jpg", (40, 24), RED, "JPEG")
    _write(root / "train/dog/c.png", (16, 16), 128, mode="L")  # Grey.
    _write(root / "train/dog/d.JPEG", (33, 17), BLUE, "JPEG")
    _write(root / "test/dog/e.png", (10, 12), BLUE)
    _write(root / "test/cat/f.bmp", (9, 9), RED, "BMP")
    # Hidden files and folders and non-images are skipped.
    (root / "train/cat/.DS_Store").write_bytes(b"junk")
    (root / "train/dog/notes.txt").write_text("not an image")
    _write(root / "train/.hidden/x.png", (8, 8), RED)
    _write(root / "train/cat/.y.png", (8, 8), BLUE)
    return root


def _colours(ds: ImageDataset) -> np.ndarray:
    return ds.images.reshape(len(ds), -1, 3).mean(1)


def test_imagefolder_shapes_and_labels(folder, tmp_path):
    train = load_dataset(
        f"imagefolder:{folder}", "train", image_size=8, cache_dir=str(tmp_path / "c")
    )
    assert train.images.shape == (4, 8, 8, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.labels.tolist() == [0, 0, 1, 1]
    assert train.class_names == ("cat", "dog") and train.num_classes == 2
    assert train.name == f"imagefolder:{folder}"
    # Files are sorted within a class: a.png, b.jpg (red), c.png (grey), d.JPEG (blue).
    np.testing.assert_allclose(_colours(train), [RED, RED, (128, 128, 128), BLUE], atol=3)

    test = load_dataset(
        f"imagefolder:{folder}", "test", image_size=8, cache_dir=str(tmp_path / "c")
    )
    assert test.labels.tolist() == [0, 1] and test.class_names == ("cat", "dog")
    np.testing.assert_allclose(_colours(test), [RED, BLUE], atol=3)


def test_imagefolder_center_crops_non_square(tmp_path):
    root = tmp_path / "crop"
    # 30 wide, 10 high, red at both ends, blue in the middle: squashing the whole image would
    # show red at the sides, centre-cropping it shows only blue.
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :] = RED
    pixels[:, 5:25] = BLUE  # 5 px of blue margin around the central square: filters stay blue.
    (root / "train/a").mkdir(parents=True)
    Image.fromarray(pixels).save(root / "train/a/wide.png")
    ds = load_dataset(f"imagefolder:{root}", "train", image_size=5, cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(ds.images[0], np.broadcast_to(np.uint8(BLUE), (5, 5, 3)))


def test_imagefolder_cache_created_reused_and_invalidated(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    original = decode.decode_square

    def counting_decode(encoded, size):
        calls.append(encoded)
        return original(encoded, size)

    monkeypatch.setattr(decode, "decode_square", counting_decode)
    load = lambda: load_dataset(
        f"imagefolder:{folder}", "train", image_size=8, cache_dir=str(cache)
    )

    first = load()
    assert len(calls) == 4
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # No leftover temporary file.

    second = load()  # Served from the cache: nothing decoded.
    assert len(calls) == 4
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)

    _write(folder / "train/dog/z.png", (8, 8), BLUE)  # A new file changes the key.
    third = load()
    assert len(calls) == 4 + 5 and len(third) == 5
    assert len(list(cache.glob("*.npz"))) == 2

    # A corrupt cache file is ignored and rewritten.
    newest = max(cache.glob("*.npz"), key=os.path.getmtime)
    newest.write_bytes(b"this is not a zip file")
    fourth = load()
    assert len(calls) == 4 + 5 + 5
    np.testing.assert_array_equal(fourth.images, third.images)
    with np.load(newest) as f:
        np.testing.assert_array_equal(f["images"], third.images)


def test_imagefolder_default_cache_dir_from_env(folder, tmp_path):
    load_dataset(f"imagefolder:{folder}", "train", image_size=8)
    assert len(list((tmp_path / "default_cache").glob("*.npz"))) == 1


def test_imagefolder_val_fallback_and_relative_to_data_dir(tmp_path):
    root = tmp_path / "flowers"
    _write(root / "train/rose/1.png", (8, 8), RED)
    _write(root / "train/tulip/2.webp", (8, 8), BLUE, "WEBP")
    _write(root / "val/tulip/3.gif", (8, 8), BLUE, "GIF")
    ds = load_dataset("imagefolder:flowers", "test", image_size=4, data_dir=str(tmp_path))
    assert ds.labels.tolist() == [1] and ds.class_names == ("rose", "tulip")  # Train's mapping.
    assert ds.name == f"imagefolder:{root}"


def test_imagefolder_missing_root(tmp_path):
    missing = tmp_path / "nope"
    message = _error(load_dataset, f"imagefolder:{missing}", "train", image_size=8)
    assert str(missing) in message and "train/<class>/<image>" in message


def test_imagefolder_without_a_path_says_so(tmp_path):
    message = _error(load_dataset, "imagefolder:", "train", image_size=8, data_dir=str(tmp_path))
    assert "needs the folder's path" in message


def test_16_bit_grey_images_are_scaled_not_saturated(tmp_path):
    root = tmp_path / "deep"
    levels = (0, 1000, 30000, 65535)  # 16-bit values; 8-bit: 0, 4, 117, 255
    for split in ("train", "test"):
        for i, level in enumerate(levels):
            path = root / split / "grey" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6), level, np.uint16)).save(path)
            assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    ds = load_dataset(f"imagefolder:{root}", "train", image_size=6, cache_dir=str(tmp_path / "c"))
    expected = np.rint(np.asarray(levels) / 257)
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], expected)
    assert (ds.images == ds.images[:, :1, :1, :1]).all()  # every pixel and channel alike


def test_imagefolder_missing_split_dirs(tmp_path):
    root = tmp_path / "only_train"
    _write(root / "train/a/1.png", (8, 8), RED)
    message = _error(load_dataset, f"imagefolder:{root}", "test", image_size=8)
    assert str(root / "test") in message and "val" in message
    root2 = tmp_path / "only_test"
    _write(root2 / "test/a/1.png", (8, 8), RED)
    message = _error(load_dataset, f"imagefolder:{root2}", "test", image_size=8)
    assert str(root2 / "train") in message


def test_imagefolder_empty_split(tmp_path):
    root = tmp_path / "empty"
    (root / "train/cat").mkdir(parents=True)
    (root / "train/cat/readme.txt").write_text("no images here")
    message = _error(load_dataset, f"imagefolder:{root}", "train", image_size=8)
    assert str(root / "train") in message and "No images" in message


def test_imagefolder_test_class_missing_from_train(folder):
    _write(folder / "test/horse/h.png", (8, 8), RED)
    message = _error(load_dataset, f"imagefolder:{folder}", "test", image_size=8)
    assert str(folder / "test/horse") in message


def test_imagefolder_unreadable_image_names_the_file(folder, tmp_path):
    bad = folder / "train/cat/broken.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg\x01" * 10)
    cache = tmp_path / "cache"
    message = _error(
        load_dataset, f"imagefolder:{folder}", "train", image_size=8, cache_dir=str(cache)
    )
    assert f"Cannot read image {bad}:" in message and "Remove or replace it" in message
    assert not list(cache.glob("*.npz"))  # A failed decode caches nothing.
