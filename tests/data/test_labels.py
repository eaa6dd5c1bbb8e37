"""Labels stored beside the record shards, and streamed evaluation read in
per-process shares (ssl_jax.data.records, ssl_jax.data.streaming)."""

from __future__ import annotations

import collections
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ssl_jax import prepare
from ssl_jax.data import record_transforms, records, streaming
from ssl_jax.data.base import DatasetError
from ssl_jax.evaluate.linear_probe import balanced_subset
from ssl_jax.evaluators.probes import merge_process_rows

CLASSES = ("ant", "bee", "cat")
# Unbalanced on purpose: class counts that a swapped or shifted count would not match.
PER_CLASS = {"train": (5, 2, 4), "test": (2, 1, 3)}


def _folder(root) -> dict[str, list[int]]:
    """An image folder of tiny PNGs whose red value names the image; returns
    each split's labels in the order prepare writes them (classes, then names)."""
    labels = {}
    for split, counts in PER_CLASS.items():
        labels[split] = []
        for label, (name, count) in enumerate(zip(CLASSES, counts, strict=True)):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = np.full((6, 7, 3), 40 * label + i, np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
                labels[split].append(label)
    return labels


@pytest.fixture
def prepared(tmp_path):
    """(records directory, each split's expected labels), written by prepare."""
    labels = _folder(tmp_path / "folder")
    out = tmp_path / "records"
    prepare.prepare(f"imagefolder:{tmp_path / 'folder'}", str(out), examples_per_shard=3)
    return out, labels


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_prepare_stores_each_splits_labels_and_class_counts(prepared):
    out, labels = prepared
    info = json.loads((out / records.INFO_FILE).read_text())
    for split in ("train", "test"):
        source = records.open_source(f"arrayrecord:{out}", split)
        read = [source[i]["label"] for i in range(len(source))]  # The records themselves.
        assert read == labels[split]
        np.testing.assert_array_equal(source.stored_labels(), read)
        assert source.stored_labels().dtype == np.int32
        entry = info["splits"][split]["labels"]
        assert entry == {
            "file": f"{split}-labels.npy",
            "version": records.LABELS_VERSION,
            "class_counts": list(PER_CLASS[split]),
        }
        assert collections.Counter(read) == dict(enumerate(PER_CLASS[split]))


def _make_shards_unreadable(out) -> None:
    """Zeros over every shard (same size: the files are there, no record decodes)."""
    for name in os.listdir(out):
        if name.endswith(".array_record"):
            path = out / name
            path.write_bytes(bytes(path.stat().st_size))


def test_few_label_draws_read_no_image_bytes(prepared):
    out, labels = prepared
    split = streaming.StreamSplit(f"arrayrecord:{out}", "train", image_size=4)
    _make_shards_unreadable(out)
    # A pass over the images fails: the shards hold nothing readable ...
    with pytest.raises(DatasetError, match="train-00000-of-00004"):
        next(iter(split.batches(4)))
    # ... yet the labels, the class counts and a balanced draw need none of them.
    np.testing.assert_array_equal(split.labels, labels["train"])
    np.testing.assert_array_equal(split.class_counts, PER_CLASS["train"])
    drawn = balanced_subset(split.labels, 2, seed=0)
    assert sorted(collections.Counter(split.labels[drawn]).values()) == [2, 2, 2]


def test_a_subset_reads_only_the_drawn_records(prepared, monkeypatch):
    out, labels = prepared
    split = streaming.StreamSplit(f"arrayrecord:{out}", "train", image_size=4)
    read = []
    original = records.RecordSource.__getitem__
    monkeypatch.setattr(
        records.RecordSource, "__getitem__", lambda self, i: read.append(i) or original(self, i)
    )
    drawn = balanced_subset(split.labels, 1, seed=3)
    subset = split.subset(drawn)
    assert read == list(drawn)
    np.testing.assert_array_equal(subset.labels, np.asarray(labels["train"])[drawn])


def _forget_labels(out) -> None:
    """The directory as prepare wrote it before labels files existed."""
    path = out / records.INFO_FILE
    info = json.loads(path.read_text())
    for split in info["splits"].values():
        os.remove(out / split.pop("labels")["file"])
    path.write_text(json.dumps(info))


def test_records_prepared_before_labels_files_read_them_once_with_one_info_line(prepared, caplog):
    out, labels = prepared
    _forget_labels(out)
    split = streaming.StreamSplit(f"arrayrecord:{out}", "train", image_size=4)
    assert split.dataset.source.stored_labels() is None
    with caplog.at_level(logging.INFO, logger="ssl_jax.data.streaming"):
        np.testing.assert_array_equal(split.labels, labels["train"])
        np.testing.assert_array_equal(split.labels, labels["train"])  # Cached: no second pass.
    lines = [r.getMessage() for r in caplog.records if r.name == "ssl_jax.data.streaming"]
    assert len(lines) == 1 and "ssl_jax.prepare" in lines[0] and "free" in lines[0]
    assert "\n" not in lines[0]


def _edit_labels(out, *, array=None, version=None, counts=None, raw=None) -> str:
    path = out / "train-labels.npy"
    if array is not None:
        with open(path, "wb") as f:
            np.save(f, array)
    if raw is not None:
        path.write_bytes(raw)
    info = json.loads((out / records.INFO_FILE).read_text())
    entry = info["splits"]["train"]["labels"]
    if version is not None:
        entry["version"] = version
    if counts is not None:
        entry["class_counts"] = counts
    (out / records.INFO_FILE).write_text(json.dumps(info))
    return str(path)


@pytest.mark.parametrize(
    "damage, says",
    [
        ({"raw": b"\x93NUMPY garbage"}, "Cannot read labels file"),
        ({"array": np.zeros(10, np.int32)}, "expected int (11,)"),
        ({"array": np.full(11, 3, np.int32)}, "outside [0, 3)"),
        ({"array": np.zeros(11, np.float32)}, "float32"),
        ({"counts": [4, 3, 4]}, "does not match the class counts"),
        ({"version": 99}, "labels format version 99"),
    ],
)
def test_a_damaged_labels_file_is_one_line_naming_it(prepared, damage, says):
    out, _ = prepared
    path = _edit_labels(out, **damage)
    source = records.open_source(f"arrayrecord:{out}", "train")
    message = _error(source.stored_labels)
    assert says in message and path in message and "ssl_jax.prepare" in message


def test_overwrite_removes_a_stale_labels_file(prepared):
    out, _ = prepared
    os.remove(out / records.INFO_FILE)  # As a writer killed before its end leaves it.
    (out / "extra-labels.npy").write_bytes(b"left over")
    examples = [records.Example("k", b"x", 0)]
    assert "unfinished write" in _error(
        records.write_records, str(out), {"train": examples}, num_classes=1
    )
    records.write_records(str(out), {"train": examples}, num_classes=1, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(
        [records.INFO_FILE, "train-00000-of-00001.array_record", "train-labels.npy"]
    )


# ----------------------------------------------------------------------------- process shares


def _rows(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {key: np.stack([b[key] for b in batches]) for key in ("image", "mask", "label")}


@pytest.mark.parametrize("batch_size", [4, 8])
def test_two_processes_read_disjoint_shares_whose_union_is_the_split_in_order(prepared, batch_size):
    out, labels = prepared
    dataset = streaming.StreamingDataset(f"arrayrecord:{out}", "train")
    transform = record_transforms.center_transform(3)
    whole = _rows(dataset.iterate(batch_size, transform))
    shares = [
        _rows(dataset.iterate(batch_size, transform, process_index=p, process_count=2))
        for p in range(2)
    ]
    half = batch_size // 2
    for key in whole:
        assert all(share[key].shape[:2] == (len(whole[key]), half) for share in shares)
        merged = merge_process_rows(np.stack([share[key] for share in shares]))
        np.testing.assert_array_equal(merged, whole[key].reshape(merged.shape))
    # 11 records: with batches of 8, process 1's share of the last batch is all
    # padding (rows 12-15), zeros of a record's shape.
    mask = merge_process_rows(np.stack([share["mask"] for share in shares]))
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(11))
    np.testing.assert_array_equal(
        merge_process_rows(np.stack([s["label"] for s in shares]))[mask], labels["train"]
    )
    # Disjoint: each record's red value appears in exactly one share.
    seen = [set(np.unique(s["image"][..., 0][s["mask"]]).tolist()) for s in shares]
    assert not seen[0] & seen[1]


def test_merge_process_rows_against_a_plain_loop():
    gathered = np.arange(2 * 3 * 2 * 5).reshape(2, 3, 2, 5)  # [processes, batches, rows, D]
    expected = [gathered[p, b, r] for b in range(3) for p in range(2) for r in range(2)]
    np.testing.assert_array_equal(merge_process_rows(gathered), np.stack(expected))


def test_shares_need_a_batch_that_divides(prepared):
    dataset = streaming.StreamingDataset(f"arrayrecord:{prepared[0]}", "train")
    transform = record_transforms.center_transform(3)
    with pytest.raises(ValueError, match="divide over process_count=2"):
        dataset.iterate(5, transform, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="process_index=2"):
        dataset.iterate(4, transform, process_index=2, process_count=2)


# ----------------------------------------------------------------------------- unreadable records


def _zero_shard(out, name) -> None:
    path = out / name
    path.write_bytes(bytes(path.stat().st_size))


def test_a_streamed_batch_of_only_unreadable_records_fails_under_skip(prepared):
    out, _ = prepared
    _zero_shard(out, "test-00001-of-00002.array_record")  # Records 3-5 of 6.
    split = streaming.StreamSplit(
        f"arrayrecord:{out}", "test", image_size=4, on_bad_record="skip", max_bad_record_fraction=1
    )
    # Batches of 3: the second is the zeroed shard. Masking it all out would
    # score half the split with no word said.
    message = _error(lambda: list(split.batches(3)))
    assert message.startswith(f"Every record of arrayrecord:{out} in [3, 6) is unreadable")


@pytest.mark.parametrize("limit", [0.5, 0.25])
def test_unreadable_records_left_out_of_an_evaluation_are_said_and_limited(prepared, caplog, limit):
    out, _ = prepared
    _zero_shard(out, "train-00001-of-00004.array_record")  # Records 3-5 of 11.
    split = streaming.StreamSplit(
        f"arrayrecord:{out}",
        "train",
        image_size=4,
        on_bad_record="skip",
        max_bad_record_fraction=limit,
    )
    if limit < 3 / 11:
        message = _error(lambda: list(split.batches(4)))
        assert message.startswith(f"3 of the 11 records of arrayrecord:{out}[train] are unreadable")
        assert "config.input.max_bad_record_fraction=0.25" in message
        return
    with caplog.at_level(logging.WARNING, logger="ssl_jax.data.streaming"):
        mask = np.concatenate([m for _, m, _ in split.batches(4)])
    np.testing.assert_array_equal(np.flatnonzero(~mask[:11]), [3, 4, 5])
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ssl_jax.data.streaming"]
    assert line.startswith(f"3 of the 11 records of arrayrecord:{out}[train] are unreadable")
    # A decoded subset (the supervised baselines' label budgets) says so too.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssl_jax.data.streaming"):
        assert len(split.subset([0, 3, 6, 9])) == 3
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ssl_jax.data.streaming"]
    assert line.startswith(f"1 of the 4 records of a subset of arrayrecord:{out}[train]")


def test_a_share_of_only_padding_reads_no_record(prepared, monkeypatch):
    out, _ = prepared
    dataset = streaming.StreamingDataset(f"arrayrecord:{out}", "train")
    read = []
    original = records.RecordSource.__getitem__
    monkeypatch.setattr(
        records.RecordSource, "__getitem__", lambda self, i: read.append(i) or original(self, i)
    )
    # 11 records in batches of 8: process 1 reads rows 4-7, then only padding.
    share = list(
        dataset.iterate(8, record_transforms.center_transform(3), process_index=1, process_count=2)
    )
    assert read == [4, 5, 6, 7]
    assert share[1]["image"].shape == (4, 3, 3, 3) and share[1]["image"].dtype == np.uint8
    assert not share[1]["image"].any() and not share[1]["mask"].any()


def test_blank_outputs_match_each_transforms_outputs(prepared):
    from ssl_jax.data import decode

    record = records.open_source(f"arrayrecord:{prepared[0]}", "train")[0]
    specs = (decode.CropSpec(3), decode.CropSpec(2, count=2))
    transforms = [
        record_transforms.center_transform(3),
        record_transforms.crop_transform(specs),
        record_transforms.view_transform({"image": specs[1:], "local": specs[:1] * 3}),
    ]
    for transform in transforms:
        out = transform(record, np.random.default_rng(0))
        blank = record_transforms.blank_outputs(transform)
        assert {k: (v.shape, v.dtype) for k, v in blank.items()} == {
            k: (v.shape, v.dtype) for k, v in out.items()
        }
        assert not any(v.any() for v in blank.values())
    assert record_transforms.blank_outputs(lambda record, rng: {}) is None
