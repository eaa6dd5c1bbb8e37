"""Tests for ssl_jax.data.records: our ArrayRecord shards and the TFDS source.

Everything is written in tmp_path; the TFDS dataset is built without
TensorFlow or network (as in test_datasets.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import records
from ssl_jax.data.datasets import DatasetError
from ssl_jax.data.records import Example

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _examples(n: int, seed: int = 0) -> list[Example]:
    """Arbitrary byte strings of varying length (the writer never looks inside)."""
    rng = np.random.default_rng(seed)
    return [
        Example(f"class{i % 3}/img_{i:03d}.jpg", rng.bytes(int(rng.integers(1, 300))), i % 3)
        for i in range(n)
    ]


def _write(directory, splits, **kwargs) -> dict:
    kwargs = {"num_classes": 3, "class_names": ["a", "b", "c"], **kwargs}
    return records.write_records(str(directory), splits, **kwargs)


# ----------------------------------------------------------------------------- round trip


def test_write_read_round_trip(tmp_path):
    train, test = _examples(23), _examples(7, seed=1)
    info = _write(tmp_path, {"train": iter(train), "test": iter(test)}, examples_per_shard=5)

    names = [f"train-0000{i}-of-00005.array_record" for i in range(5)]
    assert [s["file"] for s in info["splits"]["train"]["shards"]] == names
    assert [s["num_examples"] for s in info["splits"]["train"]["shards"]] == [5, 5, 5, 5, 3]
    assert info["splits"]["test"]["num_examples"] == 7
    assert len(info["splits"]["test"]["shards"]) == 2
    on_disk = json.loads((tmp_path / records.INFO_FILE).read_text())
    assert on_disk == info and on_disk["format_version"] == records.FORMAT_VERSION
    assert sorted(os.listdir(tmp_path)) == sorted(
        [
            records.INFO_FILE,
            *names,
            "test-00000-of-00002.array_record",
            "test-00001-of-00002.array_record",
            "train-labels.npy",
            "test-labels.npy",
        ]
    )

    source = records.open_source(f"arrayrecord:{tmp_path}", "train")
    assert len(source) == 23 and source.num_classes == 3
    assert source.class_names == ("a", "b", "c") and source.name == f"arrayrecord:{tmp_path}"
    for i, example in enumerate(train):
        assert source[i] == {"image": example.image, "label": example.label, "key": example.key}
    order = [22, 0, 7, 7, 13, 4]  # Across shards, repeated, unordered.
    assert source.__getitems__(order) == [source[i] for i in order]
    test_source = records.open_source(f"arrayrecord:{tmp_path}", "test")
    assert [test_source[i]["key"] for i in range(7)] == [e.key for e in test]
    with pytest.raises(IndexError):
        source[23]


def test_source_pickles_without_open_readers(tmp_path):
    _write(tmp_path, {"train": _examples(9)}, examples_per_shard=4)
    source = records.open_source(f"arrayrecord:{tmp_path}", "train")
    expected = source[8]  # Opens a reader, which must not travel.
    blob = pickle.dumps(source)
    assert len(blob) < 2000
    copy = pickle.loads(blob)
    assert copy[8] == expected and len(copy) == 9


def test_relative_path_and_data_dir(tmp_path):
    _write(tmp_path / "ds", {"train": _examples(3)})
    source = records.open_source("arrayrecord:ds", "train", data_dir=str(tmp_path))
    assert len(source) == 3


def test_test_split_falls_back_to_val(tmp_path):
    _write(tmp_path, {"train": _examples(4), "val": _examples(2)})
    assert records.open_source(f"arrayrecord:{tmp_path}", "test").split == "val"
    _write(tmp_path, {"train": _examples(4)}, overwrite=True)
    message = _error(records.open_source, f"arrayrecord:{tmp_path}", "test")
    assert "no split test or validation or val" in message
    assert "'valid'" in _error(records.open_source, f"arrayrecord:{tmp_path}", "valid")


def test_bad_specs(tmp_path):
    assert "arrayrecord:/path" in _error(records.open_source, "cifar10", "train")
    assert "ssl_jax.prepare" in _error(records.open_source, "imagefolder:/x", "train")
    assert "does not exist" in _error(records.open_source, f"arrayrecord:{tmp_path}/no", "train")
    assert "no dataset_info.json" in _error(records.open_source, f"arrayrecord:{tmp_path}", "train")


def test_bad_examples_are_rejected(tmp_path):
    bad_label = [Example("x.png", b"1", 3)]
    assert "x.png" in _error(_write, tmp_path / "a", {"train": bad_label})
    assert "no examples" in _error(_write, tmp_path / "b", {"train": []})
    assert "examples_per_shard" in _error(
        _write, tmp_path / "c", {"train": []}, examples_per_shard=0
    )
    assert "2 class names" in _error(_write, tmp_path / "d", {"train": []}, class_names=["a", "b"])


# ----------------------------------------------------------------------------- interrupted writes


def test_failed_write_leaves_nothing(tmp_path):
    def failing():
        yield from _examples(7)
        raise OSError("disk full")

    with pytest.raises(OSError):
        _write(tmp_path, {"train": _examples(4), "test": failing()}, examples_per_shard=3)
    assert os.listdir(tmp_path) == []


_KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ssl_jax.data import records

def examples(n, kill_at=None):
    for i in range(n):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield records.Example(str(i), bytes(100), 0)

splits = {{"train": examples(15), "test": examples(40, kill_at=25)}}
records.write_records({out!r}, splits, num_classes=1, examples_per_shard=10, overwrite=True)
"""


def test_killed_write_does_not_look_complete(tmp_path):
    # A finished dataset first, then a rewrite killed (SIGKILL) inside its second split.
    out = tmp_path / "ds"
    _write(out, {"train": _examples(12)}, examples_per_shard=5)
    script = _KILLED_WRITER.format(root=ROOT, out=str(out))
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    left = sorted(os.listdir(out))
    assert records.INFO_FILE not in left  # The old info went first; no new one was written.
    assert any(name.startswith(".tmp-test-") for name in left)  # The killed split's shards.
    assert "train-00000-of-00002.array_record" in left  # The finished split's, renamed.
    assert "train-labels.npy" in left and "test-labels.npy" not in left
    assert "no dataset_info.json" in _error(records.open_source, f"arrayrecord:{out}", "train")
    # Writing again needs overwrite, which removes every leftover shard.
    assert "unfinished write" in _error(_write, out, {"train": _examples(2)})
    _write(out, {"train": _examples(2)}, overwrite=True)
    assert sorted(os.listdir(out)) == [
        records.INFO_FILE,
        "train-00000-of-00001.array_record",
        "train-labels.npy",
    ]


def test_a_labels_file_killed_before_its_rename_is_an_unfinished_write(tmp_path, monkeypatch):
    # The temporary name the labels writer renames from, as a kill would leave it.
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(a), replace(a, b)))
    _write(tmp_path / "first", {"train": _examples(2)})
    monkeypatch.undo()
    (temp,) = [n for n in map(os.path.basename, renamed) if "labels" in n]
    out = tmp_path / "second"
    out.mkdir()
    (out / temp).write_bytes(b"half a labels file")
    assert "unfinished write" in _error(_write, out, {"train": _examples(2)})
    _write(out, {"train": _examples(2)}, overwrite=True)
    assert sorted(os.listdir(out)) == [
        records.INFO_FILE,
        "train-00000-of-00001.array_record",
        "train-labels.npy",
    ]


def test_existing_dataset_needs_overwrite(tmp_path):
    _write(tmp_path, {"train": _examples(12)}, examples_per_shard=2)
    (tmp_path / "notes.txt").write_text("mine")
    assert "already holds a dataset" in _error(_write, tmp_path, {"train": _examples(3)})
    _write(tmp_path, {"train": _examples(3)}, overwrite=True, examples_per_shard=2)
    assert sorted(os.listdir(tmp_path)) == [
        records.INFO_FILE,
        "notes.txt",  # Not a shard: never touched.
        "train-00000-of-00002.array_record",
        "train-00001-of-00002.array_record",
        "train-labels.npy",
    ]
    assert len(records.open_source(f"arrayrecord:{tmp_path}", "train")) == 3


# ----------------------------------------------------------------------------- damaged shards


def _one_shard(tmp_path, n=20) -> str:
    big = [Example(f"k{i}", bytes([i]) * 3000, 0) for i in range(n)]
    _write(tmp_path, {"train": big}, examples_per_shard=100)
    return str(tmp_path / "train-00000-of-00001.array_record")


def test_corrupt_bytes_name_the_shard_and_record(tmp_path):
    shard = _one_shard(tmp_path)
    data = bytearray(open(shard, "rb").read())
    data[30_000:30_050] = bytes(50)  # Inside record ~9 (3 kB each).
    open(shard, "wb").write(bytes(data))
    source = records.open_source(f"arrayrecord:{tmp_path}", "train")
    bad = []
    for i in range(len(source)):
        try:
            assert source[i]["image"] == bytes([i]) * 3000
        except DatasetError as e:
            bad.append((i, str(e)))
    assert len(bad) == 1, bad
    index, message = bad[0]
    assert "\n" not in message and "train-00000-of-00001.array_record" in message
    assert f"record {index})" in message and "re-run ssl_jax.prepare" in message
    # The batched read falls back to single reads to name it too.
    assert str(index) in _error(source.__getitems__, [0, index])


def test_truncated_or_missing_shard(tmp_path):
    shard = _one_shard(tmp_path)
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    source = records.open_source(f"arrayrecord:{tmp_path}", "train")
    assert "train-00000-of-00001.array_record" in _error(source.__getitem__, 3)
    os.remove(shard)
    assert "is missing" in _error(records.open_source, f"arrayrecord:{tmp_path}", "train")


def test_info_file_checked(tmp_path):
    _one_shard(tmp_path)
    info_path = tmp_path / records.INFO_FILE
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "format_version": 99}))
    assert "format version 99" in _error(records.open_source, f"arrayrecord:{tmp_path}", "train")
    info_path.write_text(json.dumps({k: v for k, v in info.items() if k != "splits"}))
    assert "lacks 'splits'" in _error(records.open_source, f"arrayrecord:{tmp_path}", "train")
    info_path.write_text("{not json")
    assert "Cannot read" in _error(records.open_source, f"arrayrecord:{tmp_path}", "train")


# ----------------------------------------------------------------------------- tfds

TFDS_NAME = "ssl_jax_records_tiny"
TFDS_SIZES = {"train": 6, "validation": 4}  # No "test" split: exercises the fallback.


def tfds_pixel(split: str, i: int) -> int:
    return 20 * i + (0 if split == "train" else 7)


def make_tfds(data_dir: str, sizes=None, unlabelled=()) -> str:
    """A real ArrayRecord tfds dataset of 12x9 grey PNGs, each one constant value,
    written without TensorFlow or network; returns data_dir. With `sizes`, the
    builder is another one, ssl_jax_records_unlabelled, whose `unlabelled`
    splits hold label -1 (as imagenet2012's test split)."""
    sizes = sizes or TFDS_SIZES
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 9), value, np.uint8), "L").save(buffer, format="PNG")
        return buffer.getvalue()

    with tfds.core.registered.skip_registration():

        class SslJaxRecordsTiny(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")
            code_path = None  # tfds 4.9.10 needs importlib_resources otherwise.

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 1)),
                        "label": tfds.features.ClassLabel(names=["zero", "one", "two"]),
                    }
                )
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(split) for split in sizes}

            def _generate_examples(self, split):
                for i in range(sizes[split]):
                    label = -1 if split in unlabelled else i % 3
                    yield i, {"image": png(tfds_pixel(split, i)), "label": label}

        class SslJaxRecordsUnlabelled(SslJaxRecordsTiny):
            pass

    builder = SslJaxRecordsTiny if sizes is TFDS_SIZES else SslJaxRecordsUnlabelled
    builder(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_a_test_split_without_labels_falls_back_to_validation(tmp_path):
    data_dir = make_tfds(str(tmp_path), {"train": 6, "test": 3, "validation": 4}, {"test"})
    source = records.open_source("tfds:ssl_jax_records_unlabelled", "test", data_dir=data_dir)
    assert source.split == "validation" and len(source) == 4
    assert sorted(source[i]["label"] for i in range(4)) == [0, 0, 1, 2]
    only = str(tmp_path / "only")
    make_tfds(only, {"train": 6, "test": 3}, {"test"})
    message = _error(records.open_source, "tfds:ssl_jax_records_unlabelled", "test", data_dir=only)
    assert "holds no labels (label -1)" in message


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return make_tfds(str(tmp_path_factory.mktemp("tfds")))


def test_tfds_source_reads_encoded_images(tfds_dir):
    for split, tfds_split in [("train", "train"), ("test", "validation")]:
        source = records.open_source(f"tfds:{TFDS_NAME}", split, data_dir=tfds_dir)
        assert source.split == tfds_split and len(source) == TFDS_SIZES[tfds_split]
        assert source.num_classes == 3 and source.class_names == ("zero", "one", "two")
        assert source.name == f"tfds:{TFDS_NAME}"
        pixels = {}
        for i in range(len(source)):
            record = source[i]
            assert record["image"][:4] == b"\x89PNG"  # Still encoded.
            assert record["key"] == f"tfds:{TFDS_NAME}[{tfds_split}][{i}]"
            value = int(np.asarray(Image.open(io.BytesIO(record["image"])))[0, 0])
            pixels[value] = record["label"]
        assert pixels == {tfds_pixel(tfds_split, i): i % 3 for i in range(len(source))}
        copy = pickle.loads(pickle.dumps(source))
        assert copy.__getitems__([1, 0]) == [source[1], source[0]]


def test_tfds_version_and_errors(tfds_dir, tmp_path):
    source = records.open_source(f"tfds:{TFDS_NAME}:1.0.0", "train", data_dir=tfds_dir)
    assert len(source) == 6
    message = _error(records.open_source, "tfds:mnist", "train", data_dir=str(tmp_path))
    assert "not prepared" in message and "--file_format=array_record" in message
    message = _error(records.open_source, "tfds:no_such_xyz", "train", data_dir=str(tmp_path))
    assert "no_such_xyz" in message
