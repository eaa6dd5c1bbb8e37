"""On-device image augmentations, written in JAX.

Every op here works on ONE image (float32 `[H, W, C]` in [0, 1]) with its own
PRNG key and is meant to be `jax.vmap`-ed over a batch inside the compiled
training step. Keeping augmentation on the device means the host only ships
`uint8` batches, and keying each example from (seed, step, example index)
makes every draw reproducible on resume and independent of the device count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


# ----------------------------------------------------------------------------- SimCLR views
# The augmentation recipe of SimCLR (Chen et al., 2020, appendix A): random
# resized crop, flip, colour jitter, grayscale, blur (and, optionally,
# solarisation as in BYOL). Every parameter is an argument, set from the config.
# Ops that change colour assume RGB (C = 3) and clip their output to [0, 1].

# ITU-R BT.601 luma weights, as tf.image.rgb_to_grayscale and PIL use.
_LUMA = (0.299, 0.587, 0.114)


def random_resized_crop(
    rng: jax.Array,
    image: jax.Array,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> jax.Array:
    """Crop a random box covering `scale` of the image area with aspect ratio
    (width / height) log-uniform in `ratio`, and resize it (bilinear) back to
    the input size.

    All `attempts` boxes are drawn at once and the first one that fits inside
    the image is used (a fixed amount of work, so it jits); if none fits, the
    whole image is used, like TF's `sample_distorted_bounding_box` that the
    SimCLR implementation relies on.
    """
    height, width, _ = image.shape
    area_key, ratio_key, offset_key = jax.random.split(rng, 3)
    area = (
        height * width * jax.random.uniform(area_key, (attempts,), minval=scale[0], maxval=scale[1])
    )
    log_ratio = jax.random.uniform(
        ratio_key, (attempts,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])
    )
    box_w = jnp.sqrt(area * jnp.exp(log_ratio))
    box_h = jnp.sqrt(area / jnp.exp(log_ratio))
    fits = (box_w <= width) & (box_h <= height)
    first = jnp.argmax(fits)  # index of the first fitting box (0 if none fits)
    ok = fits[first]
    box_h = jnp.where(ok, box_h[first], height)
    box_w = jnp.where(ok, box_w[first], width)
    offset = jax.random.uniform(offset_key, (2,)) * jnp.stack([height - box_h, width - box_w])
    # scale_and_translate maps input coordinate u to output u * s + t: the box
    # [offset, offset + size] lands on [0, output size].
    s = jnp.stack([height / box_h, width / box_w])
    return jax.image.scale_and_translate(
        image, image.shape, (0, 1), s, -offset * s, method="linear", antialias=False
    )


def grayscale(image: jax.Array) -> jax.Array:
    """RGB -> luma, repeated on all three channels."""
    luma = image @ jnp.asarray(_LUMA, image.dtype)
    return jnp.repeat(luma[..., None], image.shape[-1], axis=-1)


def random_grayscale(rng: jax.Array, image: jax.Array, probability: float = 0.2) -> jax.Array:
    return jnp.where(jax.random.bernoulli(rng, probability), grayscale(image), image)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV in [0, 1], hue as a fraction of a turn."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    hue = jnp.where(
        value == r,
        (g - b) / safe_chroma,
        jnp.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0),
    )
    hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of `rgb_to_hsv`: channel n is V - V S clip(min(k, 4 - k), 0, 1)
    with k = (n + 6 H) mod 6 for n = 5, 3, 1 (branch-free)."""
    hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0], hsv.dtype) + 6.0 * hue, 6.0)
    return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Multiply every pixel by `factor` (SimCLR v2's brightness)."""
    return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Scale each channel's deviation from its mean by `factor` (as tf.image)."""
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


def _from_hsv(hsv: jax.Array, saturation_factor=1.0, hue_delta=0.0) -> jax.Array:
    """RGB of `hsv` with its saturation scaled and its hue rotated."""
    hsv = jnp.stack(
        [
            jnp.mod(hsv[..., 0] + hue_delta, 1.0),
            jnp.clip(hsv[..., 1] * saturation_factor, 0.0, 1.0),
            hsv[..., 2],
        ],
        axis=-1,
    )
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Multiply HSV saturation by `factor` (as tf.image)."""
    return _from_hsv(rgb_to_hsv(image), saturation_factor=factor)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotate the hue by `delta` turns (1.0 = a full turn = identity)."""
    return _from_hsv(rgb_to_hsv(image), hue_delta=delta)


def color_jitter(
    rng: jax.Array,
    image: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> jax.Array:
    """Brightness, contrast, saturation and hue changes, in a random order.

    Factors are uniform in [max(0, 1 - x), 1 + x] for the first three, the hue
    shift uniform in [-hue, hue] turns. An amount of 0 leaves that op out.
    """
    keys = jax.random.split(rng, 5)

    def factor(key, amount):
        return jax.random.uniform(key, minval=max(0.0, 1.0 - amount), maxval=1.0 + amount)

    b, c, s = (
        factor(k, x) for k, x in zip(keys[:3], (brightness, contrast, saturation), strict=True)
    )
    h = jax.random.uniform(keys[3], minval=-hue, maxval=hue)
    order = jax.random.permutation(keys[4], 4)
    for slot in range(4):
        # Under vmap the op of each slot is chosen per example, so every slot
        # computes all four candidates and picks one: 16 ops for 4. Saturation
        # and hue share one RGB -> HSV conversion to keep that affordable.
        hsv = rgb_to_hsv(image) if saturation or hue else None
        candidates = jnp.stack(
            [
                adjust_brightness(image, b) if brightness else image,
                adjust_contrast(image, c) if contrast else image,
                _from_hsv(hsv, saturation_factor=s) if saturation else image,
                _from_hsv(hsv, hue_delta=h) if hue else image,
            ]
        )
        image = candidates[order[slot]]
    return image


def random_color_jitter(
    rng: jax.Array, image: jax.Array, *, strength: float, probability: float = 0.8
) -> jax.Array:
    """SimCLR's colour jitter of strength s (brightness, contrast and saturation
    0.8 s, hue 0.2 s), applied with `probability`."""
    if strength == 0 or probability == 0:
        return image
    apply_key, jitter_key = jax.random.split(rng)
    jittered = color_jitter(
        jitter_key,
        image,
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=0.2 * strength,
    )
    return jnp.where(jax.random.bernoulli(apply_key, probability), jittered, image)


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur with an odd `kernel_size` (static) and `sigma`
    (may be traced). Edges are reflected, so a constant image stays constant."""
    radius = kernel_size // 2
    x = jnp.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = jnp.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / jnp.sum(kernel)
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width, _ = image.shape
    # Weighted sums of shifted slices: tiny kernels, so this beats a conv call
    # and has no layout or per-channel grouping to get right.
    rows = sum(kernel[i] * padded[i : i + height] for i in range(2 * radius + 1))
    return sum(kernel[i] * rows[:, i : i + width] for i in range(2 * radius + 1))


def blur_kernel_size(image_size: int, fraction: float = 0.1) -> int:
    """An odd kernel about `fraction` of the image size (SimCLR: 10%), at least 3."""
    return max(3, 2 * (int(image_size * fraction) // 2) + 1)


def random_blur(
    rng: jax.Array,
    image: jax.Array,
    *,
    probability: float,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_fraction: float = 0.1,
) -> jax.Array:
    """Gaussian blur with sigma uniform in `sigma`, applied with `probability`."""
    if probability == 0:
        return image
    apply_key, sigma_key = jax.random.split(rng)
    s = jax.random.uniform(sigma_key, minval=sigma[0], maxval=sigma[1])
    blurred = gaussian_blur(image, s, blur_kernel_size(image.shape[0], kernel_fraction))
    return jnp.where(jax.random.bernoulli(apply_key, probability), blurred, image)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Invert the pixels at or above `threshold`."""
    return jnp.where(image < threshold, image, 1.0 - image)


def random_solarize(
    rng: jax.Array, image: jax.Array, *, probability: float, threshold: float = 0.5
) -> jax.Array:
    if probability == 0:
        return image
    return jnp.where(jax.random.bernoulli(rng, probability), solarize(image, threshold), image)


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
    """One SimCLR view of one image: crop, flip, colour jitter, grayscale,
    blur, solarisation, in the paper's order. Output in [0, 1]."""
    keys = jax.random.split(rng, 6)
    image = random_resized_crop(keys[0], image, scale=tuple(crop_scale), ratio=tuple(crop_ratio))
    if flip:
        image = random_flip(keys[1], image)
    image = random_color_jitter(
        keys[2], image, strength=color_strength, probability=color_probability
    )
    if grayscale_probability:
        image = random_grayscale(keys[3], image, grayscale_probability)
    image = random_blur(keys[4], image, probability=blur_probability, sigma=tuple(blur_sigma))
    image = random_solarize(keys[5], image, probability=solarize_probability)
    return jnp.clip(image, 0.0, 1.0)


def simclr_view_batch(rng: jax.Array, images: jax.Array, **params) -> jax.Array:
    """`simclr_view` on every image of `[B, H, W, C]`, each with its own key."""
    keys = example_keys(rng, images.shape[0])
    return jax.vmap(lambda key, image: simclr_view(key, image, **params))(keys, images)
