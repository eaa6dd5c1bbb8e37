"""Tests for ssl_jax.data.streaming: batch order, resume, processes, workers, bad records.

The dataset is 37 PNGs whose red channel is constant and encodes the record's
index (6 * i), so every crop still says which record it came from, while the
green and blue channels are textured, so crops and flips differ.
"""

from __future__ import annotations

import gc
import io
import multiprocessing
import time

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import decode, pipeline, record_transforms, records
from ssl_jax.data.datasets import DatasetError
from ssl_jax.data.streaming import StreamingDataset

N = 37
NUM_CLASSES = 5


def _png(index: int) -> bytes:
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, (18, 24, 3), dtype=np.uint8)
    pixels[..., 0] = 6 * index
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(directory, bad: dict[int, bytes] | None = None) -> str:
    bad = bad or {}
    examples = [
        records.Example(f"img_{i:03d}.png", bad.get(i, _png(i)), i % NUM_CLASSES) for i in range(N)
    ]
    records.write_records(
        str(directory),
        {"train": examples, "test": examples[:11]},
        num_classes=NUM_CLASSES,
        examples_per_shard=8,
    )
    return f"arrayrecord:{directory}"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("records"))


CROPS = record_transforms.crop_transform([decode.CropSpec(6, scale=(0.2, 1.0), count=2)])


def _indices(batch: dict) -> np.ndarray:
    """The record index of each row, read off the red channel."""
    red = batch["image"][..., 0].reshape(len(batch["image"]), -1)
    assert (red == red[:, :1]).all()
    return red[:, 0].astype(np.int64) // 6


def _take(batches, count: int) -> list[dict]:
    with batches:
        return [next(batches) for _ in range(count)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----------------------------------------------------------------------------- order


def test_rows_are_the_records_of_batch_indices(spec):
    ds = StreamingDataset(spec, "train")
    assert (ds.num_examples, ds.num_classes, ds.split) == (N, NUM_CLASSES, "train")
    # 7 steps of 8 cross the epoch boundary at 37.
    batches = _take(ds.host_batches(batch_size=8, seed=3, transform=CROPS), 7)
    for step, batch in enumerate(batches):
        expected = pipeline.batch_indices(N, 8, 3, step)
        np.testing.assert_array_equal(_indices(batch), expected)
        np.testing.assert_array_equal(batch["label"], expected % NUM_CLASSES)
        assert batch["image"].shape == (8, 2, 6, 6, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and not batch["skipped"].any()


def test_rows_are_transformed_with_their_seed_step_row_generator(spec):
    ds = StreamingDataset(spec, "train")
    batch = _take(ds.host_batches(batch_size=8, seed=3, start_step=2, transform=CROPS), 1)[0]
    source = records.open_source(spec, "train")
    for row, index in enumerate(pipeline.batch_indices(N, 8, 3, 2)):
        expected = CROPS(source[int(index)], np.random.default_rng([3, 2, row]))
        np.testing.assert_array_equal(batch["image"][row], expected["image"])


def test_resume_gives_the_same_batches(spec):
    ds = StreamingDataset(spec, "train")
    from_start = _take(ds.host_batches(batch_size=8, seed=0, transform=CROPS), 6)
    resumed = _take(ds.host_batches(batch_size=8, seed=0, start_step=4, transform=CROPS), 2)
    _assert_same(from_start[4:], resumed)
    other_seed = _take(ds.host_batches(batch_size=8, seed=1, transform=CROPS), 1)
    assert not np.array_equal(other_seed[0]["label"], from_start[0]["label"])


def test_processes_read_disjoint_halves_of_the_global_batch(spec):
    ds = StreamingDataset(spec, "train")
    whole = _take(ds.host_batches(batch_size=8, seed=5, transform=CROPS), 3)
    halves = [
        _take(
            ds.host_batches(
                batch_size=8, seed=5, transform=CROPS, process_index=p, process_count=2
            ),
            3,
        )
        for p in range(2)
    ]
    for step in range(3):
        first, second = halves[0][step], halves[1][step]
        assert len(first["label"]) == 4
        joined = {k: np.concatenate([first[k], second[k]]) for k in first}
        _assert_same([joined], [whole[step]])


def test_workers_give_the_same_arrays_as_in_process(spec):
    ds = StreamingDataset(spec, "train")
    kwargs = dict(batch_size=8, seed=2, start_step=1, transform=CROPS)
    in_process = _take(ds.host_batches(**kwargs), 5)
    with_workers = _take(ds.host_batches(**kwargs, num_workers=2), 5)
    _assert_same(in_process, with_workers)
    assert not multiprocessing.active_children()


def test_bad_arguments(spec):
    ds = StreamingDataset(spec, "train")
    for bad in [
        dict(batch_size=8, process_count=3),
        dict(batch_size=8, process_index=2, process_count=2),
        dict(batch_size=0),
        dict(batch_size=8, on_bad_record="ignore"),
        dict(batch_size=8, num_workers=-1),
    ]:
        with pytest.raises(ValueError):
            ds.host_batches(seed=0, transform=CROPS, **bad)


# ----------------------------------------------------------------------------- evaluation pass


def test_iterate_covers_the_split_in_order_padded(spec):
    ds = StreamingDataset(spec, "test")
    batches = list(ds.iterate(4, record_transforms.center_transform(5)))
    assert len(batches) == 3  # 11 records in batches of 4.
    assert all(b["image"].shape == (4, 5, 5, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 11 + [False])
    indices = np.concatenate([_indices(b) for b in batches])
    np.testing.assert_array_equal(indices[:11], np.arange(11))
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:11], np.arange(11) % NUM_CLASSES)
    assert not batches[-1]["image"][3].any()  # Padding is zeros.
    # The same pixels as the in-memory evaluation transform.
    source = records.open_source(spec, "test")
    expected = decode.center_square(decode.decode_image(source[6]["image"]), 5)
    np.testing.assert_array_equal(batches[1]["image"][2], expected)


# ----------------------------------------------------------------------------- bad records


@pytest.fixture(scope="module")
def bad_spec(tmp_path_factory):
    truncated = _png(13)[:60]
    return _write(tmp_path_factory.mktemp("bad"), bad={13: truncated, 14: b"not an image"})


def _first_step_with(index: int, seed: int = 0) -> int:
    return next(s for s in range(50) if index in pipeline.batch_indices(N, 8, seed, s))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_record_stops_with_one_line(bad_spec, num_workers, capfd):
    ds = StreamingDataset(bad_spec, "train")
    steps = max(_first_step_with(13), _first_step_with(14)) + 1
    batches = ds.host_batches(batch_size=8, seed=0, transform=CROPS, num_workers=num_workers)
    with pytest.raises(DatasetError) as info, batches:
        for _ in range(steps):
            next(batches)
    message = str(info.value)
    assert "\n" not in message
    assert "img_013.png" in message or "img_014.png" in message
    assert "record 13 of" in message or "record 14 of" in message
    assert "on_bad_record='skip'" in message
    assert "Traceback" not in capfd.readouterr().err  # Nothing dumped by the workers.
    assert not multiprocessing.active_children()


def test_bad_records_are_skipped_deterministically_and_counted(bad_spec):
    ds = StreamingDataset(bad_spec, "train")
    kwargs = dict(batch_size=8, seed=0, transform=CROPS, on_bad_record="skip")
    steps = 10  # 80 positions: each bad record comes up twice.
    batches = _take(ds.host_batches(**kwargs), steps)
    source = records.open_source(bad_spec, "train")
    skipped = 0
    for step, batch in enumerate(batches):
        expected = pipeline.batch_indices(N, 8, 0, step)
        got = _indices(batch)
        for row in range(8):
            if expected[row] in (13, 14):
                # The record at the next position(s) of the stream that loads.
                position, k = step * 8 + row, 1
                while (nxt := pipeline.batch_indices(N, 1, 0, position + k)[0]) in (13, 14):
                    k += 1
                assert got[row] == nxt and batch["skipped"][row] == k
                # Transformed with the row's own generator, as the bad record would have been.
                expected_crops = CROPS(source[int(nxt)], np.random.default_rng([0, step, row]))
                np.testing.assert_array_equal(batch["image"][row], expected_crops["image"])
            else:
                assert got[row] == expected[row] and batch["skipped"][row] == 0
        skipped += int(batch["skipped"].sum())
    positions = np.concatenate([pipeline.batch_indices(N, 8, 0, s) for s in range(steps)])
    assert skipped >= np.isin(positions, [13, 14]).sum() >= 2
    _assert_same(batches[3:5], _take(ds.host_batches(**kwargs, start_step=3, num_workers=2), 2))


def test_skip_in_evaluation_masks_the_bad_rows(bad_spec):
    ds = StreamingDataset(bad_spec, "train")
    batches = list(ds.iterate(8, record_transforms.center_transform(4), on_bad_record="skip"))
    mask = np.concatenate([b["mask"] for b in batches])
    skipped = np.concatenate([b["skipped"] for b in batches])
    np.testing.assert_array_equal(np.flatnonzero(~mask[:N]), [13, 14])
    np.testing.assert_array_equal(np.flatnonzero(skipped), [13, 14])
    with pytest.raises(DatasetError, match="img_013.png"):
        list(ds.iterate(8, record_transforms.center_transform(4)))


def test_damaged_shard_stops_naming_it(tmp_path):
    spec = _write(tmp_path)
    shard = tmp_path / "train-00001-of-00005.array_record"
    data = bytearray(shard.read_bytes())
    data[2000:2100] = bytes(100)
    shard.write_bytes(bytes(data))
    ds = StreamingDataset(spec, "train")
    with pytest.raises(DatasetError, match="train-00001-of-00005.array_record"):
        _take(ds.host_batches(batch_size=8, seed=0, transform=CROPS), 5)
    batches = _take(ds.host_batches(batch_size=8, seed=0, transform=CROPS, on_bad_record="skip"), 5)
    assert sum(int(b["skipped"].sum()) for b in batches) >= 1


# ----------------------------------------------------------------------------- shutdown


def test_closing_early_stops_the_workers(spec):
    ds = StreamingDataset(spec, "train")
    batches = ds.host_batches(batch_size=8, seed=0, transform=CROPS, num_workers=2)
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    start = time.perf_counter()
    batches.close()
    assert not multiprocessing.active_children()
    assert time.perf_counter() - start < 10
    with pytest.raises(StopIteration):
        next(batches)
    batches.close()  # Twice is fine.
    # A consumer that just drops the iterator stops the workers too.
    batches = ds.host_batches(batch_size=8, seed=0, transform=CROPS, num_workers=1)
    next(batches)
    assert len(multiprocessing.active_children()) == 1
    del batches
    gc.collect()
    assert not multiprocessing.active_children()


# ----------------------------------------------------------------------------- tfds


def test_tfds_dataset_streams_through_workers(tmp_path):
    from tests.data.test_records import TFDS_NAME, TFDS_SIZES, make_tfds, tfds_pixel

    data_dir = make_tfds(str(tmp_path))
    ds = StreamingDataset(f"tfds:{TFDS_NAME}", "test", data_dir=data_dir)
    assert ds.split == "validation" and ds.num_examples == TFDS_SIZES["validation"]
    assert ds.class_names == ("zero", "one", "two")
    (batch,) = list(ds.iterate(4, record_transforms.center_transform(3), num_workers=2))
    # tfds stores examples in its own (hashed) order: compare the pixel -> label maps.
    got = dict(zip(batch["image"][:, 0, 0, 0].tolist(), batch["label"].tolist(), strict=True))
    assert got == {tfds_pixel("validation", i): i % 3 for i in range(4)}
