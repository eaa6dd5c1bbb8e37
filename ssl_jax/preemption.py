"""SIGTERM and SIGINT as requests to stop cleanly.

Clusters preempt a job with SIGTERM and give it a grace period; a person
stops one with Ctrl-C. `install()` (called by `main`) makes both signals
requests: while the training loop runs (`deferred()`), a handler only records
the signal, and the loop checkpoints at the next step boundary and raises
`Interrupted`. Outside the loop (loading data, compiling, evaluating) nothing
is in flight that a checkpoint would keep, so the handler raises `Interrupted`
at once. `main` turns it into one line and exit code 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM: the shell's "ended by that signal"); rerunning
the same command resumes. A second signal stops the process at once (one line,
the same exit code).

Several processes must stop at the same step, or the ones still training
wait forever in a collective: with more than one process, the loop asks
`should_stop` only at its log steps, where all processes exchange their flags.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: int | None = None
_deferring = 0


class Interrupted(Exception):
    """The run stopped on a signal; what was trained is checkpointed."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def install() -> None:
    """Handle SIGTERM and SIGINT as stop requests (main thread only)."""
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def _handle(signum: int, frame) -> None:
    global _received
    if _received is not None:
        # Asked twice: stop now, wherever we are (orbax's save included: a
        # checkpoint is renamed into place only when complete, so the last
        # complete one stays good), with one line and no traceback.
        os.write(
            2,
            f"ssl_jax: stopped at once by a second {signal_name(signum)}; the last complete "
            "checkpoint is kept. Rerun the same command to resume.\n".encode(),
        )
        os._exit(128 + signum)
    _received = signum
    if not _deferring:
        raise Interrupted(signum, _outside_loop(signum))


def _outside_loop(signum: int) -> str:
    return (
        f"stopped by {signal_name(signum)} outside the training steps; every checkpoint "
        "written so far is kept. Rerun the same command to resume."
    )


def requested() -> int | None:
    """The signal received so far, if any."""
    return _received


def reset() -> None:
    """Forget a received signal (tests; a Python API user who carries on)."""
    global _received
    _received = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a signal is only recorded; the loop polls
    `should_stop`. A signal that arrives after the loop's last check
    (during its final save) is raised on leaving the block."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _received is not None and not _deferring:
        raise Interrupted(_received, _outside_loop(_received))


def should_stop(*, sync_point: bool) -> bool:
    """Whether to stop at this step boundary. One process: as soon as a signal
    came. Several: only at `sync_point`s, and then all agree (any process's
    signal stops every process at the same step)."""
    import jax

    if jax.process_count() == 1:
        return _received is not None
    if not sync_point:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(_received is not None))
    return bool(np.any(flags))
