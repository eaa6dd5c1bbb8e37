"""Generated shapes and textures (`synthetic[:num_classes=10,...]`): any
size and resolution, no files, for tests and benchmarks."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from ssl_jax.data.base import SPLITS, DatasetError, ImageDataset
from ssl_jax.registry import DATASETS

DEFAULTS = {"num_classes": 10, "train_size": 512, "test_size": 256, "seed": 0}

# Shape masks over coordinates (u, v) in units of the object's radius, v pointing down.
_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "ring": lambda u, v: np.abs(np.sqrt(u * u + v * v) - 0.75) <= 0.25,
    "cross": lambda u, v: (
        (np.minimum(np.abs(u), np.abs(v)) <= 0.3) & (np.maximum(np.abs(u), np.abs(v)) <= 1.0)
    ),
    "triangle": lambda u, v: (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.55),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
}
# Fill patterns inside the shape; they scale with the object (coordinates are in radii).
_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.ones_like(u, bool),
    "hstripes": lambda u, v: np.sin(v * 2.5 * np.pi) > 0,
    "vstripes": lambda u, v: np.sin(u * 2.5 * np.pi) > 0,
    "checker": lambda u, v: np.sin(u * 2.0 * np.pi) * np.sin(v * 2.0 * np.pi) > 0,
}
MAX_CLASSES = len(_SHAPES) * len(_TEXTURES)


def make_synthetic(
    num_examples: int, num_classes: int, image_size: int, seed: int, stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draws (uint8 images [N, S, S, 3], int32 labels [N]) of class-specific patterns.

    Class c is shape `c % 6` filled with texture `c // 6` (solid, h/v stripes, checker),
    drawn at a random position and scale, in random foreground/background
    colours, with pixel noise. Colour, position and scale carry no label, so a
    model must read shape and texture: learnable, but not from one pixel.
    Classes are balanced exactly. `stream` separates train and test draws.
    """
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
    radius = rng.uniform(0.2, 0.4, num_examples).astype(np.float32)
    cx, cy = (rng.uniform(radius, 1.0 - radius).astype(np.float32) for _ in range(2))
    background = rng.uniform(0.0, 1.0, (num_examples, 3)).astype(np.float32)
    # Shifting each channel by 0.35..0.65 (mod 1) keeps the object at least 0.35 off the background.
    foreground = (background + rng.uniform(0.35, 0.65, (num_examples, 3))).astype(np.float32) % 1
    noise_seed = int(rng.integers(2**32))

    grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    shapes, textures = list(_SHAPES.values()), list(_TEXTURES.values())
    for c in range(num_classes):  # Vectorised over all images of one class at a time.
        idx = np.flatnonzero(labels == c)
        r = radius[idx, None, None]
        u = (grid[None, None, :] - cx[idx, None, None]) / r
        v = (grid[None, :, None] - cy[idx, None, None]) / r
        inside = shapes[c % len(shapes)](u, v)
        on = inside & textures[c // len(shapes)](u, v)
        fg, bg = foreground[idx, None, None], background[idx, None, None]
        # Texture gaps take the fg/bg midpoint, so a textured shape keeps its outline. The
        # masks enter as float weights: much faster than np.where with broadcast colours.
        mid = 0.5 * (fg + bg)
        pixels = bg + inside[..., None].astype(np.float32) * (mid - bg)
        pixels += on[..., None].astype(np.float32) * (fg - mid)
        noise = np.random.default_rng([noise_seed, c]).standard_normal(pixels.shape, np.float32)
        noise *= 0.06
        pixels += noise
        pixels *= 255.0
        images[idx] = np.clip(pixels, 0.0, 255.0, out=pixels)  # Cast to uint8 on assignment.
    return images, labels


@DATASETS.register("synthetic")
def load_synthetic(
    arg: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    options = dict(DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in options or not re.fullmatch(r"\d+", value.strip()):
            raise DatasetError(
                f"Bad synthetic option {item!r}: use synthetic:KEY=INT,... with KEY in "
                f"{', '.join(options)}."
            )
        options[key] = int(value)
    if not 2 <= options["num_classes"] <= MAX_CLASSES:
        raise DatasetError(f"synthetic num_classes must be in [2, {MAX_CLASSES}].")
    size = options[f"{split}_size"]
    images, labels = make_synthetic(
        size, options["num_classes"], image_size, options["seed"], SPLITS.index(split)
    )
    names = tuple(f"{s}-{t}" for t in _TEXTURES for s in _SHAPES)[: options["num_classes"]]
    name = "synthetic:" + ",".join(f"{k}={v}" for k, v in options.items())
    return ImageDataset(images, labels, options["num_classes"], name, names)
