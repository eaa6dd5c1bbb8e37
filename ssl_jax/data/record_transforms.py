"""What a streaming worker makes of one record: decode it and take the crops
(`decode.crops`) or the evaluation square (`decode.center_square`).

A transform is `(record, rng) -> {key: uint8 array}`; `streaming` calls it per
row with `np.random.default_rng([seed, step, row])`, so its draws are a pure
function of (seed, step, row). Transforms are `functools.partial`s of module
functions, so grain can pickle them into its worker processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ssl_jax.data import decode, records

Transform = Callable[[records.Record, np.random.Generator], dict[str, np.ndarray]]


def crop_transform(specs, flip_probability: float = 0.5, draft: bool = True) -> Transform:
    """Decode + random-resized crops (`decode.crops`) per record.

    Spec `i` gives key `image` (i = 0) or `image_<i>`, shaped [size, size, 3]
    when its count is 1, else [count, size, size, 3].
    """
    return functools.partial(_crop_record, tuple(specs), flip_probability, draft)


def _crop_record(specs, flip_probability, draft, record, rng) -> dict[str, np.ndarray]:
    out = decode.crops(
        record["image"],
        specs,
        rng,
        key=record["key"],
        flip_probability=flip_probability,
        draft=draft,
    )
    return {
        "image" if i == 0 else f"image_{i}": crop[0] if spec.count == 1 else crop
        for i, (spec, crop) in enumerate(zip(specs, out, strict=True))
    }


def center_transform(size: int) -> Transform:
    """Decode + the evaluation transform (`decode.center_square`): key `image`, [size, size, 3]."""
    return functools.partial(_center_record, size)


def _center_record(size, record, rng) -> dict[str, np.ndarray]:
    del rng  # Deterministic.
    return {
        "image": decode.center_square(decode.decode_image(record["image"], record["key"]), size)
    }


def view_transform(groups, draft: bool = True) -> Transform:
    """Decode + the crops a task asks for (`Task.host_crops`): `groups` maps a
    batch key to its crop specs; each key holds all its crops stacked on a view
    axis, [views, size, size, 3] (so a batch is [B, views, size, size, 3]).
    No flip here: the task's augmentation on the device flips."""
    groups = tuple((key, tuple(specs)) for key, specs in dict(groups).items())
    return functools.partial(_view_record, groups, draft)


def _view_record(groups, draft, record, rng) -> dict[str, np.ndarray]:
    out = {}
    for key, specs in groups:
        crops = decode.crops(
            record["image"], specs, rng, key=record["key"], flip_probability=0.0, draft=draft
        )
        out[key] = np.concatenate(crops)
    return out


def blank_outputs(transform: Transform) -> dict[str, np.ndarray] | None:
    """Zeros shaped like what `transform` makes of one record, from its
    arguments alone (no record is read): the padding rows of an evaluation
    batch. None for a transform not made here (its shapes are unknown)."""
    func, args = getattr(transform, "func", None), getattr(transform, "args", ())
    if func is _center_record:
        shapes = {"image": (args[0], args[0], 3)}
    elif func is _crop_record:
        shapes = {
            "image" if i == 0 else f"image_{i}": (spec.size, spec.size, 3)
            if spec.count == 1
            else (spec.count, spec.size, spec.size, 3)
            for i, spec in enumerate(args[0])
        }
    elif func is _view_record:  # One group's crops share a size (they are concatenated).
        shapes = {
            key: (sum(s.count for s in specs), specs[0].size, specs[0].size, 3)
            for key, specs in args[0]
        }
    else:
        return None
    return {key: np.zeros(shape, np.uint8) for key, shape in shapes.items()}
