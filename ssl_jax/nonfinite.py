"""What the loop does about NaN/Inf: stop (`nonfinite=stop`), or skip the bad
steps up to a limit (`nonfinite=skip`), and never save a state one has
touched, with messages that name the step and the last good checkpoint.

The step reports `nonfinite` per step (`all_finite` over its loss, gradients
and new state); `Guard` watches those flags on the device and looks at them
only at log lines and checkpoints, so the host never waits for the device
at each step.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.checkpoint import Checkpointer, NonFiniteStateError

_NO_STEP = np.iinfo(np.int32).max

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the steps."""


def all_finite(tree) -> jax.Array:
    """Whether every float leaf of `tree` is free of NaN/Inf (inside a jitted step)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Guard:
    """The run's non-finite bookkeeping: the first bad step since the last
    checkpoint (on the device), the skipped steps of the whole run (resumed
    runs included), and the last checkpoint saved."""

    def __init__(
        self,
        config,
        checkpointer: Checkpointer,
        *,
        start_step: int,
        skipped_steps: int,
        skipped_examples: int = 0,
    ):
        self._stop = config.nonfinite == "stop"
        self._max_fraction = config.max_skipped_fraction
        self._train_steps = config.train_steps
        self._max_replaced = config.input.max_bad_record_fraction * (
            config.train_steps * config.batch_size
        )
        self._draws_per_step = config.batch_size
        self._checkpointer = checkpointer
        self.skipped_steps = skipped_steps
        # Unreadable records replaced under input.on_bad_record=skip: not a
        # failure, but said once per log interval and summed in results.json.
        self.skipped_examples = skipped_examples
        self._last_checkpoint = start_step
        self._first_bad_step = _NO_STEP  # a device scalar once a step is observed

    def observe(self, step: int, metrics: dict) -> None:
        """After each step; no host-device sync."""
        if self._stop:
            self._first_bad_step = jnp.minimum(
                self._first_bad_step, jnp.where(metrics["nonfinite"] > 0, step, _NO_STEP)
            )

    def check(self) -> None:
        """Before a log line or a checkpoint: with `nonfinite=stop`, raises if a
        step since the last checkpoint was bad."""
        if self._stop and int(self._first_bad_step) != _NO_STEP:
            raise NonFiniteLossError(
                f"The loss, a gradient or the state became NaN/Inf at step "
                f"{int(self._first_bad_step)}; {self._last_good()}. Lower the learning rate "
                "or check the data, then rerun to resume from it (or set "
                "--config.nonfinite=skip to skip such steps)."
            )

    def count_skipped(self, skipped: int, step: int) -> None:
        """Adds a log interval's skipped steps. A run that skips more than
        `max_skipped_fraction` of its steps (or every step) has failed."""
        self.skipped_steps += skipped
        limit = self._max_fraction * self._train_steps
        if self.skipped_steps > limit or (self.skipped_steps and self.skipped_steps == step):
            raise NonFiniteLossError(
                f"{self.skipped_steps} of the first {step} steps were skipped as NaN/Inf (the "
                f"limit is config.max_skipped_fraction={self._max_fraction} of "
                f"{self._train_steps} steps): the run failed; {self._last_good()}. Lower the "
                "learning rate or check the data."
            )

    def count_replaced(self, replaced: int, first_step: int, step: int) -> None:
        """Adds a log interval's replaced (unreadable, skipped) records, with a
        warning that says so. A run that replaced more than
        `input.max_bad_record_fraction` of its planned draws has failed: its
        data is not the dataset it names."""
        if not replaced:
            return
        self.skipped_examples += replaced
        log.warning(
            "%d unreadable record(s) replaced by others in steps %d-%d "
            "(input.on_bad_record=skip); %d in the run so far.",
            replaced,
            first_step,
            step,
            self.skipped_examples,
        )
        if self.skipped_examples > self._max_replaced:
            from ssl_jax.data.datasets import DatasetError

            raise DatasetError(
                f"{self.skipped_examples} of the first {step * self._draws_per_step} records "
                "drawn were unreadable and replaced (input.on_bad_record=skip; the limit is "
                f"config.input.max_bad_record_fraction of the run's "
                f"{self._train_steps * self._draws_per_step} draws): the run failed; "
                f"{self._last_good()}. Repair or remove the unreadable files "
                "(ssl_jax.prepare --verify names them), or raise the limit."
            )

    def save(self, step: int, state, *, open_interval=None) -> None:
        """Checkpoints `state` with the skip counts (and the open log
        interval's sums, `metrics.OpenInterval`, if the step is off the log
        grid), unless a leaf is NaN/Inf."""
        counters = {"skipped_steps": self.skipped_steps, "skipped_examples": self.skipped_examples}
        if open_interval is not None:
            counters["open_interval"] = open_interval.to_json()
        try:
            self._checkpointer.save(step, state, counters=counters)
        except NonFiniteStateError as error:
            raise NonFiniteLossError(
                f"Not saving a checkpoint: {error}; {self._last_good()}. Lower the learning "
                "rate or check the data, then rerun to resume from it."
            ) from None
        self._last_checkpoint, self._first_bad_step = step, _NO_STEP

    def _last_good(self) -> str:
        if self._last_checkpoint == 0:
            return "no checkpoint was saved yet"
        return (
            f"the last good checkpoint is step {self._last_checkpoint} in "
            f"{self._checkpointer.directory}"
        )
