"""Host-side decoding and cropping of one encoded image (numpy + PIL).

The streaming input path keeps images encoded on disk and turns each one into
`uint8` pixels on a host worker, once per use:

- `decode_image(encoded, key)`: any PIL-readable image -> RGB uint8 [H, W, 3].
  16-bit images are scaled to 8 bits (x / 257, rounded); PIL's own
  `convert("RGB")` would saturate everything above 255 to white.
- `crops(image, specs, rng)`: the random-resized crops a pretext task asks
  for (`CropSpec`: `count` crops of `size` px), taken from the ORIGINAL image
  as SimCLR, BYOL, DINO and MAE do, each with a random horizontal flip.
  The image is decoded once for all crops.
- `center_square(image, size)`: the evaluation transform, the same function
  as the in-memory path's (`base.square`), so both evaluate alike.

The in-memory loaders decode here too, once per image: `decode_all` turns
many files or encoded images into squares on a thread pool, and an image that
cannot be read or decoded is one `DatasetError` line naming it
(`image_error`), whichever path met it.

Every random draw comes from the `numpy.random.Generator` passed in; the
streaming loader builds it from (seed, step, row), so a crop is a pure function
of those and exact resume needs no iterator state.

JPEG draft mode: libjpeg can decode at 1/2, 1/4 or 1/8 scale for a fraction of
the cost. `crops` uses it when every crop of the image still has at least its
output resolution at the reduced scale (the crops are sampled first, in the
original image's coordinates, from the header's size), so the output differs
from a full decode only by libjpeg's downscaling filter (measured in
experiments/data_benchmark.py and bounded in tests/data/test_decode.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ssl_jax.data.base import DatasetError, square, to_rgb

# What PIL raises for a broken file: unidentified format, truncated data, bad
# headers, an image too large to be real (decompression bomb).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# torchvision's RandomResizedCrop and TF's sample_distorted_bounding_box both
# give up after 10 rejected draws.
_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """`count` random-resized crops of `size` x `size` px from each image.

    `scale` bounds the crop's area as a fraction of the original image's,
    `ratio` its width / height (drawn log-uniformly).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    count: int = 1

    def __post_init__(self):
        (low, high), (ratio_low, ratio_high) = self.scale, self.ratio
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"CropSpec.size must be a positive int, got {self.size!r}.")
        if not 0 < low <= high <= 1:
            raise ValueError(f"CropSpec.scale must satisfy 0 < low <= high <= 1, got {self.scale}.")
        if not 0 < ratio_low <= ratio_high:
            raise ValueError(f"CropSpec.ratio must satisfy 0 < low <= high, got {self.ratio}.")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"CropSpec.count must be a positive int, got {self.count!r}.")


# The crops of the papers' recipes (at ImageNet resolution).
RECIPES: dict[str, tuple[CropSpec, ...]] = {
    "simclr": (CropSpec(224, (0.08, 1.0), count=2),),
    "byol": (CropSpec(224, (0.08, 1.0), count=2),),
    "dino": (CropSpec(224, (0.4, 1.0), count=2), CropSpec(96, (0.05, 0.4), count=6)),
    "mae": (CropSpec(224, (0.2, 1.0)),),
}


# ----------------------------------------------------------------------------- decoding


def error_reason(error: BaseException) -> str:
    """What a failed read or decode says, on one line."""
    reason = " ".join(str(getattr(error, "strerror", None) or error).split())
    reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", reason)  # PIL names the BytesIO object.
    return reason or type(error).__name__


def image_error(key: str, error: BaseException) -> DatasetError:
    """The one-line error of an image that cannot be read or decoded, naming it by `key`."""
    return DatasetError(f"Cannot read image {key}: {error_reason(error)}. Remove or replace it.")


def read_image_file(path: str) -> bytes:
    """The encoded bytes of the image file at `path`; DatasetError naming it if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise image_error(path, e) from None


def decode_image(encoded: bytes, key: str = "image") -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3]; DatasetError naming `key` if unreadable."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return np.asarray(to_rgb(image), dtype=np.uint8)
    except DECODE_ERRORS as e:
        raise image_error(key, e) from None


def decode_square(encoded: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> its central square at `size` px (`base.square`), RGB uint8."""
    with Image.open(io.BytesIO(encoded)) as image:
        return square(image, size)


def decode_all(sources: Sequence[str | bytes], size: int, names: Sequence[str]) -> np.ndarray:
    """Many image files (paths) or encoded images, each as its central square
    at `size` px: uint8 [N, size, size, 3]. Decoded on a thread pool (PIL
    releases the GIL while decoding); the first unreadable one stops it with a
    DatasetError naming it (`names[i]`)."""

    def decode(i: int) -> np.ndarray:
        source = sources[i]
        encoded = read_image_file(source) if isinstance(source, str) else source
        try:
            return decode_square(encoded, size)
        except DECODE_ERRORS as e:
            raise image_error(names[i], e) from e

    out = np.empty((len(sources), size, size, 3), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as pool:
        for i, image in enumerate(pool.map(decode, range(len(sources)))):
            out[i] = image
    return out


def shorter_side(source) -> int:
    """The shorter side, in pixels, of an image file (path or file object), read
    from its header only."""
    with Image.open(source) as image:
        return min(image.size)


# ----------------------------------------------------------------------------- cropping


def sample_crop(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """A random crop box (left, top, width, height) of a `width` x `height` image.

    The area is a uniform fraction `scale` of the image's, the aspect ratio
    log-uniform in `ratio`; a draw that does not fit is redrawn, and after 10
    misses the whole image is taken, cut centrally to the nearest allowed ratio
    (torchvision's RandomResizedCrop; TF's sample_distorted_bounding_box).
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


def _draft_scale(boxes: list[tuple[int, int, int, int]], sizes: list[int]) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) keeping every crop at >= its output size."""
    room = min(min(w, h) / size for (_, _, w, h), size in zip(boxes, sizes, strict=True))
    return next((s for s in (8, 4, 2) if s <= room), 1)


def _decode_for_crops(image: Image.Image, scale: int) -> tuple[Image.Image, float]:
    """Decodes `image` at 1/`scale` (JPEG draft) if possible; returns (RGB image, actual scale)."""
    width, height = image.size
    actual = 1.0
    if scale > 1 and image.format == "JPEG":
        # Asking for (W // s, H // s) makes PIL pick exactly s (it rounds down to 8, 4, 2, 1).
        drafted = image.draft("RGB", (width // scale, height // scale))
        if drafted is not None:
            actual = width / drafted[1][2]
    return to_rgb(image), actual


def crops(
    image: bytes | np.ndarray,
    specs: tuple[CropSpec, ...] | list[CropSpec],
    rng: np.random.Generator,
    *,
    key: str = "image",
    flip_probability: float = 0.5,
    draft: bool = True,
) -> list[np.ndarray]:
    """The crops of `specs` from one image: per spec, uint8 [count, size, size, 3].

    `image` is the encoded file (decoded once here, in JPEG draft mode when
    every crop allows it, see the module docstring) or a decoded uint8 array.
    Draws, in order, per spec and crop: the box (`sample_crop`), then the flip;
    they depend only on `rng` and the image's size, never on `draft`.
    """
    try:
        if isinstance(image, np.ndarray):
            source = Image.fromarray(np.asarray(image, np.uint8))
        else:  # Reads the header only: the size is known, the pixels are decoded below.
            source = Image.open(io.BytesIO(image))
        with source:
            return _crops_of(source, specs, rng, flip_probability, draft)
    except DECODE_ERRORS as e:
        raise image_error(key, e) from None


def _crops_of(
    source: Image.Image,
    specs: tuple[CropSpec, ...] | list[CropSpec],
    rng: np.random.Generator,
    flip_probability: float,
    draft: bool,
) -> list[np.ndarray]:
    """Samples every crop on the original size, then decodes once and cuts them."""
    width, height = source.size
    plan = [
        [
            (
                sample_crop(width, height, spec.scale, spec.ratio, rng),
                rng.random() < flip_probability,
            )
            for _ in range(spec.count)
        ]
        for spec in specs
    ]
    boxes = [box for per_spec in plan for box, _ in per_spec]
    sizes = [spec.size for spec in specs for _ in range(spec.count)]
    pixels, scale = _decode_for_crops(source, _draft_scale(boxes, sizes) if draft and boxes else 1)
    return [
        np.stack([_resize_crop(pixels, box, scale, spec.size, flip) for box, flip in per_spec])
        for spec, per_spec in zip(specs, plan, strict=True)
    ]


def _resize_crop(
    image: Image.Image, box: tuple[int, int, int, int], scale: float, size: int, flip: bool
) -> np.ndarray:
    """Crop `box` (original coordinates; `image` is reduced by `scale`) resized in one step."""
    left, top, w, h = box
    reduced = (left / scale, top / scale, (left + w) / scale, (top + h) / scale)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=reduced)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def random_resized_crop(
    image: bytes | np.ndarray,
    spec: CropSpec,
    rng: np.random.Generator,
    flip_probability: float = 0.5,
    *,
    key: str = "image",
    draft: bool = True,
) -> np.ndarray:
    """One random-resized crop of `spec.size` px (uint8 [size, size, 3]), flipped with a
    probability; `spec.count` is ignored. Same draws as `crops` with one crop."""
    single = dataclasses.replace(spec, count=1)
    return crops(image, [single], rng, key=key, flip_probability=flip_probability, draft=draft)[0][
        0
    ]


# ----------------------------------------------------------------------------- evaluation


def center_square(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """The evaluation transform: the central square resized to `size` (uint8 [size, size, 3]).

    It is the in-memory path's own function (`base.square`: one bilinear
    resampling step, the same scale on both axes), so in-memory and streaming
    evaluation see identical pixels.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8))
    return square(image, size)
