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


def make_schedule(opt: ConfigDict, *, batch_size: int, total_steps: int) -> optax.Schedule:
    peak = scaled_learning_rate(opt, batch_size)
    warmup = min(opt.warmup_steps, total_steps)
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
    if not 0 <= opt.end_lr_fraction <= 1:
        raise ValueError(f"optimizer.end_lr_fraction must be in [0, 1], got {opt.end_lr_fraction}.")


def make_optimizer(
    opt: ConfigDict, *, batch_size: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `opt.name` and its learning-rate schedule."""
    validate(opt)
    schedule = make_schedule(opt, batch_size=batch_size, total_steps=total_steps)
    tx = OPTIMIZERS[opt.name](opt, schedule)
    if opt.bias_lr_scale != 1.0:
        # Biases and normalisation parameters at another learning rate (Barlow
        # Twins' reference: 0.0048 for them against 0.2 for the weights).
        not_decayed = lambda params: jax.tree.map(lambda m: not m, decay_mask(params))
        tx = optax.chain(tx, optax.masked(optax.scale(opt.bias_lr_scale), not_decayed))
    if opt.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx, schedule


def default_config(**overrides) -> ConfigDict:
    """Every field any optimizer reads, so a typo in `--config.optimizer.X` is an error."""
    config = ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.1,
            "lr_scaling": "linear",
            "warmup_steps": 100,
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
        }
    )
    config.update(overrides)
    return config
