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
