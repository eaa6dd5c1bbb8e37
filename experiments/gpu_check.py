"""The GPU check: one prepared script for a lent accelerator's short window.

    python experiments/gpu_check.py --out=$OUT/gpu_check.json --data=.data/cifar10_dev
    python experiments/gpu_check.py --tiny --out=/tmp/gpu_check.json   # the CPU dry run

Four sections, each a subprocess with its own time limit, so one that hangs
or fails does not cost the others; the JSON is rewritten after every
section, so whatever was measured comes back even if the window closes:

1. `environment`: Python, jax, jaxlib, the devices.
2. `tests`: the fast tests that run the compiled step on the device (mixed
   precision, every image method's step, the models): pytest's exit code and
   its closing line.
3. `throughput`: `experiments/benchmark.py` points in bfloat16: MAE ViT-B/16
   at 224 px and SimCLR ResNet-50 at 224 px (synthetic images: throughput
   does not depend on them), with images/s, GFLOP per image and MFU against
   the data sheet's peak.
4. `run`: SimCLR's CIFAR-size recipe (ResNet-18, 32 px) on the CIFAR-10
   development photos (`--data`: the image folder of ../shared/data's
   cifar10_dev.tar) for `--run_steps` steps, with its linear probe and its
   random init: results.json's figures and the wall time.

Budget: about 8 minutes on one H100 (compiles included). `--tiny` replaces
every section with a CPU-sized one (runlocal configs, two benchmark steps,
one test file): the test suite runs it so the script cannot rot before a
device is lent.

On the device image (Python 3.12, jax with CUDA, flax, optax, orbax), the
packages it lacks travel as wheels: see requirements-gpu.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Where the JSON goes.")
_DATA = flags.DEFINE_string("data", "", "Image folder of the CIFAR-10 photos (section `run`).")
_TINY = flags.DEFINE_bool("tiny", False, "CPU-sized sections: the dry run.")
_RUN_STEPS = flags.DEFINE_integer("run_steps", 3000, "Training steps of section `run`.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch directory (default: beside --out).")
flags.mark_flags_as_required(["out"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The fast tests whose compiled steps touch the device.
DEVICE_TESTS = ["tests/test_precision.py", "tests/tasks/test_methods.py", "tests/models"]
TINY_TESTS = ["tests/test_precision.py", "-k", "really_computes or unknown"]

BENCHMARKS = {
    "mae_vit_b16_224_bf16": [
        "--config=configs/mae.py:dataset=tfds:imagenet2012",
        "--config.batch_size=256",
    ],
    "simclr_resnet50_224_bf16": [
        "--config=configs/simclr.py:dataset=tfds:imagenet2012",
        "--config.batch_size=256",
    ],
}
SYNTHETIC = "--config.dataset=synthetic:train_size=512,test_size=64"


def _command(args: list[str], timeout: float) -> dict:
    """Runs `args` in the repository root; its exit code, time and output tail."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code = "timeout"
        output = (error.stdout or b"").decode(errors="replace") if error.stdout else ""
    return {
        "exit_code": code,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": output[-1500:],
        "_output": output,
    }


def environment() -> dict:
    code = (
        "import json, sys, jax, jaxlib; print(json.dumps({'python': sys.version.split()[0], "
        "'jax': jax.__version__, 'jaxlib': jaxlib.__version__, "
        "'devices': [str(d) for d in jax.devices()], 'backend': jax.default_backend()}))"
    )
    result = _command([sys.executable, "-c", code], timeout=120)
    lines = [line for line in result.pop("_output").splitlines() if line.startswith("{")]
    return {**result, **(json.loads(lines[-1]) if lines else {})}


def tests(tiny: bool) -> dict:
    args = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    result = _command(args + (TINY_TESTS if tiny else DEVICE_TESTS), timeout=240)
    output = result.pop("_output").strip().splitlines()
    return {**result, "summary": output[-1] if output else ""}


def throughput(tiny: bool) -> dict:
    points = {}
    for name, args in BENCHMARKS.items():
        config = args[0] + (",runlocal" if tiny else "")
        extra = ["--steps=2", "--warmup=1"] if tiny else ["--steps=20", "--warmup=3", *args[1:]]
        command = [sys.executable, "experiments/benchmark.py", config, SYNTHETIC, *extra]
        result = _command(command, timeout=180)
        rows = [line for line in result.pop("_output").splitlines() if line.startswith("{")]
        points[name] = {**result, **(json.loads(rows[-1]) if rows else {})}
    return points


def run(tiny: bool, data: str, steps: int, workdir: str) -> dict:
    if tiny:
        config = "configs/simclr.py:runlocal"
        overrides = []
    else:
        if not data or not os.path.isdir(data):
            return {"skipped": f"--data={data!r} is not an image folder"}
        config = f"configs/simclr.py:dataset=imagefolder:{data}"
        overrides = [f"--config.train_steps={steps}"]
    command = [sys.executable, "-m", "ssl_jax.main", f"--config={config}", *overrides]
    result = _command(command + [f"--workdir={workdir}"], timeout=420)
    result.pop("_output")
    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        probe = results["linear_probe"]
        random_probe = results.get("random_init", {}).get("linear_probe", {})
        result.update(
            top1=probe["top1"],
            few_labels=[(f["per_class"], f["top1"]) for f in probe["few_labels"]],
            random_init_top1=random_probe.get("top1"),
            train_wall_seconds=results.get("wall_seconds"),
            step_perf=results.get("step_perf"),
        )
    return result


def main(argv: list[str]) -> None:
    del argv
    out, tiny = _OUT.value, _TINY.value
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    workdir = _WORKDIR.value or os.path.join(os.path.dirname(os.path.abspath(out)), "gpu_run")
    report: dict = {"tiny": tiny}
    sections = {
        "environment": environment,
        "tests": lambda: tests(tiny),
        "throughput": lambda: throughput(tiny),
        "run": lambda: run(tiny, _DATA.value, _RUN_STEPS.value, workdir),
    }
    for name, section in sections.items():
        report[name] = section()
        # Its own write-then-rename, not `ssl_jax.storage.write_json`: this driver
        # imports no ssl_jax (on a device image the package may not be installed).
        with open(out + ".tmp", "w") as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(out + ".tmp", out)  # a killed run keeps every finished section
        print(f"{name}: done", flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "tests"}, default=str)[:4000])


if __name__ == "__main__":
    app.run(main)
