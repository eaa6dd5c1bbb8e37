"""Orbax checkpoints of the whole training state, each checked before it is trusted.

Orbax writes a checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves nothing that looks finished. On top
of that:

- a state with a NaN or Inf anywhere is never saved (`NonFiniteStateError`),
  so "the last good checkpoint" is good;
- every checkpoint carries a SHA-256 fingerprint of its arrays (and the run's
  counters) as a small JSON item beside the state, recomputed on restore:
  orbax's compressed chunks decode flipped bytes without complaint;
- `restore_latest` falls back from an unusable checkpoint (corrupt, a file
  missing, NaN inside) to the newest good one, moving the bad ones to
  `WORKDIR/corrupt_checkpoints/` with a one-line warning; when none is good
  it stops and moves nothing.

The workdir may be a URL: orbax writes `gs://` itself (tensorstore's GCS
driver, no rename: a checkpoint counts once its commit marker is written).
Other URLs are used only when their filesystem stores them on this
machine's disk (a `file://` URL, a test's stand-in for a bucket), where
orbax is handed that local path (`orbax_directory`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import storage

log = logging.getLogger(__name__)

CORRUPT_DIR = "corrupt_checkpoints"
_FORMAT = 1  # bump when the checkpoint's layout changes


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot be written or used; the message says what to do."""


class NonFiniteStateError(CheckpointError):
    """The state to save holds NaN/Inf; `paths` names the leaves."""

    def __init__(self, step: int, paths: list[str]):
        self.step, self.paths = step, paths
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        super().__init__(f"the state of step {step} holds NaN/Inf in {shown}")


def host_leaves(state: Any) -> list[tuple[str, np.ndarray]]:
    """(path, numpy value) of every array of the state, in tree order.
    Replicated arrays: every process holds (and hashes) the whole value."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        value = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        leaves.append((jax.tree_util.keystr(path), np.asarray(value)))
    return leaves


def fingerprint(leaves: list[tuple[str, np.ndarray]]) -> str:
    """A hex digest of names, dtypes, shapes and bytes: equal for two states
    that are equal bit for bit."""
    digest = hashlib.sha256()
    for path, value in leaves:
        digest.update(path.encode())
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def state_fingerprint(state: Any) -> str:
    """A hex digest of every array of the state (parameters, batch-norm
    statistics, optimizer state, step), in tree order: two runs that end in
    the same state, bit for bit, have the same fingerprint. Checkpoints carry
    it, so a restore can tell a corrupt one."""
    return fingerprint(host_leaves(state))


def nonfinite_paths(leaves: list[tuple[str, np.ndarray]]) -> list[str]:
    return [
        path
        for path, value in leaves
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all()
    ]


def orbax_directory(workdir: str) -> str:
    """Where orbax reads and writes the workdir's checkpoints: an absolute
    local path, a `gs://` URL, or the local path behind a disk-backed URL;
    any other URL is one line saying what works."""
    if not storage.is_url(workdir):
        return os.path.abspath(workdir)
    if storage.scheme(workdir) == "gs":
        return workdir.rstrip("/")
    local = storage.local_path(workdir)
    if local is None:
        raise CheckpointError(
            f"--workdir={workdir}: checkpoints are written by orbax, which writes to local paths "
            "and gs:// only; use a gs:// workdir or a mounted path (e.g. s3fs, gcsfuse)."
        )
    return os.path.abspath(local)


class _Unusable(CheckpointError):
    """A checkpoint that is itself bad (corrupt, incomplete, NaN): set aside."""


# Errors of the machine or the storage, not of the checkpoint: a restore that
# meets one stops and changes nothing (moving a good checkpoint aside because
# an NFS server timed out would silently roll the run back).
_ENVIRONMENT_ERRORS = (PermissionError, MemoryError, TimeoutError, ConnectionError)
_ENVIRONMENT_ERRNOS = (errno.EIO, errno.ETIMEDOUT, errno.ENOMEM, errno.EACCES, errno.ESTALE)
_ENVIRONMENT_CODES = ("PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


def _is_environment_fault(error: BaseException) -> bool:
    if isinstance(error, _ENVIRONMENT_ERRORS):
        return True
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        return True
    return any(code in str(error) for code in _ENVIRONMENT_CODES)


# The files every checkpoint holds (orbax's layout): when one is gone, orbax
# reports a pytree mismatch or a tensorstore status, not the file.
_CHECKPOINT_FILES = ("state/_METADATA", "state/manifest.ocdbt", "meta/metadata")


def _reason(error: BaseException, directory: str | None = None) -> str:
    """The gist of an orbax/tensorstore error in one short line: a missing
    file of the checkpoint at `directory` by its name, else the error's first
    sentence without Python reprs, cut at a word."""
    text = " ".join(str(error).split())
    for known in ("No space left on device", "File too large", "Permission denied"):
        if known in text:
            return known
    if directory is not None:
        missing = [f for f in _CHECKPOINT_FILES if not storage.exists(storage.join(directory, f))]
        if missing:
            return f"{', '.join(missing)} missing"
    if "NOT_FOUND" in text:
        return "NOT_FOUND"
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text)
    if len(text) > 160:
        text = text[:160].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}"


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, read_only: bool = False):
        """`read_only`: a reader beside a possibly live run (load_encoder,
        export): it creates nothing and deletes nothing, in particular not the
        temporary directory of a save in progress, which orbax's writer mode
        removes on opening."""
        self.workdir = orbax_directory(workdir)
        self.directory = storage.join(self.workdir, "checkpoints")
        self._keep = keep
        self._read_only = read_only
        self._manager = self._open()
        self._requested: int | None = None  # the step of the last save started

    def _open(self) -> ocp.CheckpointManager:
        if self._read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, create=True, cleanup_tmp_directories=True
            )
        return ocp.CheckpointManager(self.directory, options=options)

    def path(self, step: int) -> str:
        return storage.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, counters: Mapping[str, int] | None = None) -> None:
        """Checks that every leaf is finite, then starts an asynchronous save
        (training goes on while it is written). `counters` (e.g. skipped
        steps so far) travel with the checkpoint and come back on restore."""
        leaves = host_leaves(state)
        bad = nonfinite_paths(leaves)
        if bad:
            raise NonFiniteStateError(step, bad)
        meta = {"format": _FORMAT, "step": step, "fingerprint": fingerprint(leaves)}
        meta["counters"] = dict(counters or {})
        try:
            # Orbax reports a failed background write at the next save.
            self._manager.check_for_errors()
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as error:
            raise self._write_error(error, trying=step) from None
        self._requested = step

    def _write_error(self, error: BaseException, trying: int | None = None) -> CheckpointError:
        """A failed write, blamed on the step that failed: the previous save,
        if it never completed, else the one being started."""
        done = self._manager.all_steps()
        failed = self._requested if self._requested not in (None, *done) else trying
        kept = (
            f"the checkpoint of step {max(done)} is intact"
            if done
            else "no checkpoint is complete yet"
        )
        return CheckpointError(
            f"Cannot write the checkpoint of step {failed} in {self.directory} "
            f"({_reason(error)}); {kept}. Free disk space (or fix permissions) and rerun the "
            "same command to resume."
        )

    def _restore(self, step: int, like: Any) -> tuple[Any, dict[str, int]]:
        """Restores `step` into the structure, shapes and shardings of `like`,
        and verifies it against its fingerprint; raises CheckpointError."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax raises many types
            log.debug("restore of step %d failed", step, exc_info=True)
            if _is_environment_fault(error):
                raise CheckpointError(
                    f"Cannot read the checkpoint {self.path(step)} ({_reason(error)}); nothing "
                    "was changed. Fix the storage or permissions and rerun the same command."
                ) from None
            raise _Unusable(f"cannot be read ({_reason(error, self.path(step))})") from error
        state, meta = restored["state"], restored["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise _Unusable("was written by another version of ssl_jax")
        leaves = host_leaves(state)
        if fingerprint(leaves) != meta["fingerprint"]:
            raise _Unusable("is corrupt (its arrays differ from their recorded SHA-256)")
        bad = nonfinite_paths(leaves)
        if bad:
            raise _Unusable(f"holds NaN/Inf in {', '.join(bad[:3])}")
        return state, dict(meta.get("counters", {}))

    def restore_latest(
        self, like: Any, *, set_aside: bool = True
    ) -> tuple[int, Any, dict[str, int]] | None:
        """(step, state, counters) of the newest usable checkpoint, or None if
        there is none at all. Unusable newer ones are moved aside (unless
        `set_aside=False`: a reader that must not change the workdir), each
        with a one-line warning; if no checkpoint is usable, CheckpointError."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state, counters = self._restore(step, like)
            except _Unusable as error:
                failures.append((step, str(error)))
                continue
            if failures and set_aside:
                self._set_aside(failures, good_step=step)
            for failed, why in failures if not set_aside else ():
                log.warning(
                    "Checkpoint %s %s; using step %d instead.", self.path(failed), why, step
                )
            return step, state, counters
        if failures:
            listed = "; ".join(f"step {s} {why}" for s, why in failures)
            raise CheckpointError(
                f"No usable checkpoint in {self.directory}: {listed}. Move {self.directory} "
                "away to start over (or use another --workdir); nothing was changed."
            )
        return None

    def _set_aside(self, failures: list[tuple[int, str]], good_step: int) -> None:
        target_root = storage.join(self.workdir, CORRUPT_DIR)
        if jax.process_index() == 0:
            storage.makedirs(target_root)
            for step, why in failures:
                target = _free_name(storage.join(target_root, str(step)))
                # On an object store a copy, then a delete: a kill between
                # leaves the step in both places, set aside again next time.
                storage.move(self.path(step), target)
                log.warning(
                    "Checkpoint %s %s; moved to %s; resuming from step %d.",
                    self.path(step),
                    why,
                    target,
                    good_step,
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("ssl_jax: corrupt checkpoints set aside")
        self._manager.close()
        self._manager = self._open()  # it caches the list of steps

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._write_error(error) from None

    def close(self) -> None:
        try:
            self._manager.close()
        except Exception as error:
            raise self._write_error(error) from None


def _free_name(path: str) -> str:
    """`path`, or `path.2`, `path.3`... if taken (the same step can go bad twice)."""
    candidate, n = path, 1
    while storage.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate
