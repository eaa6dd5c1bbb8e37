"""Datasets of other modalities: the pydoc text corpus and the moving digits."""

import numpy as np
import pytest

from ssl_jax.data import text, video
from ssl_jax.data.datasets import ArrayDataset, DatasetError, load_dataset


def test_bytes_round_trip_and_pad():
    tokens = text.encode("héllo", 8)
    assert tokens.dtype == np.int32 and len(tokens) == 8
    assert list(tokens[6:]) == [text.PAD_ID] * 2  # "é" is two bytes
    assert text.decode(tokens) == "héllo"


def test_pydoc_topics_split_by_chunk_without_shared_text():
    train = load_dataset("pydoc:length=64", "train", image_size=16)
    test = load_dataset("pydoc:length=64", "test", image_size=16)
    assert isinstance(train, ArrayDataset) and train.input_key == "tokens"
    assert train.inputs.shape[1] == 64 and train.inputs.dtype == np.int32
    assert train.inputs.min() >= 0 and train.inputs.max() <= text.PAD_ID
    assert train.num_classes == test.num_classes == len(train.class_names) >= 10
    # Every topic on both sides, roughly 4:1; no identical chunk in both splits.
    classes = set(range(train.num_classes))
    assert set(np.unique(train.labels)) == set(np.unique(test.labels)) == classes
    assert 3.5 < len(train) / len(test) < 4.5
    assert not {r.tobytes() for r in train.inputs} & {r.tobytes() for r in test.inputs}
    again = load_dataset("pydoc:length=64", "train", image_size=16)
    np.testing.assert_array_equal(again.inputs, train.inputs)  # deterministic
    with pytest.raises(DatasetError, match="Bad pydoc option"):
        load_dataset("pydoc:lenght=64", "train", image_size=16)


def test_moving_digits_move_in_their_labelled_direction():
    clips = load_dataset("moving_digits:frames=6", "test", image_size=16)
    directions = load_dataset("moving_digits:frames=6,label=direction", "test", image_size=16)
    assert clips.input_key == "video" and clips.inputs.shape[1:] == (6, 16, 16, 3)
    np.testing.assert_array_equal(clips.inputs, directions.inputs)  # same clips, other labels
    assert clips.num_classes == 10 and directions.num_classes == 8
    grey = clips.inputs[..., 0].astype(np.float64)
    mass = grey.sum(axis=(2, 3))
    np.testing.assert_allclose(mass, mass[:, :1] * np.ones((1, 6)))  # never leaves the canvas
    ys, xs = np.mgrid[:16, :16]
    cx = (grey * xs).sum(axis=(2, 3)) / mass
    cy = (grey * ys).sum(axis=(2, 3)) / mass
    step = np.stack([np.diff(cx, axis=1), np.diff(cy, axis=1)], -1)  # [N, T - 1, 2]
    want = np.asarray(video.DIRECTIONS)[directions.labels]
    np.testing.assert_allclose(step, np.broadcast_to(want[:, None], step.shape), atol=1e-9)
    # The test clips' digits are the digits test split (no digit image in both).
    digits = load_dataset("digits", "test", image_size=8)
    assert len(clips) == 2 * len(digits)
    np.testing.assert_array_equal(clips.labels[::2], digits.labels)


def test_moving_digits_options_are_checked():
    with pytest.raises(DatasetError, match="moving_digits"):
        load_dataset("moving_digits:frames=12", "train", image_size=16)
    with pytest.raises(DatasetError, match="moving_digits"):
        load_dataset("moving_digits:label=colour", "train", image_size=16)


def _fake_tfds(monkeypatch, tmp_path, features, examples):
    """`tfds.builder` answering with a prepared dataset of these examples."""
    import types

    tfds = pytest.importorskip("tensorflow_datasets")

    class Source(list):
        def __getitems__(self, indices):
            return [self[i] for i in indices]

    builder = types.SimpleNamespace(
        data_dir_root=str(tmp_path),
        data_dir=str(tmp_path),
        info=types.SimpleNamespace(
            features=tfds.features.FeaturesDict(features),
            splits={"train": None, "test": None},
            full_name="fake/1.0.0",
        ),
        is_prepared=lambda: True,
        as_data_source=lambda split, decoders=None: Source(examples),
    )
    monkeypatch.setattr(tfds, "builder", lambda spec, data_dir=None: builder)
    return tfds


def test_tfds_text_takes_the_tfds_reader(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    label = tfds.features.ClassLabel(names=["neg", "pos"])
    examples = [{"text": b"a good film", "label": 1}, {"text": b"bad", "label": 0}]
    _fake_tfds(monkeypatch, tmp_path, {"text": tfds.features.Text(), "label": label}, examples)
    split = load_dataset("tfds:fake_text", "test", image_size=16)
    assert split.input_key == "tokens" and split.inputs.shape == (2, 128)
    assert text.decode(split.inputs[0]) == "a good film" and list(split.labels) == [1, 0]
    # (A Video feature needs TensorFlow to build, so its path is not tested here.)
