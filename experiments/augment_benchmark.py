"""Throughput of SimCLR's on-device augmentations.

Times each op and the full two-view pipeline, jitted and vmapped over a uint8
batch (one key per example, as in the training step), on whatever device JAX
sees, after a warm-up call, with `block_until_ready`:

  python experiments/augment_benchmark.py
  python experiments/augment_benchmark.py --shapes=256x32,64x96 --repeats=20
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import augment

# Each op on one float image in [0, 1], with the paper's ImageNet settings.
OPS = {
    "to_float": lambda key, x: x,
    "resized_crop": lambda key, x: augment.random_resized_crop(key, x),
    "flip": lambda key, x: augment.random_flip(key, x),
    "color_jitter": lambda key, x: augment.random_color_jitter(key, x, strength=1.0),
    "grayscale": lambda key, x: augment.random_grayscale(key, x, 0.2),
    "blur": lambda key, x: augment.random_blur(key, x, probability=1.0),
    "solarize": lambda key, x: augment.random_solarize(key, x, probability=0.2),
}
PIPELINE = {"blur_probability": 0.5, "solarize_probability": 0.0}


def batch_fn(op):
    """uint8 [B, H, W, C] -> float views, one key per example."""

    @jax.jit
    def run(rng, images):
        keys = augment.example_keys(rng, images.shape[0])
        return jax.vmap(op)(keys, augment.to_float(images))

    return run


@jax.jit
def two_views(rng, images):
    images = augment.to_float(images)
    return jnp.concatenate(
        [
            augment.simclr_view_batch(jax.random.fold_in(rng, v), images, **PIPELINE)
            for v in range(2)
        ]
    )


def images_per_sec(fn, images, repeats: int) -> float:
    rng = jax.random.key(0)
    jax.block_until_ready(fn(rng, images))  # compile and warm up
    start = time.perf_counter()
    for i in range(repeats):
        out = fn(jax.random.fold_in(rng, i), images)
    jax.block_until_ready(out)
    return repeats * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="256x32,64x96", help="BATCHxSIZE, comma-separated")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}")
    for shape in args.shapes.split(","):
        batch, size = map(int, shape.split("x"))
        images = jax.device_put(
            np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        )
        print(f"\n{batch} x {size}x{size}x3 uint8, images/sec (higher is better)")
        for name, op in OPS.items():
            print(f"  {name:<14}{images_per_sec(batch_fn(op), images, args.repeats):>12,.0f}")
        rate = images_per_sec(two_views, images, args.repeats)
        print(f"  {'two views':<14}{rate:>12,.0f}  (2 views per image; blur p=0.5)")


if __name__ == "__main__":
    main()
