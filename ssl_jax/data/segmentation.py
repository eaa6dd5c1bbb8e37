"""Segmentation data: images with one class per pixel, for the dense
evaluator (`evaluators/segmentation.py`). Not a pretraining source: a split
holds masks, not one label per image, so these live beside `DATASETS`
rather than in it, and `load_segmentation` is their one entry point.

- `digit_scenes[:train_size=1000,test_size=300,digits=3,seed=0]` (every
  option optional): the embedded default, needing no network. Each scene is
  a 16x16 black canvas with `digits` 8x8 digits of scikit-learn's `digits`
  pasted at random places (later ones over earlier ones); its mask gives
  every stroke pixel (value > 64 of 255) its digit's class, 1 + the digit,
  and every other pixel class 0, the background: 11 classes. Train scenes
  use the digits' train split, test scenes their test split, so no digit
  image is on both sides. Deterministic: a function of the options and
  the split (`np.random.RandomState`, whose stream NumPy keeps fixed).
- `segfolder:/path/to/root`: `root/train/images/<name>.<ext>` with
  `root/train/masks/<name>.png` (and `root/test/...`, or `root/val/...`).
  A mask is a single-channel PNG (mode L or P) of class indices, 255 where
  a pixel is not labelled (ignored by the probe and its scores, as in
  Pascal VOC). `root/classes.txt`, one name per line, gives the classes;
  without it they are 0 .. the largest index in the train masks.

Images are resized as every source resizes them (`base.square`: central
square, bilinear); masks take the same square with nearest-neighbour
resampling, so every pixel keeps a class that was really there. Held in
memory, decoded on each load (no `.npz` cache and no streamed records yet).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from ssl_jax.data import decode
from ssl_jax.data.base import IMAGE_EXTENSIONS, DatasetError, square
from ssl_jax.data.digits import load_digits
from ssl_jax.data.image_folder import resolve_root, visible_entries

IGNORE = 255  # a mask value no class has: not scored, no loss
CANVAS = 16
DIGIT = 8
STROKE = 64  # a digit pixel brighter than this (of 255) belongs to the digit
SCENE_DEFAULTS = {"train_size": 1000, "test_size": 300, "digits": 3, "seed": 0}
_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationDataset:
    images: np.ndarray  # uint8 [N, S, S, 3], RGB
    masks: np.ndarray  # uint8 [N, S, S]: a class in [0, num_classes), or IGNORE
    num_classes: int
    name: str
    class_names: tuple[str, ...]

    def __post_init__(self):
        images, masks = self.images, self.masks
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise ValueError(f"masks must be uint8 {list(images.shape[:3])}, got {masks.shape}")
        labelled = masks[masks != IGNORE]
        if labelled.size and labelled.max() >= self.num_classes:
            raise ValueError(f"mask values must lie in [0, {self.num_classes}) or be {IGNORE}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(self.class_names)} names")

    def __len__(self) -> int:
        return len(self.images)


def load_segmentation(
    name: str, split: str, *, image_size: int, data_dir: str | None = None
) -> SegmentationDataset:
    """Split "train" or "test" of `name` (see the module docstring) at
    `image_size`^2 pixels."""
    kind, _, arg = name.partition(":")
    if kind not in _SOURCES:
        raise DatasetError(
            f"Unknown segmentation dataset {name!r}: use digit_scenes[:train_size=INT,"
            "test_size=INT,digits=INT,seed=INT] or segfolder:/path/to/root."
        )
    return _SOURCES[kind](arg, split, image_size, data_dir)


# ----------------------------------------------------------------------------- digit scenes


def parse_scenes(arg: str) -> dict[str, int]:
    options = dict(SCENE_DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in options or not value.isdigit():
            raise DatasetError(
                f"Bad digit_scenes option {item!r}: use digit_scenes:train_size=INT,"
                "test_size=INT,digits=INT,seed=INT."
            )
        options[key] = int(value)
    if min(options["train_size"], options["test_size"], options["digits"]) < 1:
        raise DatasetError(f"digit_scenes needs sizes and digits >= 1, got {options}.")
    return options


def make_scenes(
    digits: np.ndarray, labels: np.ndarray, count: int, per_scene: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey digits [M, 8, 8] and their int labels -> (grey scenes uint8
    [count, 16, 16], masks uint8 [count, 16, 16]) as the module docstring says."""
    rng = np.random.RandomState(seed)
    scenes = np.zeros((count, CANVAS, CANVAS), np.uint8)
    masks = np.zeros((count, CANVAS, CANVAS), np.uint8)
    room = CANVAS - DIGIT + 1
    for i in range(count):
        for d in rng.randint(len(digits), size=per_scene):
            y, x = rng.randint(room, size=2)
            stroke = digits[d] > STROKE
            box = (slice(y, y + DIGIT), slice(x, x + DIGIT))
            # Only the stroke covers what lies below: a digit's dark box does not.
            scenes[i][box] = np.where(stroke, digits[d], scenes[i][box])
            masks[i][box] = np.where(stroke, labels[d] + 1, masks[i][box])
    return scenes, masks


def _digit_scenes(arg: str, split: str, image_size: int, data_dir) -> SegmentationDataset:
    options = parse_scenes(arg)
    source = load_digits("", split, DIGIT, None, None)
    count = options[f"{split}_size"]
    # Its own stream per split, so test scenes do not repeat train placements.
    seed = options["seed"] * 2 + (split == "test")
    grey, masks = make_scenes(source.images[..., 0], source.labels, count, options["digits"], seed)
    images = np.repeat(grey[..., None], 3, axis=-1)
    if image_size != CANVAS:
        images = np.stack([square(Image.fromarray(g, "L"), image_size) for g in grey])
        masks = np.stack([square_mask(Image.fromarray(m, "L"), image_size) for m in masks])
    names = ("background", *(f"digit {c}" for c in range(10)))
    return SegmentationDataset(images, masks, 11, f"digit_scenes:{arg}".rstrip(":"), names)


# ----------------------------------------------------------------------------- image + mask folders


def square_mask(mask: Image.Image, size: int) -> np.ndarray:
    """The mask's central square at `size` px by nearest-neighbour
    resampling (the geometry of `base.square`): uint8 [size, size]."""
    w, h = mask.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    if (w, h) != (size, size):
        mask = mask.resize((size, size), Image.Resampling.NEAREST, box=box)
    return np.asarray(mask, dtype=np.uint8)


def _read_mask(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as e:
        raise decode.image_error(path, e) from None
    if image.mode not in ("L", "P"):
        raise DatasetError(
            f"Mask {path} is a {image.mode} image; masks are single-channel PNGs (mode L or P) "
            f"of class indices, {IGNORE} for unlabelled pixels."
        )
    return image


def _folder_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """(image path, mask path) of every image of the split's folder."""
    layout = f"expected {root}/train/images/<name> with {root}/train/masks/<name>.png (and test/)"
    folder = next(
        (
            os.path.join(root, f)
            for f in _SPLIT_FOLDERS[split]
            if os.path.isdir(os.path.join(root, f))
        ),
        None,
    )
    if folder is None or not os.path.isdir(os.path.join(folder, "images")):
        raise DatasetError(f"Segmentation folder {root} has no {split} images; {layout}.")
    images_dir, masks_dir = os.path.join(folder, "images"), os.path.join(folder, "masks")
    images = [
        f for f in visible_entries(images_dir) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
    ]
    if not images:
        raise DatasetError(f"No images under {images_dir}; {layout}.")
    pairs = []
    for f in images:
        mask = os.path.join(masks_dir, os.path.splitext(f)[0] + ".png")
        if not os.path.isfile(mask):
            raise DatasetError(f"Image {os.path.join(images_dir, f)} has no mask {mask}; {layout}.")
        pairs.append((os.path.join(images_dir, f), mask))
    return pairs


def _class_names(root: str, largest: int) -> tuple[str, ...]:
    path = os.path.join(root, "classes.txt")
    if not os.path.isfile(path):
        return tuple(str(c) for c in range(largest + 1))
    with open(path) as f:
        names = tuple(line.strip() for line in f if line.strip())
    if len(names) <= largest:
        raise DatasetError(
            f"{path} names {len(names)} classes but a train mask holds class {largest}; "
            "add the missing names or fix the masks."
        )
    return names


def _segfolder(path: str, split: str, image_size: int, data_dir) -> SegmentationDataset:
    if not path.strip():
        raise DatasetError("segfolder: needs the folder's path, e.g. segfolder:/data/scenes.")
    root = resolve_root(path, data_dir)
    masks, images = [], []
    for image_path, mask_path in _folder_pairs(root, split):
        mask = _read_mask(mask_path)
        with Image.open(image_path) as image:
            size = image.size
        if mask.size != size:
            raise DatasetError(
                f"Mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image is "
                f"{size[0]}x{size[1]}; a mask must have its image's size."
            )
        images.append(image_path)
        masks.append(square_mask(mask, image_size))
    masks = np.stack(masks)
    labelled = masks[masks != IGNORE]
    train_masks = labelled if split == "train" else _train_mask_values(root, image_size, data_dir)
    names = _class_names(root, int(train_masks.max(initial=0)))
    if labelled.size and labelled.max() >= len(names):
        raise DatasetError(
            f"A {split} mask under {root} holds class {labelled.max()}, beyond the "
            f"{len(names)} classes of the train masks (or classes.txt)."
        )
    pixels = decode.decode_all(images, image_size, images)
    return SegmentationDataset(pixels, masks, len(names), f"segfolder:{root}", names)


def _train_mask_values(root: str, image_size: int, data_dir) -> np.ndarray:
    """The labelled values of the train masks: they, not the test ones, fix the classes."""
    if os.path.isfile(os.path.join(root, "classes.txt")):
        return np.zeros(0, np.uint8)
    values = [square_mask(_read_mask(m), image_size) for _, m in _folder_pairs(root, "train")]
    values = np.concatenate([v.reshape(-1) for v in values])
    return values[values != IGNORE]


_SOURCES = {"digit_scenes": _digit_scenes, "segfolder": _segfolder}
