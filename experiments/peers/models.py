"""The encoders and heads of the peers, in PyTorch, shaped as ssl_jax's.

`ConvNet` is `ssl_jax/models/convnet.py`: stages of [conv3x3 (no bias,
padding 1) - BatchNorm - ReLU] x depth, the first convolution at
`stem_stride`, the first of every later stage at stride 2, global average
pooling. Convolutions get He-normal init with fan_out (ssl_jax's
`layers.he_normal`) or, with `conv_init="torch"`, PyTorch's own default;
batch norm keeps running averages with momentum 0.9 in Flax's convention,
which is PyTorch's `momentum=0.1`, eps 1e-5.

`mlp` builds ssl_jax's `models.heads.MLP` from lightly's generic
`ProjectionHead` blocks (same layers, biases and batch norms; PyTorch's
default init), for the heads where lightly's named heads differ from the
project's (a bias-free last layer, a scale-only batch norm); `init_linears`
re-initialises a head as ssl_jax's `heads.linear_init(kind)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.models.modules.heads import ProjectionHead
from torch import nn

# Flax's BatchNorm(momentum=0.9) keeps 0.9 of the old average: PyTorch's 0.1.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


class ConvNet(nn.Module):
    """[B, C, H, W] -> [B, feature_dim], as ssl_jax's ConvNet (NCHW here)."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        depth: int = 2,
        stem_stride: int = 2,
        conv_init: str = "he",
    ):
        super().__init__()
        if conv_init not in ("he", "torch"):
            raise ValueError(f"Unknown conv_init {conv_init!r}; choose he or torch.")
        if not widths or depth < 1:
            raise ValueError(f"ConvNet needs a stage and depth >= 1, got {widths=}, {depth=}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            for i in range(depth):
                stride = (2 if stage > 0 else stem_stride) if i == 0 else 1
                conv = nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False)
                if conv_init == "he":
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                # "torch": nn.Conv2d's constructor has already drawn its default.
                bn = nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM)
                layers += [conv, bn, nn.ReLU()]
                channels = width
        self.layers = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(dim=(2, 3))


# ssl_jax's registered ConvNet variants (ssl_jax/models/convnet.py): their defaults.
_CONVNETS = {
    "convnet": {},
    "convnet_tiny": {"widths": (8, 16), "depth": 1, "stem_stride": 1},
}


def build_encoder(model: str, model_kwargs: dict) -> ConvNet:
    """The encoder `config.model` / `config.model_kwargs` names."""
    if model not in _CONVNETS:
        raise ValueError(
            f"The peers implement the ConvNet encoders ({', '.join(_CONVNETS)}), not {model!r}; "
            "pass encoder=convnet in --arg."
        )
    kwargs = {**_CONVNETS[model], **dict(model_kwargs)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return ConvNet(**kwargs)


class ScaleOnlyBatchNorm1d(nn.Module):
    """Batch norm with a learned scale and no offset (SimCLR's last layer in
    ssl_jax, `nnx.BatchNorm(use_bias=False)`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False)
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale


def batch_norm(dim: int, *, affine: bool = True) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM, affine=affine)


def mlp(
    dims: Sequence[int],
    *,
    norm: bool = True,
    last_norm: str | None = None,
    last_bias: bool = True,
    activation: str = "relu",
) -> ProjectionHead:
    """ssl_jax's `heads.MLP(dims, norm, last_norm, last_bias, activation)`:
    hidden layers Linear (bias only without a norm) -> BatchNorm -> activation;
    the last Linear, followed by a batch norm when `last_norm` is "affine" or
    "plain" (no scale and offset); its bias only with `last_bias` and no norm."""
    if len(dims) < 2 or last_norm not in (None, "affine", "plain"):
        raise ValueError(f"mlp needs [in, ..., out] dims and last_norm None/affine/plain: {dims}")
    act = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
    pairs = list(zip(dims[:-1], dims[1:], strict=True))
    blocks = [
        (d_in, d_out, batch_norm(d_out) if norm else None, act(), not norm)
        for d_in, d_out in pairs[:-1]
    ]
    d_in, d_out = pairs[-1]
    last = batch_norm(d_out, affine=last_norm == "affine") if last_norm else None
    blocks.append((d_in, d_out, last, None, bool(last_bias and not last_norm)))
    return ProjectionHead(blocks)


def simclr_head(in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    """ssl_jax's SimCLR `ProjectionHead`: bias-free Linear -> BatchNorm -> ReLU
    per hidden layer, then a bias-free Linear and a batch norm with a scale and
    no offset (lightly's SimCLRProjectionHead has an offset there)."""
    dims = [in_dim, *hidden_dims, out_dim]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(d_in, d_out, bias=False), batch_norm(d_out), nn.ReLU()]
    layers += [nn.Linear(dims[-2], out_dim, bias=False), ScaleOnlyBatchNorm1d(out_dim)]
    return nn.Sequential(*layers)


def init_linears(module: nn.Module, kind: str) -> None:
    """Re-initialise every nn.Linear of `module` as ssl_jax's `heads.linear_init(kind)`:
    "torch" (PyTorch's default, kept), "haiku" (normal of std 1/sqrt(fan_in)
    cut at 2 std, not rescaled, zero bias: BYOL's reference), "lecun"
    (truncated normal of variance exactly 1/fan_in, zero bias: Flax's
    default), "dino" (std 0.02 with bounds +-2 in absolute units, in effect a
    plain normal, zero bias: DINO's and lightly's)."""
    if kind not in ("torch", "haiku", "lecun", "dino"):
        raise ValueError(f"Unknown head init {kind!r}.")
    for layer in module.modules():
        if not isinstance(layer, nn.Linear):
            continue
        if kind == "torch":
            layer.reset_parameters()
            continue
        # jax's truncated normals divide the std by 0.8796 (the std of a unit
        # normal cut at +-2), so the truncated draw has the asked variance.
        if kind == "dino":
            nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0)
        else:
            std = (1.0 / layer.in_features) ** 0.5
            if kind == "lecun":
                std /= 0.87962566103423978
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
