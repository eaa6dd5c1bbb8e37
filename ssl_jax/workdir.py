"""What keeps a workdir trustworthy: one writer at a time, and one run identity.

- `locked(workdir)`: an exclusive lock (`WORKDIR/ssl_jax.lock`, holding the
  holder's host, pid and start time) that a second process meets with a
  one-line error. It is an `flock` on the file, which the kernel drops when
  its process dies, SIGKILL included, so a lock left by a killed run is
  recognised as stale and taken over without a guess about pids.
- `config_changes` / `save_config`: the config of a run with checkpoints
  may change only in fields that cannot change what it computes (logging,
  evaluation, checkpoint cadence); anything else is refused in one line naming
  the fields, unless the change is asked for explicitly, and then it is
  appended to `WORKDIR/config_history.jsonl`. `config.json` is written only
  after that check.

A workdir may also be a URL (`gs://bucket/run`, see `ssl_jax.storage`).
An object store has no `flock`: the lock there is an object holding the
holder's run id and a heartbeat it rewrites every `HEARTBEAT_SECONDS`; a
second run is refused while the heartbeat is fresh, and takes over a lock
whose heartbeat is older than `STALE_SECONDS` (its run was killed). Two runs
started within the same second can both believe they hold it: one writer
per workdir is, on an object store, the user's to keep.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from ssl_jax import storage

log = logging.getLogger(__name__)

LOCK_FILE = "ssl_jax.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# The lock object of a workdir on an object store: its holder rewrites it
# this often, and a lock not rewritten for STALE_SECONDS is a killed run's.
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 300.0

# Config fields (dotted prefixes) that cannot change what a run computes: how
# often it logs, evaluates and checkpoints, what the evaluators do afterwards,
# and how it reacts to faults. Everything else (task, model, data and
# data_dir, which can choose the data, batch, seed, optimizer, schedule,
# steps, precision...) is the run's identity.
RESULT_NEUTRAL_FIELDS = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "peak_tflops",
    "data_profile",  # a record of which recipe the config file chose
    "nonfinite",
    "max_skipped_fraction",
    "collapse_warning",  # only what the run says, not what it computes
    "input.workers",
    # Skipping instead of stopping on a bad record changes nothing before the
    # first bad record, where a run that stopped on it ended.
    "input.on_bad_record",
    "input.max_bad_record_fraction",
    "knn",
    "probe",
    "evals",
    "baselines",
    "save_plots",
)


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked; the message says what to do."""


def check_path(path: str, what: str) -> None:
    """One line, before anything runs, if `path` is a URL this machine cannot
    use (its filesystem package is missing, or its scheme unknown)."""
    try:
        storage.check(path, what)
    except storage.StorageError as error:
        raise WorkdirError(str(error)) from None


# ----------------------------------------------------------------------------- the lock

_held: dict[str, list[int]] = {}  # lock path -> [file descriptor, re-entry count]


def _holder_text() -> str:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "argv": sys.argv}
    )


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on {holder['host']} (since {holder['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _not_writable(workdir: str, error: OSError) -> WorkdirError:
    return WorkdirError(
        f"Cannot write the workdir {workdir} ({error.strerror or error}): choose a writable "
        "--workdir (to resume a run from read-only storage, copy its workdir first)."
    )


def _make_writable_dir(workdir: str) -> None:
    """The workdir as a directory, or one line on why it cannot be one (the
    raw errors say `File exists` for a file and name no fix)."""
    if storage.is_url(workdir):
        try:
            if storage.exists(workdir) and not storage.isdir(workdir):
                raise WorkdirError(
                    f"The workdir {workdir} is a file, not a directory: pass a directory's path."
                )
            storage.makedirs(workdir)
        except OSError as error:
            raise _not_writable(workdir, error) from None
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(
            f"The workdir {workdir} is a file, not a directory: pass a directory's path "
            "(a missing one is created)."
        )
    try:
        os.makedirs(workdir, exist_ok=True)
    except FileExistsError:  # a link to nowhere
        raise WorkdirError(
            f"The workdir {workdir} is a broken link: remove it or pass another --workdir."
        ) from None
    except NotADirectoryError:
        raise WorkdirError(
            f"Cannot create the workdir {workdir}: a folder on its path is a file."
        ) from None
    except OSError as error:
        raise _not_writable(workdir, error) from None


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the block. Re-entrant within a process, so
    a run and the baseline runs nested in its workdir share one lock."""
    _make_writable_dir(workdir)
    if storage.is_url(workdir):
        path = storage.join(workdir, LOCK_FILE)
    else:
        path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return

    if storage.is_url(workdir):
        with _object_lock(workdir, path):
            _held[path] = [-1, 1]
            try:
                yield
            finally:
                del _held[path]
        return

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _not_writable(workdir, error) from None
    try:
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirError(
                f"{workdir} is in use by {_describe_holder(previous)}: wait for that run to "
                "end, or use another --workdir."
            ) from None
        except OSError as error:
            # A filesystem without flock (some network mounts): fall back to
            # the holder's pid, which only tells for a holder on this host.
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            _refuse_if_live_holder_here(workdir, previous)
        if previous:
            log.warning(
                "Taking over the lock of %s in %s: it is no longer running.",
                _describe_holder(previous),
                workdir,
            )
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, _holder_text().encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise

    _held[path] = [fd, 1]
    try:
        yield
    finally:
        del _held[path]
        # Empty means "released cleanly"; the file stays, so a process that
        # opened it meanwhile still contends for the same lock.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def _read_holder(path: str) -> dict | None:
    """The lock object's holder, or None when there is none (absent, empty:
    released cleanly, or unreadable)."""
    try:
        text = storage.read_bytes(path).decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text) if text else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _heartbeat_age(holder: Mapping[str, Any]) -> float:
    return time.time() - float(holder.get("heartbeat", 0))


def _object_holder_text(run_id: str) -> bytes:
    holder = json.loads(_holder_text())
    return json.dumps({**holder, "run_id": run_id, "heartbeat": time.time()}).encode()


@contextlib.contextmanager
def _object_lock(workdir: str, path: str) -> Iterator[None]:
    """The lock of a workdir on an object store (no flock there): an object
    naming its holder, whose heartbeat a thread rewrites every
    `HEARTBEAT_SECONDS`. A fresh heartbeat refuses the run; one older than
    `STALE_SECONDS` (or a dead pid on this host) is a killed run's, taken over."""
    try:
        holder = _read_holder(path)
    except OSError as error:
        raise _not_writable(workdir, error) from None
    if holder is not None:
        age = _heartbeat_age(holder)
        dead_here = (
            holder.get("host") == socket.gethostname()
            and holder.get("pid") != os.getpid()
            and not _pid_alive(int(holder.get("pid", -1)))
        )
        if age < STALE_SECONDS and not dead_here:
            raise WorkdirError(
                f"{workdir} is in use by {_describe_holder(json.dumps(holder))}, whose heartbeat "
                f"in {path} is {max(age, 0):.0f} s old: wait for that run to end, or use another "
                f"--workdir (a killed run's lock is taken over once its heartbeat is "
                f"{STALE_SECONDS:.0f} s old)."
            )
        log.warning(
            "Taking over the lock of %s in %s: its heartbeat is %.0f s old.",
            _describe_holder(json.dumps(holder)),
            workdir,
            age,
        )
    run_id = uuid.uuid4().hex
    try:
        storage.write_bytes(path, _object_holder_text(run_id))
        # A run that started at the same moment may have written after us.
        mine = _read_holder(path)
    except OSError as error:
        raise _not_writable(workdir, error) from None
    if mine is None or mine.get("run_id") != run_id:
        raise WorkdirError(
            f"{workdir} was locked by another run at the same moment: use another --workdir."
        )
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(path, run_id, stop), name="ssl_jax-lock", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(OSError):
            holder = _read_holder(path)
            if holder is not None and holder.get("run_id") == run_id:
                storage.write_bytes(path, b"")  # empty: released cleanly


def _heartbeat(path: str, run_id: str, stop: threading.Event) -> None:
    """Rewrites the lock object every HEARTBEAT_SECONDS while it is ours; a
    lock taken over (this run stalled past STALE_SECONDS) is left alone, said
    once."""
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            holder = _read_holder(path)
            if holder is None or holder.get("run_id") != run_id:
                log.error(
                    "The lock %s was taken over by another run: two runs now write this workdir.",
                    path,
                )
                return
            storage.write_bytes(path, _object_holder_text(run_id))
        except OSError as error:  # a storage hiccup: the next beat tries again
            log.warning("Cannot renew the lock %s: %s", path, error)


@contextlib.contextmanager
def run_lock(workdir: str) -> Iterator[None]:
    """`locked(workdir)` for a run of one or several processes: process 0
    takes the lock and every process learns whether it could, so they all
    stop together (the others would otherwise wait in a collective forever)."""
    import jax

    if jax.process_count() == 1:
        with locked(workdir):
            yield
        return
    import numpy as np
    from jax.experimental import multihost_utils

    error = None
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:
            try:
                stack.enter_context(locked(workdir))
            except Exception as refused:  # also OSError (read-only or full disk)
                error = refused
        taken = multihost_utils.process_allgather(np.int32(error is None))
        if not np.all(taken):
            if isinstance(error, OSError):
                raise WorkdirError(f"Cannot lock {workdir}: {error}.") from None
            raise error or WorkdirError(
                f"{workdir} is in use by another run (process 0 could not lock it)."
            )
        yield


def _refuse_if_live_holder_here(workdir: str, previous: str) -> None:
    try:
        holder = json.loads(previous) if previous else None
    except ValueError:
        holder = None
    if (
        holder
        and holder.get("host") == socket.gethostname()
        and holder.get("pid") != os.getpid()
        and _pid_alive(int(holder.get("pid", -1)))
    ):
        raise WorkdirError(
            f"{workdir} is in use by {_describe_holder(previous)}: wait for that run to end, "
            "or use another --workdir."
        )


# ----------------------------------------------------------------------------- run identity


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _is_neutral(field: str) -> bool:
    return any(field == f or field.startswith(f + ".") for f in RESULT_NEUTRAL_FIELDS)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# Fields added to the base config after workdirs were written, with the value
# that computes what those runs computed: a stored config that lacks one
# compares as if it held that value.
ADDED_FIELDS = {
    "optimizer.freeze": [],
    "optimizer.weight_decay_end": None,
    "task_kwargs.feature_source": "target",  # I-JEPA's probe read the target encoder
}
# Fields that left the configs, with the value at which they did nothing and
# where they went: a stored config that holds one at that value compares as if
# it lacked it; at another value the workdir's optimizer state no longer fits.
RETIRED_FIELDS = {
    "task_kwargs.freeze_prototypes": (0.0, "optimizer.freeze"),
    "task_kwargs.freeze_prototypes_fraction": (0.0, "optimizer.freeze"),
}


def _as_current(old_flat: dict[str, Any], new_flat: dict[str, Any]) -> dict[str, Any]:
    """The stored config's fields as today's configs spell them."""
    current = dict(old_flat)
    for field, value in ADDED_FIELDS.items():
        if field not in current and field in new_flat:
            current[field] = value
    for field, (no_op, _) in RETIRED_FIELDS.items():
        if field in current and field not in new_flat and current[field] in (no_op, None):
            del current[field]
    return current


def retired_fields_in_use(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} for the stored config's retired fields that did something."""
    old_flat, new_flat = _flatten(old), _as_current(_flatten(old), _flatten(new))
    return {f: old_flat[f] for f in RETIRED_FIELDS if f in old_flat and f in new_flat}


def identity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{field: [old, new]} for every field outside `RESULT_NEUTRAL_FIELDS` that
    differs (a field present on one side only counts, as `None` on the other),
    after `ADDED_FIELDS` and `RETIRED_FIELDS` bring the stored config up to date."""
    new_flat = _flatten(new)
    old_flat = _as_current(_flatten(old), new_flat)
    changes = {}
    for field in sorted(old_flat.keys() | new_flat.keys()):
        before, after = old_flat.get(field), new_flat.get(field)
        if not _is_neutral(field) and not _same(before, after):
            changes[field] = [before, after]
    return changes


def _as_json(config: Any) -> dict[str, Any]:
    """The config as `config.json` stores it (tuples become lists), so a stored
    and a new config compare equal when they are."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(plain))


def read_config(workdir: str) -> dict[str, Any] | None:
    path = storage.join(workdir, CONFIG_FILE)
    try:
        with storage.open_file(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise WorkdirError(
            f"{path} is not valid JSON ({error}); restore it, or move it away to accept the "
            "current config for this run."
        ) from None


def _format_changes(changes: Mapping[str, list[Any]]) -> str:
    return ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items())


def config_changes(
    workdir: str, config: Any, *, resuming: bool, allow_change: bool = False
) -> dict[str, list[Any]]:
    """The changes of `config` to the run's identity against the `config.json`
    stored with the workdir's checkpoints ({} for a fresh start, where any
    config goes). A change is refused in one line naming the fields unless
    `allow_change`. Writes nothing: `save_config` does, after the restore."""
    old = read_config(workdir) if resuming else None
    retired = retired_fields_in_use(old, _as_json(config)) if old is not None else {}
    if retired:
        field, value = next(iter(retired.items()))
        raise WorkdirError(
            f"{storage.join(workdir, CONFIG_FILE)} was written with {field}={value!r}, now "
            f"{RETIRED_FIELDS[field][1]}, which lays out the optimizer state differently: "
            "this workdir cannot resume; start the run in a new --workdir."
        )
    changes = identity_changes(old, _as_json(config)) if old is not None else {}
    if changes and not allow_change:
        raise WorkdirError(
            f"The config differs from the one of the checkpoints in {workdir} in what it "
            f"computes: {_format_changes(changes)}. Rerun without these changes, use another "
            "--workdir, or pass --allow_config_change to continue with them (recorded in "
            f"{HISTORY_FILE})."
        )
    return changes


def save_config(
    workdir: str, config: Any, *, changes: Mapping[str, list[Any]], from_step: int
) -> None:
    """Writes `config.json`, and appends accepted `changes` (with the step
    they apply from) to `config_history.jsonl`."""
    if changes:
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "from_step": from_step,
            "changes": changes,
        }
        path = storage.join(workdir, HISTORY_FILE)
        try:
            storage.append_line(path, json.dumps(entry) + "\n")
        except OSError as error:
            raise WorkdirError(f"Cannot write {path}: {error.strerror}.") from None
        log.warning("Config changed from step %d on: %s", from_step, _format_changes(changes))
    write_json(storage.join(workdir, CONFIG_FILE), _as_json(config))


def write_json(path: str, payload: Any) -> None:
    """Writes JSON atomically (`storage.write_json`: a temporary file renamed
    over the target, or one upload to an object store), so a kill or a full
    disk never leaves half a file; a failure names the file."""
    try:
        storage.write_json(path, payload)
    except OSError as error:
        fix = (
            "Fix the storage (or its permissions)"
            if storage.is_url(path)
            else "Free disk space (or fix permissions)"
        )
        raise WorkdirError(
            f"Cannot write {path}: {error.strerror or error}. {fix} and rerun the same "
            "command; what was saved before is intact."
        ) from None
