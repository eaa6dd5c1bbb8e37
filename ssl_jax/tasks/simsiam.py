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
  decay) as an option; here every parameter follows the one schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, augmented_views, collapse_metrics, view_crops, view_recipes


class SimSiamTask(Task):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_dim: int = 2048,
        prediction_hidden_dim: int = 512,
    ):
        if len(views) != 2:
            raise ValueError(f"SimSiam needs 2 views, got {len(views)}.")
        self.encoder = encoder
        d = encoder.feature_dim
        self.projector = MLP(
            [d, projection_dim, projection_dim, projection_dim], last_norm="plain", rngs=rngs
        )
        self.predictor = MLP([projection_dim, prediction_hidden_dim, projection_dim], rngs=rngs)
        self.views = view_recipes(views)

    def host_crops(self, image_size):
        return view_crops(self.views, image_size)

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the two normalised views, stacked [2B, H, W, C]."""
        del train
        return {"image": augmented_views(rng, batch["image"], self.views)}

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        features = self.encoder(self.augment(batch, rng, train=train)["image"], train=train)
        z = self.projector(features, train=train)
        p = self.predictor(z, train=train)
        loss = losses.simsiam_loss(p[:n], p[n:], z[:n], z[n:])
        return loss, {"simsiam_loss": loss, **collapse_metrics(features[:n])}


@TASKS.register("simsiam")
def simsiam(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SimSiamTask:
    return SimSiamTask(encoder, rngs=rngs, **kwargs)
