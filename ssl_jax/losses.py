"""Pure loss functions of the pretext tasks, testable on their own."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x||, with the norm floored at `eps` so a zero vector stays finite."""
    norm_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))


def contrastive_logits(
    z1: jax.Array, z2: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """The 2N x 2N cosine similarities / temperature of the stacked views
    [z1; z2], with each anchor's similarity to itself masked to -inf, and the
    index of each anchor's positive (row i of z1 pairs with row i of z2)."""
    n = z1.shape[0]
    z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return logits, positives


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, eq. 1).

    z1, z2: [N, D] projections of two views of the same N images. Each of the
    2N projections is an anchor; its positive is the other view of its image
    and its negatives are the other 2N - 2 projections. Returns the mean over
    the 2N anchors of -log softmax(positive).
    """
    logits, positives = contrastive_logits(z1, z2, temperature)
    positive_logits = jnp.take_along_axis(logits, positives[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logits)


def contrastive_accuracy(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """Fraction of the 2N anchors whose most similar other projection is their positive."""
    logits, positives = contrastive_logits(z1, z2, 1.0)
    return jnp.mean(jnp.argmax(logits, axis=1) == positives)


def mae_loss(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    norm_pix_loss: bool = False,
    eps: float = 1e-6,
) -> jax.Array:
    """MAE's reconstruction loss (He et al. 2022): mean squared error per patch,
    averaged over the masked patches only.

    pred, target: [B, N, P] pixels of every patch (P = p * p * C); mask: [B, N],
    1 where the patch was hidden from the encoder, 0 where it was visible.
    Visible patches contribute nothing, not even a gradient. With
    `norm_pix_loss`, each target patch is standardised by its own mean and
    (population) variance over its P values, eps added to the variance.
    """
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if norm_pix_loss:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True)
        target = (target - mean) * jax.lax.rsqrt(var + eps)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)
