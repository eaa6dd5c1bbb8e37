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
  p = 0.2; both views use one encoder call, so batch-norm statistics cover
  both.
- The probe uses the online encoder's features, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import Task, augmented_views, collapse_metrics, view_crops, view_recipes


class BYOLTask(Task):
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
    ):
        if len(views) != 2 or not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"BYOL needs 2 views and base_momentum in [0, 1], got {views}.")
        self.encoder = encoder
        self.projector = MLP(
            [encoder.feature_dim, projection_hidden_dim, projection_dim], rngs=rngs
        )
        self.predictor = MLP([projection_dim, prediction_hidden_dim, projection_dim], rngs=rngs)
        self.teacher = teacher.Teacher(encoder=encoder, projector=self.projector)
        self.base_momentum = float(base_momentum)
        self.views = view_recipes(views)

    def host_crops(self, image_size):
        return view_crops(self.views, image_size)

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the two normalised views, stacked [2B, H, W, C]."""
        del train  # the views are the task
        return {"image": augmented_views(rng, batch["image"], self.views)}

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        views = self.augment(batch, rng, train=train)["image"]
        features = self.encoder(views, train=train)
        prediction = self.predictor(self.projector(features, train=train), train=train)
        target = self.teacher.projector(self.teacher.encoder(views, train=train), train=train)
        loss = losses.byol_loss(prediction[:n], prediction[n:], target[:n], target[n:])
        return loss, {"byol_loss": loss, **collapse_metrics(features[:n])}

    def after_update(self, step, total_steps):
        momentum = teacher.momentum_schedule(self.base_momentum, step, total_steps)
        teacher.ema_update(self.teacher.encoder, self.encoder, momentum)
        teacher.ema_update(self.teacher.projector, self.projector, momentum)


@TASKS.register("byol")
def byol(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> BYOLTask:
    return BYOLTask(encoder, rngs=rngs, **kwargs)
