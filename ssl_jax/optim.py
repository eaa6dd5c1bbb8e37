"""Optimizers and learning-rate schedules, built from `config.optimizer`.

All optimizers share one schedule (linear warm-up, then cosine decay) and one
rule for weight decay: it applies to kernels only, at `weight_decay` or, with
`weight_decay_end` set, on a cosine from the one to the other over the run
(I-JEPA's 0.04 -> 0.4; `weight_decay_schedule`). Biases and normalisation
scales/offsets (every parameter with fewer than two dimensions) are excluded,
from decay and, for LARS, from trust-ratio adaptation, as SimCLR and most
large-batch recipes do: decaying a BN scale fights the normalisation itself.

A parameter can be frozen for the start of the run (`freeze`: DINO's, iBOT's
and SwAV's prototypes for their first epoch): while frozen it gets no update
and its optimizer state does not advance, as in the PyTorch references, where
a parameter without a gradient is skipped by the optimizer (no weight decay,
no moment, no step count). Its first step after the freeze is a fresh
optimizer's first step, at the run's learning rate of that step.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict, config_dict


def decay_mask(params):
    """True for parameters that get weight decay (and LARS adaptation)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def scaled_learning_rate(opt: ConfigDict, batch_size: int) -> float:
    """The peak learning rate after batch-size scaling.

    `linear`: lr * batch / 256 (Goyal et al.); `sqrt`: lr * sqrt(batch)
    (SimCLR's choice for LARS with large batches); `none`: as given.
    """
    scalings: dict[str, Callable[[float], float]] = {
        "none": lambda lr: lr,
        "linear": lambda lr: lr * batch_size / 256,
        "sqrt": lambda lr: lr * math.sqrt(batch_size),
    }
    if opt.lr_scaling not in scalings:
        raise ValueError(
            f"optimizer.lr_scaling={opt.lr_scaling!r} is not one of {sorted(scalings)}."
        )
    return scalings[opt.lr_scaling](opt.learning_rate)


def warmup_steps(opt: ConfigDict, total_steps: int) -> int:
    """The warm-up of a run of `total_steps`, in steps.

    The rule: a recipe states its warm-up as a fraction of the run
    (`warmup_fraction`), so it follows the run's length (a paper's 10 epochs of
    1,000 is 1% of any run; 1,950 absolute steps would make a 500-step run all
    warm-up). `warmup_steps` is an absolute count for a one-off run; the two
    cannot both be set, and an absolute warm-up longer than the run is refused
    rather than silently cut."""
    if opt.warmup_steps and opt.warmup_fraction:
        raise ValueError(
            f"optimizer.warmup_steps={opt.warmup_steps} and optimizer.warmup_fraction="
            f"{opt.warmup_fraction} are both set: keep one (set the other to 0)."
        )
    if opt.warmup_steps > total_steps:
        raise ValueError(
            f"optimizer.warmup_steps={opt.warmup_steps} is longer than the run ({total_steps} "
            "steps): lower it, or give optimizer.warmup_fraction instead."
        )
    return int(round(opt.warmup_fraction * total_steps)) or int(opt.warmup_steps)


def make_schedule(opt: ConfigDict, *, batch_size: int, total_steps: int) -> optax.Schedule:
    peak = scaled_learning_rate(opt, batch_size)
    warmup = warmup_steps(opt, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * opt.end_lr_fraction,
    )


def weight_decay_schedule(opt: ConfigDict, total_steps: int) -> float | optax.Schedule:
    """The weight decay of optimizer step t (from 0): `weight_decay` when
    `weight_decay_end` is unset, else the cosine wd_end + (wd - wd_end) *
    (1 + cos(pi * t / total_steps)) / 2, held at wd_end after the run. This is
    the reference I-JEPA's `CosineWDSchedule` (facebookresearch/ijepa,
    src/utils/schedulers.py), which ramps 0.04 -> 0.4 over the run (whether
    its first update reads progress 0 or 1 / T was not checked: at most a
    one-step offset)."""
    if opt.weight_decay_end is None or opt.weight_decay_end == opt.weight_decay:
        return opt.weight_decay  # a constant: the optimizer state of a run without a schedule
    start, end = float(opt.weight_decay), float(opt.weight_decay_end)
    steps = max(total_steps, 1)

    def schedule(count):
        progress = jnp.minimum(count / steps, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return schedule


def _sgd(opt: ConfigDict, schedule: optax.Schedule, wd) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(wd, mask=decay_mask),
        optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
    )


def _adamw(opt: ConfigDict, schedule: optax.Schedule, wd) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=decay_mask)


def _clipped_trust_ratio(
    trust_coefficient: float, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """LARC's clipping (You et al. 2017, as NVIDIA apex and solo-learn apply
    LARS): an adapted parameter's update u (gradient + decay) is scaled by
    min(eta ||w|| / ||u|| / lr, 1), so its step lr * scale * u is the smaller of
    the trust-ratio step and plain SGD's, never larger."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        lr = schedule(state.count)

        def scale(u, w):
            w_norm, u_norm = jnp.linalg.norm(w), jnp.linalg.norm(u)
            ratio = trust_coefficient * w_norm / jnp.maximum(u_norm, 1e-12)
            factor = jnp.minimum(ratio / jnp.maximum(lr, 1e-12), 1.0)
            return u * jnp.where((w_norm > 0) & (u_norm > 0), factor, 1.0)

        updates = jax.tree.map(scale, updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def _lars(opt: ConfigDict, schedule: optax.Schedule, wd) -> optax.GradientTransformation:
    if opt.lars_clip:
        return optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.masked(_clipped_trust_ratio(opt.trust_coefficient, schedule), decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    return optax.lars(
        schedule,
        weight_decay=wd,
        weight_decay_mask=decay_mask,
        trust_coefficient=opt.trust_coefficient,
        trust_ratio_mask=decay_mask,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
    )


# name -> (config, learning-rate schedule, weight decay or its schedule) -> optimizer.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "lars": _lars,
}


def validate(opt: ConfigDict) -> None:
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={opt.name!r} is not one of {sorted(OPTIMIZERS)}.")
    if not opt.learning_rate > 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {opt.learning_rate}.")
    if opt.weight_decay < 0:
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {opt.weight_decay}.")
    if opt.weight_decay_end is not None and not opt.weight_decay_end >= 0:
        raise ValueError(
            f"optimizer.weight_decay_end must be >= 0 (or unset: no schedule), "
            f"got {opt.weight_decay_end}."
        )
    if not opt.bias_lr_scale > 0:
        raise ValueError(f"optimizer.bias_lr_scale must be > 0, got {opt.bias_lr_scale}.")
    if opt.warmup_steps < 0:
        raise ValueError(f"optimizer.warmup_steps must be >= 0, got {opt.warmup_steps}.")
    if not 0 <= opt.warmup_fraction < 1:
        raise ValueError(f"optimizer.warmup_fraction must be in [0, 1), got {opt.warmup_fraction}.")
    for pair in opt.module_lr_scales:
        if len(pair) != 2 or not float(pair[1]) > 0:
            raise ValueError(
                "optimizer.module_lr_scales holds (module, scale > 0) pairs, e.g. "
                f"(('encoder', 0.1),); got {tuple(opt.module_lr_scales)}."
            )
    for pair in opt.freeze:
        if not _is_freeze_pair(pair):
            raise ValueError(
                "optimizer.freeze holds (parameter path, fraction of the run in [0, 1]) "
                f"pairs, e.g. (('head/prototypes', 0.01),); got {tuple(opt.freeze)}."
            )
    if opt.grad_clip not in CLIPPING:
        raise ValueError(f"optimizer.grad_clip={opt.grad_clip!r} is not one of {sorted(CLIPPING)}.")
    if not 0 <= opt.end_lr_fraction <= 1:
        raise ValueError(f"optimizer.end_lr_fraction must be in [0, 1], got {opt.end_lr_fraction}.")


def _is_freeze_pair(pair) -> bool:
    try:
        path, fraction = pair
        return isinstance(path, str) and 0 <= float(fraction) <= 1
    except (TypeError, ValueError):
        return False


def make_optimizer(
    opt: ConfigDict, *, batch_size: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `opt.name` and its learning-rate schedule."""
    validate(opt)
    schedule = make_schedule(opt, batch_size=batch_size, total_steps=total_steps)
    frozen = [(path, frozen_steps(float(fraction), total_steps)) for path, fraction in opt.freeze]
    frozen = [(path, steps) for path, steps in frozen if steps > 0]
    if frozen:
        tx = _with_freeze(opt, schedule, batch_size, frozen, total_steps)
    else:  # no freeze: the layout of the optimizer state that has no groups
        tx = _updates(opt, schedule, batch_size, weight_decay_schedule(opt, total_steps))
    for module, scale in opt.module_lr_scales:
        # A module's steps scaled, e.g. a pretrained encoder fine-tuned at a
        # tenth of its new head's rate.
        mask = _in_modules((module,), "module_lr_scales")
        tx = optax.chain(tx, optax.masked(optax.scale(float(scale)), mask))
    if opt.grad_clip_norm:
        clip = CLIPPING[opt.grad_clip](opt.grad_clip_norm)
        if frozen and opt.grad_clip == "global_norm":
            # A frozen parameter's gradient takes no part in the others'
            # clipping (the references drop it): zeroed first, while frozen.
            clip = optax.chain(_held_gradients(frozen), clip)
        tx = optax.chain(clip, tx)
    return tx, schedule


def _held_gradients(frozen: list[tuple[str, int]]) -> optax.GradientTransformation:
    """The gradients with each `frozen` (path, steps) group zeroed for its steps."""
    transforms = {"free": optax.identity()}
    for i, (_, steps) in enumerate(frozen):
        transforms[f"frozen{i}"] = hold(optax.identity(), steps)
    return optax.multi_transform(transforms, _freeze_labels([path for path, _ in frozen]))


def _updates(opt: ConfigDict, schedule: optax.Schedule, batch_size: int, wd):
    """The named optimizer on `schedule` with weight decay `wd` (a value or a
    schedule), with the bias scale and the fixed-rate modules."""
    tx = _with_bias_scale(opt, OPTIMIZERS[opt.name](opt, schedule, wd))
    if opt.fixed_lr_modules:
        # SimSiam's predictor at a constant learning rate (the paper's section
        # 4.4; solo-learn's `static_lr`): the same optimizer, another schedule.
        fixed = optax.constant_schedule(scaled_learning_rate(opt, batch_size))
        fixed_tx = _with_bias_scale(opt, OPTIMIZERS[opt.name](opt, fixed, wd))
        in_fixed = _in_modules(tuple(opt.fixed_lr_modules), "fixed_lr_modules")
        labels = lambda params: jax.tree.map(
            lambda fixed: "fixed" if fixed else "scheduled", in_fixed(params)
        )
        tx = optax.multi_transform({"scheduled": tx, "fixed": fixed_tx}, labels)
    return tx


def frozen_steps(fraction: float, total_steps: int) -> int:
    """How many of the run's first optimizer steps a `fraction` freezes: the
    steps s (from 0) whose progress s / total_steps, in float32 as the tasks
    keep it, is below `fraction` in float32."""
    steps = np.arange(total_steps + 1, dtype=np.float32)
    after = steps / np.float32(max(total_steps, 1)) >= np.float32(fraction)
    return int(np.argmax(after)) if after.any() else total_steps


class HoldState(NamedTuple):
    count: jax.Array  # optimizer steps taken, frozen or not
    inner: optax.OptState  # the group's own optimizer state, untouched while frozen


def hold(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`inner` for the first `steps` optimizer steps held: zero updates and
    its state kept as it was (Adam's moments and count, SGD's momentum); from
    then on `inner` as if it started there."""

    def init(params):
        return HoldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        frozen = state.count < steps
        new_updates, new_inner = inner.update(updates, state.inner, params)
        keep = lambda new, old: jnp.where(frozen, old, new)
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        count = optax.safe_increment(state.count)
        return new_updates, HoldState(count, jax.tree.map(keep, new_inner, state.inner))

    return optax.GradientTransformation(init, update)


def _with_freeze(opt, schedule, batch_size, frozen: list[tuple[str, int]], total_steps: int):
    """The optimizer with each `frozen` (path, steps) group held for its
    first steps. Every group has its own copy of the optimizer (so its own
    step count); a held group's schedules (learning rate and weight decay)
    are shifted by its steps, so that after the freeze it reads the run's
    values of the step, not the warm-up's start."""
    wd = weight_decay_schedule(opt, total_steps)
    transforms = {"free": _updates(opt, schedule, batch_size, wd)}
    for i, (_, steps) in enumerate(frozen):
        shifted = lambda count, steps=steps: schedule(count + steps)
        shifted_wd = wd if not callable(wd) else (lambda count, steps=steps: wd(count + steps))
        transforms[f"frozen{i}"] = hold(_updates(opt, shifted, batch_size, shifted_wd), steps)
    return optax.multi_transform(transforms, _freeze_labels([path for path, _ in frozen]))


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _under(names: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    """Whether a parameter's path starts with `prefix`, each name of which may
    be a shell pattern ("head/*prototypes": iBOT's one or two prototype layers)."""
    return len(names) >= len(prefix) and all(
        fnmatch.fnmatchcase(name, pattern) for name, pattern in zip(names, prefix, strict=False)
    )


def _freeze_labels(paths: list[str]) -> Callable:
    """params -> "frozen<i>" for the parameters under `paths[i]` (slash-separated
    attribute names from the task, e.g. "head/prototypes", each name possibly a
    shell pattern), "free" elsewhere."""
    prefixes = [tuple(p.strip("/").split("/")) for p in paths]

    def labels(params):
        names = [_path_names(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
        for path, prefix in zip(paths, prefixes, strict=True):
            if not any(_under(n, prefix) for n in names):
                tops = sorted({"/".join(n[:2]) for n in names})
                raise ValueError(
                    f"optimizer.freeze names {path!r}, which holds no parameter of the task; "
                    f"its parameters are under {tops}."
                )

        def label(path, _):
            names = _path_names(path)
            for i, prefix in enumerate(prefixes):
                if _under(names, prefix):
                    return f"frozen{i}"
            return "free"

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def _with_bias_scale(opt: ConfigDict, tx: optax.GradientTransformation):
    if opt.bias_lr_scale == 1.0:
        return tx
    # Biases and normalisation parameters at another learning rate (Barlow
    # Twins' reference: 0.0048 for them against 0.2 for the weights).
    not_decayed = lambda params: jax.tree.map(lambda m: not m, decay_mask(params))
    return optax.chain(tx, optax.masked(optax.scale(opt.bias_lr_scale), not_decayed))


def _in_modules(modules: tuple[str, ...], field: str) -> Callable:
    """params -> True for the parameters under the task's top-level attributes
    named in `modules` (e.g. "predictor"), False elsewhere, in the parameters'
    container type (a dict or an nnx.State); `field` names the config field
    in the error for a module the task lacks."""

    def membership(params):
        unknown = set(modules) - set(params.keys())
        if unknown:
            raise ValueError(
                f"optimizer.{field} names {sorted(unknown)}, which the task does not "
                f"have; its modules are {sorted(params.keys())}."
            )

        def member(path, _):
            top = path[0]
            return getattr(top, "key", getattr(top, "name", None)) in modules

        return jax.tree_util.tree_map_with_path(member, params)

    return membership


def _clip_each_tensor(max_norm: float) -> optax.GradientTransformation:
    """DINO's reference clipping (facebookresearch/dino, utils.clip_gradients,
    also iBOT's): every parameter's gradient on its own, scaled by
    max_norm / (||g|| + 1e-6) where that is below 1, not by the global norm."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            scale = max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6)
            return (g * jnp.minimum(scale, 1.0)).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


CLIPPING: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "global_norm": optax.clip_by_global_norm,
    "per_tensor": _clip_each_tensor,
}


def default_config(**overrides) -> ConfigDict:
    """Every field any optimizer reads, so a typo in `--config.optimizer.X` is an error."""
    config = ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.1,
            "lr_scaling": "linear",
            # Warm-up as a fraction of the run (recipes), or in absolute steps:
            # one of the two (see `warmup_steps`).
            "warmup_fraction": 0.0,
            "warmup_steps": 0,
            "end_lr_fraction": 0.0,
            "weight_decay": 5e-4,
            # Unset: the decay stays at weight_decay. Set: a cosine from
            # weight_decay to this over the run (`weight_decay_schedule`).
            "weight_decay_end": config_dict.placeholder(float),
            "momentum": 0.9,
            "nesterov": False,
            "b1": 0.9,
            "b2": 0.999,
            "trust_coefficient": 0.001,
            # LARS: clip each adapted step to plain SGD's (LARC; solo-learn's
            # CIFAR recipes, with trust_coefficient 0.02).
            "lars_clip": False,
            "bias_lr_scale": 1.0,  # the learning rate of biases and norms, relative
            "grad_clip_norm": 0.0,
            "grad_clip": "global_norm",  # or "per_tensor" (DINO's reference)
            # Top-level task modules whose learning rate stays at the peak for
            # the whole run (no warm-up, no decay): SimSiam's predictor.
            "fixed_lr_modules": (),
            # (module, scale) pairs: those top-level modules' steps scaled.
            "module_lr_scales": (),
            # (parameter path, fraction of the run) pairs: the parameters
            # under that path ("head/prototypes") are frozen for that first
            # part of the run: no update, no optimizer-state advance.
            "freeze": (),
        }
    )
    config.update(overrides)
    return config
