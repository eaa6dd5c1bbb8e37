"""On-device image augmentations, written in JAX.

Public ops take float images `[..., H, W, C]` in [0, 1] (channels last, as the
models do) and are pure `jax.numpy` / `lax`: they jit and vmap on any backend.
Keys come from `example_keys` (seed, step, example index), so every draw is
reproducible on resume and independent of the batch size and device count.

One module per concern, every public name importable from here
(`from ssl_jax.data import augment; augment.normalize(x)`):

* `ops.py`: pixels in and out of the models' range, per-example keys, and the
  light ops of rotation prediction and supervised training (`random_crop`,
  `random_flip`, `rotate90`, `crop_and_flip[_batch]`), vmapped per image;
  blur and solarisation;
* `lab.py`: sRGB <-> CIE L*a*b* (`rgb_to_lab`, `lab_to_rgb`), for colorization;
* `crops.py`: random resized crops (`crop_box`, `resized_crop`);
* `colour.py`: brightness, contrast, saturation, hue, their jitter, grayscale;
* `views.py`: the views of SimCLR (Chen et al. 2020, appendix A) and DINO's
  multi-crop (Caron et al. 2021): resized crop, flip, colour jitter in a
  random order, grayscale, blur, solarisation. Their random amounts are drawn
  per example (`view_params`) and applied to the batch (`apply_view`: the
  whole batch at once on accelerators, a few images at a time on a CPU) on
  channel planes `[B, C, H, W]`: on a CPU, ops that mix a pixel's three
  channels (max, min, luma, hue) and per-channel means vectorise over
  contiguous planes but not over interleaved RGB triples (4-10x per op,
  measured);
* `recipes.py`: the published view recipes of the two-view methods (SimCLR's,
  BYOL's, solo-learn's CIFAR pair, SimSiam's, the digits'), as config dicts.

Speed on one CPU core: docs/benchmarks/augment_cpu_2026-11-29.txt
(`experiments/augment_benchmark.py`).
"""

from ssl_jax.data.augment import recipes
from ssl_jax.data.augment.colour import (
    JITTER_OPS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    color_jitter,
    grayscale,
    jitter_params,
    random_grayscale,
)
from ssl_jax.data.augment.crops import crop_box, random_resized_crop, resized_crop
from ssl_jax.data.augment.lab import lab_to_rgb, rgb_to_lab
from ssl_jax.data.augment.ops import (
    blur_kernel_size,
    crop_and_flip,
    crop_and_flip_batch,
    example_keys,
    gaussian_blur,
    normalize,
    random_blur,
    random_crop,
    random_flip,
    random_solarize,
    rotate90,
    solarize,
    to_float,
)
from ssl_jax.data.augment.views import (
    ViewRecipe,
    apply_view,
    multi_crop_views,
    view_batch,
    view_params,
)

__all__ = [
    "JITTER_OPS",
    "ViewRecipe",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "apply_view",
    "blur_kernel_size",
    "color_jitter",
    "crop_and_flip",
    "crop_and_flip_batch",
    "crop_box",
    "example_keys",
    "gaussian_blur",
    "grayscale",
    "jitter_params",
    "lab_to_rgb",
    "multi_crop_views",
    "normalize",
    "random_blur",
    "random_crop",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "random_solarize",
    "recipes",
    "resized_crop",
    "rgb_to_lab",
    "rotate90",
    "solarize",
    "to_float",
    "view_batch",
    "view_params",
]
