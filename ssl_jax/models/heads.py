"""Small heads that tasks put on top of an encoder's pooled features."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class MLPHead(nnx.Module):
    """[Linear -> BatchNorm -> ReLU] x len(hidden_dims) -> Linear.

    With no hidden layers it is a plain linear classifier. Hidden layers keep
    the pretext task's last, most task-specific transformation out of the
    encoder, which usually makes the encoder's features probe better.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *, rngs: nnx.Rngs):
        dims = [in_dim, *hidden_dims]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.linears = nnx.List(
            [nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs) for d_in, d_out in pairs]
        )
        self.norms = nnx.List(
            [
                nnx.BatchNorm(d_out, momentum=0.9, use_running_average=False, rngs=rngs)
                for _, d_out in pairs
            ]
        )
        self.out = nnx.Linear(dims[-1], out_dim, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = nnx.relu(norm(linear(x), use_running_average=not train))
        return self.out(x)
