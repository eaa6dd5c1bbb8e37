"""Streaming input: records read at random, decoded and cropped on grain workers.

The in-memory path (`datasets` + `pipeline`) decodes a whole split into host
RAM once; this one keeps the images encoded on disk (`records`: our ArrayRecord
shards or a TFDS ArrayRecord dataset) and builds each batch when it is needed,
so memory does not grow with the dataset and the random-resized crop is taken
from the original image (`decode.crops`).

    ds = StreamingDataset("arrayrecord:/data/imagenet", "train")
    with ds.host_batches(batch_size=1024, seed=0, start_step=step,
                         process_index=jax.process_index(),
                         process_count=jax.process_count(),
                         transform=record_transforms.crop_transform(
                             decode.RECIPES["simclr"]),
                         num_workers=8) as batches:
        for batch in batches: ...   # this process's rows of each global batch

Order and randomness are the in-memory path's: the global batch at step `s` is
`pipeline.batch_indices(num_examples, batch_size, seed, s)` (one seeded
permutation per epoch), process `p` of `P` takes rows `[p*B/P, (p+1)*B/P)`,
and row `r` is transformed with `np.random.default_rng([seed, s, r])`. So a
batch is a pure function of (seed, step): resuming at `start_step=k` needs no
iterator state, and the process count and worker count change nothing.

Each host batch is a dict of numpy arrays with a leading batch axis: the
transform's outputs (`record_transforms`: what a worker makes of one record),
`label` (int32) and `skipped` (int32, see below).

Bad records (`on_bad_record`): "stop" (default) ends the iteration with one
`DatasetError` line naming the record (index, shard or key). "skip" replaces a
record that cannot be read or decoded by the record at the next position of
the epoch stream (the next row's record, or the one after, ...), transformed
with the original row's generator, so the replacement is deterministic too;
`batch["skipped"][i]` counts the bad records passed over for row i, and
`batch["skipped"].sum()` is the number of skipped examples in the batch (the
loop logs it as `skipped_examples`; a per-row array shards over devices like
every other key).

Workers: each global step is mapped in one piece by one grain worker process
(`num_workers` of them, round robin, in order), which reads its rows, decodes,
crops and stacks them; the main process only receives finished batches through
shared memory. Mapping per example and batching in the main process cost more
CPU for the same batches (on 2 cores: 460 vs 590 images per CPU-second of the
process tree, and 17 vs 2.5 ms of the main process's CPU per batch of 64 at
224 px: experiments/data_benchmark.py, section "mapping"); the main process is
the one that also drives the accelerator. `num_workers=0` runs everything in
the calling process (tests, debugging). Iterators are closable (`close()`, or
use them as context managers); closing stops the workers. A program using
workers must guard its entry point (`if __name__ == "__main__":`): grain starts
them with "spawn".
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator

import numpy as np

from ssl_jax.data import pipeline, records
from ssl_jax.data.base import DatasetError, ImageDataset
from ssl_jax.data.record_transforms import Transform, blank_outputs, center_transform

log = logging.getLogger(__name__)

ON_BAD_RECORD = ("stop", "skip")
# "skip" gives up after this many unreadable records in a row: a dataset that
# bad needs fixing, not skipping.
MAX_CONSECUTIVE_BAD = 100
_RESERVED_KEYS = ("label", "skipped", "mask")
_ENDLESS = 2**62  # Steps of an endless stream (grain needs a length).


# ----------------------------------------------------------------------------- choosing


def streams(name: str, options, *, image_size: int, data_dir: str | None = None) -> bool:
    """Whether `name` is streamed from records (`options` is `config.input`).

    "auto": `arrayrecord:` datasets always; `tfds:` ones when decoding the train
    split at `image_size` would take more than `options.memory_limit_gb` of
    host memory (ImageNet at 224 px: 193 GB); everything else in memory.
    "always" / "never" force it (only record datasets can stream, and
    `arrayrecord:` datasets cannot be loaded whole)."""
    kind = name.partition(":")[0]
    if options.streaming == "never":
        if kind == "arrayrecord":
            raise DatasetError(
                f"{name} can only be streamed; set --config.input.streaming=auto (or always)."
            )
        return False
    if kind not in ("arrayrecord", "tfds"):
        if options.streaming == "always":
            raise DatasetError(
                f"Only record datasets stream; write {name} into records first: "
                "python -m ssl_jax.prepare --source=imagefolder:/path --out=/records, then "
                "--config.dataset=arrayrecord:/records."
            )
        return False
    if options.streaming == "always" or kind == "arrayrecord":
        return True
    decoded = len(records.open_source(name, "train", data_dir=data_dir)) * image_size**2 * 3
    return decoded > options.memory_limit_gb * 2**30


def num_workers(requested: int) -> int:
    """`config.input.workers`: -1 is one worker per CPU core but two (at most
    16), 0 decodes in the training process."""
    import os

    return requested if requested >= 0 else max(1, min(16, (os.cpu_count() or 1) - 2))


# ----------------------------------------------------------------------------- loading rows


@dataclasses.dataclass(frozen=True)
class _Failure:
    """Returned (not raised) by a worker, so the error reaches the consumer as one line
    instead of a traceback dumped and re-raised across processes."""

    message: str


def _load(source, transform: Transform, index: int, rng_seed: list[int]) -> tuple[dict, int]:
    """(transform outputs, label) of record `index`; DatasetError naming it if bad."""
    record = source[index]
    try:
        out = transform(record, np.random.default_rng(rng_seed))
    except DatasetError as e:
        message = str(e)
        if record["key"] not in message:
            message = f"{message} (key {record['key']})"
        raise DatasetError(f"{message} [record {source.where(index)}]") from None
    return out, record["label"]


def _train_row(source, transform, seed, step, row, batch_size, index, on_bad):
    """(outputs, label, bad records skipped) of one row of the global batch at `step`."""
    rng_seed = [seed, step, row]
    try:
        return (*_load(source, transform, index, rng_seed), 0)
    except DatasetError as error:
        if on_bad == "stop":
            raise
        last = error
    # "skip": the record at the next position of the endless stream (one epoch
    # permutation after another) that loads. batch_indices with batch size 1 is
    # the record at one position.
    position = step * batch_size + row
    for skipped in range(1, MAX_CONSECUTIVE_BAD + 1):
        index = int(pipeline.batch_indices(len(source), 1, seed, position + skipped)[0])
        try:
            return (*_load(source, transform, index, rng_seed), skipped)
        except DatasetError as error:
            last = error
    raise DatasetError(f"{MAX_CONSECUTIVE_BAD} records in a row are unreadable, the last: {last}")


def _train_batch(step, *, source, transform, batch_size, seed, rows, on_bad):
    """This process's rows of the global batch at `step`, stacked (runs on a worker)."""
    indices = pipeline.batch_indices(len(source), batch_size, seed, step)
    try:
        examples = [
            _train_row(source, transform, seed, step, row, batch_size, int(indices[row]), on_bad)
            for row in rows
        ]
    except DatasetError as error:
        return _Failure(_skip_hint(error, "skip it") if on_bad == "stop" else str(error))
    return _stack(examples)


def _skip_hint(error: DatasetError, what_skip_does: str) -> str:
    """The record's one-line error, ending with the other way out."""
    return (
        f"{error} Or pass --config.input.on_bad_record=skip (on_bad_record='skip' in "
        f"Python) to {what_skip_does}."
    )


def _stack(examples: list[tuple[dict, int, int]], mask: list[bool] | None = None) -> dict:
    outputs = [out for out, _, _ in examples]
    keys = outputs[0].keys()
    clash = [k for k in keys if k in _RESERVED_KEYS]
    if clash:
        raise ValueError(f"A transform must not return the keys {clash}: the loader sets them.")
    batch = {k: np.stack([np.asarray(o[k]) for o in outputs]) for k in keys}
    batch["label"] = np.array([label for _, label, _ in examples], np.int32)
    batch["skipped"] = np.array([skipped for _, _, skipped in examples], np.int32)
    if mask is not None:
        batch["mask"] = np.array(mask, bool)
    return batch


def _eval_batch(number, *, source, transform, batch_size, seed, on_bad, rows=None):
    """Rows `rows` (default: all) of batch `number` of the split in order; rows
    past the end (and skipped ones) are zeros with mask False. With "skip", a
    batch (this process's rows of it) whose every record is unreadable fails."""
    rows = range(batch_size) if rows is None else rows
    start = number * batch_size
    indices = range(min(start + rows.start, len(source)), min(start + rows.stop, len(source)))
    loaded, last = [], None
    for index in indices:
        try:
            out, label = _load(source, transform, index, [seed, index])
            loaded.append((out, label, 0))
        except DatasetError as error:
            if on_bad == "stop":
                return _Failure(_skip_hint(error, "mask it out"))
            loaded.append(None)
            last = error
    good = next((example for example in loaded if example is not None), None)
    if indices and good is None:
        return _Failure(
            f"Every record of {source.name} in [{indices.start}, {indices.stop}) is "
            f"unreadable, the last: {last}"
        )
    # Padding from the transform's output shapes, so a share of only padding
    # rows reads no record (and cannot fail on one).
    blank = blank_outputs(transform)
    if blank is None:
        if good is None:
            return _Failure(
                "Cannot pad an evaluation batch with no record in it: the transform is not "
                "one of ssl_jax.data.record_transforms (its output shapes are unknown)."
            )
        blank = {k: np.zeros_like(v) for k, v in good[0].items()}
    mask = [example is not None for example in loaded] + [False] * (len(rows) - len(loaded))
    examples = [example or (blank, 0, 1) for example in loaded]
    examples += [(blank, 0, 0)] * (len(rows) - len(loaded))
    return _stack(examples, mask)


# ----------------------------------------------------------------------------- iterators


class Batches(Iterator[dict[str, np.ndarray]]):
    """Host batches from a grain pipeline; `close()` (or leaving a `with`) stops its workers."""

    def __init__(self, grain_dataset):
        self._iterator = iter(grain_dataset)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise StopIteration
        try:
            item = next(self._iterator)
        except BaseException:  # The end, or a bug in a transform: stop the workers either way.
            self.close()
            raise
        if isinstance(item, _Failure):
            self.close()
            raise DatasetError(item.message)
        return item

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            iterator.close()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        self.close()


def _ignore_stop_signals(worker_index: int, worker_count: int) -> None:
    """Workers share the training process's process group, so Ctrl-C and a
    scheduler's SIGTERM reach them too: they ignore both and leave the stop
    to the main process (`ssl_jax.preemption`), which closes them."""
    import signal

    del worker_index, worker_count
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _pipeline(steps, load: Callable, num_workers: int, prefetch: int) -> Batches:
    import grain  # Lazy: importing grain takes most of a second.

    dataset = steps.map(load).to_iter_dataset(
        # Each process computes one batch at a time; parallelism comes from the
        # worker processes (threads would fight over the GIL in Python code).
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )
    if num_workers > 0:
        from absl import flags

        # grain reads absl flags when it starts workers; a program that does not
        # parse them (a test, a notebook) would get UnparsedFlagAccessError.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch),
            worker_init_fn=_ignore_stop_signals,
        )
    return Batches(dataset)


class StreamingDataset:
    """One split of a streamed dataset (`arrayrecord:/dir` or `tfds:NAME`, see `records`)."""

    def __init__(self, spec: str, split: str, data_dir: str | None = None):
        self.source = records.open_source(spec, split, data_dir=data_dir)
        self.name: str = self.source.name
        self.split: str = self.source.split  # e.g. "validation" where "test" was asked for.
        self.num_examples: int = len(self.source)
        self.num_classes: int = self.source.num_classes
        self.class_names: tuple[str, ...] | None = self.source.class_names

    def host_batches(
        self,
        *,
        batch_size: int,
        seed: int,
        transform: Transform,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_workers: int = 0,
        on_bad_record: str = "stop",
        prefetch: int = 2,
    ) -> Batches:
        """This process's rows of the global batches of steps `start_step`, `start_step + 1`, ...

        Endless (epoch after epoch). `prefetch` batches are buffered per worker.
        """
        _check_options(num_workers, on_bad_record, prefetch)
        if not 0 <= process_index < process_count or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must divide over process_count={process_count} "
                f"and process_index={process_index} lie in [0, {process_count})."
            )
        if batch_size < 1 or start_step < 0:
            raise ValueError(
                f"Need batch_size >= 1 and start_step >= 0, got {batch_size}, {start_step}."
            )
        per_process = batch_size // process_count
        load = functools.partial(
            _train_batch,
            source=self.source,
            transform=transform,
            batch_size=batch_size,
            seed=seed,
            rows=range(process_index * per_process, (process_index + 1) * per_process),
            on_bad=on_bad_record,
        )
        import grain

        steps = grain.MapDataset.range(start_step, _ENDLESS)
        return _pipeline(steps, load, num_workers, prefetch)

    def iterate(
        self,
        batch_size: int,
        transform: Transform,
        *,
        num_workers: int = 0,
        on_bad_record: str = "stop",
        prefetch: int = 2,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Batches:
        """The whole split once, in order, for evaluation and feature extraction.

        Every batch has exactly `batch_size` rows (one compiled shape) and a bool
        `mask`: False for the zero rows padding the last batch and, with "skip",
        for unreadable records (counted in `skipped`; a batch whose every
        record is unreadable fails). Padding rows are zeros of the transform's
        output shapes (`record_transforms.blank_outputs`). Row i's transform gets
        `np.random.default_rng([seed, i])`. Process `p` of `P` reads and returns
        only rows `[p*B/P, (p+1)*B/P)` of each batch (its share of the split;
        every process gets the same number of batches).
        """
        _check_options(num_workers, on_bad_record, prefetch)
        if batch_size < 1 or batch_size % process_count or not 0 <= process_index < process_count:
            raise ValueError(
                f"batch_size={batch_size} must be >= 1 and divide over "
                f"process_count={process_count}, and process_index={process_index} lie in "
                f"[0, {process_count})."
            )
        per_process = batch_size // process_count
        load = functools.partial(
            _eval_batch,
            source=self.source,
            transform=transform,
            batch_size=batch_size,
            seed=seed,
            on_bad=on_bad_record,
            rows=range(process_index * per_process, (process_index + 1) * per_process),
        )
        import grain

        steps = grain.MapDataset.range(-(-self.num_examples // batch_size))
        return _pipeline(steps, load, num_workers, prefetch)


def _check_options(num_workers: int, on_bad_record: str, prefetch: int) -> None:
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}.")
    if num_workers < 0 or prefetch < 1:
        raise ValueError(f"Need num_workers >= 0 and prefetch >= 1, got {num_workers}, {prefetch}.")


class StreamingSource:
    """Training data streamed from records, for the loop (the streaming
    counterpart of `pipeline.InMemory`): each process reads its rows of every
    global batch through `transform` on `num_workers` worker processes."""

    def __init__(
        self,
        dataset: StreamingDataset,
        transform: Transform,
        *,
        image_size: int,
        num_workers: int = 0,
        on_bad_record: str = "stop",
    ):
        _check_options(num_workers, on_bad_record, 1)
        self.dataset = dataset
        self.transform = transform
        self.image_size = image_size
        self.num_workers = num_workers
        self.on_bad_record = on_bad_record
        self.num_examples = dataset.num_examples

    def host_batches(self, *, batch_size: int, seed: int, start_step: int) -> Batches:
        import jax

        return self.dataset.host_batches(
            batch_size=batch_size,
            seed=seed,
            transform=self.transform,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_workers=self.num_workers,
            on_bad_record=self.on_bad_record,
        )

    def examples(self, count: int) -> dict[str, np.ndarray]:
        """The split's first `count` images, centre-cropped (for pictures)."""
        transform = center_transform(self.image_size)
        with self.dataset.iterate(count, transform, on_bad_record=self.on_bad_record) as batches:
            batch = next(batches)
        keep = batch["mask"]
        return {"image": batch["image"][keep], "label": batch["label"][keep]}


def _share_size(num_examples: int, batch_size: int, process_index: int, process_count: int):
    """How many real (not padding) rows process `p` of `P` reads in a pass over the split."""
    per_process = batch_size // process_count
    total = 0
    for start in range(0, num_examples, batch_size):
        first = start + process_index * per_process
        total += max(0, min(first + per_process, num_examples) - first)
    return total


def _prepare_hint(spec: str) -> str:
    """How to store a dataset's labels beside its shards."""
    kind, _, arg = spec.partition(":")
    if kind == "tfds":
        return f"python -m ssl_jax.prepare --source={spec} --out=DIR (then arrayrecord:DIR)"
    return f"re-running the python -m ssl_jax.prepare that wrote {arg} (with --overwrite)"


class StreamSplit:
    """A streamed split as the evaluators see it (the interface of an
    in-memory `datasets.ImageDataset`): centre-cropped images in order,
    `labels`, and decoded subsets, without ever holding the split."""

    def __init__(
        self,
        spec: str,
        split: str,
        *,
        image_size: int,
        data_dir: str | None = None,
        num_workers: int = 0,
        on_bad_record: str = "stop",
        max_bad_record_fraction: float = 0.01,
    ):
        self.dataset = StreamingDataset(spec, split, data_dir)
        self.name = spec
        self.num_classes = self.dataset.num_classes
        self.class_names = self.dataset.class_names
        self.image_size = image_size
        self.num_workers = num_workers
        self.on_bad_record = on_bad_record
        # With "skip", a pass that leaves out more than this fraction of the
        # records it reads fails: it would score a different split.
        self.max_bad_record_fraction = max_bad_record_fraction
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.dataset.num_examples

    @property
    def labels(self) -> np.ndarray:
        """Every record's label, in order: from the labels file `prepare` stores
        beside the shards (no image byte is read), else read once from the
        records (a pass over the split)."""
        if self._labels is None:
            source = self.dataset.source
            stored = source.stored_labels()
            if stored is None:
                log.info(
                    "Reading the labels of %s[%s] from its %d records (a pass over the "
                    "split); %s stores them beside the shards and makes this free.",
                    self.name,
                    self.dataset.split,
                    len(source),
                    _prepare_hint(self.name),
                )
                stored = np.array([source[i]["label"] for i in range(len(source))], np.int32)
            self._labels = stored
        return self._labels

    @property
    def class_counts(self) -> np.ndarray:
        """Examples per class (int64 [num_classes]), from the labels."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def batches(self, batch_size: int):
        """(images, mask, labels) in order, the last batch padded (mask False),
        as `datasets.ImageDataset.batches`."""
        return self.process_batches(batch_size, 0, 1)

    def process_batches(self, batch_size: int, process_index: int, process_count: int):
        """This process's rows `[p*B/P, (p+1)*B/P)` of each of `batches`: the
        share of the split it reads, so P processes decode it once between them.

        Unreadable records left out (on_bad_record="skip") are counted: one
        warning line at the end of the pass, and a DatasetError as soon as they
        pass `max_bad_record_fraction` of the records this process reads (over
        that fraction of the split means over it in some process's share)."""
        transform = center_transform(self.image_size)
        share = _share_size(len(self), batch_size, process_index, process_count)
        where = "this process's share of " if process_count > 1 else ""
        skipped = 0
        with self.dataset.iterate(
            batch_size,
            transform,
            num_workers=self.num_workers,
            on_bad_record=self.on_bad_record,
            process_index=process_index,
            process_count=process_count,
        ) as batches:
            for batch in batches:
                skipped += int(batch["skipped"].sum())
                self._check_unreadable(skipped, share, where)
                yield batch["image"], batch["mask"], batch["label"]
        self._warn_unreadable(skipped, share, where, "this evaluation")

    def _check_unreadable(self, count: int, read: int, where: str) -> None:
        if count > self.max_bad_record_fraction * read:
            raise DatasetError(
                f"{count} of the {read} records of {where}{self.name}[{self.dataset.split}] "
                "are unreadable (input.on_bad_record=skip leaves them out; the limit is "
                f"config.input.max_bad_record_fraction={self.max_bad_record_fraction} of them): "
                "an evaluation without them would score a different split. Repair or remove "
                "the unreadable files (python -m ssl_jax.prepare --verify names them), or "
                "raise the limit."
            )

    def _warn_unreadable(self, count: int, read: int, where: str, what: str) -> None:
        if count:
            log.warning(
                "%d of the %d records of %s%s[%s] are unreadable and left out of %s "
                "(input.on_bad_record=skip).",
                count,
                read,
                where,
                self.name,
                self.dataset.split,
                what,
            )

    def subset(self, indices):
        """The records at `indices`, decoded and centre-cropped into memory
        (with on_bad_record="skip", unreadable ones are left out)."""
        source, transform = self.dataset.source, center_transform(self.image_size)
        images, labels, skipped = [], [], 0
        for i in indices:
            try:
                out, label = _load(source, transform, int(i), [0, int(i)])
            except DatasetError:
                if self.on_bad_record == "stop":
                    raise
                skipped += 1
                self._check_unreadable(skipped, len(indices), "a subset of ")
                continue
            images.append(out["image"])
            labels.append(label)
        self._warn_unreadable(skipped, len(indices), "a subset of ", "it")
        return ImageDataset(
            np.stack(images),
            np.array(labels, np.int32),
            self.num_classes,
            self.name,
            self.class_names,
        )
