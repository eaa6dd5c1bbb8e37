"""MAE's peer (He et al., CVPR 2022; ssl_jax/tasks/mae.py) in PyTorch.

The encoder is ssl_jax's ViT rebuilt from torch's own layers: a linear
projection of the flattened patches (lightly's `patchify`), fixed 2-D sin-cos
positions, pre-norm `nn.TransformerEncoderLayer` blocks (exact GELU, a 4x
MLP, LayerNorm eps 1e-6, no dropout), a final LayerNorm; features are the
class token or the mean of the patch tokens (`model_kwargs.pool`). Every
Linear starts xavier-uniform with a zero bias and the tokens normal(0.02), as
MAE's reference (`_init_weights`) and ssl_jax initialise them.

Each step: a random resized crop and a flip per image (torchvision), a fresh
random subset of `mask_ratio` of the patches hidden per image (as many as
ssl_jax hides: `tasks.mae.num_visible`), the encoder on the visible patches
only, a decoder (its own width and depth, the encoded tokens scattered to
their grid positions among copies of a shared mask token, sin-cos
positions, the class token in front) predicting every patch's pixels, and the mean
squared error on the hidden patches, each target patch standardised with
`norm_pix_loss` (population variance as ssl_jax's `losses.mae_loss`; the
reference's torch `var` is the unbiased one, 2% apart at 48 values).
"""

from __future__ import annotations

import numpy as np
import torch
from lightly.models.utils import patchify
from torch import nn
from torchvision.transforms import v2

from experiments.peers import views
from experiments.peers.methods import Method
from ssl_jax.tasks.mae import num_visible

LN_EPS = 1e-6

# ssl_jax's named ViT sizes (ssl_jax/models/vit.py).
SIZES = {
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


def build_vit(model: str, model_kwargs: dict) -> ViT:
    if model not in SIZES:
        raise ValueError(f"The MAE peer implements the ViTs {', '.join(SIZES)}, not {model!r}.")
    kwargs = {**SIZES[model], **dict(model_kwargs)}
    unknown = set(kwargs) - {"patch_size", "embed_dim", "depth", "num_heads", "pool"}
    if unknown:
        raise ValueError(f"The MAE peer's ViT does not implement model_kwargs {sorted(unknown)}.")
    return ViT(**kwargs)


class Decoder(nn.Module):
    def __init__(self, encoder_dim: int, dim: int, depth: int, num_heads: int, patch_dim: int):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = blocks(dim, depth, num_heads)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pred = nn.Linear(dim, patch_dim)
        init_xavier(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, grid, prefix: int) -> torch.Tensor:
        """Encoder output [B, prefix + n, E] (the class token, if any, then the
        visible patches at grid indices `keep`) -> predicted pixels of every
        patch [B, N, P], in grid order. The class token goes through the
        blocks, as in the reference, and is dropped from the output."""
        x = self.embed(tokens)
        batch, n_patches = len(x), grid[0] * grid[1]
        full = self.mask_token.expand(batch, n_patches, self.dim).clone()
        full = full.scatter(1, keep[:, :, None].expand(-1, -1, self.dim), x[:, prefix:])
        x = torch.cat([x[:, :prefix], full + sincos_2d(self.dim, *grid)[None]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, prefix:]


class MAE(Method):
    implemented = {"mask_ratio", "norm_pix_loss", "decoder_dim", "decoder_depth"}
    implemented |= {"decoder_heads", "crop_scale", "flip"}

    def __init__(self, config, encoder: ViT, *, bn: str = "per_view"):
        super().__init__("mae", config, encoder, bn=bn)
        kw = self.kw
        p = encoder.patch_size
        self.decoder = Decoder(
            encoder.embed_dim,
            kw["decoder_dim"],
            kw["decoder_depth"],
            kw["decoder_heads"],
            p * p * encoder.in_channels,
        )
        ops: list = []
        if kw["crop_scale"] is not None:
            ops.append(
                v2.RandomResizedCrop(
                    config.image_size,
                    scale=tuple(kw["crop_scale"]),
                    interpolation=v2.InterpolationMode.BILINEAR,
                    antialias=False,
                )
            )
        if kw["flip"]:
            ops.append(v2.RandomHorizontalFlip(0.5))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        self.transform = v2.Compose(ops)

    def loss(self, images, labels, step):
        del labels, step
        x = views.normalize(torch.stack([self.transform(image) for image in images]))
        encoder: ViT = self.encoder
        grid = encoder.grid(x)
        target = patchify(x, encoder.patch_size)
        n_patches = target.shape[1]
        # ssl_jax's count of visible patches (round, at least 1, at most N - 1);
        # lightly's random_token_mask keeps int(N (1 - ratio)), which differs
        # at other ratios (0.9 of 16 patches: 1 against 2).
        n_keep = num_visible(n_patches, self.kw["mask_ratio"])
        keep = torch.argsort(torch.rand(len(x), n_patches), dim=1)[:, :n_keep]
        visible = torch.gather(target, 1, keep[:, :, None].expand(-1, -1, target.shape[2]))
        tokens = encoder.encode(visible, keep, grid)
        prefix = 1 if encoder.cls_token is not None else 0
        pred = self.decoder(tokens, keep, grid, prefix)
        hidden = torch.ones(len(x), n_patches)
        hidden.scatter_(1, keep, 0.0)
        if self.kw["norm_pix_loss"]:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=False)
            target = (target - mean) / torch.sqrt(var + 1e-6)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        loss = (per_patch * hidden).sum() / hidden.sum()
        return loss, {"visible_fraction": 1.0 - hidden.mean().item()}
