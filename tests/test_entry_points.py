"""What a newcomer meets first: the console scripts' and launchers' `--help`,
and the comparison's default configs (`load_encoder`'s quiet opening is in
test_export.py)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.test_main import ROOT

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

# pip's console-script launcher, as pyproject's [project.scripts] has it written:
# a module of its own (no docstring, no flags) that calls the entry function.
LAUNCHER = "import sys; from {module} import console; sys.argv[0] = {name!r}; sys.exit(console())"


def _help(argv):
    result = subprocess.run(
        [sys.executable, *argv, "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # absl's --help exits with 1 after printing the usage and the flags.
    assert "flags:" in result.stdout, result.stderr[-3000:]
    return result.stdout


def _listed(flag, text):
    """Whether `--help` lists `flag` (booleans as `--[no]name`)."""
    return re.search(rf"^  --(\[no\])?{flag.removeprefix('--')}:", text, flags=re.M) is not None


@pytest.mark.parametrize(
    "module, name, expected",
    [
        (
            "ssl_jax.main",
            "ssl-jax",
            ["--config", "--workdir", "--allow_config_change", "--verbose"],
        ),
        ("ssl_jax.prepare", "ssl-jax-prepare", ["--source", "--out", "--verify", "--data_dir"]),
    ],
)
def test_console_scripts_list_their_flags(module, name, expected):
    for argv in (["-c", LAUNCHER.format(module=module, name=name)], ["-m", module]):
        text = _help(argv)
        flags_part = text.partition("\nflags:")[2]
        assert all(_listed(flag, flags_part) for flag in expected), text[-3000:]
        assert "Try --helpfull" in text


@pytest.mark.parametrize("script", ["compare.py", "sweep.py"])
def test_launchers_list_their_launch_flags(script):
    text = _help([f"experiments/{script}"]).partition("\nflags:")[2]
    for flag in ("--workdir", "--parallel", "--dry_run", "--slurm", "--gather", "--slurm_time"):
        assert _listed(flag, text), text[-3000:]


def _modality(path):
    spec = importlib.util.spec_from_file_location(f"modality_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "MODALITY", "image")


def test_compare_defaults_to_the_image_configs(tmp_path):
    result = subprocess.run(
        [sys.executable, "experiments/compare.py", f"--workdir={tmp_path / 'c'}", "--dry_run"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configs = [
        arg.removeprefix("--config=configs/").removesuffix(".py")
        for line in result.stdout.splitlines()
        for arg in line.split()
        if arg.startswith("--config=")
    ]
    images = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if _modality(p) == "image")
    assert configs == images
    assert "mlm" not in configs and "frames" not in configs and "rotation" in configs
    assert not (tmp_path / "c").exists()  # a dry run launches nothing
