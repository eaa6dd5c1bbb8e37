"""The data types every source produces, with no loader in sight: the
datasets (`ImageDataset`, `ArrayDataset`), their error (`DatasetError`) and
the image geometry every decoder shares (`square`, `to_rgb`) and the decode
cache (`cached_arrays`, `file_stats`). Sources (`digits.py`, `synthetic.py`,
`text.py`, `video.py`, `tfds_source.py`, `image_folder.py`, `records.py`) import
this module, never each other's types, so `ssl_jax/data` has no import loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from PIL import Image

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class DatasetError(ValueError):
    """Bad dataset name, path or content; the message is one line: what is wrong, what to do."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare by identity.
class ImageDataset:
    images: np.ndarray  # uint8 [N, H, W, 3], RGB.
    labels: np.ndarray  # int32 [N], in [0, num_classes).
    num_classes: int
    name: str  # e.g. "digits", "tfds:cifar10", "imagefolder:/x".
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        # Checked here once so no loader can hand the pipeline a malformed dataset.
        images, labels = np.ascontiguousarray(self.images), np.ascontiguousarray(self.labels)
        object.__setattr__(self, "images", images)  # Frozen: set the normalised arrays once.
        object.__setattr__(self, "labels", labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must be int32 [{len(images)}], got {labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")

    # The batch key the inputs travel under (tasks read `batch[input_key]`).
    input_key: ClassVar[str] = "image"

    @property
    def inputs(self) -> np.ndarray:
        return self.images

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        """(images, mask, labels) in order, every batch exactly `batch_size`
        rows (one compiled shape): the last one padded with zeros, mask False."""
        return padded_batches(self.images, self.labels, batch_size)

    def subset(self, indices) -> ImageDataset:
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def padded_batches(inputs: np.ndarray, labels: np.ndarray, batch_size: int):
    """(inputs, mask, labels) in order, every batch exactly `batch_size` rows:
    the last one padded with zeros, mask False there."""
    for start in range(0, len(labels), batch_size):
        x = inputs[start : start + batch_size]
        y = labels[start : start + batch_size]
        valid = len(x)
        mask = np.arange(batch_size) < valid
        if valid < batch_size:
            pad = batch_size - valid
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, np.int32)])
        yield x, mask, y


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled split of another modality than images: `inputs` [N, ...]
    travel under the batch key `input_key` (`tokens` int32 [N, T] of text,
    `video` uint8 [N, T, H, W, 3] of clips). The same interface as
    `ImageDataset` (`inputs`, `labels`, `batches`, `subset`), so the loop and
    the evaluators take either."""

    inputs: np.ndarray
    labels: np.ndarray  # int32 [N], in [0, num_classes)
    num_classes: int
    name: str
    input_key: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        inputs, labels = np.ascontiguousarray(self.inputs), np.ascontiguousarray(self.labels)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        if labels.dtype != np.int32 or labels.shape != inputs.shape[:1]:
            raise ValueError(
                f"labels must be int32 [{len(inputs)}], got {labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        return padded_batches(self.inputs, self.labels, batch_size)

    def subset(self, indices) -> ArrayDataset:
        return dataclasses.replace(self, inputs=self.inputs[indices], labels=self.labels[indices])


_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB. 16-bit greys are scaled (x / 257) to 8 bits:
    PIL's own conversion saturates them, turning most of a 16-bit PNG white.
    (A 32-bit "I" image whose values fit in 8 bits is kept as it is.)"""
    if image.mode in _WIDE_GREY_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode == "RGB":
        return image  # No copy; a lazily opened file stays lazy (JPEG draft mode, decode.py).
    # Grey, palette, RGBA (alpha dropped, as PIL and torchvision do), CMYK -> 3 channels.
    return image.convert("RGB")


def square(image: Image.Image, size: int) -> np.ndarray:
    """Center-crops to a square and resizes to `size`, as RGB uint8 [size, size, 3].

    Cropping the central square and resizing it is the same geometry as "resize
    the shorter side, then center-crop", done in one resampling step. Both axes
    get the same scale and the same filter, so resampling artefacts look alike
    in every direction: a rotation pretext task cannot read the image's
    orientation from them.
    """
    return central_square(to_rgb(image), size, Image.Resampling.BILINEAR)


def central_square(image: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    """The image's central square resized to `size` px with `resample`, as
    uint8: the one geometry of `square` (images) and segmentation masks."""
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    if (w, h) != (size, size):
        image = image.resize((size, size), resample, box=box)
    return np.asarray(image, dtype=np.uint8)


def only_feature(features, kind: type, preferred: str, spec: str) -> str:
    """The key of the feature of type `kind`: `preferred` if it is one, else the only one."""
    keys = [k for k, f in features.items() if isinstance(f, kind)]
    if preferred in keys:
        return preferred
    if len(keys) != 1:
        raise DatasetError(
            f"tfds:{spec} needs exactly one {kind.__name__} feature (or one named {preferred!r}), "
            f"found {keys or 'none'} among {list(features)}."
        )
    return keys[0]


def file_stats(directory: str, files) -> list[tuple[str, int, int]]:
    """(path relative to `directory`, size, mtime_ns) per file: the part of a
    cache key that sees the source files change."""
    stats = []
    for f in files:
        s = os.stat(f)
        stats.append((os.path.relpath(f, directory), s.st_size, s.st_mtime_ns))
    return stats


# Bump when the stored content changes for the same key (e.g. a new resize).
_CACHE_VERSION = 1


def cached_arrays(
    cache_dir: str | None,
    stem: str,
    key: dict,
    image_size: int,
    build: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from `<cache_dir>/<stem>-<hash(key)>.npz`, built by
    `build()` and saved there on first use. `cache_dir` defaults to
    `$SSL_JAX_CACHE_DIR` or `~/.cache/ssl_jax`."""
    directory = os.path.expanduser(
        cache_dir or os.environ.get("SSL_JAX_CACHE_DIR") or "~/.cache/ssl_jax"
    )
    blob = json.dumps({"version": _CACHE_VERSION, **key}, sort_keys=True).encode()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
    path = os.path.join(directory, f"{stem}-{hashlib.sha256(blob).hexdigest()[:16]}.npz")
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
        if images.shape[1:] != (image_size, image_size, 3) or len(labels) != len(images):
            raise ValueError("cached arrays have the wrong shape")
        return images, labels
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # Missing, or corrupt (e.g. a killed writer on a non-atomic FS): (re)build it.

    images, labels = build()
    try:
        os.makedirs(directory, exist_ok=True)
        # Write then rename, so a concurrent reader or a killed run never sees half a file.
        # Not `storage.write_bytes`: several processes may build the same cache at
        # once (a unique temporary each, not its shared `.tmp`), and np.savez streams
        # a whole decoded dataset instead of holding a second copy in memory.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels)
            os.replace(tmp, path)
        except BaseException:
            os.remove(tmp)
            raise
    except OSError as e:  # A read-only home should not stop training; it only costs a re-decode.
        warnings.warn(f"Could not write dataset cache {path}: {e}", stacklevel=3)
    return images, labels
