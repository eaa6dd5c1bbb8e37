"""Host-side datasets by name: decode every image once into memory, serve numpy arrays.

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
- `tones[:train_per_class=160,...]`: synthesised labelled sounds, int16
  `audio` [N, 16000] at 16 kHz (`data/audio.py`); `audiofolder:/root` a
  folder of WAV files, `audiorecords:/dir` the same written by `prepare`.

Decoded tfds and image-folder splits are cached as `.npz` under `cache_dir`
(default: `$SSL_JAX_CACHE_DIR` or `~/.cache/ssl_jax`), keyed by the source
files' names, sizes and mtimes, so a changed source is decoded again.

This module only dispatches: each source is one module (digits.py,
synthetic.py, tfds_source.py, image_folder.py, text.py, video.py, audio.py) that
registers its loader in `registry.DATASETS` under the part of the name
before the first colon.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

# Each source module registers its loader in DATASETS when imported.
from ssl_jax.data import (  # noqa: F401
    audio,
    digits,
    image_folder,
    synthetic,
    text,
    tfds_source,
    video,
)
from ssl_jax.data.base import (  # noqa: F401  (the types are this module's API too)
    IMAGE_EXTENSIONS,
    SPLITS,
    ArrayDataset,
    DatasetError,
    ImageDataset,
)
from ssl_jax.data.decode import shorter_side
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
        "tones[:train_per_class=160,test_per_class=40,seed=0]",
        "audiofolder:/path/to/root",
        "audiorecords:/path/to/records",
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


def _records_size(name: str, data_dir: str | None, peek: int) -> int | None:
    from ssl_jax.data import records  # Lazy: only record datasets need it.

    source = records.open_source(name, "train", data_dir=data_dir)
    sizes = [shorter_side(io.BytesIO(source[i]["image"])) for i in range(min(peek, len(source)))]
    return int(np.median(sizes)) if sizes else None


# How each kind of dataset tells its native size: (name, argument, data_dir, peek) -> size.
_NATIVE_SIZES = {
    "digits": lambda name, arg, data_dir, peek: 8,
    # The canvas of the moving 8 px digits (data/video.py).
    "moving_digits": lambda name, arg, data_dir, peek: 16,
    "tfds": lambda name, arg, data_dir, peek: tfds_source.native_size(arg, data_dir),
    "imagefolder": lambda name, arg, data_dir, peek: image_folder.native_size(arg, data_dir, peek),
    "arrayrecord": lambda name, arg, data_dir, peek: _records_size(name, data_dir, peek),
}


def native_size(name: str, data_dir: str | None = None, *, peek: int = 16) -> int | None:
    """The typical shorter side, in pixels, of a dataset's original images,
    found without loading it (config recipes follow it): digits 8, CIFAR 32,
    an image folder or record shards the median over their first `peek`
    training images. None when it cannot tell cheaply: synthetic data (any
    size), TFDS datasets of varying sizes (ImageNet), a missing path."""
    kind, _, arg = name.partition(":")
    if kind not in _NATIVE_SIZES:
        return None
    try:
        return _NATIVE_SIZES[kind](name, arg, data_dir, peek)
    except (OSError, ValueError, DatasetError):
        return None
