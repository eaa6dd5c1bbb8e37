"""The XLA CPU flag ssl_jax sets before JAX starts (`ssl_jax/cpu_flags.py`):
where it applies, that the user's choice wins, and that importing ssl_jax
really moves the ConvNet step's convolutions off YNNPACK."""

import json
import os
import subprocess
import sys

import pytest

from ssl_jax import cpu_flags


def test_the_flag_is_added_beside_the_users_flags_on_a_measured_jaxlib():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_flags.apply(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        cpu_flags.CONV_ON_XLA,
    ]
    empty = {}
    assert cpu_flags.apply(empty, jaxlib_version="0.10.2")
    assert empty["XLA_FLAGS"] == cpu_flags.CONV_ON_XLA


def test_the_users_choice_an_opt_out_and_unmeasured_versions_leave_flags_alone():
    chosen = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
    opted_out = {cpu_flags.OPT_OUT: "0"}
    for env, version in (
        (chosen, "0.10.2"),
        (opted_out, "0.10.2"),
        ({}, "0.10.1"),  # only 0.10.2 was measured
        ({}, "0.12.0"),
    ):
        before = dict(env)
        assert not cpu_flags.apply(env, jaxlib_version=version)
        assert env == before


def _library_calls(opt_out: str) -> dict:
    code = (
        "import ssl_jax\n"
        "from experiments import conv_cpu\n"
        "conv_cpu.main(['--variants=default', '--dtypes=float32', '--steps=1', '--rounds=1',"
        " '--warmup=0', '--batch=4'])\n"
    )
    env = {**os.environ, cpu_flags.OPT_OUT: opt_out, "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows[0]["library_calls"]


def test_importing_ssl_jax_leaves_the_convnet_convolutions_to_xla():
    if not cpu_flags._jaxlib_version().startswith(cpu_flags.MEASURED_JAXLIB):
        pytest.skip("the flag is not set on this jaxlib (the test above covers that)")
    default, opted_out = _library_calls("1"), _library_calls("0")
    # With YNNPACK's convolution fusion off, XLA emits the 17 convolutions of
    # the step (forward and backward) itself; without it, only 2 are left.
    assert default["xla_convs"] > opted_out["xla_convs"]
    assert opted_out["xla_convs"] <= 2
