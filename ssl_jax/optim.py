"""Optimizers and learning-rate schedules, built from `config.optimizer`.

All optimizers share one schedule (linear warm-up, then cosine decay) and one
rule for weight decay: it applies to kernels only. Biases and normalisation
scales/offsets (every parameter with fewer than two dimensions) are excluded,
from decay and, for LARS, from trust-ratio adaptation, as SimCLR and most
large-batch recipes do: decaying a BN scale fights the normalisation itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


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


def _sgd(opt: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
    )


def _adamw(opt: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask
    )


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


def _lars(opt: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    if opt.lars_clip:
        return optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.masked(_clipped_trust_ratio(opt.trust_coefficient, schedule), decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    return optax.lars(
        schedule,
        weight_decay=opt.weight_decay,
        weight_decay_mask=decay_mask,
        trust_coefficient=opt.trust_coefficient,
        trust_ratio_mask=decay_mask,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
    )


OPTIMIZERS: dict[str, Callable[[ConfigDict, optax.Schedule], optax.GradientTransformation]] = {
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
    if opt.grad_clip not in CLIPPING:
        raise ValueError(f"optimizer.grad_clip={opt.grad_clip!r} is not one of {sorted(CLIPPING)}.")
    if not 0 <= opt.end_lr_fraction <= 1:
        raise ValueError(f"optimizer.end_lr_fraction must be in [0, 1], got {opt.end_lr_fraction}.")


def make_optimizer(
    opt: ConfigDict, *, batch_size: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `opt.name` and its learning-rate schedule."""
    validate(opt)
    schedule = make_schedule(opt, batch_size=batch_size, total_steps=total_steps)
    tx = _with_bias_scale(opt, OPTIMIZERS[opt.name](opt, schedule))
    if opt.fixed_lr_modules:
        # SimSiam's predictor at a constant learning rate (the paper's section
        # 4.4; solo-learn's `static_lr`): the same optimizer, another schedule.
        fixed = optax.constant_schedule(scaled_learning_rate(opt, batch_size))
        fixed_tx = _with_bias_scale(opt, OPTIMIZERS[opt.name](opt, fixed))
        in_fixed = _in_modules(tuple(opt.fixed_lr_modules), "fixed_lr_modules")
        labels = lambda params: jax.tree.map(
            lambda fixed: "fixed" if fixed else "scheduled", in_fixed(params)
        )
        tx = optax.multi_transform({"scheduled": tx, "fixed": fixed_tx}, labels)
    for module, scale in opt.module_lr_scales:
        # A module's steps scaled, e.g. a pretrained encoder fine-tuned at a
        # tenth of its new head's rate.
        mask = _in_modules((module,), "module_lr_scales")
        tx = optax.chain(tx, optax.masked(optax.scale(float(scale)), mask))
    if opt.grad_clip_norm:
        tx = optax.chain(CLIPPING[opt.grad_clip](opt.grad_clip_norm), tx)
    return tx, schedule


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
    """DINO's reference clipping (`clip_gradients`): every parameter's gradient
    scaled to norm <= max_norm on its own, not the global norm."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.linalg.norm(g)
            return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-6))

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
        }
    )
    config.update(overrides)
    return config
