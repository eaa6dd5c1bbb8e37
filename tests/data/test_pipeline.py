import jax
import numpy as np
import pytest

from ssl_jax.data import pipeline


def test_batch_indices_cover_each_epoch_once():
    n, batch = 10, 4
    stream = np.concatenate([pipeline.batch_indices(n, batch, seed=0, step=s) for s in range(5)])
    assert sorted(stream[:10]) == list(range(10))
    assert sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # reshuffled every epoch


def test_batch_indices_are_a_function_of_seed_and_step():
    a = pipeline.batch_indices(100, 8, seed=1, step=7)
    pipeline._epoch_permutation.cache_clear()
    np.testing.assert_array_equal(a, pipeline.batch_indices(100, 8, seed=1, step=7))
    assert not np.array_equal(a, pipeline.batch_indices(100, 8, seed=2, step=7))


def test_device_batches_resume_at_any_step():
    arrays = {"image": np.arange(30 * 2).reshape(30, 2), "label": np.arange(30)}
    mesh = pipeline.make_mesh()
    full = pipeline.device_batches(arrays, batch_size=4, seed=0, mesh=mesh, start_step=0)
    expected = [np.asarray(next(full)["label"]) for _ in range(12)]
    resumed = pipeline.device_batches(arrays, batch_size=4, seed=0, mesh=mesh, start_step=9)
    for step in range(9, 12):
        batch = next(resumed)
        np.testing.assert_array_equal(batch["label"], expected[step])
        np.testing.assert_array_equal(batch["image"][:, 0] // 2, expected[step])
    full.close()
    resumed.close()


def test_device_batches_are_sharded_over_the_data_axis():
    mesh = pipeline.make_mesh()
    batches = pipeline.device_batches(
        {"x": np.zeros((8, 3), np.uint8)}, batch_size=4, seed=0, mesh=mesh, start_step=0
    )
    batch = next(batches)
    assert batch["x"].shape == (4, 3) and batch["x"].dtype == np.uint8
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    batches.close()


def test_bad_batch_size_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the device count"):
        pipeline.check_batch_size(0, pipeline.make_mesh())


def test_errors_in_the_producer_reach_the_consumer():
    arrays = {"a": np.zeros(4), "b": np.zeros(5)}
    with pytest.raises(ValueError, match="equally long"):
        next(
            pipeline.device_batches(
                arrays, batch_size=2, seed=0, mesh=pipeline.make_mesh(), start_step=0
            )
        )


def test_closing_the_stream_stops_its_prefetch_thread():
    # A prefetch thread left inside a JAX transfer when the interpreter exits
    # aborts the process (seen as exit code 134 right after a benchmark).
    import threading

    arrays = {"image": np.zeros((32, 4, 4, 3), np.uint8)}
    stream = pipeline.device_batches(
        arrays, batch_size=8, seed=0, mesh=pipeline.make_mesh(), start_step=0
    )
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "ssl_jax-prefetch" and t.is_alive()]
