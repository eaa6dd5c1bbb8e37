"""Image folders: `imagefolder:/path/to/root` holds `root/train/<class>/<image>`
and `root/test/<class>/<image>` (or `root/val/...`).

The classes, and their label order, are train/'s class folders, sorted, so
both splits agree on the labels. `list_image_folder` is the one check of that
layout (root, split folders, class folders, images present): the in-memory
loader here and `python -m ssl_jax.prepare` both call it, so they accept the
same folders and refuse a broken one with the same one-line message. An
unreadable image is reported by `decode.image_error`, also for both.

Decoded splits are cached as `.npz` (`base.cached_arrays`), keyed by the
files' names, sizes and mtimes, so an edited folder is decoded again.
"""

from __future__ import annotations

import os

import numpy as np

from ssl_jax.data import decode
from ssl_jax.data.base import (
    IMAGE_EXTENSIONS,
    DatasetError,
    ImageDataset,
    cached_arrays,
    file_stats,
)
from ssl_jax.registry import DATASETS

# Where each split's images may live, in order of preference.
_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}


def resolve_root(path: str, data_dir: str | None) -> str:
    """The folder's absolute path: a relative `path` is relative to `data_dir`, when given."""
    return os.path.abspath(
        os.path.join(os.path.expanduser(data_dir or ""), os.path.expanduser(path))
    )


def visible_entries(directory: str) -> list[str]:
    """The directory's entries, sorted, without hidden ones (.DS_Store, .git, ...)."""
    return sorted(e for e in os.listdir(directory) if not e.startswith("."))


def is_image(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS


def list_image_folder(
    root: str, splits: tuple[str, ...] = ("train", "test")
) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """(classes, {split folder: [(file, label), ...]}) of the image folder at
    `root`, for the `splits` asked ("train", "test"); the test split is read
    from the first of test/ and val/ present, and keyed by that folder's name.

    Every split folder is looked for before any is listed, so a folder missing
    one is told so first. DatasetError (one line: what is wrong, the layout
    expected) when the root, train/ or a split folder is missing, a class
    folder has no counterpart in train/, or a split has no images."""
    layout = f"expected {root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/)"
    if not os.path.isdir(root):
        raise DatasetError(f"Image folder {root} does not exist; {layout}.")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DatasetError(f"Image folder has no {train_dir}; {layout}.")
    classes = [c for c in visible_entries(train_dir) if os.path.isdir(os.path.join(train_dir, c))]
    folders = []
    for split in splits:
        found = (n for n in _SPLIT_FOLDERS[split] if os.path.isdir(os.path.join(root, n)))
        folder = next(found, None)
        if folder is None:
            raise DatasetError(f"Image folder has no {root}/test or {root}/val; {layout}.")
        folders.append(folder)

    listed = {}
    for folder in folders:
        split_dir, files = os.path.join(root, folder), []
        for c in visible_entries(split_dir):
            class_dir = os.path.join(split_dir, c)
            if not os.path.isdir(class_dir):
                continue
            if c not in classes:
                raise DatasetError(
                    f"Class directory {class_dir} has no counterpart in {train_dir}; "
                    "add it to train/ or remove it."
                )
            label = classes.index(c)
            files += [(os.path.join(class_dir, f), label) for f in visible_entries(class_dir)]
        files = [(f, label) for f, label in files if is_image(f)]
        if not files:
            extensions = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"No images ({extensions}) under {split_dir}/<class>/; {layout}.")
        listed[folder] = files
    return classes, listed


@DATASETS.register("imagefolder")
def load(
    path: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    """Split "train" or "test" of the image folder `path`, decoded at `image_size` px."""
    if not path.strip():
        raise DatasetError(
            "imagefolder: needs the folder's path, e.g. --config.dataset=imagefolder:/data/photos "
            "(holding train/<class>/<image> and test/<class>/<image>)."
        )
    root = resolve_root(path, data_dir)
    classes, listed = list_image_folder(root, (split,))
    ((_, items),) = listed.items()
    files = [f for f, _ in items]
    key = {
        "kind": "imagefolder",
        "root": root,
        "split": split,
        "image_size": image_size,
        "classes": classes,
        "files": file_stats(root, files),
    }
    stem = f"imagefolder-{os.path.basename(root)}-{split}-{image_size}"
    images, labels = cached_arrays(
        cache_dir,
        stem,
        key,
        image_size,
        lambda: (
            decode.decode_all(files, image_size, files),
            np.array([label for _, label in items], np.int32),
        ),
    )
    return ImageDataset(images, labels, len(classes), f"imagefolder:{root}", tuple(classes))


def native_size(path: str, data_dir: str | None, peek: int) -> int | None:
    """The median shorter side of the first `peek` training images (headers only)."""
    train = os.path.join(resolve_root(path, data_dir), "train")
    sizes: list[int] = []
    for c in visible_entries(train):
        files = [f for f in visible_entries(os.path.join(train, c)) if is_image(f)]
        sizes += [decode.shorter_side(os.path.join(train, c, f)) for f in files[:peek]]
        if len(sizes) >= peek:
            break
    return int(np.median(sizes)) if sizes else None
