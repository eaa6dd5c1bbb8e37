"""Video clips: moving digits made from the embedded digits, and TFDS videos.

A split holds uint8 `video` [N, T, S, S, 3] (RGB frames, `S` = the config's
image size) and int32 labels.

`moving_digits` (`moving_digits:frames=8,clips=2,label=digit`): each 8x8
digit of scikit-learn's `digits` (its own train/test split, so no digit
image is on both sides) slides across a 16x16 black canvas at one pixel per
frame in one of 8 compass directions, from a random start that keeps it
inside the canvas for all frames (no bounce, so the direction is one label
per clip); `clips` clips per digit image, each with its own direction and
start. Frames are resized to the image size if it is not 16. Labels:
`label=digit` (10 classes) or `label=direction` (8 classes), the two
downstream probes of the frames task; everything else is the same clip
data. Deterministic: a function of the split and the options alone
(`numpy.random.default_rng` with a fixed seed per split).

`tfds:NAME` with a Video feature and a ClassLabel (e.g. `ucf101`) goes
through `tfds_source.load`, which hands the decoded frames here
(`from_frames`): `frames` evenly spaced frames of each video, centre-cropped
and resized to the image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssl_jax.data.base import ArrayDataset, DatasetError, square
from ssl_jax.data.digits import load_digits
from ssl_jax.registry import DATASETS

CANVAS = 16
DIGIT = 8
# (dx, dy) per frame, v pointing down: E, NE, N, NW, W, SW, S, SE.
DIRECTIONS = ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
DIRECTION_NAMES = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")
LABELS = ("digit", "direction")

_DEFAULTS = {"frames": 8, "clips": 2, "label": "digit"}
_SEEDS = {"train": 0, "test": 1}


def parse(arg: str) -> dict:
    options = dict(_DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        ok = key in options and (value in LABELS if key == "label" else value.isdigit())
        if not ok:
            raise DatasetError(
                f"Bad moving_digits option {item!r}: use moving_digits:frames=INT,clips=INT,"
                f"label=digit|direction."
            )
        options[key] = value if key == "label" else int(value)
    if not 2 <= options["frames"] <= CANVAS - DIGIT + 1 or options["clips"] < 1:
        raise DatasetError(
            f"moving_digits needs 2 <= frames <= {CANVAS - DIGIT + 1} (the digit must stay "
            f"on the {CANVAS} px canvas) and clips >= 1, got {options}."
        )
    return options


def make_clips(
    digits: np.ndarray, frames: int, clips: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [N, 8, 8] digits -> (uint8 clips [N * clips, frames, 16, 16],
    the index of each clip's digit, its direction index), clip i * clips + j
    being digit i's j-th clip."""
    rng = np.random.default_rng(seed)
    n = len(digits) * clips
    source = np.repeat(np.arange(len(digits)), clips)
    direction = rng.integers(len(DIRECTIONS), size=n)
    steps = frames - 1
    out = np.zeros((n, frames, CANVAS, CANVAS), np.uint8)
    room = CANVAS - DIGIT
    for i in range(n):
        dx, dy = DIRECTIONS[direction[i]]
        # The start range that keeps every frame's digit on the canvas.
        x0 = rng.integers(max(0, -dx * steps), room - max(0, dx * steps) + 1)
        y0 = rng.integers(max(0, -dy * steps), room - max(0, dy * steps) + 1)
        for t in range(frames):
            x, y = x0 + dx * t, y0 + dy * t
            out[i, t, y : y + DIGIT, x : x + DIGIT] = digits[source[i]]
    return out, source, direction


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., H, W] grey frames -> uint8 [..., size, size, 3] RGB."""
    if frames.shape[-1] != size:
        flat = frames.reshape(-1, *frames.shape[-2:])
        flat = np.stack(
            [
                np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
                for f in flat
            ]
        )
        frames = flat.reshape(*frames.shape[:-2], size, size)
    return np.repeat(frames[..., None], 3, axis=-1)


def load_moving_digits(arg: str, split: str, image_size: int):
    options = parse(arg)
    # The digits split of `digits.load_digits`, at their own 8 px (grey).
    digits = load_digits("", split, DIGIT, None, None)
    clips, source, direction = make_clips(
        digits.images[..., 0], options["frames"], options["clips"], _SEEDS[split]
    )
    if options["label"] == "digit":
        labels, names = digits.labels[source], digits.class_names
    else:
        labels, names = direction, DIRECTION_NAMES
    name = "moving_digits:" + ",".join(f"{k}={v}" for k, v in options.items())
    video = _resize_frames(clips, image_size)
    return ArrayDataset(video, labels.astype(np.int32), len(names), name, "video", tuple(names))


def from_frames(videos, labels, num_classes: int, name: str, frames: int, image_size: int, names):
    """A video split from decoded videos (each uint8 [T, H, W, C]): `frames`
    evenly spaced frames, centre square, resized to `image_size`, RGB."""
    out = np.zeros((len(videos), frames, image_size, image_size, 3), np.uint8)
    for i, video in enumerate(videos):
        video = np.asarray(video)
        picks = np.linspace(0, len(video) - 1, frames).round().astype(int)
        for t, j in enumerate(picks):
            frame = video[j][..., 0] if video.shape[-1] == 1 else video[j]
            out[i, t] = square(Image.fromarray(frame), image_size)
    return ArrayDataset(out, np.asarray(labels, np.int32), num_classes, name, "video", names)


@DATASETS.register("moving_digits")
def _load(arg, split, image_size, data_dir, cache_dir) -> ArrayDataset:
    del data_dir, cache_dir  # made from the embedded digits: nothing to read or cache
    return load_moving_digits(arg, split, image_size)
