"""How fast XLA's CPU convolutions train the project's ConvNet, and what helps.

    python experiments/conv_cpu.py                                # every variant, float32
    python experiments/conv_cpu.py --dtypes=float32,bfloat16 --compare_torch
    python experiments/conv_cpu.py --variants=default,im2col --batch=256 --rounds=9
    python experiments/conv_cpu.py --variants=xla_flags \\
        --xla_flags="--xla_cpu_use_onednn=true --xla_cpu_enable_fast_math=true"
    python experiments/conv_cpu.py --probe_flags                  # which flags jaxlib knows

Issue 20 (item 2): on 2 CPU cores a ResNet-18 step ran at 0.54x a PyTorch
step and the ConvNet reaches ~25-30% of the matmul peak in bfloat16. This
script times ONE training step (forward, backward, SGD update; jitted, the
state donated) of a pure-JAX copy of `ssl_jax.models.convnet.ConvNet` at
CIFAR size: stages of [conv3x3 - batch norm - ReLU] x `--depth` with
`--widths` 32,64,128, a stride-2 stem and a stride-2 first conv in every later
stage, global average pooling, then a linear classifier and cross-entropy on
synthetic images and labels (the encoder of every method's `encoder=convnet`
recipe at 32 px: `convnet_preset`). The copy is tested against the model
itself (tests/test_conv_cpu.py). The script does not import ssl_jax, whose
import turns on `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
(ssl_jax/cpu_flags.py, chosen from this script's figures): `default` here is
jaxlib's own default, and that flag's effect is its `xla_flags` row.
Variants, each one JSON line per dtype:

  default         `lax.conv_general_dilated` NHWC/HWIO, as `nnx.Conv` does.
  nchw            the same maths in NCHW/OIHW (the input transposed once,
                  the kernel transposed inside the step; batch norm and
                  pooling over NCHW axes).
  im2col          each conv as explicit shifted slices concatenated on the
                  channel axis ([B, Ho, Wo, k*k*C]) and one matmul with the
                  kernel reshaped to [k*k*C, O].
  im2col_patches  the same with `lax.conv_general_dilated_patches` (which
                  XLA lowers as a convolution with a one-hot kernel).
  im2col_strided  im2col for the stride-2 convs only, `default` for the rest:
                  in this jaxlib the only convolutions XLA does not hand to
                  a library (YNNPACK) are the input gradients of the stride-2
                  convs (lhs-dilated); im2col's gradient there is a pad/slice.
  no_bn           `default` without batch norm (conv - ReLU): the BN cost.
                  XLA already fuses BN's elementwise maths and the ReLU into
                  one loop; what remains are the statistics' reductions.
  xla_flags       `default` in a subprocess per `--xla_flags` set (XLA reads
                  XLA_FLAGS once, before the backend starts); labelled
                  `xla_flags:<FLAGS>`. A flag this jaxlib does not know makes
                  XLA abort ("Unknown flag"): the row says `unsupported`.
  torch, torch_channels_last  (`--compare_torch`, float32 only) the same
                  stack in PyTorch (nn.Conv2d / BatchNorm2d / SGD), NCHW and
                  channels_last memory formats.

Each row: variant, dtype, batch, step_ms (median over `--rounds` rounds of
`--steps` steps after `--warmup` steps, ending in block_until_ready),
images_per_sec, ratio_to_default (images/s over `default`'s of the same dtype
in this process; > 1 is faster), xla_flops_per_image (XLA's cost analysis of
the compiled step), conv_flops_per_image (2 x multiply-adds of the convs,
forward + input gradient + weight gradient = 3x forward), conv_gflops
(achieved), compile_s, library_calls (library fusions in the optimised HLO,
e.g. `__ynn_fusion`, and `xla_convs`, convolutions left to XLA's own emitter)
and hlo_fingerprint (xla_flags rows add hlo_differs_from_default: an
unchanged program means the flag did nothing to the HLO, though runtime and
LLVM flags such as multi_thread_eigen or fast_math act below it). With
`--matmul_peak`, also the GFLOP/s of an n x n matmul in the dtype and the
conv share of it.

XLA CPU flags (jaxlib 0.10.2, each tried on a tiny jit with XLA_FLAGS set;
`--probe_flags` repeats the check on the installed jaxlib):
  accepted: --xla_cpu_use_onednn, --xla_cpu_experimental_onednn_custom_call,
    --xla_cpu_experimental_onednn_fusion_type, --xla_cpu_use_xnnpack,
    --xla_cpu_experimental_xnn_fusion_type,
    --xla_cpu_experimental_xnn_graph_fusion_mode,
    --xla_cpu_experimental_ynn_fusion_type (fusion types: dot, eltwise,
    reduce, individual_dot, individual_convolution),
    --xla_cpu_enable_fast_math, --xla_cpu_multi_thread_eigen,
    --xla_cpu_enable_concurrency_optimized_scheduler,
    --xla_cpu_use_fusion_emitters, --xla_cpu_prefer_vector_width;
    --xla_cpu_use_thunk_runtime is accepted but a no-op ("no longer
    supported", the thunk runtime is the only one).
  unknown (XLA aborts): --xla_cpu_use_mkl_dnn (the old name of the oneDNN
    switch).
The default `--xla_flags` sets are the accepted ones that plausibly touch
convolutions (`DEFAULT_FLAG_SETS`). What they do to the ConvNet step's HLO
(jaxlib 0.10.2): by default the forward and weight-gradient convolutions are
already YNNPACK fusions (48 `__ynn_fusion`s, 2 convs left to XLA);
`ynn_fusion_type=-individual_convolution` returns 15 of them to XLA's Eigen
path; `ynn_fusion_type=individual_convolution,dot,eltwise` grows the YNN
fusions to 64; oneDNN fusions appear only with `use_onednn=true` together with
`onednn_fusion_type` (3 of them); `use_onednn`, `onednn_custom_call`,
`use_xnnpack`, the xnn fusion flags, fast_math, multi_thread_eigen and the
concurrency scheduler leave the HLO unchanged.

Timings on a shared machine are noise: the lead measures on quiet cores.
`--compare_torch` runs PyTorch in this process after JAX; its first steps
build oneDNN primitives, so keep `--warmup` at 3 or more.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KERNEL = 3
BN_MOMENTUM = 0.9  # `ssl_jax.models.layers.batch_norm`.
BN_EPSILON = 1e-5  # Flax's BatchNorm default.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Flag sets tried by default, one subprocess each: the switches of this
# jaxlib (see the module docstring) that can change how a convolution, its
# gradients or the fused BN/ReLU loops are compiled.
DEFAULT_FLAG_SETS = (
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_onednn=true"
    " --xla_cpu_experimental_onednn_fusion_type=individual_convolution,dot,eltwise",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_xnnpack=true"
    " --xla_cpu_experimental_xnn_fusion_type=individual_convolution,dot,eltwise",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,dot,eltwise",
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_use_fusion_emitters=false",
)

# Every flag `--probe_flags` checks, with a value that parses if the flag exists.
PROBE_FLAGS = (
    "--xla_cpu_use_mkl_dnn=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_acl=true",
)


# ---------------------------------------------------------------- the stack


def layer_specs(
    in_channels: int, widths: Sequence[int], depth: int, stem_stride: int
) -> list[tuple[int, int, int]]:
    """(in, out, stride) of every conv, in `ConvNet.__init__`'s order."""
    specs, channels = [], in_channels
    for stage, width in enumerate(widths):
        for i in range(depth):
            stride = (2 if stage > 0 else stem_stride) if i == 0 else 1
            specs.append((channels, width, stride))
            channels = width
    return specs


def init_state(key: jax.Array, specs, num_classes: int):
    """(params, batch_stats): HWIO kernels He-initialised (fan_out), BN at 1/0."""
    params: dict[str, Any] = {"convs": [], "head": {}}
    stats = []
    keys = jax.random.split(key, len(specs) + 1)
    for k, (cin, cout, _) in zip(keys, specs, strict=False):
        std = np.sqrt(2.0 / (KERNEL * KERNEL * cout))
        kernel = std * jax.random.normal(k, (KERNEL, KERNEL, cin, cout), jnp.float32)
        params["convs"].append({"kernel": kernel, "scale": jnp.ones(cout), "bias": jnp.zeros(cout)})
        stats.append({"mean": jnp.zeros(cout), "var": jnp.ones(cout)})
    feature_dim = specs[-1][1]
    params["head"] = {
        "kernel": jax.random.normal(keys[-1], (feature_dim, num_classes)) / np.sqrt(feature_dim),
        "bias": jnp.zeros(num_classes),
    }
    return params, stats


def _pad(stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    del stride  # Symmetric `kernel // 2` on each side, as `layers.conv`.
    return ((KERNEL // 2, KERNEL // 2),) * 2


def conv_nhwc(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), _pad(stride), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_nchw(x, kernel, stride):
    oihw = jnp.transpose(kernel, (3, 2, 0, 1))
    return jax.lax.conv_general_dilated(
        x, oihw, (stride, stride), _pad(stride), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )


def conv_im2col(x, kernel, stride):
    """Shifted strided slices -> [B, Ho, Wo, k*k*C] (order: dy, dx, c) @ [k*k*C, O]."""
    b, h, w, c = x.shape
    k = kernel.shape[0]
    ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), *_pad(stride), (0, 0)))
    taps = [
        jax.lax.slice(
            xp,
            (0, dy, dx, 0),
            (b, dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1, c),
            (1, stride, stride, 1),
        )
        for dy in range(k)
        for dx in range(k)
    ]
    patches = jnp.concatenate(taps, axis=-1)
    # HWIO flattens row-major to (dy, dx, c) rows: the order of the taps above.
    return jax.lax.dot_general(patches, kernel.reshape(k * k * c, -1), (((3,), (0,)), ((), ())))


def conv_im2col_patches(x, kernel, stride):
    """`conv_general_dilated_patches` -> [B, Ho, Wo, C*k*k] (order: c, dy, dx) @ kernel."""
    k, _, c, o = kernel.shape
    patches = jax.lax.conv_general_dilated_patches(
        x, (k, k), (stride, stride), _pad(stride), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    flat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c * k * k, o)
    return jax.lax.dot_general(patches, flat, (((3,), (0,)), ((), ())))


def conv_im2col_strided(x, kernel, stride):
    """im2col for the strided convs only: XLA sends the others to a library."""
    return (conv_im2col if stride > 1 else conv_nhwc)(x, kernel, stride)


@dataclasses.dataclass(frozen=True)
class Variant:
    conv: Callable
    nchw: bool = False
    batch_norm: bool = True


VARIANTS = {
    "default": Variant(conv_nhwc),
    "nchw": Variant(conv_nchw, nchw=True),
    "im2col": Variant(conv_im2col),
    "im2col_patches": Variant(conv_im2col_patches),
    "im2col_strided": Variant(conv_im2col_strided),
    "no_bn": Variant(conv_nhwc, batch_norm=False),
}


def _batch_norm(x, p, stats, channel_axis, dtype):
    """Training-mode BN as Flax computes it: float32 statistics (E[x^2] - E[x]^2)."""
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    mul = (p["scale"] * jax.lax.rsqrt(var + BN_EPSILON)).reshape(shape)
    y = (x32 - mean.reshape(shape)) * mul + p["bias"].reshape(shape)
    new_stats = {
        "mean": BN_MOMENTUM * stats["mean"] + (1 - BN_MOMENTUM) * mean,
        "var": BN_MOMENTUM * stats["var"] + (1 - BN_MOMENTUM) * var,
    }
    return y.astype(dtype), new_stats


def features(params, stats, images, *, variant: Variant, specs, dtype=jnp.float32):
    """NHWC images -> (pooled features [B, D] float32, new batch stats)."""
    x = images.astype(dtype)
    channel_axis = -1
    if variant.nchw:
        x, channel_axis = jnp.transpose(x, (0, 3, 1, 2)), 1
    new_stats = []
    for p, s, (_, _, stride) in zip(params["convs"], stats, specs, strict=True):
        x = variant.conv(x, p["kernel"].astype(dtype), stride)
        if variant.batch_norm:
            x, s = _batch_norm(x, p, s, channel_axis, dtype)
        new_stats.append(s)
        x = jax.nn.relu(x)
    pool_axes = (2, 3) if variant.nchw else (1, 2)
    return jnp.mean(x.astype(jnp.float32), pool_axes), new_stats


def make_loss(variant: Variant, specs, dtype=jnp.float32):
    def loss_fn(params, stats, images, labels):
        feats, new_stats = features(
            params, stats, images, variant=variant, specs=specs, dtype=dtype
        )
        head = params["head"]
        logits = feats.astype(dtype) @ head["kernel"].astype(dtype) + head["bias"].astype(dtype)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
        return loss, new_stats

    return loss_fn


def make_step(variant: Variant, specs, dtype, learning_rate: float):
    loss_fn = make_loss(variant, specs, dtype)

    def step(state, images, labels):
        params, stats = state
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, images, labels
        )
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        return (params, new_stats), loss

    return step


def conv_flops_per_image(specs, image_size: int) -> float:
    """2 x multiply-adds of every conv, x3 for forward + input and weight gradients."""
    total, size = 0.0, image_size
    for cin, cout, stride in specs:
        size = (size + 2 * (KERNEL // 2) - KERNEL) // stride + 1
        total += 2.0 * size * size * KERNEL * KERNEL * cin * cout
    return 3 * total


# ----------------------------------------------------------------- timing


def _median_step_seconds(run_steps: Callable[[int], None], args) -> float:
    run_steps(args.warmup)
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        run_steps(args.steps)
        times.append((time.perf_counter() - start) / args.steps)
    return statistics.median(times)


def library_calls(hlo_text: str) -> dict[str, int]:
    """Counts of library fusions (`__ynn_fusion`, `__onednn_fusion`, ...) in an
    optimised HLO text, and `xla_convs`: convolutions left to XLA's own emitter
    (those in a computation that no library fusion calls)."""
    kind_re = r'"kind":"(__\w+?_fusion)"'
    counts = collections.Counter(re.findall(kind_re, hlo_text))
    convs, library_callees, computation = collections.Counter(), set(), None
    for line in hlo_text.splitlines():
        if line.rstrip().endswith("{") and not line.startswith(" "):
            computation = line.removeprefix("ENTRY ").split()[0].lstrip("%")
        called = re.search(r"calls=%([\w.]+)", line)
        if called and re.search(kind_re, line):
            library_callees.add(called.group(1))
        if " convolution(" in line:
            convs[computation] += 1
    xla_convs = sum(n for name, n in convs.items() if name not in library_callees)
    return dict(counts) | {"xla_convs": xla_convs}


def _flops(compiled) -> float | None:
    # perf.compiled_flops's twin: importing ssl_jax would set its default XLA
    # CPU flag (ssl_jax/cpu_flags.py) and change what `default` measures.
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Not every backend/version offers it.
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def time_jax(name: str, dtype_name: str, args) -> dict:
    specs = _specs(args)
    dtype = DTYPES[dtype_name]
    step = make_step(VARIANTS[name], specs, dtype, args.learning_rate)
    key_state, key_x, key_y = jax.random.split(jax.random.key(0), 3)
    state = init_state(key_state, specs, args.num_classes)
    images = jax.random.normal(key_x, (args.batch, args.image_size, args.image_size, 3))
    labels = jax.random.randint(key_y, (args.batch,), 0, args.num_classes)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, images, labels).compile()
    compile_s = time.perf_counter() - start
    box = [state]

    def run_steps(n):
        for _ in range(n):
            box[0], _ = compiled(box[0], images, labels)
        jax.block_until_ready(box[0])

    seconds = _median_step_seconds(run_steps, args)
    flops = _flops(compiled)
    hlo = compiled.as_text()
    return _row(name, dtype_name, seconds, args) | {
        "xla_flops_per_image": None if flops is None else flops / args.batch,
        "compile_s": round(compile_s, 2),
        # Equal fingerprints: a flag left the optimised program unchanged.
        "hlo_fingerprint": hashlib.sha1(hlo.encode()).hexdigest()[:12],
        "library_calls": library_calls(hlo),
    }


def time_torch(channels_last: bool, args) -> dict:
    import torch  # Lazy: only for --compare_torch.
    from torch import nn

    layers: list[nn.Module] = []
    for cin, cout, stride in _specs(args):
        layers += [
            nn.Conv2d(cin, cout, KERNEL, stride, KERNEL // 2, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPSILON, momentum=1 - BN_MOMENTUM),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(args.widths[-1], args.num_classes)]
    torch.manual_seed(0)
    model = nn.Sequential(*layers)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.num_classes, (args.batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate)

    def run_steps(n):
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

    seconds = _median_step_seconds(run_steps, args)
    name = "torch_channels_last" if channels_last else "torch"
    return _row(name, "float32", seconds, args) | {"torch_threads": torch.get_num_threads()}


def time_with_xla_flags(flags: str, dtype_name: str, args) -> dict:
    """`default` in a fresh interpreter with XLA_FLAGS=flags (read once at backend start)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--variants=default",
        f"--dtypes={dtype_name}",
        *_shape_args(args),
    ]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    name = f"xla_flags:{flags}"
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.flag_timeout
        )
    except subprocess.TimeoutExpired:
        return {"variant": name, "dtype": dtype_name, "status": "timeout"}
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode == 0 and rows:
        return rows[-1] | {"variant": name}
    status = "unsupported" if "Unknown flag" in result.stderr else "failed"
    if "Illegal value" in result.stderr:
        status = "bad_value"
    errors = [line for line in result.stderr.splitlines() if line[:1] in "EF" or "rror" in line]
    return {
        "variant": name,
        "dtype": dtype_name,
        "status": status,
        "error": (errors or result.stderr.splitlines() or [""])[0][-300:],
    }


def probe_flags(flags: Sequence[str]) -> list[dict]:
    """Whether this jaxlib accepts each flag: a tiny jitted conv under XLA_FLAGS."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))\n"
        "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
        " dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()\n"
        "assert float(jax.jit(f)(x, w)) == 11616.0\n"
    )
    rows = []
    for flag in flags:
        env = {**os.environ, "XLA_FLAGS": flag}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        if result.returncode == 0:
            status = "deprecated" if "no longer supported" in result.stderr else "accepted"
        elif "Unknown flag" in result.stderr:
            status = "unknown"
        elif "Illegal value" in result.stderr:
            status = "bad_value"
        else:
            status = "failed"
        rows.append({"flag": flag, "status": status, "jaxlib": jax.__version__})
    return rows


def matmul_gflops(dtype_name: str, n: int, args) -> float:
    a = jax.random.normal(jax.random.key(1), (n, n)).astype(DTYPES[dtype_name])
    f = jax.jit(lambda a: a @ a).lower(a).compile()

    def run_steps(k):
        for _ in range(k):
            out = f(a)
        if k:
            out.block_until_ready()

    return 2 * n**3 / _median_step_seconds(run_steps, args) / 1e9


def _row(name: str, dtype_name: str, seconds: float, args) -> dict:
    return {
        "variant": name,
        "dtype": dtype_name,
        "batch": args.batch,
        "image_size": args.image_size,
        "status": "ok",
        "step_ms": round(seconds * 1e3, 3),
        "images_per_sec": round(args.batch / seconds, 1),
        "conv_flops_per_image": conv_flops_per_image(_specs(args), args.image_size),
        "conv_gflops": round(
            conv_flops_per_image(_specs(args), args.image_size) * args.batch / seconds / 1e9, 2
        ),
    }


def _specs(args):
    return layer_specs(3, args.widths, args.depth, args.stem_stride)


def _shape_args(args) -> list[str]:
    return [
        f"--batch={args.batch}",
        f"--image_size={args.image_size}",
        f"--widths={','.join(map(str, args.widths))}",
        f"--depth={args.depth}",
        f"--stem_stride={args.stem_stride}",
        f"--num_classes={args.num_classes}",
        f"--learning_rate={args.learning_rate}",
        f"--warmup={args.warmup}",
        f"--steps={args.steps}",
        f"--rounds={args.rounds}",
    ]


# ------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: tuple(int(v) for v in s.split(","))
    p.add_argument(
        "--variants",
        default="default,nchw,im2col,im2col_patches,no_bn,xla_flags",
        help=f"comma-separated, of {', '.join(VARIANTS)}, xla_flags",
    )
    p.add_argument(
        "--xla_flags",
        action="append",
        default=None,
        help="one XLA_FLAGS set per use (repeatable); default: DEFAULT_FLAG_SETS",
    )
    p.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--widths", type=ints, default=(32, 64, 128))
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--stem_stride", type=int, default=2)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--learning_rate", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is reported")
    p.add_argument("--compare_torch", action="store_true")
    p.add_argument(
        "--matmul_peak",
        type=int,
        default=0,
        metavar="N",
        help="also time an N x N matmul per dtype (0: off)",
    )
    p.add_argument("--flag_timeout", type=float, default=600.0)
    p.add_argument(
        "--probe_flags",
        action="store_true",
        help="only check which PROBE_FLAGS this jaxlib accepts",
    )
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for v in args.variants:
        if v not in VARIANTS and v != "xla_flags":
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}, xla_flags")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    if args.xla_flags is None:
        args.xla_flags = list(DEFAULT_FLAG_SETS)
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Prints one JSON line per (variant, dtype) and returns the rows."""
    args = parse_args(argv)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.probe_flags:
        for row in probe_flags(PROBE_FLAGS):
            emit(row)
        return rows
    # `default` first: every other row's ratio is against it.
    order = sorted(args.variants, key=lambda v: v != "default")
    for dtype_name in args.dtypes:
        base = base_hlo = None
        peak = matmul_gflops(dtype_name, args.matmul_peak, args) if args.matmul_peak else None
        jobs: list[tuple[str, Callable[[], dict]]] = []
        for v in order:
            if v == "xla_flags":
                jobs += [
                    (v, partial(time_with_xla_flags, f, dtype_name, args)) for f in args.xla_flags
                ]
            else:
                jobs.append((v, partial(time_jax, v, dtype_name, args)))
        if args.compare_torch and dtype_name == "float32":
            jobs += [("torch", partial(time_torch, c, args)) for c in (False, True)]
        for name, job in jobs:
            row = job()
            if row.get("status") == "ok":
                if name == "default":
                    base, base_hlo = row["images_per_sec"], row["hlo_fingerprint"]
                if name == "xla_flags" and base_hlo:
                    row["hlo_differs_from_default"] = row["hlo_fingerprint"] != base_hlo
                row["ratio_to_default"] = round(row["images_per_sec"] / base, 3) if base else None
                if peak:
                    row["matmul_gflops"] = round(peak, 2)
                    row["conv_share_of_matmul_peak"] = round(row["conv_gflops"] / peak, 3)
            emit(row)
    return rows


if __name__ == "__main__":
    main()
