"""Command-line entry point: parses flags, runs one experiment.

    python -m ssl_jax.main --config=configs/rotation.py --workdir=runs/rotation
    python -m ssl_jax.main --config=configs/rotation.py:runlocal --workdir=/tmp/r \\
        --config.train_steps=50
    ssl-jax --config=simclr:runlocal --workdir=/tmp/s   # an installed package's configs, by name

Rerunning the same command resumes from the workdir's latest checkpoint.

Exit codes: 0 done; 2 bad input or a failed run (one line on stderr says what
to do); 130 / 143 stopped by SIGINT / SIGTERM after checkpointing (rerun the
same command to resume).
"""

from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ssl_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. configs/rotation.py:runlocal.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and results (resumed if it exists)."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logs.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir with a config that changes what the run computes (model, data, "
    "optimizer, steps...); the change is recorded in WORKDIR/config_history.jsonl.",
)
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
    from ssl_jax.nonfinite import NonFiniteLossError
    from ssl_jax.registry import UnknownNameError
    from ssl_jax.workdir import WorkdirError

    # OSError: an unreadable config file or workdir, a full disk: the message says which.
    return (
        ValueError,
        OSError,
        DatasetError,
        UnknownNameError,
        CheckpointError,
        NonFiniteLossError,
        WorkdirError,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected argument(s) {' '.join(argv[1:])!r}; flags look like --name=value.")
    # Libraries (orbax above all) log every save at INFO, and the tracebacks
    # of their background threads at ERROR, through absl: keep that for
    # --verbose. A failure reaches the main thread and is reported there.
    absl_logging.set_verbosity(absl_logging.DEBUG if _VERBOSE.value else absl_logging.FATAL)
    logging.getLogger("ssl_jax").setLevel(logging.DEBUG if _VERBOSE.value else logging.INFO)
    from ssl_jax import distributed, experiment, preemption  # after flag parsing: fast --help

    preemption.install()
    if not _VERBOSE.value:
        _quiet_background_errors()
    try:
        distributed.initialize(
            auto=_DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
        experiment.run(
            _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
    except preemption.Interrupted as stop:
        print(f"ssl_jax: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except _expected_errors() as error:
        if _VERBOSE.value:
            raise
        _fail(_one_line(error))


def _quiet_background_errors() -> None:
    """Errors in library threads (orbax's and tensorstore's writers, after a
    failed save) reach the main thread, which reports them in one line; their
    own tracebacks would bury that line. --verbose shows them."""
    import threading

    debug = logging.getLogger("ssl_jax").debug
    sys.unraisablehook = lambda info: debug("unraisable: %r", info.exc_value)
    threading.excepthook = lambda args: debug("thread %s: %r", args.thread, args.exc_value)


def _fail(message: str) -> None:
    print(f"ssl_jax: error: {message}", file=sys.stderr)
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
        return flags.FLAGS([_packaged_config(a) for a in argv])
    except Exception as error:
        if "--verbose" in argv:
            raise
        message = _missing_field(error, argv) or f"{_one_line(error)} (see --helpfull)"
        print(f"ssl_jax: error: {message}", file=sys.stderr)
        sys.exit(2)


def _packaged_config(arg: str) -> str:
    """`--config=simclr[:options]` names a packaged config (`ssl_jax/configs/`)."""
    if not arg.startswith("--config="):
        return arg
    name, sep, options = arg.removeprefix("--config=").partition(":")
    from ssl_jax.config_lib import config_path

    try:
        return f"--config={config_path(name)}{sep}{options}"
    except ValueError as error:
        print(f"ssl_jax: error: {error}", file=sys.stderr)
        sys.exit(2)


def _missing_field(error: Exception, argv: list[str]) -> str | None:
    """ml_collections reports `--config.a.b=1` on a config without `a.b` as
    just `'b'`: name the whole field."""
    key = _one_line(error).strip("'\"")
    for arg in argv:
        field = arg.partition("=")[0].removeprefix("--config.")
        if arg.startswith("--config.") and field.split(".")[-1] == key:
            config = next((a.partition("=")[2] for a in argv if a.startswith("--config=")), "")
            return (
                f"config field {field!r} does not exist in {config or 'the config'}; "
                "see that file (and configs/) for its fields."
            )
    return None


def console() -> None:
    """The `ssl-jax` command (pyproject's console script)."""
    cli.help_lists_flags(__name__)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    console()
