"""Masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022).

Each image is cut into patches, a random 75% of them is hidden, the ViT
encoder sees only the visible quarter, and a light decoder, given the encoded
visible tokens plus a shared learned mask token at every hidden position,
predicts the hidden patches' pixels. The loss is the MSE on hidden patches only.

Details that matter:
- The mask is a fresh random subset per image and per step: argsort of
  uniform noise, one key per example from (seed, step, example index), so the
  masks are reproducible on resume and independent of the device count.
- The encoder runs on the visible patches only (`ViT.encode_tokens`), so its
  cost falls with the mask ratio; only the small decoder sees every position.
- `norm_pix_loss` predicts each patch normalised by its own mean and standard
  deviation (the paper's better-probing default on ImageNet).
- The decoder has its own width and depth and fixed sin-cos positions; it is
  thrown away after pretraining: `features` is the encoder on the whole,
  unmasked image (class token or mean of patch tokens, per `model_kwargs.pool`).
- The paper probes MAE features through a BatchNorm without affine parameters
  in front of the linear classifier, because their scale varies across
  channels. `evaluate/linear_probe.py` already standardises every feature with
  the mean and std of the probe's training features before its linear head,
  which is that same normalisation, so nothing MAE-specific is needed there.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import augment, decode
from ssl_jax.losses import mae_loss
from ssl_jax.models.vit import Block, ViT, layer_norm, linear, patchify, sincos_2d, unpatchify
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, collapse_metrics

_GREY = 128  # masked patches in the pictures


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: round(N * (1 - ratio)), at least 1 and at most N - 1
    (so that something is visible and something is left to predict)."""
    return min(max(round(num_patches * (1.0 - mask_ratio)), 1), num_patches - 1)


def random_masking(
    rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A fresh random subset of patches per example.

    Returns `keep` int [B, n_visible] (grid indices of the visible patches, in
    the random order), `restore` int [B, N] (the inverse permutation: it puts
    [visible, masked] tokens back into grid order) and `mask` float [B, N]
    (1 = hidden, the positions the loss is computed on).
    """
    keys = augment.example_keys(rng, batch_size)
    noise = jax.vmap(lambda key: jax.random.uniform(key, (num_patches,)))(keys)
    shuffle = jnp.argsort(noise, axis=1)  # ascending: the first n_visible are kept
    restore = jnp.argsort(shuffle, axis=1)
    n_visible = num_visible(num_patches, mask_ratio)
    keep = shuffle[:, :n_visible]
    # Position i is hidden iff its rank in the shuffle is >= n_visible.
    mask = (restore >= n_visible).astype(jnp.float32)
    return keep, restore, mask


class Decoder(nnx.Module):
    """Encoded visible tokens -> predicted pixels of every patch `[B, N, p*p*C]`."""

    def __init__(
        self,
        encoder_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_dim: int,
        num_prefix_tokens: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.dim = dim
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = linear(encoder_dim, dim, rngs=rngs)
        # [1, 1, D]: decayed by optim.decay_mask (ndim > 1), as in MAE's reference code.
        self.mask_token = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, dim)))
        self.blocks = nnx.List([Block(dim, num_heads, rngs=rngs) for _ in range(depth)])
        self.norm = layer_norm(dim, rngs=rngs)
        self.pred = linear(dim, patch_dim, rngs=rngs)

    def __call__(self, tokens: jax.Array, restore: jax.Array, grid: tuple[int, int]) -> jax.Array:
        x = self.embed(tokens)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        b, n = restore.shape
        masked = jnp.broadcast_to(self.mask_token[...], (b, n - visible.shape[1], self.dim))
        x = jnp.concatenate([visible, masked], axis=1)  # in shuffle order
        x = jnp.take_along_axis(x, restore[:, :, None], axis=1)  # back to grid order
        x = x + jnp.asarray(sincos_2d(self.dim, tuple(grid)))[None]
        x = jnp.concatenate([prefix, x], axis=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, self.num_prefix_tokens :]


class MAETask(Task):
    def __init__(
        self,
        encoder: ViT,
        *,
        rngs: nnx.Rngs,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        crop_scale: Sequence[float] | None = (0.2, 1.0),
        flip: bool = True,
    ):
        if not hasattr(encoder, "encode_tokens"):
            raise ValueError(
                f"MAE needs a ViT encoder (with encode_tokens), got {type(encoder).__name__}: "
                "use a ViT encoder family (encoder=vit)."
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"task_kwargs.mask_ratio must be in (0, 1), got {mask_ratio}.")
        if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"task_kwargs.crop_scale must be 0 < lo <= hi <= 1, got {crop_scale}.")
        self.encoder = encoder
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.flip = flip
        p = encoder.patch_size
        self.decoder = Decoder(
            encoder.embed_dim,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            p * p * encoder.in_channels,
            encoder.num_prefix_tokens,
            rngs=rngs,
        )

    def host_crops(self, image_size):
        if self.crop_scale is None:
            return None
        return {"image": (decode.CropSpec(image_size, self.crop_scale),)}

    def _augment(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """MAE's only augmentation: random resized crop (unless the host took
        it from the original image: [B, 1, H, W, C]) and flip, per example."""
        cropped = images.ndim == 5
        images = images[:, 0] if cropped else images

        def one(key, image):
            crop_key, flip_key = jax.random.split(key)
            if self.crop_scale is not None and not cropped:
                image = augment.random_resized_crop(crop_key, image, scale=self.crop_scale)
            return augment.random_flip(flip_key, image) if self.flip else image

        return jax.vmap(one)(augment.example_keys(rng, images.shape[0]), images)

    def reconstruct(
        self, images: jax.Array, rng: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Model-range images `[B, H, W, C]` -> (predicted patches, target
        patches, mask, pooled encoding of the visible patches), per patch in
        grid order; only visible patches are encoded."""
        p = self.encoder.patch_size
        grid = self.encoder.grid(images)
        target = patchify(images, p)
        keep, restore, mask = random_masking(rng, target.shape[0], target.shape[1], self.mask_ratio)
        visible = jnp.take_along_axis(target, keep[:, :, None], axis=1)
        tokens = self.encoder.encode_tokens(visible, keep, grid)
        pooled = self.encoder.pool_tokens(tokens)
        return self.decoder(tokens, restore, grid), target, mask, pooled

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> normalised images, crop-resized and flipped when
        training (masking is part of the model's forward pass, not here)."""
        images = augment.to_float(batch["image"])
        if train:
            images = self._augment(rng, images)
        elif images.ndim == 5:  # the host's crop
            images = images[:, 0]
        return {"image": augment.normalize(images)}

    def loss(self, batch, rng, *, train):
        aug_rng, mask_rng = jax.random.split(rng)
        images = self.augment(batch, aug_rng, train=train)["image"]
        pred, target, mask, pooled = self.reconstruct(images, mask_rng)
        loss = mae_loss(pred, target, mask, norm_pix_loss=self.norm_pix_loss)
        return loss, {"visible_fraction": 1.0 - jnp.mean(mask), **collapse_metrics(pooled)}

    def visualize(self, batch, rng) -> jax.Array:
        """uint8 [3H, nW, 3]: one column per example of `batch["image"]`; rows:
        the original, the masked input (hidden patches grey), and the
        reconstruction with the visible patches pasted from the input (as in
        the paper's figures). With `norm_pix_loss` the prediction of a patch is
        in units of that patch's own mean and std; they are taken from the true
        patch to show it (a picture only, never a metric)."""
        original = batch["image"].astype(jnp.uint8)
        images = augment.normalize(augment.to_float(original))
        pred, target, mask, _ = self.reconstruct(images, rng)
        if self.norm_pix_loss:
            mean = target.mean(axis=-1, keepdims=True)
            std = jnp.sqrt(target.var(axis=-1, keepdims=True) + 1e-6)
            pred = pred * std + mean
        hidden = mask[:, :, None] > 0
        p, grid = self.encoder.patch_size, self.encoder.grid(images)

        # Invert augment.normalize (an affine map) without knowing its constants.
        zero, one = augment.normalize(0.0), augment.normalize(1.0)

        def to_uint8(patches):
            x = (unpatchify(patches, p, grid) - zero) / (one - zero)
            return jnp.round(jnp.clip(x, 0.0, 1.0) * 255).astype(jnp.uint8)

        orig_patches = patchify(original, p)
        masked = unpatchify(jnp.where(hidden, jnp.uint8(_GREY), orig_patches), p, grid)
        pasted = jnp.where(hidden, patchify(to_uint8(pred), p), orig_patches)
        recon = unpatchify(pasted, p, grid)
        rows = [jnp.concatenate(list(r), axis=1) for r in (original, masked, recon)]
        grid_image = jnp.concatenate(rows, axis=0)
        return jnp.repeat(grid_image, 3, axis=-1) if grid_image.shape[-1] == 1 else grid_image


@TASKS.register("mae")
def mae(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> MAETask:
    return MAETask(encoder, rngs=rngs, **kwargs)
