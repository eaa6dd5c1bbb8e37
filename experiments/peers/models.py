"""The encoders and heads of the peers, in PyTorch, shaped as ssl_jax's.

`ConvNet` is `ssl_jax/models/convnet.py`: stages of [conv3x3 (no bias,
padding 1) - BatchNorm - ReLU] x depth, the first convolution at
`stem_stride`, the first of every later stage at stride 2, global average
pooling. Convolutions get He-normal init with fan_out (ssl_jax's
`layers.he_normal`) or, with `conv_init="torch"`, PyTorch's own default;
batch norm keeps running averages with momentum 0.9 in Flax's convention,
which is PyTorch's `momentum=0.1`, eps 1e-5.

`ViT` is `ssl_jax/models/vit.py` from torch's own layers: a linear
projection of the flattened patches (lightly's `patchify`), fixed 2-D sin-cos
positions, pre-norm `nn.TransformerEncoderLayer` blocks (exact GELU, a 4x
MLP, LayerNorm eps 1e-6, no dropout), a final LayerNorm; features are the
class token or the mean of the patch tokens (`pool`). Every Linear starts
xavier-uniform with a zero bias and the tokens normal(0.02), as MAE's
reference (`_init_weights`) and ssl_jax initialise them.

`mlp` builds ssl_jax's `models.heads.MLP` from lightly's generic
`ProjectionHead` blocks (same layers, biases and batch norms; PyTorch's
default init), for the heads where lightly's named heads differ from the
project's (a bias-free last layer, a scale-only batch norm); `init_linears`
re-initialises a head as ssl_jax's `heads.linear_init(kind)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import patchify
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


def build_encoder(model: str, model_kwargs: dict) -> nn.Module:
    """The encoder `config.model` / `config.model_kwargs` names: a ConvNet, or
    one of the ViTs (MAE's peer)."""
    if model in VIT_SIZES:
        kwargs = {**VIT_SIZES[model], **dict(model_kwargs)}
        unknown = set(kwargs) - {"patch_size", "embed_dim", "depth", "num_heads", "pool"}
        if unknown:
            raise ValueError(f"The peers' ViT does not implement model_kwargs {sorted(unknown)}.")
        return ViT(**kwargs)
    if model not in _CONVNETS:
        raise ValueError(
            f"The peers implement the encoders {', '.join([*_CONVNETS, *VIT_SIZES])}, "
            f"not {model!r}; pass encoder=convnet (MAE: encoder=vit_mini) in --arg."
        )
    kwargs = {**_CONVNETS[model], **dict(model_kwargs)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return ConvNet(**kwargs)


LN_EPS = 1e-6

# ssl_jax's named ViT sizes (ssl_jax/models/vit.py).
VIT_SIZES = {
    "vit_test": {"embed_dim": 32, "depth": 2, "num_heads": 2},
    "vit_mini": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit": {},
}


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """[rows * cols, dim] fixed positions, row-major: the first half of the
    channels encodes the row and the second half the column, each as
    [sin, cos] of dim/4 frequencies 10000^(-i / (dim/4))."""
    quarter = dim // 4
    frequencies = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    parts = []
    for coordinate in (r.ravel(), c.ravel()):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [np.sin(angles), np.cos(angles)]
    return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))


def blocks(dim: int, depth: int, num_heads: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            dim,
            num_heads,
            4 * dim,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=LN_EPS,
            batch_first=True,
            norm_first=True,
        )
        for _ in range(depth)
    )


def init_xavier(module: nn.Module) -> None:
    """MAE's reference init: xavier-uniform Linear weights (the fused q/k/v
    projection as one [3D, D] matrix, as its timm qkv layer), zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.MultiheadAttention):
            nn.init.xavier_uniform_(layer.in_proj_weight)
            nn.init.zeros_(layer.in_proj_bias)


class ViT(nn.Module):
    def __init__(
        self,
        *,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        pool: str = "cls",
        in_channels: int = 3,
    ):
        super().__init__()
        if pool not in ("cls", "gap"):
            raise ValueError(f"ViT pool must be 'cls' or 'gap', got {pool!r}.")
        self.patch_size, self.embed_dim, self.pool = patch_size, embed_dim, pool
        self.in_channels = in_channels
        self.feature_dim = embed_dim
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.blocks = blocks(embed_dim, depth, num_heads)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        init_xavier(self)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        return images.shape[2] // self.patch_size, images.shape[3] // self.patch_size

    def encode(self, patches: torch.Tensor, keep: torch.Tensor | None, grid) -> torch.Tensor:
        """Patches [B, n, P] at grid indices `keep` [B, n] (None: all, in
        order) -> normalised tokens [B, prefix + n, D]."""
        positions = sincos_2d(self.embed_dim, *grid)
        positions = positions[None] if keep is None else positions[keep]
        x = self.patch_embed(patches) + positions
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised NCHW images -> pooled features [B, D]."""
        patches = patchify(images, self.patch_size)
        return self.pool_tokens(self.encode(patches, None, self.grid(images)))


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
    """ssl_jax's SimCLR head (`heads.MLP` with last_norm="scale"): bias-free
    Linear -> BatchNorm -> ReLU per hidden layer, then a bias-free Linear and a
    batch norm with a scale and no offset (lightly's SimCLRProjectionHead has
    an offset there)."""
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
