"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021).

Two views go through one encoder and a wide projector; the cross-correlation
matrix of the two views' batch-standardised embeddings is pushed to the
identity (`losses.barlow_twins_loss`): diagonal terms to 1 (invariance),
off-diagonal ones to 0 with weight lambda = 5e-3 (redundancy reduction). No
negatives, no momentum, no predictor.

Details that matter:
- The projector is 3 layers of 8192 in the paper (Linear-BN-ReLU twice, then
  a bias-free Linear); its width matters (the paper's figure 4): small widths
  are for tests and CPUs only.
- Each view goes through the networks on its own (per-view batch-norm
  statistics, as in the reference), whose Linear layers start as PyTorch's.
- The cross-correlation is over the global batch: the loop computes it on
  arrays sharded over devices, so one device or eight give the same matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import JointEmbeddingTask


class BarlowTwinsTask(JointEmbeddingTask):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_dims: Sequence[int] = (8192, 8192, 8192),
        lambd: float = 5e-3,
        loss_scale: float = 1.0,
        num_classes: int = 0,
    ):
        if lambd < 0:
            raise ValueError(f"Barlow Twins needs lambd >= 0, got {lambd}.")
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        self.projector = MLP([encoder.feature_dim, *projection_dims], last_bias=False, rngs=rngs)
        self.lambd = float(lambd)
        # The reference's early `scale-loss` (solo-learn keeps it, 0.1 on
        # CIFAR): under LARS it only changes the step of biases and norms.
        self.loss_scale = float(loss_scale)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]

        def network(x):
            features = self.encoder(x, train=train)
            return features, self.projector(features, train=train)

        features, z = self.forward_views(network, self.augment(batch, rng, train=train)["image"])
        terms = losses.barlow_twins_terms(z[:n], z[n:])
        loss = self.loss_scale * (terms["invariance"] + self.lambd * terms["redundancy"])
        return self.finish(loss, terms, features, batch)


@TASKS.register("barlow_twins")
def barlow_twins(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> BarlowTwinsTask:
    return BarlowTwinsTask(encoder, rngs=rngs, **kwargs)
