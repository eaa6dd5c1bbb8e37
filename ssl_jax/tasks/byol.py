"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

Two views of an image go through an online network (encoder, projector,
predictor) and a target network (encoder, projector); the online prediction
of one view regresses the target projection of the other view (normalised
MSE, `losses.byol_loss`, symmetrised). There are no negatives: what keeps
the representation from collapsing is the predictor and the target, an
exponential moving average of the online weights that no gradient reaches.

Details that matter:
- The target lives in `self.teacher` (see `tasks/teacher.py`): model state
  to the loop, checkpointed with the rest, updated by `after_update` with
  momentum 1 - (1 - m_base)(cos(pi k / K) + 1) / 2, m_base = 0.996.
- The two views are asymmetric (the paper's appendix B): view 1 is always
  blurred and never solarised, view 2 blurred with p = 0.1 and solarised with
  p = 0.2 (the CIFAR recipe, solo-learn's, blurs neither).
- Each view goes through the networks on its own, so batch-norm statistics
  are per view, as in the reference (`JointEmbeddingTask.forward_views`).
- The heads' Linear layers start as the reference's (Haiku's default: a
  normal of std 1/sqrt(fan_in) cut at 2 std; `heads.linear_init`).
- The probe uses the online encoder's features, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import JointEmbeddingTask


class BYOLTask(JointEmbeddingTask):
    trainable = teacher.TRAINABLE

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_hidden_dim: int = 4096,
        projection_dim: int = 256,
        prediction_hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        head_init: str = "haiku",
        num_classes: int = 0,
    ):
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"BYOL needs base_momentum in [0, 1], got {base_momentum}.")
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        self.projector = MLP(
            [encoder.feature_dim, projection_hidden_dim, projection_dim], init=head_init, rngs=rngs
        )
        self.predictor = MLP(
            [projection_dim, prediction_hidden_dim, projection_dim], init=head_init, rngs=rngs
        )
        self.teacher = teacher.Teacher(encoder=encoder, projector=self.projector)
        self.base_momentum = float(base_momentum)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        views = self.augment(batch, rng, train=train)["image"]

        def online(x):
            features = self.encoder(x, train=train)
            return features, self.predictor(self.projector(features, train=train), train=train)

        def target(x):
            return self.teacher.projector(self.teacher.encoder(x, train=train), train=train)

        features, prediction = self.forward_views(online, views)
        target = self.forward_views(target, views)
        loss = losses.byol_loss(prediction[:n], prediction[n:], target[:n], target[n:])
        return self.finish(loss, {"byol_loss": loss}, features, batch)

    def after_update(self, step, total_steps):
        momentum = teacher.momentum_schedule(self.base_momentum, step, total_steps)
        teacher.ema_update(self.teacher.encoder, self.encoder, momentum)
        teacher.ema_update(self.teacher.projector, self.projector, momentum)


@TASKS.register("byol")
def byol(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> BYOLTask:
    return BYOLTask(encoder, rngs=rngs, **kwargs)
