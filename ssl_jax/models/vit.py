"""Vision Transformer encoders (Dosovitskiy et al., 2021), as MAE uses them.

Images are cut into non-overlapping `patch_size` squares; each patch is
flattened and embedded by one linear layer (the same as a stride-p
convolution), a fixed 2-D sin-cos position embedding is added, and pre-norm
blocks [LayerNorm -> attention -> +, LayerNorm -> MLP -> +] follow, then a
final LayerNorm. `model(x, train=...)` pools the tokens into `[B, embed_dim]`:
the class token (`pool="cls"`) or the mean of the patch tokens (`pool="gap"`,
no class token at all).

Why fixed sin-cos position embeddings: MAE uses them, they are not parameters
(no weight decay question, nothing to learn at 25% visible patches), and they
are computed from the patch grid of the input, so one model accepts any image
size divisible by `patch_size` (no `image_size` kwarg is needed).

`encode_tokens(patches, positions, grid)` is what MAE needs: it embeds only the
given (visible) patches at their grid positions, so the transformer's cost
falls with the mask ratio. `__call__` is `encode_tokens` on all patches.

There is no dropout or stochastic depth (MAE pretraining uses neither), so
`train` changes nothing; it is accepted for the encoder contract.

`frozen_patch_embed=True` keeps the patch projection at its random
initialisation (MoCo v3's stabilising trick).

Registered names (`patch_size` defaults to 16; pass it as a kwarg):
  vit_test   width 32, depth 2, 2 heads, patch 4: for tests
  vit_mini   width 128, depth 4, 4 heads: the digits ViT, for photos on a
             CPU budget (0.8 M params)
  vit_tiny   width 192, depth 12, 3 heads  (ViT-Ti, 5.5 M params at /16)
  vit_small  width 384, depth 12, 6 heads  (ViT-S, 21.7 M)
  vit_base   width 768, depth 12, 12 heads (ViT-B, 85.6 M: timm's ViT-B/16
             minus its classifier head and its learned position embedding)
  vit        every size from kwargs
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.models.presets import EncoderPreset
from ssl_jax.registry import ENCODERS, MODELS

# MAE and the original ViT initialise every linear layer with Xavier uniform.
xavier = nnx.initializers.xavier_uniform()
_TOKEN_INIT = nnx.initializers.normal(0.02)
_LN_EPS = 1e-6


# ----------------------------------------------------------------------------- patches
def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C], patches in row-major grid
    order, pixels inside a patch in (row, column, channel) order."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(
            f"Image size {h}x{w} is not divisible by the patch size {p}: choose "
            "config.image_size as a multiple of model_kwargs.patch_size."
        )
    x = images.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid: tuple[int, int]) -> jax.Array:
    """The inverse of `patchify`: [B, gh * gw, p * p * C] -> [B, gh * p, gw * p, C]."""
    b, n, d = patches.shape
    gh, gw = grid
    p = patch_size
    c = d // (p * p)
    if n != gh * gw or c * p * p != d:
        raise ValueError(f"{patches.shape} patches do not fit grid {grid} with patch {p}.")
    x = patches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)


# ----------------------------------------------------------------------------- positions
def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[n] positions -> [n, dim]: sin of the first dim/2 frequencies, then cos."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    angles = positions.astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=32)
def sincos_1d(dim: int, length: int) -> np.ndarray:
    """Fixed 1-D position embeddings of a sequence, float32 [length, dim]
    (token and frame sequences: `models/sequence.py`)."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos position embeddings need an even width, got {dim}.")
    return _sincos_1d(dim, np.arange(length)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """Fixed 2-D position embeddings, float32 [gh * gw, dim], row-major grid.

    The first half of the channels encodes the patch's row and the second half
    its column, each with the 1-D Transformer embedding (Vaswani et al., 2017).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need a width divisible by 4, got {dim}.")
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    emb = np.concatenate(
        [_sincos_1d(dim // 2, rows.ravel()), _sincos_1d(dim // 2, cols.ravel())], axis=1
    )
    return emb.astype(np.float32)


# ----------------------------------------------------------------------------- blocks
def linear(d_in: int, d_out: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=xavier, rngs=rngs)


def layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=_LN_EPS, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"Width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.qkv = linear(dim, 3 * dim, rngs=rngs)
        self.proj = linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """`mask` bool [B, T]: the tokens that may be attended to (None: all;
        padding in token sequences is False)."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, heads, head_dim]
        keys = None if mask is None else mask[:, None, None, :]  # [B, heads, T_q, T_k]
        out = jax.nn.dot_product_attention(q, k, v, mask=keys)
        return self.proj(out.reshape(b, t, d))


class Block(nnx.Module):
    """Pre-norm Transformer block; the MLP is 4x wide with exact GELU."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, rngs: nnx.Rngs):
        hidden = int(dim * mlp_ratio)
        self.norm1 = layer_norm(dim, rngs=rngs)
        self.attn = Attention(dim, num_heads, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs=rngs)
        self.fc1 = linear(dim, hidden, rngs=rngs)
        self.fc2 = linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


# ----------------------------------------------------------------------------- encoder
class Frozen(nnx.Variable):
    """A weight fixed at its initial value: model state, never a trained parameter."""


class ViT(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
        pool: str = "cls",
        frozen_patch_embed: bool = False,
    ):
        if pool not in ("cls", "gap"):
            raise ValueError(f"ViT pool must be 'cls' or 'gap', got {pool!r}.")
        if patch_size < 1 or depth < 1:
            raise ValueError(
                f"ViT needs patch_size >= 1 and depth >= 1, got {patch_size}, {depth}."
            )
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.in_channels = in_channels
        self.pool = pool
        self.feature_dim: int = embed_dim
        self.patch_embed = linear(patch_size * patch_size * in_channels, embed_dim, rngs=rngs)
        if frozen_patch_embed:
            # MoCo v3 (Chen, Xie & He 2021, section 4.2): a random patch
            # projection that is never trained stabilises ViT training. As
            # `Frozen` variables they are model state: no gradient, no decay.
            for name in ("kernel", "bias"):
                setattr(self.patch_embed, name, Frozen(getattr(self.patch_embed, name)[...]))
        # [1, 1, D]: ndim > 1, so optim.decay_mask decays it, as MAE's reference
        # pretraining does (its weight-decay filter only skips 1-D params and biases).
        self.cls_token = (
            nnx.Param(_TOKEN_INIT(rngs.params(), (1, 1, embed_dim))) if pool == "cls" else None
        )
        self.blocks = nnx.List(
            [Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, rngs=rngs) for _ in range(depth)]
        )
        self.norm = layer_norm(embed_dim, rngs=rngs)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens in `encode_tokens`' output (the class token)."""
        return 1 if self.pool == "cls" else 0

    def grid(self, images: jax.Array) -> tuple[int, int]:
        """The patch grid (rows, columns) of `[B, H, W, C]` images."""
        return images.shape[1] // self.patch_size, images.shape[2] // self.patch_size

    def encode_tokens(
        self,
        patches: jax.Array,
        positions: jax.Array | None,
        grid: tuple[int, int],
        mask: jax.Array | None = None,
        *,
        hidden: jax.Array | None = None,
        mask_token: jax.Array | None = None,
    ) -> jax.Array:
        """Flattened patches `[B, n, p*p*C]` at grid indices `positions` `[B, n]`
        (None: all patches in order, n = gh * gw) -> normalised tokens
        `[B, num_prefix_tokens + n, D]`. Only these n patches enter the blocks.
        `mask` bool `[B, n]`: the patches that may be attended to (None: all),
        so examples with different patch counts can share one padded array.
        `hidden` bool `[B, n]` with `mask_token` `[D]`: those patches' embeddings
        are replaced by the token before the positions are added (masked image
        modelling as BEiT and iBOT do it: the position stays, the content goes)."""
        pos = jnp.asarray(sincos_2d(self.embed_dim, tuple(grid)))
        pos = pos[None] if positions is None else pos[positions]
        x = self.patch_embed(patches)
        if hidden is not None:
            token = jnp.reshape(mask_token, (-1,)).astype(x.dtype)
            x = jnp.where(hidden[..., None], token, x)
        x = x + pos
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, self.embed_dim))
            x = jnp.concatenate([cls, x], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def pool_tokens(self, tokens: jax.Array) -> jax.Array:
        """`encode_tokens` output -> [B, D]: the class token, or the patch-token mean."""
        return tokens[:, 0] if self.pool == "cls" else jnp.mean(tokens, axis=1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout, no batch norm
        tokens = self.encode_tokens(patchify(x, self.patch_size), None, self.grid(x))
        return self.pool_tokens(tokens)

    def feature_map(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, H, W, C] -> the patch tokens on their grid [B, H / p, W / p, D]
        (the class token, if any, left out): the spatial map of the encoder
        contract, for dense pretext tasks."""
        del train
        grid = self.grid(x)
        tokens = self.encode_tokens(patchify(x, self.patch_size), None, grid)
        return tokens[:, self.num_prefix_tokens :].reshape(x.shape[0], *grid, self.embed_dim)


_SIZES = {
    "vit_test": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
    "vit_mini": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def _register(name: str, size: dict) -> None:
    @MODELS.register(name)
    def build(*, rngs: nnx.Rngs, **kwargs) -> ViT:
        return ViT(rngs=rngs, **{**size, **kwargs})


for _name, _size in _SIZES.items():
    _register(_name, _size)


@MODELS.register("vit")
def vit(*, rngs: nnx.Rngs, **kwargs) -> ViT:
    return ViT(rngs=rngs, **kwargs)


# AdamW as MAE and MoCo v3 train ViTs, per 256 images (linear scaling): 1e-3
# for the small digits ViT (measured), 1.5e-4 for larger ones, whose batches
# of thousands would make 1e-3 diverge.
def _vit_optimizer(image_size: int) -> dict:
    return {
        "name": "adamw",
        "learning_rate": 1e-3 if image_size <= 16 else 1.5e-4,
        "lr_scaling": "linear",
        "b1": 0.9,
        "b2": 0.95,
        "weight_decay": 0.05,
    }


def _patch_size(image_size: int) -> int:
    """4 px patches up to 32 px images (64 tokens), 8 up to 64 px, 16 beyond."""
    return 4 if image_size <= 32 else 8 if image_size <= 64 else 16


@ENCODERS.register("vit")
def vit_preset(image_size: int, *, test: bool = False) -> EncoderPreset:
    """The ViT for an image size: 16 patches of 4 px at width 128 for 16 px
    digits, ViT-Ti/4 at 32 px, ViT-S/8 up to 64 px, ViT-S/16 beyond."""
    if test:
        return EncoderPreset("vit_test", {"patch_size": 4}, optimizer=_vit_optimizer(image_size))
    if image_size <= 16:
        kwargs = {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4, "pool": "cls"}
        return EncoderPreset("vit", kwargs, optimizer=_vit_optimizer(image_size))
    return _width_preset("vit_tiny" if image_size <= 32 else "vit_small")(image_size)


def _width_preset(model: str):
    def preset(image_size: int, *, test: bool = False) -> EncoderPreset:
        """A ViT of this width at any image size, patches sized by the image."""
        if test:
            return vit_preset(image_size, test=True)
        kwargs = {"patch_size": _patch_size(image_size), "pool": "cls"}
        return EncoderPreset(model, kwargs, optimizer=_vit_optimizer(image_size))

    return preset


for _name in ("vit_mini", "vit_tiny", "vit_small", "vit_base"):
    ENCODERS.register(_name)(_width_preset(_name))
