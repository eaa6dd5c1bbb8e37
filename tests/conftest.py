"""Test setup: every test runs on the CPU backend.

Multi-device tests start fresh subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8, since the device count is
fixed once JAX initialises its backend.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Fewer XLA optimisations compile tiny test models much faster.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for the whole session, shared with the
# subprocesses the tests start (they inherit the environment): the tiny runs
# of a config compile the same step again and again (a new jit per run, per
# process), and a cache hit replaces a compile. It lives in a temporary
# directory removed at exit, so nothing is kept between sessions (or CI runs).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ssl_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
