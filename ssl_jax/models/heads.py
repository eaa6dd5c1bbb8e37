"""Small heads that tasks put on top of an encoder's pooled features."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
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


def _symmetric_uniform(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def linear_init(kind: str, fan_in: int) -> dict:
    """Kernel and bias initialisers of a head's Linear layer, as the method's
    reference code initialises it (`LINEAR_INITS`):
    - "torch": PyTorch's `nn.Linear` default (kaiming_uniform with a = sqrt(5)):
      weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weight variance
      1/(3 fan_in). The SimSiam, MoCo v3, Barlow Twins and VICReg references
      are PyTorch and keep it; with Flax's default (three times the variance)
      VICReg's CIFAR recipe diverges in both frameworks (issue 18's evidence).
    - "haiku": Haiku's `hk.Linear` default, BYOL's reference: a normal of std
      1/sqrt(fan_in) cut at 2 std (no correction for the cut, so the std is
      about 0.88/sqrt(fan_in)), zero bias.
    - "lecun": Flax's default: truncated normal of variance exactly 1/fan_in
      (the cut corrected for), zero bias.
    - "dino": DINO's `DINOHead` (`trunc_normal_(std=0.02)`, whose bounds are
      +-2 in absolute units, so in effect a plain normal of std 0.02), zero
      bias.
    """
    if kind == "torch":
        limit = 1.0 / math.sqrt(fan_in)
        return {
            "kernel_init": nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            "bias_init": _symmetric_uniform(limit),
        }
    if kind == "haiku":
        return {"kernel_init": _cut_normal(1.0 / math.sqrt(fan_in))}
    if kind == "lecun":
        return {"kernel_init": nnx.initializers.lecun_normal()}
    if kind == "dino":
        return {"kernel_init": nnx.initializers.normal(0.02)}
    raise ValueError(f"Unknown head init {kind!r}; known: {LINEAR_INITS}.")


def _cut_normal(std: float):
    """A normal of scale `std` cut at +-2 std, not rescaled (Haiku's TruncatedNormal)."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


LINEAR_INITS = ("torch", "haiku", "lecun", "dino")
# The batch norms an MLP may end with (see `MLP`); None: none.
LAST_NORMS = (None, "affine", "scale", "plain")


class MLP(nnx.Module):
    """The projectors, predictors and expanders of the SSL methods.

    `dims` = [in, hidden..., out]. Each hidden layer is Linear -> (BatchNorm)
    -> activation; the last is Linear, optionally followed by a batch norm
    (`last_norm`, one of `LAST_NORMS`): "affine" (scale and offset), "scale"
    (a scale, no offset: SimCLR v2's head, whose offset the cosine similarity
    would mostly ignore) or "plain" (neither, as SimSiam's projector and MoCo
    v3's heads end). Linear layers before a batch norm have no bias (the
    norm's offset replaces it). `init` names the reference's initialisation
    of the Linear layers (`linear_init`).
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        norm: bool = True,
        last_norm: str | None = None,
        activation: str = "relu",
        last_bias: bool = True,
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        if init not in LINEAR_INITS:
            raise ValueError(f"Unknown head init {init!r}; known: {LINEAR_INITS}.")
        if len(dims) < 2 or last_norm not in LAST_NORMS:
            raise ValueError(
                f"MLP needs [in, ..., out] dims and last_norm one of {LAST_NORMS}, "
                f"got {dims}, {last_norm!r}."
            )
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.activation = activation
        self.linears = nnx.List(
            [
                nnx.Linear(
                    d_in,
                    d_out,
                    use_bias=not norm if i < len(pairs) - 1 else last_bias and not last_norm,
                    **linear_init(init, d_in),
                    rngs=rngs,
                )
                for i, (d_in, d_out) in enumerate(pairs)
            ]
        )
        hidden_norms = (
            [_batch_norm(d_out, scale=True, offset=True, rngs=rngs) for _, d_out in pairs[:-1]]
            if norm
            else []
        )
        self.norms = nnx.List(hidden_norms)
        self.last_norm = (
            _batch_norm(
                dims[-1],
                scale=last_norm in ("affine", "scale"),
                offset=last_norm == "affine",
                rngs=rngs,
            )
            if last_norm
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = {"relu": nnx.relu, "gelu": lambda y: nnx.gelu(y, approximate=False)}[self.activation]
        for i, linear in enumerate(self.linears[:-1]):
            x = linear(x)
            if self.norms:
                x = self.norms[i](x, use_running_average=not train)
            x = act(x)
        x = self.linears[-1](x)
        if self.last_norm is not None:
            x = self.last_norm(x, use_running_average=not train)
        return x


def _batch_norm(dim: int, *, scale: bool, offset: bool, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        dim,
        momentum=0.9,
        use_running_average=False,
        use_bias=offset,
        use_scale=scale,
        rngs=rngs,
    )
