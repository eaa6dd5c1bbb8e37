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
  without it they are 0 .. the largest index in the train masks (whole
  masks, whatever size the probe reads them at).
- `segrecords:/dir`: the ArrayRecord shards that `python -m ssl_jax.prepare
  --source=segfolder:/root --out=/dir` writes (each image and mask file
  stored byte for byte, the class names in dataset_info.json), read whole
  into memory: the same arrays and classes as `segfolder:/root`. Local
  directories only, as for the folders (`records` opens local files).

Images are resized as every source resizes them (`base.square`: central
square, bilinear); masks take the same square with nearest-neighbour
resampling, so every pixel keeps a class that was really there. Held in
memory, decoded on each load (no `.npz` cache, no streaming).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from ssl_jax import storage
from ssl_jax.data import decode
from ssl_jax.data.base import IMAGE_EXTENSIONS, DatasetError, central_square, square
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
            "test_size=INT,digits=INT,seed=INT], segfolder:/path/to/root or "
            "segrecords:/path/to/records."
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
    return central_square(mask, size, Image.Resampling.NEAREST)


def _image_size(source: str | bytes, where: str) -> tuple[int, int]:
    """(width, height) from an image's header (a path or encoded bytes);
    DatasetError naming `where`."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.size
    except decode.DECODE_ERRORS as e:
        raise decode.image_error(where, e) from None


def _open_mask(data: bytes, image_size: tuple[int, int], num_classes: int | None) -> Image.Image:
    """An encoded mask, decoded and checked against its image's (width,
    height) and, given `num_classes`, its class count; ValueError with the
    reason, phrased to follow the mask's name."""
    try:
        with Image.open(io.BytesIO(data)) as mask:
            mask.load()
    except decode.DECODE_ERRORS as e:
        raise ValueError(f"cannot be decoded ({decode.error_reason(e)})") from None
    if mask.mode not in ("L", "P"):
        raise ValueError(
            f"is a {mask.mode} image; masks are single-channel PNGs (mode L or P) of class "
            f"indices, {IGNORE} for unlabelled pixels"
        )
    if mask.size != image_size:
        raise ValueError(
            f"is {mask.size[0]}x{mask.size[1]} but its image is {image_size[0]}x{image_size[1]}; "
            "a mask must have its image's size"
        )
    if num_classes is not None:
        largest = _largest_class(mask)
        if largest >= num_classes:
            raise ValueError(f"holds class {largest}, beyond the {num_classes} classes")
    return mask


def _largest_class(mask: Image.Image) -> int:
    """The largest labelled value of a whole mask (-1 if none is labelled)."""
    values = np.asarray(mask, dtype=np.uint8)
    labelled = values[values != IGNORE]
    return int(labelled.max()) if labelled.size else -1


def _split_folder(root: str, split: str) -> str | None:
    """The folder ("train", or "test" else "val") holding `split` under `root`."""
    return next((f for f in _SPLIT_FOLDERS[split] if os.path.isdir(os.path.join(root, f))), None)


def _folder_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """(image path, mask path) of every image of the split's folder, sorted by name."""
    layout = f"expected {root}/train/images/<name> with {root}/train/masks/<name>.png (and test/)"
    folder = _split_folder(root, split)
    if folder is None or not os.path.isdir(os.path.join(root, folder, "images")):
        raise DatasetError(f"Segmentation folder {root} has no {split} images; {layout}.")
    images_dir, masks_dir = (os.path.join(root, folder, sub) for sub in ("images", "masks"))
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


def folder_classes(root: str) -> tuple[str, ...]:
    """The class names of the folder: `classes.txt`'s lines, or 0 .. the
    largest class of the whole train masks (not of their resized squares, so
    the classes do not depend on the size the probe reads them at)."""
    path = os.path.join(root, "classes.txt")
    if os.path.isfile(path):
        with open(path) as f:
            names = tuple(line.strip() for line in f if line.strip())
        if not names:
            raise DatasetError(f"{path} names no class; write one class name per line.")
        return names
    largest = 0
    for image_path, mask_path in _folder_pairs(root, "train"):
        mask = _folder_mask(image_path, mask_path, decode.read_image_file(mask_path), None, "")
        largest = max(largest, _largest_class(mask))
    return tuple(str(c) for c in range(largest + 1))


def _folder_mask(
    image_path: str, mask_path: str, data: bytes, num_classes: int | None, classes_from: str
) -> Image.Image:
    """The decoded, checked mask of a folder's image (`data`: the mask file's
    bytes); DatasetError naming the mask."""
    try:
        return _open_mask(data, _image_size(image_path, image_path), num_classes)
    except ValueError as e:
        raise DatasetError(f"Mask {mask_path} {e}{classes_from}.") from None


def _classes_from(root: str) -> str:
    if os.path.isfile(os.path.join(root, "classes.txt")):
        return f" of {os.path.join(root, 'classes.txt')}; add the missing names or fix the mask"
    return " of the train masks; fix the mask"


def _segfolder(path: str, split: str, image_size: int, data_dir) -> SegmentationDataset:
    root = local_root(path, data_dir, "segfolder")
    names = folder_classes(root)
    masks, images = [], []
    for image_path, mask_path in _folder_pairs(root, split):
        data = decode.read_image_file(mask_path)
        mask = _folder_mask(image_path, mask_path, data, len(names), _classes_from(root))
        images.append(image_path)
        masks.append(square_mask(mask, image_size))
    pixels = decode.decode_all(images, image_size, images)
    return SegmentationDataset(pixels, np.stack(masks), len(names), f"segfolder:{root}", names)


def folder_examples(root: str, verify: bool):
    """What `ssl_jax.prepare --source=segfolder:` writes: ({split folder: [(image
    path, mask path)]}, class names, read) where `read(pair)` gives the pair's
    `records.Example`, its image and mask bytes as they are (the mask decoded
    only to check it as `segfolder:` does; with `verify`, the image too)."""
    from ssl_jax.data import records  # lazy: only prepare needs the writer's types

    names = folder_classes(root)
    pairs = {_split_folder(root, split): _folder_pairs(root, split) for split in ("train", "test")}
    classes_from = _classes_from(root)

    def read(pair: tuple[str, str]) -> records.Example:
        image_path, mask_path = pair
        mask = decode.read_image_file(mask_path)
        _folder_mask(image_path, mask_path, mask, len(names), classes_from)
        image = decode.read_image_file(image_path)
        if verify:
            decode.decode_image(image, image_path)
        # No label per image: the classes are the masks'.
        return records.Example(os.path.relpath(image_path, root), image, 0, mask=mask)

    return pairs, names, read


# ----------------------------------------------------------------------------- records


def _segrecords(path: str, split: str, image_size: int, data_dir) -> SegmentationDataset:
    from ssl_jax.data import records

    directory = local_root(path, data_dir, "segrecords")
    info = records.read_info(directory)
    if not info.get("masks"):
        raise DatasetError(
            f"{directory} holds image records without masks; write a segmentation folder's "
            f"records with python -m ssl_jax.prepare --source=segfolder:/path/to/root "
            f"--out={directory} --overwrite."
        )
    source = records.RecordSource(directory, split)
    names = source.class_names or tuple(str(c) for c in range(source.num_classes))
    damaged = "the records are damaged: re-run python -m ssl_jax.prepare --source=segfolder:..."
    items = source.__getitems__(range(len(source))) if len(source) else []
    masks = []
    for i, record in enumerate(items):
        where = f"{source.where(i)} ({record['key']})"
        if "mask" not in record:
            raise DatasetError(f"Record {where} holds no mask; {damaged}")
        try:
            mask = _open_mask(
                record["mask"], _image_size(record["image"], where), source.num_classes
            )
        except ValueError as e:
            raise DatasetError(f"The mask of record {where} {e}; {damaged}") from None
        masks.append(square_mask(mask, image_size))
    pixels = decode.decode_all(
        [r["image"] for r in items], image_size, [f"{source.where(i)}" for i in range(len(items))]
    )
    return SegmentationDataset(
        pixels, np.stack(masks), source.num_classes, f"segrecords:{directory}", names
    )


def local_root(path: str, data_dir: str | None, kind: str) -> str:
    if not path.strip():
        raise DatasetError(f"{kind}: needs the folder's path, e.g. {kind}:/data/scenes.")
    if storage.is_url(path) or (not os.path.isabs(path) and data_dir and storage.is_url(data_dir)):
        raise DatasetError(
            f"{kind}:{path} (data_dir {data_dir or 'unset'}): {kind} data is read from local "
            "files only; mount the bucket (e.g. gcsfuse) and pass its local path."
        )
    return resolve_root(path, data_dir)


_SOURCES = {"digit_scenes": _digit_scenes, "segfolder": _segfolder, "segrecords": _segrecords}
SOURCE_KINDS = tuple(_SOURCES)
