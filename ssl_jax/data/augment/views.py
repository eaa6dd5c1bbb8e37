"""Augmented views on the device: a `ViewRecipe` (the settings of one kind
of view), its random draws per example (`view_params`), applying them to a
batch (`apply_view`, `view_batch`), and DINO's multi-crop built from them.
The two-view methods' recipes, SimCLR's among them, are config dicts in
`recipes.py`.

A view is crop and flip, colour jitter, grayscale, blur and solarisation, in
SimCLR's order (Chen et al. 2020, appendix A). The whole batch is made at once
on accelerators and a few images at a time on a CPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax.data.augment.colour import jitter_params, jitter_planes, luma
from ssl_jax.data.augment.crops import crop_box, resized_crop
from ssl_jax.data.augment.ops import (
    blur_draw,
    blur_kernel_size,
    blur_or_copy_kernel,
    channels_last,
    example_keys,
    pair,
    per_image,
    planes,
    separable_blur,
)

# ----------------------------------------------------------------------------- views


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
    """The settings of one kind of augmented view (SimCLR, BYOL, DINO).
    `size`: output side or (h, w), None = the input size. The four jitter
    amounts are as in `jitter_params` (SimCLR's of strength s:
    `recipes.simclr_views(s)`)."""

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
    blur, sigma = blur_draw(keys[4], recipe.blur_probability, recipe.blur_sigma)
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
    crop = jax.vmap(lambda image, box, flip: resized_crop(image, box, size, flip=flip))
    x = crop(images, params["box"], params["flip"])
    if recipe.jitters or recipe.grayscale_probability or recipe.blur_probability:
        x = channels_last(_planar_stages(planes(x), params, recipe, size))
    if recipe.solarize_probability:
        x = jnp.where(per_image(params["solarize"]) & (x >= 0.5), 1.0 - x, x)
    return jnp.clip(x, 0.0, 1.0)


def _planar_stages(x, params, recipe: ViewRecipe, size):
    """Colour jitter, grayscale and blur of cropped planes `[B, C, h, w]`."""

    def colour(x):
        if recipe.jitters:
            x = jitter_planes(x, params["jitter"])
        if recipe.grayscale_probability:
            x = jnp.where(per_image(params["grayscale"]), luma(x), x)
        return x

    if recipe.jitters or recipe.grayscale_probability:
        x = _if_any(params["jitter"]["apply"] | params["grayscale"], colour, x)
    if recipe.blur_probability:
        kernel_size = blur_kernel_size(size[0])
        kernel = blur_or_copy_kernel(params["blur"], params["blur_sigma"], kernel_size)
        x = _if_any(params["blur"], lambda x: separable_blur(x, kernel, axes=(-2, -1)), x)
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


def apply_view(
    images: jax.Array, params: dict, recipe: ViewRecipe, *, devices: int = 1
) -> jax.Array:
    """The view that `params` (from `view_params`, one row per image)
    describes, of every image of `[B, H, W, C]` (uint8, or float in [0, 1]):
    float32 `[B, h, w, C]` in [0, 1]. Crop and flip, colour jitter, grayscale,
    blur, solarisation, in SimCLR's order; ops of probability 0 cost nothing.

    `devices`: how many devices the batch is sharded over (the caller knows
    its mesh; `jax.device_count()` for a batch sharded over all of them). It
    changes no value, only how a CPU cuts the batch into steps: along the
    shards, so no device gathers another's images."""
    batch, height, width, channels = images.shape
    size = (height, width) if recipe.size is None else pair(recipe.size)
    per_step = _images_per_step(batch, 4 * channels * size[0] * size[1], devices)

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


def view_batch(
    rng: jax.Array, images: jax.Array, recipe: ViewRecipe, *, devices: int = 1
) -> jax.Array:
    """One view of every image of `[B, H, W, C]`, each drawn from its own key
    (`example_keys`), so row i does not depend on the batch around it.
    `devices` as in `apply_view`."""
    height, width = images.shape[1:3]
    keys = example_keys(rng, images.shape[0])
    params = jax.vmap(lambda key: view_params(key, height, width, recipe))(keys)
    return apply_view(images, params, recipe, devices=devices)


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
    devices: int = 1,
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
    View v draws from `fold_in(rng, v)`, each image from its `example_keys`;
    `devices` as in `apply_view`.

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
    views = [
        view_batch(jax.random.fold_in(rng, v), images, r, devices=devices)
        for v, r in enumerate(recipes)
    ]
    return jnp.concatenate(views[:num_global]), jnp.concatenate(views[num_global:])
