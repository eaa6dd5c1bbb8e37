"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

Two views go through one encoder and a wide expander; the loss
(`losses.vicreg_loss`) pulls the two embeddings of an image together
(invariance, weight 25), keeps every dimension's standard deviation over the
batch above 1 (variance, weight 25: this term alone prevents collapse), and
decorrelates the dimensions (covariance, weight 1). No negatives, no
momentum, no stop-gradient, no batch-norm trick in the loss.

The expander is 3 layers of 8192 in the paper (Linear-BN-ReLU twice, then a
Linear); smaller widths are for tests and CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, augmented_views, collapse_metrics, view_crops, view_recipes


class VICRegTask(Task):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        expander_dims: Sequence[int] = (8192, 8192, 8192),
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
    ):
        if len(views) != 2:
            raise ValueError(f"VICReg needs 2 views, got {len(views)}.")
        self.encoder = encoder
        self.expander = MLP([encoder.feature_dim, *expander_dims], last_bias=False, rngs=rngs)
        self.weights = (float(invariance_weight), float(variance_weight), float(covariance_weight))
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
        z = self.expander(features, train=train)
        terms = losses.vicreg_terms(z[:n], z[n:])
        loss = sum(
            w * terms[k]
            for w, k in zip(self.weights, ("invariance", "variance", "covariance"), strict=True)
        )
        return loss, {**terms, **collapse_metrics(features[:n])}


@TASKS.register("vicreg")
def vicreg(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> VICRegTask:
    return VICRegTask(encoder, rngs=rngs, **kwargs)
