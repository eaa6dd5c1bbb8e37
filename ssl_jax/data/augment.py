"""On-device image augmentations, written in JAX.

Public ops take float images `[..., H, W, C]` in [0, 1] (channels last, as the
models do) and are pure `jax.numpy` / `lax`: they jit and vmap on any backend.
Keys come from `example_keys` (seed, step, example index), so every draw is
reproducible on resume and independent of the batch size and device count.

Two families live here:

* light ops for rotation prediction and supervised training (`random_crop`,
  `random_flip`, `rotate90`, `crop_and_flip[_batch]`), vmapped per image;
* the views of SimCLR (Chen et al. 2020, appendix A) and DINO's multi-crop
  (Caron et al. 2021): resized crop, flip, colour jitter in a random order,
  grayscale, blur, solarisation. Their random amounts are drawn per example
  (`view_params`) and applied to the batch (`apply_view`: the whole batch at
  once on accelerators, a few images at a time on a CPU) on channel planes
  `[B, C, H, W]`: on a CPU, ops that mix a pixel's three channels (max, min,
  luma, hue) and per-channel means vectorise over contiguous planes but not
  over interleaved RGB triples (4-10x per op, measured).

Speed on one CPU core: docs/benchmarks/augment_cpu_2026-11-29.txt
(`experiments/augment_benchmark.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Images enter the models centred and scaled to roughly [-1, 1].
_PIXEL_MEAN = 0.5
_PIXEL_STD = 0.5


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [..., H, W, C] in [0, 255] -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def normalize(images: jax.Array) -> jax.Array:
    """float [0, 1] -> the model's input range."""
    return (images - _PIXEL_MEAN) / _PIXEL_STD


def example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
    """One key per example, a function of the example's index alone.

    `fold_in` by index (rather than `split(rng, batch_size)`) means example i
    gets the same key whatever the batch size or sharding around it.
    """
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch_size))


def random_crop(rng: jax.Array, image: jax.Array, padding: int) -> jax.Array:
    """Pad by `padding` pixels (edge reflection) and take a random crop of the
    original size: a translation by up to `padding` pixels in each direction.

    It only translates, never resizes: a resize would be fine for most tasks,
    but interpolation artefacts differ between rotated and unrotated images and
    would let a rotation classifier cheat.
    """
    if padding == 0:
        return image
    height, width, _ = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
    dy, dx = jax.random.randint(rng, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, image.shape[2]))


def random_flip(rng: jax.Array, image: jax.Array, probability: float = 0.5) -> jax.Array:
    """Mirror left-right with the given probability."""
    flip = jax.random.bernoulli(rng, probability)
    return jnp.where(flip, image[:, ::-1, :], image)


def rotate90(image: jax.Array, quarter_turns: int) -> jax.Array:
    """Rotate counter-clockwise by `quarter_turns` * 90 degrees, exactly
    (a pixel permutation, no interpolation). `quarter_turns` is static."""
    return jnp.rot90(image, k=quarter_turns, axes=(0, 1))


def crop_and_flip(rng: jax.Array, image: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
    """The light augmentation used by rotation prediction and supervised training."""
    crop_key, flip_key = jax.random.split(rng)
    image = random_crop(crop_key, image, crop_padding)
    if flip:
        image = random_flip(flip_key, image)
    return image


def crop_and_flip_batch(
    rng: jax.Array, images: jax.Array, *, crop_padding: int, flip: bool
) -> jax.Array:
    """`crop_and_flip` on every image of `[B, H, W, C]`, each with its own key."""
    keys = example_keys(rng, images.shape[0])
    return jax.vmap(
        lambda key, image: crop_and_flip(key, image, crop_padding=crop_padding, flip=flip)
    )(keys, images)


# ----------------------------------------------------------------------------- layout
# The view ops work on planes `[..., C, H, W]` with per-image parameters of
# shape `[...]` (a scalar for one image). Colour ops assume RGB (C = 3).


def _planes(image: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., C, H, W]."""
    return jnp.moveaxis(image, -1, -3)


def _channels_last(x: jax.Array) -> jax.Array:
    """[..., C, H, W] -> [..., H, W, C]."""
    return jnp.moveaxis(x, -3, -1)


def _per_image(value) -> jax.Array:
    """A per-image parameter `[...]`, broadcastable against `[..., C, H, W]`."""
    return jnp.asarray(value)[..., None, None, None]


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


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
    size = image.shape[:2] if size is None else _pair(size)
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


# ----------------------------------------------------------------------------- colour
# ITU-R BT.601 luma weights, as tf.image.rgb_to_grayscale and PIL use.
_LUMA = (0.299, 0.587, 0.114)


def _rgb(x):
    return x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]


def _hsv_parts(x):
    """Per-pixel max channel (HSV value), min channel and 1 / (max - min)
    (1 where the pixel is grey), each `[..., 1, H, W]`. Elementwise, so they
    fuse into the op that uses them instead of costing a reduction pass."""
    r, g, b = _rgb(x)
    value = jnp.maximum(jnp.maximum(r, g), b)
    low = jnp.minimum(jnp.minimum(r, g), b)
    return value, low, 1.0 / jnp.where(value > low, value - low, 1.0)


def _luma(x):
    r, g, b = _rgb(x)
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _blend(x, anchor, factor):
    """anchor + factor (x - anchor), clipped to [0, 1]. Brightness, contrast
    and HSV saturation are all this map: toward black, toward the channel mean,
    toward the pixel's max channel."""
    return jnp.clip(anchor + factor * (x - anchor), 0.0, 1.0)


def _saturation_factor(factor, value, inverse_chroma):
    """tf.image scales HSV saturation by `factor` and clips it to 1. With hue
    and value fixed, each channel is value - value * saturation * w(hue), so
    that is a blend toward the max channel by min(factor, value / chroma): the
    exact HSV result without converting to HSV and back."""
    return jnp.minimum(factor, value * inverse_chroma)


# The RGB of a pure hue h (in sixths of a turn, [0, 6)) is
# clip(sign * |h - centre| + offset, 0, 1) per channel: red peaks at 0 and 6,
# green at 2, blue at 4, each a trapezoid over the hue circle.
# (numpy constants: a jax array here would start the backend at import time.)
_HUE_SIGN = np.array([1.0, -1.0, -1.0], np.float32)[:, None, None]
_HUE_CENTRE = np.array([3.0, 2.0, 4.0], np.float32)[:, None, None]
_HUE_OFFSET = np.array([-1.0, 2.0, 2.0], np.float32)[:, None, None]


def _rotate_hue(x, delta, parts=None):
    """Rotate the HSV hue by `delta` turns, keeping saturation and value: the
    exact HSV rotation of tf.image.adjust_hue (SimCLR) and torchvision. The
    hue's wrap-around uses selects, not `mod`, which XLA's CPU backend does
    not vectorise (measured 17x slower than a multiply)."""
    r, g, b = _rgb(x)
    value, low, inverse = _hsv_parts(x) if parts is None else parts
    # The hue in sixths of a turn, in [-1, 5): the max channel picks the sector.
    hue = jnp.where(
        value == r,
        (g - b) * inverse,
        jnp.where(value == g, (b - r) * inverse + 2.0, (r - g) * inverse + 4.0),
    )
    turns = jnp.asarray(delta, jnp.float32)
    hue = hue + _per_image(6.0 * (turns - jnp.floor(turns)))  # now in [-1, 11)
    hue = jnp.where(hue < 0.0, hue + 6.0, jnp.where(hue >= 6.0, hue - 6.0, hue))
    pure = jnp.clip(_HUE_SIGN * jnp.abs(hue - _HUE_CENTRE) + _HUE_OFFSET, 0.0, 1.0)
    return low + (value - low) * pure


def _brightness(x, factor):
    return _blend(x, 0.0, _per_image(factor))


def _contrast(x, factor):
    return _blend(x, jnp.mean(x, axis=(-2, -1), keepdims=True), _per_image(factor))


def _saturation(x, factor):
    value, _, inverse = _hsv_parts(x)
    return _blend(x, value, _saturation_factor(_per_image(factor), value, inverse))


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
    """Multiply every pixel by `factor` (SimCLR v2's brightness), clipped.
    `factor` is a scalar or one per image `[...]` of `image [..., H, W, C]`."""
    return _channels_last(_brightness(_planes(image), factor))


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
    """Scale each channel's deviation from its mean by `factor` (as tf.image)."""
    return _channels_last(_contrast(_planes(image), factor))


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
    """Multiply HSV saturation by `factor` and clip it to 1 (as tf.image)."""
    return _channels_last(_saturation(_planes(image), factor))


def adjust_hue(image: jax.Array, delta) -> jax.Array:
    """Rotate the hue by `delta` turns (1.0 = a full turn = identity)."""
    return _channels_last(_rotate_hue(_planes(image), delta))


def grayscale(image: jax.Array) -> jax.Array:
    """RGB -> luma, repeated on all three channels."""
    x = _planes(image)
    return _channels_last(jnp.broadcast_to(_luma(x), x.shape))


def random_grayscale(rng: jax.Array, image: jax.Array, probability: float = 0.2) -> jax.Array:
    return jnp.where(jax.random.bernoulli(rng, probability), grayscale(image), image)


# The jitter's ops, by the index `jitter_params` draws into its `order`.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
# Each op of JITTER_OPS on planes, with its amount from `jitter_params`.
_JITTER_FNS = tuple(
    lambda x, params, fn=fn, name=name: fn(x, params[name])
    for fn, name in zip((_brightness, _contrast, _saturation, _rotate_hue), JITTER_OPS, strict=True)
)


def jitter_params(
    rng: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    probability: float = 1.0,
) -> dict[str, jax.Array]:
    """The random amounts of one colour jitter: factors uniform in
    [max(0, 1 - x), 1 + x] for brightness, contrast and saturation, a hue
    shift uniform in [-hue, hue] turns, a uniformly random `order` of the four
    ops (a permutation of 0..3 indexing `JITTER_OPS`), and whether to `apply`
    the jitter at all (with `probability`). An amount of 0 draws the identity."""
    u = jax.random.uniform(rng, (9,))
    params = {}
    amounts = (brightness, contrast, saturation)
    for i, (name, amount) in enumerate(zip(JITTER_OPS[:3], amounts, strict=True)):
        low = max(0.0, 1.0 - amount)
        params[name] = low + (1.0 + amount - low) * u[i]
    params["hue"] = hue * (2.0 * u[3] - 1.0)
    params["order"] = jnp.argsort(u[4:8])  # the ranks of iid uniforms: a uniform permutation
    params["apply"] = u[8] < probability
    return params


def _jitter_step(x, op, params):
    """Apply jitter op number `op` (one per image) to a batch of images.

    The op differs per image, so a branch would become a select of all four
    results: 16 ops for a jitter of 4. Instead brightness, contrast and
    saturation share one blend whose anchor and factor are picked per image,
    and only hue is computed beside it: 2 ops a step.
    """
    op = _per_image(op)
    parts = _hsv_parts(x)
    value, _, inverse = parts
    mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
    anchor = jnp.where(op == 1, mean, jnp.where(op == 2, value, 0.0))
    saturation = _saturation_factor(_per_image(params["saturation"]), value, inverse)
    factor = jnp.where(
        op == 0,
        _per_image(params["brightness"]),
        jnp.where(op == 1, _per_image(params["contrast"]), saturation),
    )
    return jnp.where(op == 3, _rotate_hue(x, params["hue"], parts), _blend(x, anchor, factor))


def _jitter_planes(x, params):
    """The jitter of `params` on planes `[..., C, H, W]`. For ONE image (as the
    CPU path makes large views) each step is a `lax.switch` that runs only its
    own op, 1 op a step (measured 20% faster end to end at 224 px); for a
    batch, `_jitter_step`."""
    order = params["order"]
    jittered = x
    for step in range(len(JITTER_OPS)):
        if order.size == len(JITTER_OPS):
            jittered = jax.lax.switch(order.reshape(-1)[step], _JITTER_FNS, jittered, params)
        else:
            jittered = _jitter_step(jittered, order[..., step], params)
    return jnp.where(_per_image(params["apply"]), jittered, x)


def apply_color_jitter(image: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
    """The jitter drawn by `jitter_params` on `image [..., H, W, C]` (params
    with the batch shape `[...]`, e.g. vmapped over example keys)."""
    return _channels_last(_jitter_planes(_planes(image), params))


def color_jitter(
    rng: jax.Array,
    image: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> jax.Array:
    """Brightness, contrast, saturation and hue changes in a random order,
    amounts as in `jitter_params`."""
    params = jitter_params(
        rng, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
    )
    return apply_color_jitter(image, params)


def simclr_jitter(strength: float) -> dict[str, float]:
    """SimCLR's jitter amounts for strength s: brightness, contrast and
    saturation 0.8 s, hue 0.2 s (Chen et al. 2020, appendix A)."""
    return {
        "brightness": 0.8 * strength,
        "contrast": 0.8 * strength,
        "saturation": 0.8 * strength,
        "hue": 0.2 * strength,
    }


def random_color_jitter(
    rng: jax.Array, image: jax.Array, *, strength: float, probability: float = 0.8
) -> jax.Array:
    """SimCLR's colour jitter of strength s, applied with `probability`."""
    if strength == 0 or probability == 0:
        return image
    params = jitter_params(rng, **simclr_jitter(strength), probability=probability)
    return apply_color_jitter(image, params)


# ----------------------------------------------------------------------------- blur, solarise


def blur_kernel_size(image_size: int, fraction: float = 0.1) -> int:
    """An odd kernel about `fraction` of the image size (SimCLR: 10%), at least 3."""
    return max(3, 2 * (int(image_size * fraction) // 2) + 1)


def _gaussian_kernel(sigma, kernel_size: int) -> jax.Array:
    """Normalised Gaussian taps `[..., kernel_size]`, one kernel per sigma."""
    radius = kernel_size // 2
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    taps = jnp.exp(-0.5 * (t / jnp.asarray(sigma, jnp.float32)[..., None]) ** 2)
    return taps / jnp.sum(taps, axis=-1, keepdims=True)


def _blur(x, kernel, axes):
    """Separable blur along the two image `axes` by per-image taps `[..., K]`
    (`...` the batch dims before the three image dims), edges reflected: a
    constant image stays constant. Blur does not mix channels, so it runs on
    planes or channels-last alike. Weighted sums of shifted slices: with a
    different kernel per image, a grouped convolution is ~30x slower on XLA's
    CPU backend. Both axes are padded first; padding the columns after the
    row pass lets XLA fuse that pass into every column tap (2.5x slower)."""
    radius = kernel.shape[-1] // 2
    taps = [_per_image(kernel[..., i]) for i in range(kernel.shape[-1])]
    axes = [axis % x.ndim for axis in axes]
    sizes = [x.shape[axis] for axis in axes]
    pad = [(radius, radius) if axis in axes else (0, 0) for axis in range(x.ndim)]
    x = jnp.pad(x, pad, mode="reflect")
    for axis, size in zip(axes, sizes, strict=True):
        x = sum(t * jax.lax.slice_in_dim(x, i, i + size, axis=axis) for i, t in enumerate(taps))
    return x


def gaussian_blur(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur with an odd `kernel_size` (static) and `sigma`
    (may be traced; one per image `[...]` of `image [..., H, W, C]`)."""
    return _blur(image, _gaussian_kernel(sigma, kernel_size), axes=(-3, -2))


def _blur_draw(rng, probability, sigma):
    """Whether to blur and with which sigma (uniform in `sigma`)."""
    u = jax.random.uniform(rng, (2,))
    return u[0] < probability, sigma[0] + (sigma[1] - sigma[0]) * u[1]


def _blur_or_copy_kernel(apply, sigma, kernel_size: int):
    """The Gaussian where `apply`, else a unit impulse: blurring by that is an
    exact copy, so one pass serves blurred and unblurred images alike."""
    impulse = jnp.zeros(kernel_size).at[kernel_size // 2].set(1.0)
    return jnp.where(jnp.asarray(apply)[..., None], _gaussian_kernel(sigma, kernel_size), impulse)


def random_blur(
    rng: jax.Array,
    image: jax.Array,
    *,
    probability: float,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_fraction: float = 0.1,
) -> jax.Array:
    """Gaussian blur with sigma uniform in `sigma`, applied with `probability`;
    the kernel is `kernel_fraction` of the image height."""
    if probability == 0:
        return image
    apply, s = _blur_draw(rng, probability, sigma)
    kernel = _blur_or_copy_kernel(apply, s, blur_kernel_size(image.shape[-3], kernel_fraction))
    return _blur(image, kernel, axes=(-3, -2))


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Invert the pixels at or above `threshold`."""
    return jnp.where(image < threshold, image, 1.0 - image)


def random_solarize(
    rng: jax.Array, image: jax.Array, *, probability: float, threshold: float = 0.5
) -> jax.Array:
    if probability == 0:
        return image
    return jnp.where(jax.random.bernoulli(rng, probability), solarize(image, threshold), image)


# ----------------------------------------------------------------------------- views


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
    """The settings of one kind of augmented view (SimCLR, BYOL, DINO).
    `size`: output side or (h, w), None = the input size. The four jitter
    amounts are as in `jitter_params` (SimCLR: `simclr_jitter(s)`)."""

    size: int | tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    color_probability: float = 0.8
    grayscale_probability: float = 0.0
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_probability: float = 0.0

    @property
    def jitters(self) -> bool:
        amounts = (self.brightness, self.contrast, self.saturation, self.hue)
        return self.color_probability > 0 and any(amounts)


def view_params(rng: jax.Array, height: int, width: int, recipe: ViewRecipe) -> dict:
    """Every random draw of one view of one `height` x `width` image."""
    keys = jax.random.split(rng, 6)
    blur, sigma = _blur_draw(keys[4], recipe.blur_probability, recipe.blur_sigma)
    box = crop_box(
        keys[0], height, width, scale=tuple(recipe.crop_scale), ratio=tuple(recipe.crop_ratio)
    )
    jitter = jitter_params(
        keys[2],
        brightness=recipe.brightness,
        contrast=recipe.contrast,
        saturation=recipe.saturation,
        hue=recipe.hue,
        probability=recipe.color_probability,
    )
    return {
        "box": box,
        "flip": jax.random.bernoulli(keys[1]) & recipe.flip,
        "jitter": jitter,
        "grayscale": jax.random.bernoulli(keys[3], float(recipe.grayscale_probability)),
        "blur": blur,
        "blur_sigma": sigma,
        "solarize": jax.random.bernoulli(keys[5], float(recipe.solarize_probability)),
    }


def _if_any(needed: jax.Array, stage, x: jax.Array) -> jax.Array:
    """`stage(x)` if any image of the batch `needed` it, else `x` (a stage
    leaves the images that do not need it unchanged).

    Besides skipping, the conditional hands its operand and result over as
    whole buffers. That keeps XLA's CPU backend, which drops optimisation
    barriers, from fusing the jitter into each of the blur's 2K shifted reads
    and from recomputing the crop's gathers in every jitter pass: without it
    the views are over 10x slower at 224 px (measured). (On a GPU the
    predicate is one small read back.)
    """
    return jax.lax.cond(jnp.any(needed), stage, lambda x: x, x)


def _apply_view_whole(images, params, recipe: ViewRecipe, size) -> jax.Array:
    """`apply_view` on all of `images` at once."""
    crop = jax.vmap(lambda image, box, flip: _resized_crop_one(image, box, size, flip))
    x = crop(images, params["box"], params["flip"])
    if recipe.jitters or recipe.grayscale_probability or recipe.blur_probability:
        x = _channels_last(_planar_stages(_planes(x), params, recipe, size))
    if recipe.solarize_probability:
        x = jnp.where(_per_image(params["solarize"]) & (x >= 0.5), 1.0 - x, x)
    return jnp.clip(x, 0.0, 1.0)


def _planar_stages(x, params, recipe: ViewRecipe, size):
    """Colour jitter, grayscale and blur of cropped planes `[B, C, h, w]`."""

    def colour(x):
        if recipe.jitters:
            x = _jitter_planes(x, params["jitter"])
        if recipe.grayscale_probability:
            x = jnp.where(_per_image(params["grayscale"]), _luma(x), x)
        return x

    if recipe.jitters or recipe.grayscale_probability:
        x = _if_any(params["jitter"]["apply"] | params["grayscale"], colour, x)
    if recipe.blur_probability:
        kernel_size = blur_kernel_size(size[0])
        kernel = _blur_or_copy_kernel(params["blur"], params["blur_sigma"], kernel_size)
        x = _if_any(params["blur"], lambda x: _blur(x, kernel, axes=(-2, -1)), x)
    return x


# On a CPU, views are made a few images at a time so that each stage's planes
# stay in the core's cache: one 224 px image at a time is 3x faster than a
# batch of 32 at once (measured). Accelerators get the whole batch.
_CPU_CHUNK_BYTES = 256 * 1024


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _images_per_step(batch: int, image_bytes: int, devices: int) -> int:
    """How many images one step of the CPU loop makes: per device, as many as
    fit in `_CPU_CHUNK_BYTES`. A multiple of `devices` when the batch allows,
    so a batch sharded over them is cut along its shards: each device loops
    over its own images, none are gathered."""
    if batch % devices:
        devices = 1
    return devices * _largest_divisor(batch // devices, _CPU_CHUNK_BYTES // image_bytes)


def apply_view(images: jax.Array, params: dict, recipe: ViewRecipe) -> jax.Array:
    """The view that `params` (from `view_params`, one row per image)
    describes, of every image of `[B, H, W, C]` (uint8, or float in [0, 1]):
    float32 `[B, h, w, C]` in [0, 1]. Crop and flip, colour jitter, grayscale,
    blur, solarisation, in SimCLR's order; ops of probability 0 cost nothing."""
    batch, height, width, channels = images.shape
    size = (height, width) if recipe.size is None else _pair(recipe.size)
    per_step = _images_per_step(batch, 4 * channels * size[0] * size[1], jax.device_count())

    def whole(images, params):
        return _apply_view_whole(images, params, recipe, size)

    def in_steps(images, params):
        if per_step == batch:
            return whole(images, params)
        steps = batch // per_step
        # Step i makes images p * steps + i, p < per_step: one from each block
        # of `steps` consecutive images, so every device's shard takes part.
        # Slicing inside the loop (not mapping over the split arrays) also
        # lets XLA convert a caller's `to_float` step by step instead of
        # copying the whole float batch first (2x at 224 px).
        split = lambda a: a.reshape(per_step, steps, *a.shape[1:])
        images, params = split(images), jax.tree.map(split, params)

        def step(i):
            take = lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)
            return whole(take(images), jax.tree.map(take, params))

        views = jax.lax.map(step, jnp.arange(steps))  # [steps, per_step, h, w, C]
        return jnp.moveaxis(views, 0, 1).reshape(batch, *views.shape[2:])

    return jax.lax.platform_dependent(images, params, cpu=in_steps, default=whole)


def view_batch(rng: jax.Array, images: jax.Array, recipe: ViewRecipe) -> jax.Array:
    """One view of every image of `[B, H, W, C]`, each drawn from its own key
    (`example_keys`), so row i does not depend on the batch around it."""
    height, width = images.shape[1:3]
    keys = example_keys(rng, images.shape[0])
    params = jax.vmap(lambda key: view_params(key, height, width, recipe))(keys)
    return apply_view(images, params, recipe)


def simclr_recipe(
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    color_strength: float = 1.0,
    color_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    blur_probability: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    solarize_probability: float = 0.0,
) -> ViewRecipe:
    """`simclr_view`'s keyword arguments (set from configs/simclr.py) as a
    `ViewRecipe`: the jitter amounts follow from `color_strength`."""
    return ViewRecipe(
        crop_scale=tuple(crop_scale),
        crop_ratio=tuple(crop_ratio),
        flip=flip,
        **simclr_jitter(color_strength),
        color_probability=color_probability,
        grayscale_probability=grayscale_probability,
        blur_probability=blur_probability,
        blur_sigma=tuple(blur_sigma),
        solarize_probability=solarize_probability,
    )


def simclr_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    color_strength: float = 1.0,
    color_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    blur_probability: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    solarize_probability: float = 0.0,
) -> jax.Array:
    """One SimCLR view of one image `[H, W, C]`: crop, flip, colour jitter of
    strength `color_strength`, grayscale, blur, solarisation, in the paper's
    order. Output in [0, 1]."""
    recipe = simclr_recipe(
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        flip=flip,
        color_strength=color_strength,
        color_probability=color_probability,
        grayscale_probability=grayscale_probability,
        blur_probability=blur_probability,
        blur_sigma=blur_sigma,
        solarize_probability=solarize_probability,
    )
    params = view_params(rng, image.shape[0], image.shape[1], recipe)
    return apply_view(image[None], jax.tree.map(lambda p: p[None], params), recipe)[0]


def simclr_view_batch(rng: jax.Array, images: jax.Array, **params) -> jax.Array:
    """`simclr_view` on every image of `[B, H, W, C]`: row i equals
    `simclr_view(example_keys(rng, B)[i], images[i], **params)`, computed for
    the whole batch at once."""
    return view_batch(rng, images, simclr_recipe(**params))


def _per_view(value, count: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, list | tuple) else (value,) * count
    if len(values) != count:
        raise ValueError(f"{name} needs {count} values (one per view) or one, got {value}.")
    return values


def multi_crop_views(
    rng: jax.Array,
    images: jax.Array,
    *,
    global_size,
    local_size,
    num_global: int = 2,
    num_local: int = 6,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    global_blur=(1.0, 0.1),
    local_blur: float = 0.5,
    global_solarize=(0.0, 0.2),
    local_solarize: float = 0.0,
    **photometric,
) -> tuple[jax.Array, jax.Array]:
    """DINO's multi-crop (Caron et al. 2021): `num_global` large and
    `num_local` small views of every image of `[B, H, W, C]`.

    Returns the global views `[num_global * B, *global_size, C]` and the
    local views `[num_local * B, *local_size, C]`, view-major (view 0 of every
    image, then view 1, ...). `global_blur` and `global_solarize` are one
    probability per global view or one for all (DINO: blur always on the
    first, 0.1 on the second; solarise the second with 0.2). `photometric`
    sets the other `ViewRecipe` fields, shared by every view; DINO's are
    `brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
    grayscale_probability=0.2` (and the defaults: flip, jitter p = 0.8).
    View v draws from `fold_in(rng, v)`, each image from its `example_keys`.

    The ops are this module's (tf.image's, as SimCLR): DINO's torchvision
    jitter differs in detail (contrast about the grey mean, saturation as a
    blend with grey), and its blur is not cut to 10% of the view's side.
    """
    blur = _per_view(global_blur, num_global, "global_blur")
    solarize = _per_view(global_solarize, num_global, "global_solarize")
    global_recipes = [
        ViewRecipe(
            size=global_size,
            crop_scale=tuple(global_scale),
            blur_probability=b,
            solarize_probability=s,
            **photometric,
        )
        for b, s in zip(blur, solarize, strict=True)
    ]
    local_recipe = ViewRecipe(
        size=local_size,
        crop_scale=tuple(local_scale),
        blur_probability=local_blur,
        solarize_probability=local_solarize,
        **photometric,
    )
    recipes = global_recipes + [local_recipe] * num_local
    views = [view_batch(jax.random.fold_in(rng, v), images, r) for v, r in enumerate(recipes)]
    return jnp.concatenate(views[:num_global]), jnp.concatenate(views[num_global:])
