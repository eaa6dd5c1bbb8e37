"""Host batches -> globally sharded device arrays.

The data order is a pure function of (seed, step): step `s` of a run takes
positions `[s * B, (s + 1) * B)` of an endless stream made of one seeded
permutation of the dataset per epoch. A run restarted at step `s` therefore
sees exactly the batches it would have seen without the interruption, and no
iterator state needs to be checkpointed.

Each process builds only its own slice of the global batch and hands it to
`jax.make_array_from_process_local_data`, so the same code feeds one CPU, eight
GPUs or many hosts.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over every device (of every process), for data parallelism."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    devices = mesh.devices.size
    if batch_size <= 0 or batch_size % devices:
        raise ValueError(
            f"{field}={batch_size} must be a positive multiple of the device count "
            f"({devices}); set --config.{field} to a multiple of {devices}."
        )


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Dataset indices of the global batch at `step` (a function of its arguments only)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        selected = epochs == epoch
        out[selected] = _epoch_permutation(num_examples, seed, int(epoch))[offsets[selected]]
    return out


def local_slice(batch_size: int) -> slice:
    """The rows of the global batch this process feeds."""
    count = jax.process_count()
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} must divide over {count} processes.")
    per_process = batch_size // count
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def host_batch(
    arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int
) -> dict[str, np.ndarray]:
    """This process's share of the global batch at `step`, as numpy arrays."""
    num_examples = len(next(iter(arrays.values())))
    indices = batch_indices(num_examples, batch_size, seed, step)[local_slice(batch_size)]
    return {name: array[indices] for name, array in arrays.items()}


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble process-local numpy slices into global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    global_rows = next(iter(batch.values())).shape[0] * jax.process_count()
    return {
        name: jax.make_array_from_process_local_data(
            sharding, value, (global_rows, *value.shape[1:])
        )
        for name, value in batch.items()
    }


class InMemory:
    """Training data held in host memory (a dict of equally long arrays): each
    step gathers its rows by index. The streaming counterpart is
    `streaming.StreamingSource`; both offer `num_examples`, `host_batches`
    and `examples`."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        if not arrays or len({len(a) for a in arrays.values()}) != 1:
            raise ValueError("InMemory needs a non-empty dict of equally long arrays.")
        self.arrays = dict(arrays)
        self.num_examples = len(next(iter(arrays.values())))

    def host_batches(self, *, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
        """This process's rows of the global batches of steps start_step, ...."""
        step = start_step
        while True:
            yield host_batch(self.arrays, batch_size, seed, step)
            step += 1

    def examples(self, count: int) -> dict[str, np.ndarray]:
        """The first `count` examples, whole (for pictures of fixed examples)."""
        return {name: array[:count] for name, array in self.arrays.items()}


def device_batches(
    source,
    *,
    batch_size: int,
    seed: int,
    mesh: Mesh,
    start_step: int,
    prefetch: int = 2,
) -> Iterator[dict[str, jax.Array]]:
    """Yields the global batches of steps `start_step, start_step + 1, ...` of
    `source` (`InMemory`, a `streaming.StreamingSource`, or a dict of arrays).

    A background thread takes the host batches and transfers the next
    `prefetch` of them while the device computes, so the host never stalls the
    compiled step.
    """
    check_batch_size(batch_size, mesh)
    source = InMemory(source) if isinstance(source, Mapping) else source
    slots: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    stop = threading.Event()

    def produce() -> None:
        def put(item) -> None:
            """Queue `item`, giving up once the consumer has closed the stream."""
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        host = source.host_batches(batch_size=batch_size, seed=seed, start_step=start_step)
        try:
            while not stop.is_set():
                put(to_global(next(host), mesh))
        except BaseException as error:  # surfaced in the consumer, not lost in the thread
            put(error)
        finally:
            if hasattr(host, "close"):
                host.close()  # stops a streaming source's worker processes

    thread = threading.Thread(target=produce, daemon=True, name="ssl_jax-prefetch")
    thread.start()
    try:
        while True:
            item = slots.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Wait for the thread to leave JAX: a daemon thread still inside a
        # transfer when the interpreter exits aborts the process.
        thread.join(timeout=30)
