"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers
(Chen, Xie & He, ICCV 2021).

A query encoder (encoder, projector, predictor) and a momentum key encoder
(encoder, projector: an exponential moving average of the query's) see two
views; each query is contrasted with the keys of the whole global batch, its
own image's key being the positive (InfoNCE, `losses.moco_v3_loss`, times
2 tau, symmetrised). Unlike MoCo v1/v2 there is no queue: the batch is large
enough.

Details that matter:
- tau = 0.2 for ViTs; the reference's ResNet-50 recipe keeps 1.0.
- The momentum follows the cosine schedule from 0.99 to 1 (`tasks/teacher.py`).
- For ViTs the paper freezes the random patch projection (section 4.2): the
  configs set `model_kwargs.frozen_patch_embed`, which the ViT keeps as model
  state.
- Projector: 3 layers for ViTs, 2 for ResNets (4096 wide, 256 out, each
  batch-normalised, the last without scale and offset); predictor: 2 layers,
  ending in such a batch norm for ViTs only (`predictor_last_norm`), as in
  the reference's MoCo_ViT and MoCo_ResNet; their Linear layers start as
  PyTorch's (the reference's).
- Each view goes through the networks on its own (per-view batch-norm
  statistics, as in the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import JointEmbeddingTask


class MoCoV3Task(JointEmbeddingTask):
    trainable = teacher.TRAINABLE

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_hidden_dims: Sequence[int] = (4096, 4096),
        projection_dim: int = 256,
        prediction_hidden_dim: int = 4096,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        predictor_last_norm: bool = False,
        num_classes: int = 0,
    ):
        if temperature <= 0 or not 0.0 <= base_momentum <= 1.0:
            raise ValueError(
                f"MoCo v3 needs temperature > 0 and base_momentum in [0, 1], "
                f"got {temperature}, {base_momentum}."
            )
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        dims = [encoder.feature_dim, *projection_hidden_dims, projection_dim]
        self.projector = MLP(dims, last_norm="plain", rngs=rngs)
        self.predictor = MLP(
            [projection_dim, prediction_hidden_dim, projection_dim],
            last_norm="plain" if predictor_last_norm else None,
            rngs=rngs,
        )
        self.teacher = teacher.Teacher(encoder=encoder, projector=self.projector)
        self.temperature = float(temperature)
        self.base_momentum = float(base_momentum)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        views = self.augment(batch, rng, train=train)["image"]

        def query(x):
            features = self.encoder(x, train=train)
            return features, self.predictor(self.projector(features, train=train), train=train)

        def key(x):
            return self.teacher.projector(self.teacher.encoder(x, train=train), train=train)

        features, q = self.forward_views(query, views)
        k = self.forward_views(key, views)
        loss = losses.moco_v3_loss(q[:n], q[n:], k[:n], k[n:], self.temperature)
        metrics = {
            "contrastive_loss": loss,
            "contrastive_accuracy": losses.contrastive_accuracy(q[:n], k[n:]),
        }
        return self.finish(loss, metrics, features, batch)

    def after_update(self, step, total_steps):
        momentum = teacher.momentum_schedule(self.base_momentum, step, total_steps)
        teacher.ema_update(self.teacher.encoder, self.encoder, momentum)
        teacher.ema_update(self.teacher.projector, self.projector, momentum)


@TASKS.register("moco_v3")
def moco_v3(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> MoCoV3Task:
    return MoCoV3Task(encoder, rngs=rngs, **kwargs)
