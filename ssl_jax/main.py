"""Command-line entry point: parses flags, runs one experiment.

    python -m ssl_jax.main --config=configs/rotation.py --workdir=runs/rotation
    python -m ssl_jax.main --config=configs/rotation.py:runlocal --workdir=/tmp/r \
        --config.train_steps=50

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import logging
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
flags.mark_flags_as_required(["config", "workdir"])


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug: reported as one line."""
    from ssl_jax.checkpoint import CheckpointError
    from ssl_jax.data.datasets import DatasetError
    from ssl_jax.registry import UnknownNameError
    from ssl_jax.train import NonFiniteLossError

    return (ValueError, DatasetError, UnknownNameError, CheckpointError, NonFiniteLossError)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # Libraries (orbax above all) log every save at INFO through absl: keep
    # their chatter for --verbose and show ssl_jax's own messages.
    absl_logging.set_verbosity(absl_logging.DEBUG if _VERBOSE.value else absl_logging.WARNING)
    logging.getLogger("ssl_jax").setLevel(logging.DEBUG if _VERBOSE.value else logging.INFO)
    from ssl_jax import experiment  # after flag parsing: keeps `--help` fast

    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except _expected_errors() as error:
        if _VERBOSE.value:
            raise
        print(f"ssl_jax: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
