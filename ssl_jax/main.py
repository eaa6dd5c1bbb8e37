"""Command-line entry point: parses flags, runs one experiment.

    python -m ssl_jax.main --config=configs/rotation.py --workdir=runs/rotation
    python -m ssl_jax.main --config=configs/rotation.py:runlocal --workdir=/tmp/r \
        --config.train_steps=50

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. configs/rotation.py:runlocal.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and results (resumed if it exists)."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host: auto-detect the cluster (SLURM, TPU, MPI) via jax.distributed.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (with the two flags below)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])
flags.register_validator(
    "workdir", lambda path: path is None or bool(path.strip()), "--workdir must name a directory."
)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug: reported as one line."""
    from ssl_jax.checkpoint import CheckpointError
    from ssl_jax.data.datasets import DatasetError
    from ssl_jax.registry import UnknownNameError
    from ssl_jax.train import NonFiniteLossError

    # OSError: an unreadable config file or workdir, a full disk: the message says which.
    return (
        ValueError,
        OSError,
        DatasetError,
        UnknownNameError,
        CheckpointError,
        NonFiniteLossError,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # Libraries (orbax above all) log every save at INFO through absl: keep
    # their chatter for --verbose and show ssl_jax's own messages.
    absl_logging.set_verbosity(absl_logging.DEBUG if _VERBOSE.value else absl_logging.WARNING)
    logging.getLogger("ssl_jax").setLevel(logging.DEBUG if _VERBOSE.value else logging.INFO)
    from ssl_jax import distributed, experiment  # after flag parsing: keeps `--help` fast

    try:
        distributed.initialize(
            auto=_DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except _expected_errors() as error:
        if _VERBOSE.value:
            raise
        print(f"ssl_jax: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)


def _one_line(error: BaseException) -> str:
    """The gist of an error in one line: ml_collections wraps a config file's
    own error in tracebacks, and ConfigDict quotes its multi-line messages."""
    text = str(error)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = text.replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = lines[-1:]  # the innermost error
    return re.sub(r"^\w+(Error|Exception): ", "", " ".join(lines))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config (unknown field, bad
    `get_config` option, wrong type, missing --workdir) is one line on stderr
    instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:
        if "--verbose" in argv:
            raise
        print(f"ssl_jax: error: {_one_line(error)} (see --helpfull)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
