"""Throughput of SimCLR's on-device augmentations, per CPU core, next to torchvision.

  python experiments/augment_benchmark.py
  git show cc70177~:ssl_jax/data/augment.py > /tmp/old_augment.py   # the last one-file module
  python experiments/augment_benchmark.py --old=/tmp/old_augment.py --rounds=15

"Per core" means the whole process is pinned to ONE core
(`os.sched_setaffinity`) before JAX or torch start, XLA's CPU backend is told
to use one thread (`--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`, set before importing jax) and torch too
(`torch.set_num_threads(1)`): views/s is what one core delivers.

Measured, each at 32 px (batch 256, the CIFAR recipe: no blur) and 224 px
(batch 32, the ImageNet recipe: blur with p = 0.5):

* each op alone on a float `[B, H, W, C]` batch, one key per example (the
  public one-image op, vmapped, as the old module was used), in ms per batch;
* the new pipeline by stages (`apply_view` on uint8 images with the draws
  made beforehand, adding one stage at a time), in ms per batch;
* the SimCLR view (`view_batch` with `recipes.simclr_views()`'s recipe, at
  strength 1, on uint8 images, as the training step calls it), in views/s;
* torchvision.transforms.v2 doing the same transforms per image on uint8
  `[C, H, W]` tensors (RandomResizedCrop, RandomHorizontalFlip,
  RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8),
  RandomGrayscale(0.2), RandomApply([GaussianBlur], p)), the way a data-loader
  worker runs them; skipped with a note if torch is not importable. Its crop
  uses torchvision's default antialiasing or none, whichever is faster here.

`--old` times an older one-file augment.py through the public names it had
then (`random_color_jitter`, `simclr_view_batch`) next to the package.

Other processes on the machine share its cores, so every pipeline is timed in
rounds, interleaved (JAX, old JAX, torch, JAX, ...), and the median round is
reported with the spread (min-max).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    return core


CORE = pin_to_one_core()  # before jax (and torch) start their thread pools

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ssl_jax.data import augment  # noqa: E402

# (image side, batch, blur probability): SimCLR's CIFAR and ImageNet recipes.
SETTINGS = ((32, 256, 0.0), (224, 32, 0.5))


def simclr_view_recipe(blur_probability: float) -> augment.ViewRecipe:
    """One view of SimCLR's pair at strength 1, as torchvision's pipeline below."""
    return augment.ViewRecipe(**augment.recipes.simclr_views(blur_probability=blur_probability)[0])


def simclr_jitter_op(module):
    """SimCLR's colour jitter (strength 1, p = 0.8) of one image: the package
    draws it with `jitter_params`; an old one-file module had it as one op."""
    if module is not augment:
        return lambda k, x: module.random_color_jitter(k, x, strength=1.0)
    view = augment.recipes.simclr_views()[0]
    amounts = {name: view[name] for name in ("brightness", "contrast", "saturation", "hue")}

    def jitter(k, x):
        params = augment.jitter_params(k, **amounts, probability=view["color_probability"])
        return augment.apply_color_jitter(x, params)

    return jitter


def op_table(module) -> dict:
    """Each op alone, on one float image with its key (vmapped over the batch)."""
    return {
        "resized crop": lambda k, x: module.random_resized_crop(k, x),
        "flip": lambda k, x: module.random_flip(k, x),
        "color jitter (p=0.8)": simclr_jitter_op(module),
        "grayscale (p=0.2)": lambda k, x: module.random_grayscale(k, x, 0.2),
        "blur (p=1)": lambda k, x: module.random_blur(k, x, probability=1.0),
        "solarize (p=0.2)": lambda k, x: module.random_solarize(k, x, probability=0.2),
    }


def jax_op(op):
    @jax.jit
    def run(rng, images):
        return jax.vmap(op)(augment.example_keys(rng, images.shape[0]), images)

    return run


def stage_recipes(blur_probability: float) -> dict:
    """The SimCLR recipe built up one stage at a time."""
    full = simclr_view_recipe(blur_probability)
    no_colour = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    replace = dataclasses.replace
    return {
        "crop + flip": replace(full, **no_colour, grayscale_probability=0, blur_probability=0),
        "+ jitter (p=0.8)": replace(full, grayscale_probability=0, blur_probability=0),
        "+ grayscale (p=0.2)": replace(full, blur_probability=0),
        f"+ blur (p={blur_probability})": full,
    }


def jax_draws(recipe):
    @jax.jit
    def run(rng, images):
        height, width = images.shape[1:3]
        keys = augment.example_keys(rng, images.shape[0])
        return jax.vmap(lambda k: augment.view_params(k, height, width, recipe))(keys)

    return run


def jax_stage(recipe):
    run = jax_draws(recipe)

    @jax.jit
    def apply(params, images):
        return augment.apply_view(images, params, recipe)

    params = {}

    def timed(rng, images):  # the draws are made once, outside the timing
        if "p" not in params:
            params["p"] = jax.block_until_ready(run(jax.random.key(0), images))
        return apply(params["p"], images)

    return timed


def jax_view(module, blur_probability: float):
    recipe = simclr_view_recipe(blur_probability)

    @jax.jit
    def run(rng, images):
        images = module.to_float(images)
        if module is not augment:  # an old one-file module's SimCLR view
            return module.simclr_view_batch(rng, images, blur_probability=blur_probability)
        return augment.view_batch(rng, images, recipe)

    return run


def torch_view(size: int, blur_probability: float):
    """torchvision's SimCLR view of one uint8 [C, H, W] tensor, or None."""
    try:
        import torch
        from torchvision.transforms import v2
    except ImportError:
        return None
    torch.set_num_threads(1)
    s = 1.0

    def pipeline(antialias):
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, antialias=antialias),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
                v2.RandomGrayscale(0.2),
                v2.RandomApply(
                    [v2.GaussianBlur(augment.blur_kernel_size(size), (0.1, 2.0))],
                    p=blur_probability,
                ),
            ]
        )

    def run_all(transform):
        return lambda _, images: [transform(image) for image in images]

    images = torch.from_numpy(np.zeros((8, 3, size, size), np.uint8))
    fastest = min(
        (pipeline(a) for a in (True, False)),
        key=lambda t: min(_seconds(run_all(t), None, images) for _ in range(3)),
    )
    return run_all(fastest)


def _seconds(fn, rng, images) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(rng, images))
    return time.perf_counter() - start


def timed_rounds(fns: dict, inputs: dict, rounds: int, calls: int) -> dict:
    """Seconds per call for each fn: `rounds` rounds, interleaved, each the
    mean of `calls` calls. Returns {name: array of per-round seconds}."""
    rng = jax.random.key(0)
    for name, fn in fns.items():
        _seconds(fn, rng, inputs[name])  # compile, warm up
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for i in range(calls):
                out = fn(jax.random.fold_in(rng, r * calls + i), inputs[name])
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: np.asarray(t) for name, t in times.items()}


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("old_augment", path)
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while it executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def spread(t: np.ndarray, scale: float) -> str:
    return f"{np.median(t) * scale:9.2f}  ({t.min() * scale:.2f}-{t.max() * scale:.2f})"


def rate(batch: int, t: np.ndarray) -> str:
    return f"{batch / np.median(t):10,.0f}  ({batch / t.max():,.0f}-{batch / t.min():,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="an older augment.py to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--skip_ops", action="store_true", help="only the full views")
    args = parser.parse_args()
    modules = {"new": augment}
    if args.old:
        modules["old"] = load_module(args.old)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, pinned to core {CORE} (1 core)")
    print(f"{args.rounds} interleaved rounds; median (min-max)")
    for size, batch, blur in SETTINGS:
        uint8 = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        floats = augment.to_float(jnp.asarray(uint8))
        print(f"\n{batch} x {size}x{size}x3, SimCLR view with blur p={blur}")
        if not args.skip_ops:
            print("  ms per batch, each op alone (float input)")
            fns, inputs = {}, {}
            for name in op_table(augment):
                for version, module in modules.items():
                    fns[(name, version)] = jax_op(op_table(module)[name])
                    inputs[(name, version)] = floats
            times = timed_rounds(fns, inputs, args.rounds, calls=3)
            for name in op_table(augment):
                row = "  ".join(f"{v} {spread(times[(name, v)], 1e3)}" for v in modules)
                print(f"    {name:<22}{row}")
            print("  ms per batch, new pipeline by stages (uint8 input, draws made beforehand)")
            recipes = stage_recipes(blur)
            fns = {"draws (view_params)": jax_draws(list(recipes.values())[-1])}
            fns.update({name: jax_stage(r) for name, r in recipes.items()})
            inputs = {name: jnp.asarray(uint8) for name in fns}
            times = timed_rounds(fns, inputs, args.rounds, calls=3)
            for name, t in times.items():
                print(f"    {name:<22}new {spread(t, 1e3)}")
        fns = {version: jax_view(m, blur) for version, m in modules.items()}
        inputs = {version: jnp.asarray(uint8) for version in modules}
        tv = torch_view(size, blur)
        if tv is None:
            print("  (torch/torchvision not importable: no torchvision figures)")
        else:
            import torch

            fns["torchvision"] = tv
            inputs["torchvision"] = torch.from_numpy(uint8).permute(0, 3, 1, 2).contiguous()
        times = timed_rounds(fns, inputs, args.rounds, calls=3 if size <= 64 else 1)
        print("  SimCLR view, views/s on one core")
        for name, t in times.items():
            print(f"    {name:<22}{rate(batch, t)}   {np.median(t) * 1e3:8.2f} ms per batch")
        if "torchvision" in times:
            for version in modules:
                ratio = np.median(times["torchvision"]) / np.median(times[version])
                print(f"    {version} / torchvision: {ratio:.1f}x")


if __name__ == "__main__":
    main()
