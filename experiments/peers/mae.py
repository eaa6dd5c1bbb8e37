"""MAE's peer (He et al., CVPR 2022; ssl_jax/tasks/mae.py) in PyTorch, on
the peers' ViT (`models.ViT`: ssl_jax's ViT from torch's own layers).

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

import torch
from lightly.models.utils import patchify
from torch import nn
from torchvision.transforms import v2

from experiments.peers import views
from experiments.peers.methods import Method
from experiments.peers.models import LN_EPS, ViT, blocks, init_xavier, sincos_2d
from ssl_jax.tasks.mae import num_visible


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
