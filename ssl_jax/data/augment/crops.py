"""Random resized crops on the device: sampling a box (`crop_box`) and
resampling it bilinearly to the output size (`resized_crop`), as SimCLR's,
BYOL's and DINO's views start. (The host-side crops of streamed data are
`ssl_jax.data.decode`'s.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.data.augment.ops import pair, to_float

# ----------------------------------------------------------------------------- resized crop


def crop_box(
    rng: jax.Array,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> jax.Array:
    """A random box `[top, left, box_height, box_width]` (pixels, floats)
    covering `scale` of the image area with aspect ratio (width / height)
    log-uniform in `ratio`.

    All `attempts` boxes are drawn at once and the first one that fits inside
    the image is used (a fixed amount of work, so it jits); if none fits, the
    whole image is used, like TF's `sample_distorted_bounding_box` that the
    SimCLR implementation relies on.
    """
    area_key, ratio_key, offset_key = jax.random.split(rng, 3)
    fraction = jax.random.uniform(area_key, (attempts,), minval=scale[0], maxval=scale[1])
    log_ratio = jax.random.uniform(
        ratio_key, (attempts,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])
    )
    area = height * width * fraction
    box_w = jnp.sqrt(area * jnp.exp(log_ratio))
    box_h = jnp.sqrt(area / jnp.exp(log_ratio))
    fits = (box_w <= width) & (box_h <= height)
    first = jnp.argmax(fits)  # index of the first fitting box (0 if none fits)
    box_h = jnp.where(fits[first], box_h[first], height)
    box_w = jnp.where(fits[first], box_w[first], width)
    top, left = jax.random.uniform(offset_key, (2,)) * jnp.stack([height - box_h, width - box_w])
    return jnp.stack([top, left, box_h, box_w])


def _sample_points(start, length, in_size: int, out_size: int):
    """Where the output pixels sample one axis when `[start, start + length]`
    is resampled bilinearly to `out_size` pixels: the two neighbouring input
    indices and the weight of the second.

    Pixel centres map onto pixel centres (as `jax.image.scale_and_translate`
    and `align_corners=False`); positions are clamped to the image, so edge
    pixels repeat outward.
    """
    position = start + (jnp.arange(out_size) + 0.5) * (length / out_size) - 0.5
    position = jnp.clip(position, 0.0, in_size - 1)
    low = jnp.floor(position).astype(jnp.int32)
    return low, jnp.minimum(low + 1, in_size - 1), position - low


def _resized_crop_one(image: jax.Array, box: jax.Array, size, flip) -> jax.Array:
    """ONE image `[H, W, C]` (uint8 or float) -> its `box` resampled
    bilinearly to `size` (h, w), mirrored if `flip`: float32 `[h, w, C]`.

    Two gathers of two neighbours each (rows, then columns): 4 reads per output
    value, where the interpolation-matrix form (`A_y @ image @ A_x^T`) does
    H + W multiply-adds (measured 4x slower at 224 px). It stays channels-last:
    the column gather then moves whole RGB triples.
    """
    height, width, _ = image.shape
    y0, y1, wy = _sample_points(box[0], box[2], height, size[0])
    x0, x1, wx = _sample_points(box[1], box[3], width, size[1])
    # Mirroring the sampled columns mirrors the output exactly.
    x0, x1, wx = (jnp.where(flip, v[::-1], v) for v in (x0, x1, wx))
    image = to_float(image) if image.dtype == jnp.uint8 else image.astype(jnp.float32)
    rows = image[y0] + wy[:, None, None] * (image[y1] - image[y0])
    return rows[:, x0] + wx[:, None] * (rows[:, x1] - rows[:, x0])


def resized_crop(image: jax.Array, box: jax.Array, size=None, *, flip=False) -> jax.Array:
    """Resample `box` (`[top, left, height, width]`, pixels) of one image
    `[H, W, C]` bilinearly to `size` (int or (h, w); default: the input
    size), mirrored left-right if `flip`. No antialiasing: a box much larger
    than the output aliases (these recipes mostly zoom in)."""
    size = image.shape[:2] if size is None else pair(size)
    return _resized_crop_one(image, box, size, flip)


def random_resized_crop(
    rng: jax.Array,
    image: jax.Array,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
    size=None,
) -> jax.Array:
    """A random box (`crop_box`) of one image `[H, W, C]`, resized
    (bilinear) to `size` (int or (h, w); default: the input size)."""
    height, width, _ = image.shape
    box = crop_box(rng, height, width, scale=scale, ratio=ratio, attempts=attempts)
    return resized_crop(image, box, size)
