"""Test setup: every test runs on the CPU backend.

Multi-device tests start fresh subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8, since the device count is
fixed once JAX initialises its backend.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Fewer XLA optimisations compile tiny test models much faster.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
