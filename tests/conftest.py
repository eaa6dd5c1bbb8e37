"""Test setup: every test runs on the CPU backend.

Multi-device tests start fresh subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8, since the device count is
fixed once JAX initialises its backend.
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Fewer XLA optimisations compile tiny test models much faster.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One dataset cache per test session, shared with the runs it starts (they
# inherit the environment): the digits are decoded once, and nothing is
# written into the user's ~/.cache/ssl_jax.
if "SSL_JAX_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ssl_jax_test_cache_")
    os.environ["SSL_JAX_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# One persistent JAX compilation cache per test session, shared by the xdist
# workers and every run they start (the environment is inherited, and the
# controller imports this file before it starts the workers): dozens of tests
# compile the same `runlocal` steps, and kill/resume compiles each twice.
# Every entry is kept however fast it compiled; the directory is deleted at
# exit, so nothing carries over between sessions or CI runs (unless the
# caller set JAX_COMPILATION_CACHE_DIR: then that cache is used as given).
# JAX keys entries by XLA_FLAGS as they are when it compiles, while XLA reads
# them once, at backend start: ssl_jax's CPU flag is set here, before any
# process starts a backend, so every process compiles with the flags its key
# names.
from ssl_jax import cpu_flags  # noqa: E402

cpu_flags.apply()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _compiled = tempfile.mkdtemp(prefix="ssl_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compiled
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    atexit.register(shutil.rmtree, _compiled, ignore_errors=True)


@pytest.fixture(scope="session")
def _finished_quick_run(tmp_path_factory):
    from tests.test_main import QUICK, run_main

    workdir = tmp_path_factory.mktemp("finished") / "run"
    run_main(workdir, *QUICK)
    return workdir


@pytest.fixture
def finished_run(_finished_quick_run, tmp_path):
    """A private copy of one finished `rotation.py:runlocal` run with
    `tests.test_main.QUICK`'s settings (checkpoints 3 and 6, results.json):
    the starting point of the tests that resume, corrupt or change a workdir,
    trained once per session instead of once per test."""
    workdir = tmp_path / "run"
    shutil.copytree(_finished_quick_run, workdir)
    return workdir
