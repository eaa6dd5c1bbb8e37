"""Pieces shared by the convolutional encoders (`convnet.py`, `resnet.py`).

Every encoder follows the contract written in `ssl_jax/tasks/base.py`
(`encoder(x, *, train) -> [B, feature_dim]`, batch statistics only when
training). The convolutional ones also offer `feature_map(x, *, train)`, the
last stage's map `[B, h, w, D]` before pooling (the ViT its patch tokens on
their grid), and say their input channels in `in_channels`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# He initialisation with fan_out, as in He et al. (2015) and torchvision: it
# keeps the variance of the backward signal constant through ReLU layers.
he_normal = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# The convolution initialisations an encoder may ask for by name.
CONV_INITS = {
    "he": he_normal,
    # PyTorch's own default for nn.Conv2d (kaiming_uniform with a=sqrt(5)):
    # uniform with variance 1 / (3 fan_in), six times smaller than He fan_out
    # for a square 3x3 layer. Under batch norm a smaller weight means a larger
    # effective step (the output is scale-free, the gradient scales as 1/|w|):
    # it helped rotation's short SGD run on photos and hurt BYOL and SimSiam
    # (docs/results.md, "Every method").
    "torch": nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
}


def conv_initializer(name: str):
    """`CONV_INITS[name]`, or a one-line error naming the choices."""
    if name not in CONV_INITS:
        raise ValueError(
            f"Unknown conv_init {name!r}; choose one of {', '.join(sorted(CONV_INITS))}."
        )
    return CONV_INITS[name]


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    init: str = "he",
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A bias-free square convolution (a batch norm follows it), initialised
    as `CONV_INITS[init]` (He by default).

    Padding is explicit and symmetric (`kernel_size // 2` on each side), as in
    the PyTorch reference models; "SAME" would pad stride-2 convolutions on
    even inputs only at the bottom/right and shift the sampling grid.
    """
    pad = kernel_size // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=conv_initializer(init),
        rngs=rngs,
    )


def batch_norm(features: int, *, rngs: nnx.Rngs, zero_scale: bool = False) -> nnx.BatchNorm:
    """Batch norm with momentum 0.9 for the running averages (Flax's 0.99 is slow to settle)."""
    return nnx.BatchNorm(
        features,
        momentum=0.9,
        use_running_average=False,  # Overridden at every call from `train`.
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        rngs=rngs,
    )


class ConvBN(nnx.Module):
    """conv -> batch norm, no activation (the caller decides where ReLU goes)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        zero_scale: bool = False,
        init: str = "he",
        rngs: nnx.Rngs,
    ):
        self.conv = conv(
            in_channels, out_channels, kernel_size, stride=stride, init=init, rngs=rngs
        )
        self.bn = batch_norm(out_channels, zero_scale=zero_scale, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, D] -> [B, D]."""
    return jnp.mean(x, axis=(1, 2))
