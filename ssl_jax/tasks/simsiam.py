"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021).

Two views go through one encoder and projector; a predictor maps one view's
projection to the other's, whose gradient is stopped (`losses.simsiam_loss`,
negative cosine, symmetrised). No negatives, no momentum encoder: the paper
shows the stop-gradient alone prevents collapse, and without it the output
collapses to a constant (the collapse monitor's `embedding_std` drops to 0).

Details that matter:
- The projector is three layers, each batch-normalised, the last without
  scale and offset; the predictor is a bottleneck (2048 -> 512 -> 2048) whose
  output layer has no batch norm (the paper's section 3, "Baseline settings").
- The reference trains the predictor at a fixed learning rate (no cosine
  decay; the paper's section 4.4 finds it helps): `optimizer.fixed_lr_modules
  = ("predictor",)` in the configs.
- Each view goes through the networks on its own (per-view batch-norm
  statistics, as in the reference), whose Linear layers start as PyTorch's.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import JointEmbeddingTask


class SimSiamTask(JointEmbeddingTask):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_dim: int = 2048,
        prediction_hidden_dim: int = 512,
        num_classes: int = 0,
    ):
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        d = encoder.feature_dim
        self.projector = MLP(
            [d, projection_dim, projection_dim, projection_dim], last_norm="plain", rngs=rngs
        )
        self.predictor = MLP([projection_dim, prediction_hidden_dim, projection_dim], rngs=rngs)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]

        def network(x):
            features = self.encoder(x, train=train)
            z = self.projector(features, train=train)
            return features, z, self.predictor(z, train=train)

        features, z, p = self.forward_views(network, self.augment(batch, rng, train=train)["image"])
        loss = losses.simsiam_loss(p[:n], p[n:], z[:n], z[n:])
        return self.finish(loss, {"simsiam_loss": loss}, features, batch)


@TASKS.register("simsiam")
def simsiam(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SimSiamTask:
    return SimSiamTask(encoder, rngs=rngs, **kwargs)
