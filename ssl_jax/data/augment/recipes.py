"""The published view recipes of the two-view methods, as config dicts
(fields of `ViewRecipe`, one dict per view) that the configs in
`ssl_jax/configs/` put into `task_kwargs.views`. Each cites its source and
says where it departs from it.
"""

from __future__ import annotations


def simclr_views(strength: float = 1.0, **overrides) -> tuple[dict, dict]:
    """SimCLR's symmetric pair (Chen et al. 2020, appendix A, and
    google-research/simclr's data_util): crop 8-100% (ratio 3/4-4/3), flip,
    colour jitter of strength s (brightness, contrast and saturation 0.8 s,
    hue 0.2 s) with p = 0.8, grayscale p = 0.2, Gaussian blur (sigma 0.1-2, a
    kernel of 10% of the side) with p = 0.5 on each view: the ImageNet
    recipe, s = 1. The paper's CIFAR recipe (appendix B.9) is s = 0.5 without
    blur. `overrides` apply to both views."""
    view = {
        "crop_scale": (0.08, 1.0),
        "flip": True,
        "brightness": 0.8 * strength,
        "contrast": 0.8 * strength,
        "saturation": 0.8 * strength,
        "hue": 0.2 * strength,
        "color_probability": 0.8,
        "grayscale_probability": 0.2,
        "blur_probability": 0.5,
        **overrides,
    }
    return view, dict(view)


def byol_views(**overrides) -> tuple[dict, dict]:
    """BYOL's asymmetric pair (Grill et al. 2020, appendix B, table 6), also
    used by MoCo v3, Barlow Twins and VICReg: crop 8-100%, flip, colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p = 0.8,
    grayscale p = 0.2; view 1 always blurred, view 2 blurred with p = 0.1 and
    solarised with p = 0.2. `overrides` apply to both views."""
    common = {
        "crop_scale": (0.08, 1.0),
        "flip": True,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
        "color_probability": 0.8,
        "grayscale_probability": 0.2,
    }
    first = {**common, "blur_probability": 1.0, "solarize_probability": 0.0, **overrides}
    second = {**common, "blur_probability": 0.1, "solarize_probability": 0.2, **overrides}
    return first, second


def cifar_views(**overrides) -> tuple[dict, dict]:
    """solo-learn's CIFAR pair (`scripts/pretrain/cifar/augmentations/
    asymmetric.yaml`), used by its BYOL, MoCo v3, Barlow Twins and DINO
    recipes: BYOL's pair without blur (a 32 px photo has little detail to
    lose), solarisation p = 0.2 on the second view only."""
    return byol_views(blur_probability=0.0, **overrides)


def simsiam_views(**overrides) -> tuple[dict, dict]:
    """MoCo v2's symmetric views, which SimSiam uses (Chen & He 2021, section
    4): crop 20-100%, flip, jitter (0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale
    p = 0.2, blur p = 0.5."""
    view = {
        "crop_scale": (0.2, 1.0),
        "flip": True,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
        "color_probability": 0.8,
        "grayscale_probability": 0.2,
        "blur_probability": 0.5,
        **overrides,
    }
    return view, dict(view)


# The 8x8 grey digits at 16 px: crops must keep most of the digit, no flips
# (digits are not mirror-symmetric), mild jitter (there is no colour to learn
# invariance to), no grayscale, blur or solarisation (strokes are 2 px wide).
DIGITS_VIEW = {
    "crop_scale": (0.3, 1.0),
    "flip": False,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "color_probability": 0.8,
}
