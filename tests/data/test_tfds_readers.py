"""The TFDS text and video readers (`tfds_source.load` -> `text.py` /
`video.py`) on datasets prepared by tfds itself, in ArrayRecord format.

tensorflow_datasets writes and reads a Text feature without TensorFlow, so
the text reader runs here on a real prepared dataset. Its Video feature
imports TensorFlow even to describe a prepared dataset (tfds 4.9.10,
`Video.__init__`), so the video reader runs only where TensorFlow is
installed; without it, opening a video dataset is one line saying so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_jax.data import text
from ssl_jax.data.base import DatasetError
from ssl_jax.data.datasets import load_dataset

tfds = pytest.importorskip("tensorflow_datasets")

# Multi-byte UTF-8, an empty text, and one longer than the reader's 128 bytes.
TEXTS = {
    "train": ["a good film", "bad", "très bien, ça ✓", "", "x" * 150 + "tail", "meh"],
    "test": ["fine", "awful acting", "ok ok"],
}
LABELS = ("neg", "pos")


def _has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _build(data_dir, name: str, features: dict, examples: dict) -> None:
    """A tfds dataset `name` with these features and {split: [example]}, prepared
    as ArrayRecord in data_dir (no network)."""
    tfds.disable_progress_bar()

    def info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in examples}

    def generate_examples(self, split):
        yield from enumerate(examples[split])

    with tfds.core.registered.skip_registration():
        builder = type(
            name,
            (tfds.core.GeneratorBasedBuilder,),
            {
                "VERSION": tfds.core.Version("1.0.0"),
                "code_path": None,  # tfds 4.9.10 needs importlib_resources otherwise.
                "_info": info,
                "_split_generators": split_generators,
                "_generate_examples": generate_examples,
            },
        )
    builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds_text")
    examples = {
        split: [{"text": t, "label": i % 2} for i, t in enumerate(texts)]
        for split, texts in TEXTS.items()
    }
    features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=LABELS)}
    _build(data_dir, "SslJaxTinyText", features, examples)
    return str(data_dir)


def test_the_tfds_text_reader_on_a_prepared_dataset(text_dir):
    for split in ("train", "test"):
        data = load_dataset("tfds:ssl_jax_tiny_text", split, image_size=8, data_dir=text_dir)
        assert data.input_key == "tokens" and data.name == "tfds:ssl_jax_tiny_text"
        assert data.num_classes == 2 and data.class_names == LABELS
        assert data.inputs.shape == (len(TEXTS[split]), 128) and data.inputs.dtype == np.int32
        # tfds stores examples in its own (hashed) order: compare as a set of rows.
        expected = sorted(
            (bytes(text.encode(t, 128).astype(np.uint16)), i % 2)
            for i, t in enumerate(TEXTS[split])
        )
        got = sorted(
            (bytes(row.astype(np.uint16)), int(label))
            for row, label in zip(data.inputs, data.labels, strict=True)
        )
        assert got == expected
    train = load_dataset("tfds:ssl_jax_tiny_text", "train", image_size=8, data_dir=text_dir)
    decoded = {text.decode(row) for row in train.inputs}
    assert "très bien, ça ✓" in decoded and "x" * 128 in decoded  # Cut at 128 bytes.


@pytest.mark.skipif(
    not _has_tensorflow(), reason="tfds's Video feature needs TensorFlow (not installed)"
)
def test_the_tfds_video_reader_on_a_prepared_dataset(tmp_path):
    # Each clip: frames of one grey value per frame (10 * clip + frame).
    clips = [np.full((4 + c, 6, 10, 3), 0, np.uint8) for c in range(3)]
    for c, clip in enumerate(clips):
        clip[:] = (10 * c + np.arange(len(clip)))[:, None, None, None]
    examples = {
        split: [{"video": clip, "label": c % 2} for c, clip in enumerate(clips)]
        for split in ("train", "test")
    }
    features = {
        "video": tfds.features.Video(shape=(None, 6, 10, 3)),
        "label": tfds.features.ClassLabel(names=LABELS),
    }
    _build(tmp_path, "SslJaxTinyVideo", features, examples)
    data = load_dataset("tfds:ssl_jax_tiny_video", "test", image_size=4, data_dir=str(tmp_path))
    assert data.input_key == "video" and data.inputs.shape == (3, 8, 4, 4, 3)
    first = sorted(int(v[0, 0, 0, 0]) for v in data.inputs)
    last = sorted(int(v[-1, 0, 0, 0]) for v in data.inputs)
    assert first == [0, 10, 20] and last == [3, 14, 25]  # 8 evenly spaced frames of 4-6.


@pytest.mark.skipif(_has_tensorflow(), reason="TensorFlow installed: the video reader runs")
def test_a_video_dataset_without_tensorflow_is_one_line(text_dir, tmp_path):
    # A prepared dataset that describes a Video feature (as ucf101's does): the
    # text dataset's description with its Text feature swapped for a Video one.
    import shutil

    shutil.copytree(text_dir, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "ssl_jax_tiny_text" / "1.0.0" / "features.json"
    described = json.loads(path.read_text())
    described["featuresDict"]["features"]["text"] = {
        "pythonClassName": "tensorflow_datasets.core.features.video_feature.Video",
        "video": {"shape": {"dimensions": ["-1", "6", "10", "3"]}, "dtype": "uint8"},
    }
    path.write_text(json.dumps(described))
    with pytest.raises(DatasetError) as info:
        load_dataset("tfds:ssl_jax_tiny_text", "train", image_size=4, data_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "tfds:ssl_jax_tiny_text" in message
    assert "without TensorFlow" in message and "pip install tensorflow" in message
