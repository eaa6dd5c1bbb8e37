"""Figures about the compiled step: FLOPs, memory, compilations, the chip's peak.

Used by the training loop (`compile_step`; `Throughput`: `images_per_sec`,
`mfu` in metrics.jsonl) and by `experiments/benchmark.py`. FLOPs come from
XLA's cost analysis of the compiled program, which counts what the chip
actually executes (forward, backward, augmentation and optimizer, per device
under SPMD), not a formula.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax import monitoring

log = logging.getLogger(__name__)

# Dense bfloat16 peak TFLOP/s per chip, from the vendors' data sheets (no
# sparsity). Matched against `device.device_kind` by the longest prefix, so
# "NVIDIA H100 PCIe" is not taken for an SXM card nor an L40S for an L4.
# float32 peaks depend on TF32 and precision settings: for float32 pass the
# peak in.
KNOWN_BF16_PEAK_TFLOPS = {
    "NVIDIA H200": 989.0,
    "NVIDIA H100": 989.0,  # SXM
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA A100": 312.0,
    "NVIDIA L4": 121.0,
    "NVIDIA L40": 181.0,
    "NVIDIA L40S": 362.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def known_peak_flops(device: jax.Device, compute_dtype: str) -> float | None:
    """The data-sheet peak FLOP/s of `device` in `compute_dtype`, or None."""
    if compute_dtype != "bfloat16":
        return None
    matches = [name for name in KNOWN_BF16_PEAK_TFLOPS if device.device_kind.startswith(name)]
    return KNOWN_BF16_PEAK_TFLOPS[max(matches, key=len)] * 1e12 if matches else None


def measure_matmul_flops(dtype: Any = jnp.float32, size: int | None = None, repeats: int = 10):
    """FLOP/s of one large square matmul in `dtype` on the default device, best
    of `repeats`: a practical peak when the data sheet's is unknown (a CPU)."""
    if size is None:
        size = 2048 if jax.default_backend() == "cpu" else 8192
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (size, size), dtype) for k in keys)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of an AOT-compiled function, per device (SPMD
    programs are analysed after partitioning), or None if XLA gives none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled: Any) -> int | None:
    """Device memory of one call by XLA's plan: arguments + outputs + temporaries
    (donated buffers counted once). Available on every backend, CPU included."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def peak_device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The allocator's high-water mark where the backend reports one (GPU, TPU)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class CompileCounter:
    """Counts XLA backend compilations per function name, process-wide.

    A run should compile its train step once; a second compilation means a
    shape, dtype or sharding changed between steps, which costs a compile's
    time each time it happens.
    """

    _counts: collections.Counter = collections.Counter()
    _installed = False

    @classmethod
    def install(cls) -> None:
        if not cls._installed:
            monitoring.register_event_duration_secs_listener(cls._record)
            cls._installed = True

    @classmethod
    def _record(cls, event: str, duration: float, **kwargs: Any) -> None:
        del duration
        if event == "/jax/core/compile/backend_compile_duration":
            cls._counts[str(kwargs.get("fun_name", "?"))] += 1

    @classmethod
    def count(cls, name: str) -> int:
        """Compilations so far of functions whose name contains `name`."""
        return sum(n for fun, n in cls._counts.items() if name in fun)


def compile_step(train_step, state: dict, batch: dict, config, mesh):
    """Compiles the step ahead of time for these exact shapes and shardings and
    reports what XLA says about it. An AOT-compiled step cannot silently
    recompile: a batch of another shape would be an error, not a slow step.

    FLOPs per image are XLA's per-device count times the devices of the mesh,
    over the global batch; the optimizer update, which every device repeats
    in full, is thereby counted once per device (negligible at real batch
    sizes: +0.2% for the rotation digits run, +19% for MAE at batch 16)."""
    started = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    flops = compiled_flops(compiled)
    devices = mesh.devices.size
    peak = config.peak_tflops * 1e12 or known_peak_flops(jax.devices()[0], config.compute_dtype)
    step_perf = {
        "compile_seconds": round(time.perf_counter() - started, 3),
        # Per source image of the global batch (SPMD analysis is per device).
        "flops_per_image": flops * devices / config.batch_size if flops else None,
        "step_memory_mb": _megabytes(compiled_memory_bytes(compiled)),
        "peak_flops_per_device": peak,
    }
    log.info(
        "Train step compiled in %.1f s; %s GFLOP per image; %s MB per device.",
        step_perf["compile_seconds"],
        f"{flops * devices / config.batch_size / 1e9:.3f}" if flops else "?",
        step_perf["step_memory_mb"],
    )
    return compiled, step_perf


def _megabytes(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def mfu_scale(step_perf: dict, devices: int) -> float | None:
    """images/s -> model FLOPs utilisation, when both FLOPs and the peak are known."""
    flops, peak = step_perf["flops_per_image"], step_perf["peak_flops_per_device"]
    if not flops or not peak:
        return None
    return flops / (peak * devices)


class Throughput:
    """Images per second over a log interval (and MFU, given `mfu_scale`).

    The first step pays one-off costs even though the step is compiled (first
    dispatch, the eager ops around it): the clock starts after it, and it is
    reported alone only if a log line comes before any other step.
    """

    def __init__(self, batch_size: int, mfu_scale: float | None = None):
        self._batch_size, self._mfu_scale = batch_size, mfu_scale
        self._first_step_started = time.perf_counter()
        self._start: float | None = None
        self._steps = 0

    def stepped(self, metrics) -> None:
        """After each step's dispatch; waits for the device after the first only."""
        self._steps += 1
        if self._start is None:
            jax.block_until_ready(metrics)
            self._start, self._steps = time.perf_counter(), 0

    def report(self) -> dict[str, float]:
        if self._steps:
            steps, elapsed = self._steps, time.perf_counter() - self._start
        else:  # only the first step so far: report it, one-off costs included
            steps, elapsed = 1, self._start - self._first_step_started
        figures = {"images_per_sec": steps * self._batch_size / max(elapsed, 1e-9)}
        if self._mfu_scale:
            figures["mfu"] = figures["images_per_sec"] * self._mfu_scale
        return figures

    def restart(self) -> None:
        """After a log line (and its evaluation): the next interval starts now."""
        self._start, self._steps = time.perf_counter(), 0
