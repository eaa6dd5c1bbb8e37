"""Host-side datasets: decode every image once into memory, serve numpy arrays.

`load_dataset(name, split, image_size=...)` returns an `ImageDataset` of uint8
RGB images `[N, S, S, 3]` and int32 labels `[N]`; `ssl_jax.data.pipeline`
turns it into sharded device batches. Accepted names:

- `digits`: scikit-learn's 8x8 handwritten digits, shipped inside the
  scikit-learn wheel, so it works offline. The embedded default.
- `synthetic` or `synthetic:num_classes=10,train_size=512,test_size=256,seed=0`
  (every option optional): generated shapes and textures, any size and
  resolution, for tests and benchmarks.
- `tfds:NAME`, `tfds:NAME/CONFIG`, `tfds:NAME:VERSION`: a TFDS dataset prepared
  in ArrayRecord format under `data_dir`, read without TensorFlow.
- `imagefolder:/path/to/root`: `root/train/<class>/<image>` and
  `root/test/<class>/<image>` (or `root/val/...`).

Other modalities load as an `ArrayDataset` (the same interface, its inputs
under another batch key, `input_key`):
- `pydoc[:length=128]`: chunks of the Python documentation topics as byte
  tokens, labelled by topic (`data/text.py`); TFDS text datasets
  (`tfds:imdb_reviews`, `tfds:ag_news_subset`) through the tfds reader.
- `moving_digits[:frames=8,label=digit|direction]`: clips of the digits
  moving across a canvas (`data/video.py`); TFDS video datasets with labels
  through the tfds reader.

Decoded tfds and image-folder splits are cached as `.npz` under `cache_dir`
(default: `$SSL_JAX_CACHE_DIR` or `~/.cache/ssl_jax`), keyed by the source
files' names, sizes and mtimes, so a changed source is decoded again.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

# Each source module registers its loader in DATASETS when imported.
from ssl_jax.data import digits, synthetic, text, video  # noqa: F401
from ssl_jax.data.base import (  # noqa: F401  (the types are this module's API too)
    IMAGE_EXTENSIONS,
    SPLITS,
    ArrayDataset,
    DatasetError,
    ImageDataset,
    cached_arrays,
    only_feature,
    padded_batches,
    square,
    to_rgb,
)
from ssl_jax.registry import DATASETS

# Every loader takes (argument after "name:", split, image_size, data_dir, cache_dir).
Loader = Callable[[str, str, int, "str | None", "str | None"], "ImageDataset | ArrayDataset"]


def dataset_names() -> list[str]:
    """The accepted forms of `name` for `load_dataset`."""
    options = ",".join(f"{k}={v}" for k, v in synthetic.DEFAULTS.items())
    return [
        "digits",
        f"synthetic[:{options}]",
        "tfds:NAME[/CONFIG][:VERSION]",
        "imagefolder:/path/to/root",
        "pydoc[:length=128,min_chunks=20]",
        "moving_digits[:frames=8,clips=2,label=digit|direction]",
    ]


def load_dataset(
    name: str,
    split: str,
    *,
    image_size: int,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> ImageDataset:
    """Loads split "train" or "test" of `name` (see module docstring) at `image_size`^2 pixels."""
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    if not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image_size must be a positive int, got {image_size!r}.")
    kind, _, arg = name.partition(":")
    if kind not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}. Valid forms: {'; '.join(dataset_names())}.")
    loader: Loader = DATASETS.get(kind)
    return loader(arg, split, image_size, data_dir, cache_dir)


def native_size(name: str, data_dir: str | None = None, *, peek: int = 16) -> int | None:
    """The typical shorter side, in pixels, of a dataset's original images,
    found without loading it (config recipes follow it): digits 8, CIFAR 32,
    an image folder or record shards the median over their first `peek`
    training images. None when it cannot tell cheaply: synthetic data (any
    size), TFDS datasets of varying sizes (ImageNet), a missing path."""
    kind, _, arg = name.partition(":")
    if kind == "digits":
        return 8
    if kind == "moving_digits":
        return 16  # the canvas of the moving 8 px digits (data/video.py)
    sizes: list[int] = []
    try:
        if kind == "tfds":
            import tensorflow_datasets as tfds

            features = tfds.builder(arg, data_dir=data_dir).info.features
            shape = features[only_feature(features, tfds.features.Image, "image", arg)].shape
            return shape[0] if shape[0] and shape[1] else None
        if kind == "imagefolder":
            root = os.path.join(os.path.expanduser(data_dir or ""), os.path.expanduser(arg))
            train = os.path.join(root, "train")
            for c in _visible_entries(train):
                files = [f for f in _visible_entries(os.path.join(train, c)) if _is_image(f)]
                sizes += [_shorter_side(os.path.join(train, c, f)) for f in files[:peek]]
                if len(sizes) >= peek:
                    break
        elif kind == "arrayrecord":
            from ssl_jax.data import records  # Lazy: only record datasets need it.

            source = records.open_source(name, "train", data_dir=data_dir)
            indices = range(min(peek, len(source)))
            sizes = [_shorter_side(io.BytesIO(source[i]["image"])) for i in indices]
    except (OSError, ValueError, DatasetError):
        return None
    return int(np.median(sizes)) if sizes else None


def _is_image(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS


def _shorter_side(source) -> int:
    with Image.open(source) as image:  # reads the header only
        return min(image.size)


# ----------------------------------------------------------------------------- images


def _decode_image(source: str | bytes, size: int) -> np.ndarray:
    """Decodes one image file (path) or encoded bytes to RGB uint8 [size, size, 3]."""
    with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
        return square(image, size)


def _decode_all(sources: Sequence[str | bytes], size: int, names: Sequence[str]) -> np.ndarray:
    """Decodes many images on a thread pool (PIL releases the GIL while decoding)."""

    def decode(i: int) -> np.ndarray:
        try:
            return _decode_image(sources[i], size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            reason = " ".join(str(e).split())
            raise DatasetError(
                f"Cannot read image {names[i]}: {reason}. Remove or replace it."
            ) from e

    out = np.empty((len(sources), size, size, 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as pool:
        for i, image in enumerate(pool.map(decode, range(len(sources)))):
            out[i] = image
    return out


def _file_stats(directory: str, files: Sequence[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) per file: the part of a cache key that sees edits."""
    stats = []
    for f in files:
        s = os.stat(f)
        stats.append((os.path.relpath(f, directory), s.st_size, s.st_mtime_ns))
    return stats


# ----------------------------------------------------------------------------- tfds


@DATASETS.register("tfds")
def _load_tfds(
    spec: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    import tensorflow_datasets as tfds  # Lazy: importing tfds takes a moment.

    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except ValueError as e:  # Includes tfds's DatasetNotFoundError.
        where = data_dir or "the default tfds data_dir"
        raise DatasetError(
            f"tfds does not know {spec!r} and found no prepared copy in {where} "
            f"({type(e).__name__}); check the name in the tfds catalog."
        ) from e
    # Most builders encode images through TensorFlow while preparing, so the one-off
    # preparation needs it (and network); reading afterwards needs neither.
    prepare = (
        "Prepare it once (needs network and TensorFlow, e.g. in a separate env with "
        f"`pip install tensorflow tensorflow-datasets`): tfds build {spec} "
        f"--data_dir={builder.data_dir_root} --file_format=array_record"
    )
    if not builder.is_prepared():
        raise DatasetError(f"tfds:{spec} is not prepared in {builder.data_dir_root}. {prepare}")

    available = list(builder.info.splits)
    # Datasets without a labelled test split (e.g. imagenette) evaluate on validation.
    wanted = [split] if split == "train" else ["test", "validation"]
    tfds_split = next((s for s in wanted if s in available), None)
    if tfds_split is None:
        raise DatasetError(f"tfds:{spec} has no split {' or '.join(wanted)}; it has {available}.")
    features = builder.info.features
    label_key = only_feature(features, tfds.features.ClassLabel, "label", spec)
    num_classes = features[label_key].num_classes
    kinds = {type(f).__name__ for f in features.values()}
    if "Image" not in kinds and kinds & {"Text", "Video"}:
        return _load_tfds_sequences(builder, spec, tfds_split, label_key, image_size, prepare)
    image_key = only_feature(features, tfds.features.Image, "image", spec)

    def build() -> tuple[np.ndarray, np.ndarray]:
        try:  # Keep images encoded, so they are decoded (and resized) on our thread pool.
            source = builder.as_data_source(
                split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()}
            )
        except NotImplementedError as e:  # Prepared as TFRecord: needs TensorFlow to read.
            raise DatasetError(f"tfds:{spec} is not in ArrayRecord format. {prepare}") from e
        examples = source.__getitems__(range(len(source)))
        labels = np.array([ex[label_key] for ex in examples], np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(
                f"tfds:{spec} split {tfds_split} has labels outside [0, {num_classes})."
            )
        names = [f"tfds:{spec}[{tfds_split}][{i}]" for i in range(len(examples))]
        images = _decode_all([ex[image_key] for ex in examples], image_size, names)
        return images, labels.astype(np.int32)

    version_dir = builder.data_dir
    files = sorted(os.path.join(version_dir, f) for f in os.listdir(version_dir))
    key = {
        "kind": "tfds",
        "dir": os.path.abspath(version_dir),
        "split": tfds_split,
        "image_size": image_size,
        "keys": [image_key, label_key],
        "files": _file_stats(version_dir, files),
    }
    stem = f"tfds-{builder.info.full_name}-{tfds_split}-{image_size}"
    images, labels = cached_arrays(cache_dir, stem, key, image_size, build)
    class_names = tuple(features[label_key].names)
    return ImageDataset(images, labels, num_classes, f"tfds:{spec}", class_names)


# Text and video datasets are read whole: small enough, and decoded by tfds.
_TFDS_TEXT_LENGTH = 128  # bytes per text example (data/text.py)
_TFDS_VIDEO_FRAMES = 8  # evenly spaced frames per video (data/video.py)


def _load_tfds_sequences(builder, spec, tfds_split, label_key, image_size, prepare):
    """A prepared TFDS dataset whose input is a Text feature (bytes as tokens,
    `data/text.py`) or a Video one (`data/video.py`), with its ClassLabel."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    try:
        source = builder.as_data_source(split=tfds_split)
    except NotImplementedError as e:
        raise DatasetError(f"tfds:{spec} is not in ArrayRecord format. {prepare}") from e
    examples = source.__getitems__(range(len(source)))
    labels = np.array([ex[label_key] for ex in examples], np.int32)
    label = features[label_key]
    names = tuple(label.names)
    if any(isinstance(f, tfds.features.Text) for f in features.values()):
        key = only_feature(features, tfds.features.Text, "text", spec)
        texts = [ex[key] for ex in examples]
        return text.from_texts(
            texts, labels, label.num_classes, f"tfds:{spec}", _TFDS_TEXT_LENGTH, names
        )
    key = only_feature(features, tfds.features.Video, "video", spec)
    return video.from_frames(
        [ex[key] for ex in examples],
        labels,
        label.num_classes,
        f"tfds:{spec}",
        _TFDS_VIDEO_FRAMES,
        image_size,
        names,
    )


# ----------------------------------------------------------------------------- imagefolder


def _visible_entries(directory: str) -> list[str]:
    return sorted(e for e in os.listdir(directory) if not e.startswith("."))


@DATASETS.register("imagefolder")
def _load_imagefolder(
    path: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    # A relative path is taken relative to data_dir, when one is given.
    root = os.path.abspath(
        os.path.join(os.path.expanduser(data_dir or ""), os.path.expanduser(path))
    )
    if not path.strip():
        raise DatasetError(
            "imagefolder: needs the folder's path, e.g. --config.dataset=imagefolder:/data/photos "
            "(holding train/<class>/<image> and test/<class>/<image>)."
        )
    layout = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/)"
    if not os.path.isdir(root):
        raise DatasetError(f"Image folder {root} does not exist; {layout}.")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DatasetError(f"Image folder has no {train_dir}; {layout}.")
    # The train split defines the label mapping, so both splits agree on it.
    classes = [c for c in _visible_entries(train_dir) if os.path.isdir(os.path.join(train_dir, c))]

    names = ["train"] if split == "train" else ["test", "val"]
    split_dir = next(
        (os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None
    )
    if split_dir is None:
        raise DatasetError(f"Image folder has no {root}/test or {root}/val; {layout}.")
    files, labels = [], []
    for c in _visible_entries(split_dir):
        class_dir = os.path.join(split_dir, c)
        if not os.path.isdir(class_dir):
            continue
        if c not in classes:
            raise DatasetError(
                f"Class directory {class_dir} has no counterpart in {train_dir}; "
                "add it to train/ or remove it."
            )
        for f in _visible_entries(class_dir):
            if _is_image(f):
                files.append(os.path.join(class_dir, f))
                labels.append(classes.index(c))
    if not files:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"No images ({extensions}) under {split_dir}/<class>/; {layout}.")

    key = {
        "kind": "imagefolder",
        "root": root,
        "split": split,
        "image_size": image_size,
        "classes": classes,
        "files": _file_stats(root, files),
    }
    stem = f"imagefolder-{os.path.basename(root)}-{split}-{image_size}"
    images, label_array = cached_arrays(
        cache_dir,
        stem,
        key,
        image_size,
        lambda: (_decode_all(files, image_size, files), np.array(labels, np.int32)),
    )
    return ImageDataset(images, label_array, len(classes), f"imagefolder:{root}", tuple(classes))
