"""scikit-learn's handwritten digits: the embedded default (no network; the
data ships inside the scikit-learn wheel).

Each split is kept in the dataset cache after its first load: importing
scikit-learn costs most of a second, paid by every short run otherwise."""

from __future__ import annotations

import importlib.metadata

import numpy as np
from PIL import Image

from ssl_jax.data.base import DatasetError, ImageDataset, cached_arrays, square
from ssl_jax.registry import DATASETS


@DATASETS.register("digits")
def load_digits(
    arg: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    """scikit-learn's digits: 1797 images, 10 classes; train 1438 / test 359 images.

    The split is class-stratified, 20% of each class (rounded) to test, drawn
    with `np.random.RandomState(0)`, whose stream NumPy keeps fixed across
    versions, so every machine gets the same split.
    """
    if arg:
        raise DatasetError(f"'digits' takes no options, got 'digits:{arg}'.")
    key = {"split": split, "image_size": image_size}
    # Another scikit-learn may ship other data: its version is part of the key.
    key["scikit-learn"] = importlib.metadata.version("scikit-learn")
    images, labels = cached_arrays(
        cache_dir, "digits", key, image_size, lambda: _decode(split, image_size)
    )
    names = tuple(str(c) for c in range(10))
    return ImageDataset(images, labels, 10, "digits", names)


def _decode(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets as sklearn_datasets  # Lazy: only this loader needs scikit-learn.

    digits = sklearn_datasets.load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # Values 0..16 -> 0..255.
    targets = digits.target.astype(np.int32)
    rng = np.random.RandomState(0)
    is_test = np.zeros(len(targets), bool)
    for c in range(10):
        members = np.flatnonzero(targets == c)
        is_test[rng.permutation(members)[: round(0.2 * len(members))]] = True
    keep = is_test if split == "test" else ~is_test
    images = np.stack([square(Image.fromarray(p, "L"), image_size) for p in pixels[keep]])
    return images, targets[keep]
