"""What the momentum-teacher methods (BYOL, MoCo v3, DINO) share.

The teacher is a copy of the student's networks that gradients never touch:
after each optimizer update it moves towards the student by an exponential
moving average, t <- m t + (1 - m) s, with the momentum m rising from a base
value to 1 on a cosine schedule (BYOL, Grill et al. 2020, section 3.2:
m = 1 - (1 - m_base) (cos(pi k / K) + 1) / 2; MoCo v3 and DINO use the same).

A task keeps its teacher in an attribute named `teacher` (a `Teacher`
module) and sets `trainable = TRAINABLE`: the loop then carries the
teacher's weights as model state (checkpointed, no gradient, no weight decay)
and calls the task's `after_update` hook, which calls `ema_update`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Every parameter except the teacher's.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))


class Teacher(nnx.Module):
    """Frozen-by-construction copies of the student's modules, by name."""

    def __init__(self, **modules: nnx.Module):
        for name, module in modules.items():
            copy = nnx.clone(module)
            # Own buffers: a clone shares the student's arrays, and the loop
            # donates the whole state (the same buffer twice is an error).
            nnx.update(copy, jax.tree.map(jnp.copy, nnx.state(copy)))
            setattr(self, name, copy)


def momentum_schedule(base: float, step: jax.Array, total_steps: int) -> jax.Array:
    """BYOL's cosine increase of the EMA momentum from `base` (step 0) to 1
    (step `total_steps`)."""
    progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(teacher: nnx.Module, student: nnx.Module, momentum: jax.Array) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by
    parameter (the two modules have the same structure), in place."""
    target, online = nnx.state(teacher, nnx.Param), nnx.state(student, nnx.Param)
    nnx.update(
        teacher,
        jax.tree.map(
            lambda t, s: (momentum * t + (1.0 - momentum) * s).astype(t.dtype), target, online
        ),
    )
