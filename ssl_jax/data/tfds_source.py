"""TFDS datasets: `tfds:NAME`, `tfds:NAME/CONFIG`, `tfds:NAME:VERSION`,
prepared in ArrayRecord format under `data_dir` and read without TensorFlow.

Image datasets are decoded once on a thread pool (`decode.decode_all`) and
cached as `.npz` (`base.cached_arrays`), keyed by the prepared files' names,
sizes and mtimes. Text and video datasets with a label (`tfds:imdb_reviews`,
`tfds:ag_news_subset`, ...) load as an `ArrayDataset` through `text.py` and
`video.py`. Datasets without a labelled test split (imagenette) evaluate on
their validation split.
"""

from __future__ import annotations

import os

import numpy as np

from ssl_jax.data import decode, records, text, video
from ssl_jax.data.base import DatasetError, ImageDataset, cached_arrays, file_stats, only_feature
from ssl_jax.registry import DATASETS


@DATASETS.register("tfds")
def load(
    spec: str, split: str, image_size: int, data_dir: str | None, cache_dir: str | None
) -> ImageDataset:
    import tensorflow_datasets as tfds  # Lazy: importing tfds takes a moment.

    builder = records.tfds_builder(spec, data_dir)
    # Most builders encode images through TensorFlow while preparing, so the one-off
    # preparation needs it (and network); reading afterwards needs neither.
    prepare = (
        "Prepare it once (needs network and TensorFlow, e.g. in a separate env with "
        f"`pip install tensorflow tensorflow-datasets`): tfds build {spec} "
        f"--data_dir={builder.data_dir_root} --file_format=array_record"
    )
    if not builder.is_prepared():
        raise DatasetError(f"tfds:{spec} is not prepared in {builder.data_dir_root}. {prepare}")

    available = list(builder.info.splits)
    # Datasets without a labelled test split (e.g. imagenette) evaluate on validation.
    wanted = [split] if split == "train" else ["test", "validation"]
    tfds_split = next((s for s in wanted if s in available), None)
    if tfds_split is None:
        raise DatasetError(f"tfds:{spec} has no split {' or '.join(wanted)}; it has {available}.")
    features = builder.info.features
    label_key = only_feature(features, tfds.features.ClassLabel, "label", spec)
    num_classes = features[label_key].num_classes
    kinds = {type(f).__name__ for f in features.values()}
    if "Image" not in kinds and kinds & {"Text", "Video"}:
        return _load_tfds_sequences(builder, spec, tfds_split, label_key, image_size, prepare)
    image_key = only_feature(features, tfds.features.Image, "image", spec)

    def build() -> tuple[np.ndarray, np.ndarray]:
        try:  # Keep images encoded, so they are decoded (and resized) on our thread pool.
            source = builder.as_data_source(
                split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()}
            )
        except NotImplementedError as e:  # Prepared as TFRecord: needs TensorFlow to read.
            raise DatasetError(f"tfds:{spec} is not in ArrayRecord format. {prepare}") from e
        examples = source.__getitems__(range(len(source)))
        labels = np.array([ex[label_key] for ex in examples], np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(
                f"tfds:{spec} split {tfds_split} has labels outside [0, {num_classes})."
            )
        names = [f"tfds:{spec}[{tfds_split}][{i}]" for i in range(len(examples))]
        images = decode.decode_all([ex[image_key] for ex in examples], image_size, names)
        return images, labels.astype(np.int32)

    version_dir = builder.data_dir
    files = sorted(os.path.join(version_dir, f) for f in os.listdir(version_dir))
    key = {
        "kind": "tfds",
        "dir": os.path.abspath(version_dir),
        "split": tfds_split,
        "image_size": image_size,
        "keys": [image_key, label_key],
        "files": file_stats(version_dir, files),
    }
    stem = f"tfds-{builder.info.full_name}-{tfds_split}-{image_size}"
    images, labels = cached_arrays(cache_dir, stem, key, image_size, build)
    class_names = tuple(features[label_key].names)
    return ImageDataset(images, labels, num_classes, f"tfds:{spec}", class_names)


# Text and video datasets are read whole: small enough, and decoded by tfds.
_TFDS_TEXT_LENGTH = 128  # bytes per text example (data/text.py)
_TFDS_VIDEO_FRAMES = 8  # evenly spaced frames per video (data/video.py)


def _load_tfds_sequences(builder, spec, tfds_split, label_key, image_size, prepare):
    """A prepared TFDS dataset whose input is a Text feature (bytes as tokens,
    `data/text.py`) or a Video one (`data/video.py`), with its ClassLabel."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    try:
        source = builder.as_data_source(split=tfds_split)
    except NotImplementedError as e:
        raise DatasetError(f"tfds:{spec} is not in ArrayRecord format. {prepare}") from e
    examples = source.__getitems__(range(len(source)))
    labels = np.array([ex[label_key] for ex in examples], np.int32)
    label = features[label_key]
    names = tuple(label.names)
    if any(isinstance(f, tfds.features.Text) for f in features.values()):
        key = only_feature(features, tfds.features.Text, "text", spec)
        texts = [ex[key] for ex in examples]
        return text.from_texts(
            texts, labels, label.num_classes, f"tfds:{spec}", _TFDS_TEXT_LENGTH, names
        )
    key = only_feature(features, tfds.features.Video, "video", spec)
    return video.from_frames(
        [ex[key] for ex in examples],
        labels,
        label.num_classes,
        f"tfds:{spec}",
        _TFDS_VIDEO_FRAMES,
        image_size,
        names,
    )


def native_size(spec: str, data_dir: str | None) -> int | None:
    """The image side TFDS declares for `spec`; None when its images vary in size."""
    import tensorflow_datasets as tfds

    features = records.tfds_builder(spec, data_dir).info.features
    shape = features[only_feature(features, tfds.features.Image, "image", spec)].shape
    return shape[0] if shape[0] and shape[1] else None
