"""Where a run reports: `metrics.jsonl`, TensorBoard event files and a progress bar.

Both files are written synchronously, in the caller's thread, at every log
step: a run killed a second later has lost nothing it logged, and a full disk
is one error in the main thread (not a traceback from a writer thread). The
TensorBoard events are encoded with tensorboardX's protos, which need no
TensorFlow. Only process 0 writes, so multi-host runs do not race.

TensorBoard tags say where a figure comes from: `train/<key>` for the
training loop's rows (metrics.jsonl keeps the bare keys), `run/...` for the
run's facts in results.json (final loss, fingerprint, skipped steps in all),
`eval/<name>/...` for an evaluator's results, each under its own prefix.

On resume, the lines after the checkpoint's step are dropped from
`metrics.jsonl`, and the new events file starts with a TensorBoard "purge"
(a SessionLog START at that step), so every logged step appears exactly once.

On an object store (a URL workdir), which cannot append, each log step
uploads the whole `metrics.jsonl` again (and the whole events file, kept on
the local disk meanwhile): each upload replaces the object in one piece, so
readers always see complete lines, at the cost of a log step's upload
growing with the run (about 200 bytes a row: 1,000 rows are 200 kB).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from tqdm import tqdm

from ssl_jax import storage
from ssl_jax.workdir import WorkdirError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _is_writer() -> bool:
    return jax.process_index() == 0


def _write_failed(path: str, error: OSError) -> WorkdirError:
    return WorkdirError(
        f"Cannot write {path}: {error.strerror or error}. Free disk space (or fix permissions) "
        "and rerun the same command to resume from the last checkpoint."
    )


def read_records(path: str) -> list[dict]:
    """The records of a `metrics.jsonl`. A line that is not a JSON object (the
    truncated last line of a killed or full-disk write) is skipped with a
    warning naming the file and line, never an error: it must not block a
    resume."""
    if not storage.exists(path):
        return []
    records = []
    with storage.open_file(path, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                log.warning("Ignoring line %d of %s: not a complete JSON record.", number, path)
                continue
            records.append(record)
    return records


def last_logged(workdir: str, key: str):
    """The last value of `key` in the workdir's metrics, or None."""
    values = [r[key] for r in read_records(storage.join(workdir, METRICS_FILE)) if key in r]
    return values[-1] if values else None


def _import_tensorboardx() -> None:
    """Imports tensorboardX without PyTorch. Its package `__init__` imports
    torch whenever torch is installed (only to accept torch tensors, which
    this module never passes), and that import costs every run 1-4 s of
    startup on a 2-core machine. Hidden for the import only: a later `import
    torch` in the same process works as usual. Not thread-safe: another
    thread importing torch at that moment would fail (ssl_jax opens its
    event files from the main thread and never imports torch)."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        import tensorboardX  # noqa: F401

        return
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        import tensorboardX  # noqa: F401
    finally:
        del sys.modules["torch"]


class _EventFile:
    """One TensorBoard events file, written through at every call (in a
    URL `directory`: written on the local disk and uploaded whole)."""

    def __init__(self, directory: str, *, purge_from_step: int | None):
        _import_tensorboardx()
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._event = Event
        self._staging = None
        local_directory = directory
        if storage.is_url(directory):
            storage.makedirs(directory)
            self._staging = local_directory = tempfile.mkdtemp(prefix="ssl_jax_events_")
        os.makedirs(local_directory, exist_ok=True)
        self._writer = EventsWriter(os.path.join(local_directory, "events"))
        self._local_path = self._writer._file_name
        self.path = self._local_path
        if self._staging is not None:
            self.path = storage.join(directory, os.path.basename(self._local_path))
        if purge_from_step is not None:
            # TensorBoard drops the run's earlier events from this step on.
            start = SessionLog(status=SessionLog.START)
            self._write(Event(wall_time=time.time(), step=purge_from_step, session_log=start))

    def _write(self, event) -> None:
        self._writer.write_event(event)
        self._writer.flush()
        if self._staging is not None:
            with open(self._local_path, "rb") as f:
                storage.write_bytes(self.path, f.read())

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboardX import summary
        from tensorboardX.proto.summary_pb2 import Summary

        values = [v for name, x in scalars.items() for v in summary.scalar(name, x).value]
        self._write(self._event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def image(self, step: int, tag: str, image) -> None:
        """A uint8 [H, W, 3] picture."""
        from tensorboardX import summary

        self._write(
            self._event(
                wall_time=time.time(),
                step=step,
                summary=summary.image(tag, image, dataformats="HWC"),
            )
        )

    def text(self, step: int, tag: str, text: str) -> None:
        from tensorboardX import summary

        self._write(self._event(wall_time=time.time(), step=step, summary=summary.text(tag, text)))

    def close(self) -> None:
        self._writer.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricWriter:
    """Writes each log step to `metrics.jsonl` and TensorBoard (under
    `train/`), and shows the
    progress: a bar on a terminal, else one plain line per log step (step,
    loss, images/s, ETA), as a cluster's log file wants. The ETA counts from
    the end of the first step, so compilation does not inflate it."""

    def __init__(self, workdir: str, *, total_steps: int, start_step: int):
        self.path = storage.join(workdir, METRICS_FILE)
        # On an object store: the file's bytes, uploaded whole at each write.
        self._whole: bytes | None = None
        self._events = None
        self._bar = None
        self._total, self._done = total_steps, start_step
        self._timing_from: tuple[int, float] | None = None  # (step, time) after step one
        if not _is_writer():
            return
        storage.makedirs(workdir)
        self._drop_entries_after(start_step)
        tensorboard = storage.join(workdir, "tensorboard")
        try:
            self._events = _EventFile(tensorboard, purge_from_step=start_step + 1)
        except OSError as error:
            raise _write_failed(tensorboard, error) from None
        self._interactive = sys.stderr.isatty()

    def _drop_entries_after(self, step: int) -> None:
        """A resumed run repeats the steps after its last checkpoint; drop
        their old lines (and any unreadable line) so each step is there once."""
        if storage.is_url(self.path):
            kept = [
                json.dumps(r) + "\n" for r in read_records(self.path) if r.get("step", 0) <= step
            ]
            self._whole = "".join(kept).encode()
            try:
                storage.write_bytes(self.path, self._whole)
            except OSError as error:
                raise _write_failed(self.path, error) from None
            return
        if not os.path.exists(self.path):
            return
        with open(self.path, errors="replace") as f:
            lines = [line for line in f if line.strip()]
        kept = [json.dumps(r) + "\n" for r in read_records(self.path) if r.get("step", 0) <= step]
        if len(kept) != len(lines):
            try:
                storage.write_bytes(self.path, "".join(kept).encode())
            except OSError as error:
                raise _write_failed(self.path, error) from None

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not _is_writer():
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        try:
            if self._whole is None:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            else:
                whole = self._whole + (json.dumps(record) + "\n").encode()
                storage.write_bytes(self.path, whole)
                self._whole = whole
        except OSError as error:
            raise _write_failed(self.path, error) from None
        try:
            self._events.scalars(int(step), {f"train/{k}": float(v) for k, v in scalars.items()})
        except OSError as error:
            raise _write_failed(self._events.path, error) from None
        postfix = {"loss": f"{record.get('loss', float('nan')):.4f}"}
        if "images_per_sec" in record:
            postfix["img/s"] = f"{record['images_per_sec']:.0f}"
        if "mfu" in record:
            postfix["mfu"] = f"{record['mfu']:.1%}"
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
        elif not self._interactive:
            eta = self.eta_seconds()
            fields = " ".join(f"{k} {v}" for k, v in postfix.items())
            when = f" ETA {_duration(eta)}" if eta is not None else ""
            log.info("step %d/%d %s%s", step, self._total, fields, when)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate since the end of the first step taken
        (None before two steps): compile time never enters it."""
        if self._timing_from is None or self._done <= self._timing_from[0]:
            return None
        first_step, started = self._timing_from
        rate = (self._done - first_step) / max(time.perf_counter() - started, 1e-9)
        return (self._total - self._done) / rate

    def advance(self, steps: int = 1) -> None:
        self._done += steps
        if self._timing_from is None:
            self._timing_from = (self._done, time.perf_counter())
            if _is_writer() and self._interactive:
                # Made after the first (compiling) step, so its rate and ETA exclude it.
                self._bar = tqdm(
                    total=self._total, initial=self._done, unit="step", dynamic_ncols=True
                )
        elif self._bar is not None:
            self._bar.update(steps)

    def image(self, step: int, tag: str, image) -> None:
        """A picture (uint8 [H, W, 3]) in TensorBoard, e.g. MAE's reconstructions."""
        if self._events is not None:
            try:
                self._events.image(int(step), f"train/{tag}", image)
            except OSError as error:
                raise _write_failed(self._events.path, error) from None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._events is not None:
            try:
                self._events.close()
            except OSError as error:
                raise _write_failed(self._events.path, error) from None


@dataclasses.dataclass(frozen=True)
class OpenInterval:
    """The metric sums of the log interval a checkpoint fell inside (steps
    after the last log line, up to and including the checkpoint's step).
    They travel with the checkpoint, so a run stopped (or killed) mid-interval
    and resumed writes the same next log line, averaged over the same steps,
    as the run that never stopped: the sums come back as the same float32
    values the device held (JSON keeps a double exactly, and a float32
    widened to a double and narrowed back is unchanged)."""

    count: int
    sums: dict[str, float]
    dtypes: dict[str, str]

    @classmethod
    def of(cls, totals: Mapping | None, count: int) -> OpenInterval | None:
        if totals is None or not count:
            return None
        host = jax.device_get(dict(totals))
        sums = {k: float(v) for k, v in host.items()}
        return cls(count, sums, {k: str(v.dtype) for k, v in host.items()})

    def to_json(self) -> dict:
        return {"count": self.count, "sums": self.sums, "dtypes": self.dtypes}

    @classmethod
    def from_json(cls, saved: Mapping | None) -> OpenInterval | None:
        """None for a checkpoint without one (on the log grid, or written
        before the sums were saved: that run's next line averages fewer steps)."""
        if not saved:
            return None
        return cls(int(saved["count"]), dict(saved["sums"]), dict(saved["dtypes"]))

    def carried_into(self, metrics: Mapping) -> tuple[dict | None, int]:
        """(device sums, step count) for the resumed run's first step to add
        its `metrics` to; (None, 0), with one warning, when that step reports
        other metrics than were summed (a resume with --allow_config_change
        that added or removed one, e.g. the online probe's): the next log
        line then averages only the steps since the resume."""
        if set(metrics) != set(self.sums):
            added, removed = (
                sorted(set(metrics) - set(self.sums)),
                sorted(set(self.sums) - set(metrics)),
            )
            log.warning(
                "The checkpoint's open log interval (%d steps) summed other metrics than the "
                "resumed run reports (added %s, removed %s): its sums are dropped, and the "
                "next log line averages only the steps since the resume.",
                self.count,
                added or "none",
                removed or "none",
            )
            return None, 0
        return {k: jnp.asarray(v, self.dtypes[k]) for k, v in self.sums.items()}, self.count


def interval_means(totals: Mapping, count: int) -> tuple[dict[str, float], int]:
    """A log line's figures from the step metrics summed on the device over
    `count` steps, and how many of those steps were skipped as non-finite:
    means over the good steps (a skipped step's metrics are zeros), the
    skipped steps, and the unreadable examples replaced (a count, not a mean)."""
    sums = {k: float(v) for k, v in jax.device_get(totals).items()}
    skipped = sums.pop("nonfinite")
    skipped_examples = sums.pop("skipped_examples", None)
    good = count - skipped
    means = {k: v / good for k, v in sums.items()} if good else {}
    means["skipped_steps"] = skipped
    if skipped_examples is not None:
        means["skipped_examples"] = skipped_examples
    return means, int(skipped)


# Result fields that describe a run's setup rather than measure it (sizes,
# class counts, label budgets, the compiled step's accounting, the wall
# time): TensorBoard text, not one-point scalar charts. Strings (dataset
# names, fingerprints, directories) are text too.
CONSTANT_FIELDS = frozenset(
    {
        "train_steps",
        "num_classes",
        "probe_train_size",
        "per_class",
        "train_size",
        "fraction",
        "steps",
        "step_perf",
        "wall_seconds",
    }
)


def _leaves(tree, path: tuple[str, ...] = ()):
    """(path, value) of every number and string of a results tree; few-label
    lists are keyed by their budget (`few_labels/10_per_class/top1`)."""
    if isinstance(tree, Mapping):
        items = [(str(key), value) for key, value in tree.items()]
    elif isinstance(tree, list):
        items = [
            (f"{entry['per_class']}_per_class", entry)
            for entry in tree
            if isinstance(entry, Mapping) and "per_class" in entry
        ]
    else:
        return
    for key, value in items:
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float | str):
            yield (*path, key), value
        else:
            yield from _leaves(value, (*path, key))


def _section(prefix: str, tree) -> tuple[dict[str, float], str]:
    """A results section as (scalars tagged `prefix/...`, a markdown table of
    its constants)."""
    scalars, constants = {}, []
    for path, value in _leaves(tree):
        if isinstance(value, str) or CONSTANT_FIELDS.intersection(path):
            constants.append(f"| `{'/'.join(path)}` | {value} |")
        else:
            scalars["/".join((prefix, *path))] = float(value)
    table = "\n".join(["| field | value |", "| --- | --- |", *constants]) if constants else ""
    return scalars, table


def record_results(
    workdir: str,
    *,
    step: int,
    config: Mapping,
    sections: Mapping[str, object],
    pictures: Mapping[str, str],
) -> None:
    """The run's config (as text), its results by section (`run` for the
    pretraining's, `eval/<name>` for each evaluator's: figures as scalars
    under the section's prefix, constants as the text `<prefix>/constants`)
    and its pictures (PNG files by tag) in TensorBoard, at `step`."""
    if not _is_writer():
        return
    import numpy as np
    from PIL import Image

    directory = storage.join(workdir, "tensorboard")
    try:
        events = _EventFile(directory, purge_from_step=None)
        config_text = json.dumps(config, indent=2, sort_keys=True)
        events.text(step, "config", f"```\n{config_text}\n```")
        for prefix, tree in sections.items():
            scalars, constants = _section(prefix, tree)
            if scalars:
                events.scalars(step, scalars)
            if constants:
                events.text(step, f"{prefix}/constants", constants)
        for tag, path in pictures.items():
            if storage.exists(path):
                with storage.open_file(path, "rb") as f, Image.open(f) as picture:
                    events.image(step, tag, np.asarray(picture.convert("RGB")))
        events.close()
    except OSError as error:
        raise _write_failed(directory, error) from None
