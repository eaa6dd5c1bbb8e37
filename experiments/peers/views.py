"""The project's augmented views (`ssl_jax/data/augment/`) with torchvision.

A `ViewRecipe` (crop_scale, crop_ratio, size, flip, jitter amounts and
probability, grayscale, blur, solarise) becomes one torchvision.transforms.v2
pipeline in ssl_jax's order: random-resized crop (bilinear, no antialiasing)
and flip, colour jitter (brightness, contrast, saturation, hue in a random
order) with `color_probability`, grayscale (BT.601 luma on all channels), a
Gaussian blur with sigma uniform in `blur_sigma` and ssl_jax's kernel size
(`augment.blur_kernel_size`, reflected edges), solarisation at 0.5. Each
image gets its own draws, as `augment.view_batch` gives each example its own
key. The distribution is the project's; pixels differ in detail (torchvision's
contrast is about the grey mean, tf.image's about each channel's mean;
torchvision's saturation blends with grey, tf.image's scales HSV saturation;
a crop that never fits falls back to a centre crop instead of the whole
image). Views leave normalised as ssl_jax's: (x - 0.5) / 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ssl_jax.data import augment


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] (the project's layout) -> uint8 [B, C, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> the models' input range, as `augment.normalize`."""
    return (x - 0.5) / 0.5


def features_input(images: np.ndarray) -> torch.Tensor:
    """Un-augmented uint8 [B, H, W, C] -> what `Task.features` feeds the
    encoder: normalize(to_float(images)), NCHW."""
    return normalize(to_tensor(images).float() / 255.0)


def recipe(view) -> augment.ViewRecipe:
    """A config dict of ViewRecipe fields (lists as tuples) -> the recipe."""
    fields = view.to_dict() if hasattr(view, "to_dict") else dict(view)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return augment.ViewRecipe(**fields)


class View:
    """One kind of view: a uint8 [B, C, H, W] batch -> float [B, C, h, w],
    normalised, each image with its own random draws."""

    def __init__(self, view: augment.ViewRecipe, image_size: int):
        size = view.size or image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        ops: list = [
            v2.RandomResizedCrop(
                size,
                scale=tuple(view.crop_scale),
                ratio=tuple(view.crop_ratio),
                interpolation=v2.InterpolationMode.BILINEAR,
                antialias=False,
            )
        ]
        if view.flip:
            ops.append(v2.RandomHorizontalFlip(0.5))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        if view.jitters:
            jitter = v2.ColorJitter(
                brightness=view.brightness or None,
                contrast=view.contrast or None,
                saturation=view.saturation or None,
                hue=view.hue or None,
            )
            ops.append(v2.RandomApply([jitter], p=view.color_probability))
        if view.grayscale_probability:
            ops.append(v2.RandomGrayscale(view.grayscale_probability))
        if view.blur_probability:
            kernel = augment.blur_kernel_size(size[0])
            blur = v2.GaussianBlur(kernel, sigma=tuple(view.blur_sigma))
            ops.append(v2.RandomApply([blur], p=view.blur_probability))
        if view.solarize_probability:
            ops.append(v2.RandomSolarize(0.5, p=view.solarize_probability))
        self.transform = v2.Compose(ops)
        self.size = size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        views = torch.stack([self.transform(image) for image in images])
        return normalize(views.clamp(0.0, 1.0))


def views_of(view_configs, image_size: int) -> list[View]:
    return [View(recipe(v), image_size) for v in view_configs]


def crop_and_flip(images: torch.Tensor, *, crop_padding: int, flip: bool) -> torch.Tensor:
    """Rotation's light augmentation (`augment.crop_and_flip_batch`): pad by
    `crop_padding` with edge reflection and take a random crop of the original
    size (a translation), then mirror with p = 0.5. float [B, C, H, W]."""
    batch, _, height, width = images.shape
    if crop_padding:
        p = crop_padding
        padded = F.pad(images, (p, p, p, p), mode="reflect")
        offsets = torch.randint(0, 2 * p + 1, (batch, 2))
        images = torch.stack(
            [
                padded[i, :, dy : dy + height, dx : dx + width]
                for i, (dy, dx) in enumerate(offsets.tolist())
            ]
        )
    if flip:
        mirror = torch.rand(batch) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] -> the 4B quarter turns (counter-clockwise, grouped by
    turn as `tasks.rotation.rotate_batch`) and their labels."""
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4).repeat_interleave(images.shape[0])
    return rotated, labels
