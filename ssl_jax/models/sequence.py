"""Transformer encoders of sequences that are not images: token ids (text)
and frames (video clips). Both are the ViT's pre-norm blocks (`models/vit.py`)
over a different embedding.

- `TokenTransformer`: token ids `[B, T]` (int) -> an embedding table plus
  learned absolute positions (BERT's; up to `max_length` tokens), the
  blocks (padding masked out of attention), a final LayerNorm;
  `encode(tokens)` gives every position `[B, T, D]`, `model(tokens, train=...)`
  the mean over the non-padding positions `[B, D]` (`pool="last"`), or that
  mean next to the mean of the token embeddings, without positions
  (`pool="embedding_and_last"`, `[B, 2D]`). Used by BERT-style masked
  language modelling (`tasks/mlm.py`).
- `ClipTransformer`: video `[B, T, H, W, C]` (float, normalised) -> one token
  per frame (the flattened frame through one linear layer, as a ViT's patch
  embedding with one patch per frame), the blocks, a final LayerNorm;
  `embed_frames` and `encode_embeddings` are separate so a task can swap a
  hidden frame's token for a mask token in between (`tasks/frames.py`);
  fixed 1-D sin-cos positions; `model(video, train=...)` is the mean over
  frames `[B, D]`.

There is no dropout or batch norm: `train` changes nothing, as in the ViT.

Registered names: `token_transformer`, `clip_transformer` (sizes from
kwargs) and their `_test` variants (width 32, depth 2); encoder families of
the same names for the configs' `encoder=` option.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.presets import EncoderPreset
from ssl_jax.models.vit import Block, layer_norm, linear, sincos_1d
from ssl_jax.registry import ENCODERS, MODELS

_TOKEN_INIT = nnx.initializers.normal(0.02)  # BERT's, for tokens and positions

# What a TokenTransformer's features are. The mean of the token embeddings
# alone is a learned bag of bytes, which on the pydoc topics probes above the
# last layer's mean of a short MLM run (docs/results.md); "embedding_and_last"
# keeps both, so a probe can use what the context adds without losing it.
POOLS = ("last", "embedding_and_last")


class _Blocks(nnx.Module):
    """The ViT's blocks and final norm (after fixed 1-D sin-cos positions,
    unless the caller added its own)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        rngs: nnx.Rngs,
        *,
        sincos: bool = True,
    ):
        if depth < 1:
            raise ValueError(f"A Transformer encoder needs depth >= 1, got {depth}.")
        self.sincos = sincos
        self.blocks = nnx.List(
            [Block(dim, num_heads, mlp_ratio=mlp_ratio, rngs=rngs) for _ in range(depth)]
        )
        self.norm = layer_norm(dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.sincos:
            x = x + jnp.asarray(sincos_1d(x.shape[-1], x.shape[1]))[None].astype(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class TokenTransformer(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        vocab_size: int = 258,
        pad_id: int = 256,
        max_length: int = 512,
        embed_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        pool: str = "last",
    ):
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id below vocab_size={vocab_size}.")
        if pool not in POOLS:
            raise ValueError(f"Unknown pool {pool!r}; choose one of {', '.join(POOLS)}.")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.embed_dim = embed_dim
        self.pool = pool
        self.feature_dim: int = embed_dim * (2 if pool == "embedding_and_last" else 1)
        self.max_length = max_length
        self.embed = nnx.Embed(vocab_size, embed_dim, embedding_init=_TOKEN_INIT, rngs=rngs)
        # Learned absolute positions, as BERT's: with fixed sin-cos ones a small
        # model learned to attend to its neighbours far more slowly (masked
        # bigrams of the tests stayed at the unigram loss for hundreds of steps).
        self.positions = nnx.Param(_TOKEN_INIT(rngs.params(), (1, max_length, embed_dim)))
        self.body = _Blocks(embed_dim, depth, num_heads, mlp_ratio, rngs, sincos=False)

    def encode(self, tokens: jax.Array) -> jax.Array:
        """int [B, T] -> normalised tokens [B, T, D]; padding is never attended to."""
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"Sequences of {length} tokens exceed max_length={self.max_length}.")
        x = self.embed(tokens) + self.positions[:, :length].astype(self.embed.embedding.dtype)
        return self.body(x, tokens != self.pad_id)

    def __call__(self, tokens: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout, no batch norm
        valid = (tokens != self.pad_id).astype(jnp.float32)[..., None]

        def mean(x):
            x = x.astype(jnp.float32)
            return jnp.sum(x * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)

        last = mean(self.encode(tokens))
        if self.pool == "last":
            return last
        return jnp.concatenate([mean(self.embed(tokens)), last], axis=-1)


class ClipTransformer(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        frame_size: int = 16,
        channels: int = 3,
        embed_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ):
        self.frame_size = frame_size
        self.channels = channels
        self.embed_dim = embed_dim
        self.feature_dim: int = embed_dim
        self.frame_dim = frame_size * frame_size * channels
        self.frame_embed = linear(self.frame_dim, embed_dim, rngs=rngs)
        self.body = _Blocks(embed_dim, depth, num_heads, mlp_ratio, rngs)

    def embed_frames(self, video: jax.Array) -> jax.Array:
        """float [B, T, H, W, C] -> one token per frame [B, T, D]."""
        b, t, h, w, c = video.shape
        if h * w * c != self.frame_dim:
            raise ValueError(
                f"Frames of {h}x{w}x{c} do not fit this encoder's frame_size={self.frame_size}, "
                f"channels={self.channels}: set config.image_size to the frame size."
            )
        return self.frame_embed(video.reshape(b, t, self.frame_dim))

    def encode_embeddings(self, x: jax.Array) -> jax.Array:
        """Frame tokens [B, T, D] -> normalised tokens [B, T, D]."""
        return self.body(x)

    def __call__(self, video: jax.Array, *, train: bool) -> jax.Array:
        del train
        return jnp.mean(self.encode_embeddings(self.embed_frames(video)), axis=1)


_TEST = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@MODELS.register("token_transformer")
def token_transformer(*, rngs: nnx.Rngs, **kwargs) -> TokenTransformer:
    return TokenTransformer(rngs=rngs, **kwargs)


@MODELS.register("token_transformer_test")
def token_transformer_test(*, rngs: nnx.Rngs, **kwargs) -> TokenTransformer:
    return TokenTransformer(rngs=rngs, **{**_TEST, **kwargs})


@MODELS.register("clip_transformer")
def clip_transformer(*, rngs: nnx.Rngs, **kwargs) -> ClipTransformer:
    return ClipTransformer(rngs=rngs, **kwargs)


@MODELS.register("clip_transformer_test")
def clip_transformer_test(*, rngs: nnx.Rngs, **kwargs) -> ClipTransformer:
    return ClipTransformer(rngs=rngs, **{**_TEST, **kwargs})


# AdamW as BERT (Devlin et al. 2019: b2 0.999, decay 0.01) trains Transformers;
# the rate per 256 examples (linear scaling).
_ADAMW = {
    "name": "adamw",
    "learning_rate": 1e-3,
    "lr_scaling": "linear",
    "b1": 0.9,
    "b2": 0.999,
    "weight_decay": 0.01,
}
_SMALL = {"embed_dim": 128, "depth": 4, "num_heads": 4}


@ENCODERS.register("token_transformer")
def token_preset(image_size: int, *, test: bool = False) -> EncoderPreset:
    """Token sequences have no image size: one small Transformer (width 128,
    depth 4) for CPU-sized corpora, its test variant for `runlocal`."""
    del image_size
    if test:
        return EncoderPreset("token_transformer_test", {}, optimizer=_ADAMW)
    return EncoderPreset("token_transformer", dict(_SMALL), optimizer=_ADAMW)


@ENCODERS.register("clip_transformer")
def clip_preset(image_size: int, *, test: bool = False) -> EncoderPreset:
    """One token per frame of `image_size`^2 RGB pixels; width 128, depth 4."""
    kwargs = {"frame_size": image_size, "channels": 3}
    if test:
        return EncoderPreset("clip_transformer_test", kwargs, optimizer=_ADAMW)
    return EncoderPreset("clip_transformer", {**_SMALL, **kwargs}, optimizer=_ADAMW)
