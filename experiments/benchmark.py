"""Throughput, FLOP utilisation and where the time of a train step goes.

    python experiments/benchmark.py --config=configs/simclr.py
    python experiments/benchmark.py --config=configs/mae.py --mask_ratios=0.5,0.75,0.9 \
        --image_sizes=16,32 --out=runs/bench_mae
    python experiments/benchmark.py --config=configs/rotation.py:runlocal --steps=5

For each measured point (the config as is, or every combination of
`--batch_sizes`, `--image_sizes` and `--mask_ratios`) it builds the config's
task and the shared loop's train step on the config's dataset, compiles it
ahead of time, runs `--warmup` steps, times `--steps` steps (ending in a
device sync) and prints one JSON line:

- `images_per_sec` (+ `_per_device`), `step_ms`, `compile_seconds`;
- `flops_per_image` from XLA's cost analysis of the compiled step (forward,
  backward, augmentation, optimizer), `achieved_tflops_per_device`, and `mfu`
  against `--peak_tflops`, else the data sheet's (bfloat16 on known GPUs and
  TPUs), else a large matmul in the compute dtype timed on the spot
  (`peak_source` says which);
- `step_memory_mb` (XLA's plan: arguments + outputs + temporaries) and
  `process_peak_memory_mb`, the allocator's high-water mark so far, where the
  backend reports it (GPU, TPU);
- where the time goes: `host_input_ms` (gathering a batch on the host and
  transferring it), `augment_ms` (the task's on-device augmentation alone,
  with `views_per_sec`), `model_ms` (the rest of the step), the host's
  share if input were not overlapped (`host_share_serial`), and what input
  costs the real loop, which prefetches batches to the device in a
  background thread: `input_slowdown`, the throughput it loses against steps
  fed with batches already on the device (`host_blocked_share` is the time
  the host thread waits for a batch, which overlaps device work);
- with `--probe`, the evaluator's speed: feature extraction (images/s) and
  the linear probe's fit (seconds, the config's L2 grid and steps).

With `--out=DIR`, the rows also go to `DIR/benchmark.csv`, and each swept
variable gets a plot of images/s against it (`DIR/scaling_<variable>.png`).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
import time
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from ssl_jax import config_lib, experiment, inference, optim, perf, train
from ssl_jax.data import pipeline
from ssl_jax.evaluate.linear_probe import extract_features, fit_linear_probe
from ssl_jax.models.precision import COMPUTE_DTYPES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mae.py.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per point.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Per-device peak TFLOP/s; 0 = look up or measure.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", [], "Global batch sizes to sweep.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", [], "Image sizes to sweep.")
_MASK_RATIOS = flags.DEFINE_list("mask_ratios", [], "MAE mask ratios to sweep.")
_PROBE = flags.DEFINE_bool("probe", False, "Also time feature extraction and the linear probe.")
_OUT = flags.DEFINE_string("out", None, "Directory for benchmark.csv and scaling plots.")
flags.mark_flags_as_required(["config"])


def _timed(fn, repeats: int) -> float:
    """Seconds per call of `fn` (which returns arrays), synced at the end."""
    if repeats < 1:
        return 0.0
    start = time.perf_counter()
    out = None
    for i in range(repeats):
        out = fn(i)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


@functools.cache
def peak_flops(compute_dtype: str, device: jax.Device) -> tuple[float, str]:
    """Per-device peak FLOP/s and where it came from; measured once per dtype,
    so every point of a sweep is divided by the same peak."""
    if _PEAK.value:
        return _PEAK.value * 1e12, "given"
    known = perf.known_peak_flops(device, compute_dtype)
    if known:
        return known, "data sheet"
    return perf.measure_matmul_flops(COMPUTE_DTYPES[compute_dtype]), "measured matmul"


def measure(config, arrays, mesh, peak: tuple[float, str]) -> dict[str, Any]:
    """One point: every figure of the module docstring except the probe's."""
    steps, batch_size = _STEPS.value, config.batch_size
    trained = inference.split_task(inference.build_task(config))
    task = trained.module()  # before the state is donated: its buffers may alias these
    tx, schedule = optim.make_optimizer(
        config.optimizer, batch_size=batch_size, total_steps=config.train_steps
    )
    state = jax.device_put(train.init_state(trained, tx), pipeline.replicated(mesh))
    step_fn = train.make_train_step(
        trained.graphdef, tx, schedule, config.seed, total_steps=config.train_steps
    )

    def device_batch(i: int) -> dict[str, jax.Array]:
        return pipeline.to_global(pipeline.host_batch(arrays, batch_size, config.seed, i), mesh)

    host_seconds = _timed(device_batch, steps)
    batches = [device_batch(i) for i in range(min(steps, 4))]
    compiled, step_perf = perf.compile_step(step_fn, state, batches[0], config, mesh)

    def run_step(i: int):
        nonlocal state
        state, metrics = compiled(state, batches[i % len(batches)])
        return metrics

    _timed(run_step, _WARMUP.value)
    step_seconds = _timed(run_step, steps)

    # The augmentation alone: the task's own `augment`, jitted by itself.
    augment = jax.jit(lambda batch, rng: task.augment(batch, rng, train=True))
    rngs = [jax.random.key(i) for i in range(steps)]
    views = _views_made(augment(batches[0], rngs[0]))
    augment_seconds = _timed(lambda i: augment(batches[i % len(batches)], rngs[i]), steps)

    # The real loop's input path: a prefetch thread feeding the compiled step.
    stream = pipeline.device_batches(
        arrays, batch_size=batch_size, seed=config.seed, mesh=mesh, start_step=0
    )
    for _ in range(max(_WARMUP.value, 1)):  # start the prefetch thread, fill its queue
        state, metrics = compiled(state, next(stream))
    jax.block_until_ready(metrics)
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(stream)
        waited += time.perf_counter() - before
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    loop_seconds = time.perf_counter() - start
    stream.close()

    devices = mesh.devices.size
    flops = step_perf["flops_per_image"]
    achieved = flops * batch_size / step_seconds / devices if flops else None
    return {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "compute_dtype": config.compute_dtype,
        "batch_size": batch_size,
        "image_size": config.image_size,
        "mask_ratio": config.task_kwargs.get("mask_ratio"),
        "devices": devices,
        "device_kind": jax.devices()[0].device_kind,
        "images_per_sec": batch_size / step_seconds,
        "images_per_sec_per_device": batch_size / step_seconds / devices,
        "step_ms": 1e3 * step_seconds,
        "compile_seconds": step_perf["compile_seconds"],
        "flops_per_image": flops,
        "achieved_tflops_per_device": achieved / 1e12 if achieved else None,
        "peak_tflops_per_device": peak[0] / 1e12,
        "peak_source": peak[1],
        "mfu": achieved / peak[0] if achieved else None,
        "step_memory_mb": step_perf["step_memory_mb"],
        # The allocator's high-water mark of the whole process so far (GPU/TPU):
        # in a sweep, the largest point measured yet. One point per process
        # gives per-point figures.
        "process_peak_memory_mb": _mb(perf.peak_device_memory_bytes()),
        "host_input_ms": 1e3 * host_seconds,
        "augment_ms": 1e3 * augment_seconds,
        "views_per_sec": views / augment_seconds,
        "model_ms": 1e3 * max(step_seconds - augment_seconds, 0.0),
        "host_share_serial": host_seconds / (host_seconds + step_seconds),
        # The loop with its prefetch thread against steps on batches already on
        # the device: the throughput lost to input (0 when input is hidden).
        "loop_images_per_sec": steps * batch_size / loop_seconds,
        "input_slowdown": max(0.0, 1.0 - step_seconds * steps / loop_seconds),
        # Time the host thread sits in next(batches); it overlaps the device's
        # work on the previous step, so it is not time the device idles.
        "host_blocked_share": waited / loop_seconds,
    }


def measure_probe(config, splits, mesh) -> dict[str, Any]:
    """Feature extraction and linear-probe speed of the config's encoder."""
    train_split, test_split = splits
    trained = inference.split_task(inference.build_task(config))
    features_fn = inference.make_features_fn(trained, mesh)
    batch = config.probe.batch_size
    extract_features(features_fn, train_split.images[:batch], batch_size=batch)  # compile
    start = time.perf_counter()
    train_x = extract_features(features_fn, train_split.images, batch_size=batch)
    test_x = extract_features(features_fn, test_split.images, batch_size=batch)
    extract_seconds = time.perf_counter() - start
    fit = lambda: fit_linear_probe(
        train_x,
        train_split.labels,
        test_x,
        test_split.labels,
        num_classes=train_split.num_classes,
        l2_grid=tuple(config.probe.l2_grid),
        steps=config.probe.steps,
    )
    start = time.perf_counter()
    fit()
    first_fit = time.perf_counter() - start
    start = time.perf_counter()
    fit()
    return {
        "probe_features_per_sec": (len(train_x) + len(test_x)) / extract_seconds,
        "probe_fit_seconds": time.perf_counter() - start,
        "probe_fit_compile_seconds": max(first_fit - (time.perf_counter() - start), 0.0),
        "probe_train_size": len(train_x),
        "probe_l2_values": len(config.probe.l2_grid),
    }


def _mb(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def _points(config) -> list[dict[str, Any]]:
    """Every combination of the swept values (an empty list sweeps nothing)."""
    axes = {
        "batch_size": [int(v) for v in _BATCH_SIZES.value],
        "image_size": [int(v) for v in _IMAGE_SIZES.value],
        "task_kwargs.mask_ratio": [float(v) for v in _MASK_RATIOS.value],
    }
    if axes["task_kwargs.mask_ratio"] and "mask_ratio" not in config.task_kwargs:
        raise app.UsageError(f"--mask_ratios needs an MAE config, got task {config.task!r}.")
    swept = {k: v for k, v in axes.items() if v}
    return [dict(zip(swept, values, strict=True)) for values in itertools.product(*swept.values())]


def _plot(rows: list[dict[str, Any]], variable: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    others = [k for k in ("batch_size", "image_size", "mask_ratio") if k != variable]
    for key, group in itertools.groupby(
        sorted(rows, key=lambda r: [r[k] or 0 for k in others]),
        key=lambda r: [r[k] for k in others],
    ):
        group = sorted(group, key=lambda r: r[variable])
        label = ", ".join(f"{k}={v}" for k, v in zip(others, key, strict=True) if v is not None)
        axes.plot(
            [r[variable] for r in group],
            [r["images_per_sec"] for r in group],
            marker="o",
            label=label,
        )
    axes.set_xlabel(variable)
    axes.set_ylabel("images / s")
    axes.set_title(f"{rows[0]['task']} ({rows[0]['model']}), {rows[0]['device_kind']}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _views_made(outputs) -> int:
    """How many images a task's augmentation made: the leading dims (all but
    [H, W, C]) of its largest output, whatever its key (views, tiles,
    lightness)."""
    largest = max((x for x in jax.tree.leaves(outputs) if x.ndim >= 4), key=lambda x: x.size)
    return math.prod(largest.shape[:-3])


def main(argv: list[str]) -> None:
    del argv
    base = _CONFIG.value
    mesh = pipeline.make_mesh()
    rows, splits_cache = [], {}
    for point in _points(base) or [{}]:
        config = base.copy_and_resolve_references()
        for field, value in point.items():
            parent, _, leaf = field.rpartition(".")
            (config[parent] if parent else config)[leaf] = value
        config_lib.validate(config)
        pipeline.check_batch_size(config.batch_size, mesh)
        if config.image_size not in splits_cache:
            splits_cache[config.image_size] = experiment.load_splits(config.dataset, config)
        splits = splits_cache[config.image_size]
        config = experiment.fill_from_dataset(config, splits[0])
        arrays = {"image": splits[0].images, "label": splits[0].labels}
        row = measure(config, arrays, mesh, peak_flops(config.compute_dtype, jax.devices()[0]))
        if _PROBE.value:
            row.update(measure_probe(config, splits, mesh))
        # Four significant digits: MFU on a CPU is a small number.
        print(
            json.dumps(
                {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}
            )
        )
        rows.append(row)
    if _OUT.value and jax.process_index() == 0:
        os.makedirs(_OUT.value, exist_ok=True)
        with open(os.path.join(_OUT.value, "benchmark.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for variable in ("batch_size", "image_size", "mask_ratio"):
            if len({r[variable] for r in rows}) > 1:
                _plot(rows, variable, os.path.join(_OUT.value, f"scaling_{variable}.png"))


if __name__ == "__main__":
    app.run(main)
