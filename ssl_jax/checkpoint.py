"""Orbax checkpoints of the whole training state, kept in `WORKDIR/checkpoints`.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves no directory that looks finished:
`latest_step` only ever sees complete checkpoints.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot be used; the message says what to do."""


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Starts an asynchronous save; training goes on while it is written."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, like: Any) -> Any:
        """Restores `step` into the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as error:  # orbax raises many types; all mean the same here
            logging.getLogger(__name__).debug("restore failed", exc_info=True)
            path = os.path.join(self.directory, str(step))
            raise CheckpointError(
                f"Cannot restore the checkpoint {path} ({type(error).__name__}): it is corrupt or "
                "was written by a different config. Use a new --workdir, or move the checkpoint "
                "away to start over."
            ) from error

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
