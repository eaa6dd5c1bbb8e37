"""The suite's fork server ends commands as a fresh interpreter would: the
same exit codes, output, working directory, environment and device count."""

import os
import subprocess
import sys

import pytest

from tests import forkserver

pytestmark = pytest.mark.skipif(forkserver.OFF, reason="SSL_JAX_TEST_FORKSERVER=0")

PROBE = (
    "import os, sys, jax\n"
    "print(os.getcwd(), os.environ['PROBE'], jax.device_count(), sys.argv[1:])\n"
    "sys.stderr.write('to stderr')\n"
    "sys.exit(int(sys.argv[1]))\n"
)


def _both(argv, **kwargs):
    kwargs = {"capture_output": True, "text": True, "timeout": 120, **kwargs}
    forked = forkserver.run(argv, **kwargs)
    fresh = subprocess.run(argv, **kwargs)
    return forked, fresh


def test_a_forked_command_is_a_fresh_interpreter(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {
        **os.environ,
        "PROBE": "set",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=3",
    }
    for argv in ([sys.executable, str(script), "3"], [sys.executable, "-c", PROBE, "3"]):
        forked, fresh = _both(argv, cwd=tmp_path, env=env)
        assert forked.returncode == fresh.returncode == 3
        assert forked.stdout == fresh.stdout == f"{tmp_path} set 3 ['3']\n"
        assert forked.stderr == fresh.stderr == "to stderr"
    # The server imported ssl_jax; the command still starts its own backend.
    forked, _ = _both(
        [sys.executable, "-c", PROBE, "0"], cwd=tmp_path, env={**env, "XLA_FLAGS": ""}
    )
    assert forked.returncode == 0 and forked.stdout.split()[2] == "1"


def test_ssl_jax_sets_its_xla_flags_when_the_command_imports_it(tmp_path):
    # A script that sets XLA_FLAGS, then imports ssl_jax (the sharded tests'
    # scripts), and one that never imports it: the flags as a fresh python has them.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    set_then_import = (
        "import os; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'\n"
        "import ssl_jax; print(os.environ['XLA_FLAGS'])"
    )
    for code in (set_then_import, "import os; print(os.environ['XLA_FLAGS'])"):
        forked, fresh = _both([sys.executable, "-c", code], cwd=tmp_path, env=env)
        assert forked.returncode == fresh.returncode == 0, forked.stderr
        assert forked.stdout == fresh.stdout


def test_an_uncaught_error_and_a_module_run_end_as_in_python(tmp_path):
    forked, fresh = _both([sys.executable, "-c", "raise ValueError('boom')"], cwd=tmp_path)
    assert forked.returncode == fresh.returncode == 1
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "ValueError: boom"
    argv = [sys.executable, "-m", "ssl_jax.main", "--config.train_steps=x", "--workdir=w"]
    forked, fresh = _both(argv, cwd=tmp_path)
    assert forked.returncode == fresh.returncode == 2  # no --config: ssl_jax's one line
    assert forked.stderr == fresh.stderr != ""


def test_a_command_past_its_timeout_is_killed():
    with pytest.raises(subprocess.TimeoutExpired):
        forkserver.run(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            capture_output=True,
            text=True,
            timeout=1,
        )
