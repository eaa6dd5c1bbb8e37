"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

Two views go through one encoder and a wide expander; the loss
(`losses.vicreg_loss`) pulls the two embeddings of an image together
(invariance, weight 25), keeps every dimension's standard deviation over the
batch above 1 (variance, weight 25: this term alone prevents collapse), and
decorrelates the dimensions (covariance, weight 1). No negatives, no
momentum, no stop-gradient, no batch-norm trick in the loss.

The expander is 3 layers of 8192 in the paper (Linear-BN-ReLU twice, then a
Linear); smaller widths are for tests and CPUs.

Details that matter:
- The expander's Linear layers start as PyTorch's (the reference's): with
  Flax's default, three times the weight variance, the CIFAR recipe's
  covariance term grows from 35 to 65,000 in 14 steps and the run diverges,
  in this project and in a PyTorch run given the same initialisation.
- Each view goes through the networks on its own (per-view batch-norm
  statistics, as in the reference).
- The variance term is the mean of the two views' terms, as the paper's
  code has it; solo-learn sums them, so its weight 25 is 50 here.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import JointEmbeddingTask


class VICRegTask(JointEmbeddingTask):
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
        num_classes: int = 0,
    ):
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        self.expander = MLP([encoder.feature_dim, *expander_dims], last_bias=False, rngs=rngs)
        self.weights = (float(invariance_weight), float(variance_weight), float(covariance_weight))

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]

        def network(x):
            features = self.encoder(x, train=train)
            return features, self.expander(features, train=train)

        features, z = self.forward_views(network, self.augment(batch, rng, train=train)["image"])
        terms = losses.vicreg_terms(z[:n], z[n:])
        loss = sum(
            w * terms[k]
            for w, k in zip(self.weights, ("invariance", "variance", "covariance"), strict=True)
        )
        return self.finish(loss, terms, features, batch)


@TASKS.register("vicreg")
def vicreg(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> VICRegTask:
    return VICRegTask(encoder, rngs=rngs, **kwargs)
