"""The basic on-device image ops: scaling pixels in and out of the models'
range, per-example keys, translation crops, flips, quarter turns, blur and
solarisation, and the layout helpers the other augment modules share.

Ops take float images `[..., H, W, C]` in [0, 1] (channels last, as the
models do) and are pure `jax.numpy` / `lax`: they jit and vmap on any backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def planes(image: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., C, H, W]."""
    return jnp.moveaxis(image, -1, -3)


def channels_last(x: jax.Array) -> jax.Array:
    """[..., C, H, W] -> [..., H, W, C]."""
    return jnp.moveaxis(x, -3, -1)


def per_image(value) -> jax.Array:
    """A per-image parameter `[...]`, broadcastable against `[..., C, H, W]`."""
    return jnp.asarray(value)[..., None, None, None]


def pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


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


def separable_blur(x, kernel, axes):
    """Separable blur along the two image `axes` by per-image taps `[..., K]`
    (`...` the batch dims before the three image dims), edges reflected: a
    constant image stays constant. Blur does not mix channels, so it runs on
    planes or channels-last alike. Weighted sums of shifted slices: with a
    different kernel per image, a grouped convolution is ~30x slower on XLA's
    CPU backend. Both axes are padded first; padding the columns after the
    row pass lets XLA fuse that pass into every column tap (2.5x slower)."""
    radius = kernel.shape[-1] // 2
    taps = [per_image(kernel[..., i]) for i in range(kernel.shape[-1])]
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
    return separable_blur(image, _gaussian_kernel(sigma, kernel_size), axes=(-3, -2))


def blur_draw(rng, probability, sigma):
    """Whether to blur and with which sigma (uniform in `sigma`)."""
    u = jax.random.uniform(rng, (2,))
    return u[0] < probability, sigma[0] + (sigma[1] - sigma[0]) * u[1]


def blur_or_copy_kernel(apply, sigma, kernel_size: int):
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
    apply, s = blur_draw(rng, probability, sigma)
    kernel = blur_or_copy_kernel(apply, s, blur_kernel_size(image.shape[-3], kernel_fraction))
    return separable_blur(image, kernel, axes=(-3, -2))


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Invert the pixels at or above `threshold`."""
    return jnp.where(image < threshold, image, 1.0 - image)


def random_solarize(
    rng: jax.Array, image: jax.Array, *, probability: float, threshold: float = 0.5
) -> jax.Array:
    if probability == 0:
        return image
    return jnp.where(jax.random.bernoulli(rng, probability), solarize(image, threshold), image)
