"""SimCLR: contrastive learning of visual representations (Chen et al., ICML 2020).

Two random views of every image go through the encoder and a small MLP
projection head; NT-Xent pulls each view towards the other view of its image
and away from the 2N - 2 other views of the batch. The probe uses the
encoder's features, before the projection head, which the paper found far
better than the projections.

Details that matter:
- Views, host crops and the optional online probe come from
  `JointEmbeddingTask`; the recipes are the config's (`recipes.simclr_views`:
  the paper's appendix A).
- Both views go through the encoder in ONE call (`joint_views`), so
  batch-norm statistics cover all 2N views, as google-research/simclr
  computes them (it concatenates the views); the other two-view methods'
  references normalise each view on its own. The loop jit-compiles `loss`
  over global arrays sharded on the `data` mesh axis: the batch statistics
  and the 2N x 2N similarity matrix are computed over the global batch and
  XLA inserts the cross-device communication itself. There is no pmap and no
  explicit all_gather, and one device or eight compute the same loss.
- The projection head is SimCLR v2's (`heads.MLP` with `last_norm="scale"`):
  bias-free Linear layers, each batch-normalised, ReLU between them, the last
  batch norm with a scale and no offset; Flax's default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import JointEmbeddingTask


class SimCLRTask(JointEmbeddingTask):
    joint_views = True

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        views: Sequence[dict],
        projection_hidden_dims: Sequence[int] = (512,),
        projection_dim: int = 128,
        temperature: float = 0.5,
        num_classes: int = 0,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        # Drawn before the online probe: the head's initial weights are then
        # those SimCLR drew before it moved onto the base, and so are the runs
        # the README reports.
        self.projection = MLP(
            [encoder.feature_dim, *projection_hidden_dims, projection_dim],
            last_norm="scale",
            init="lecun",
            rngs=rngs,
        )
        self.init_views(encoder, views, rngs=rngs, num_classes=num_classes)
        self.temperature = float(temperature)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]

        def network(x):
            features = self.encoder(x, train=train)
            return features, self.projection(features, train=train)

        features, z = self.forward_views(network, self.augment(batch, rng, train=train)["image"])
        loss = losses.nt_xent(z[:n], z[n:], self.temperature)
        metrics = {
            "contrastive_loss": loss,
            "contrastive_accuracy": losses.contrastive_accuracy(z[:n], z[n:]),
        }
        return self.finish(loss, metrics, features, batch)


@TASKS.register("simclr")
def simclr(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SimCLRTask:
    if "augment_kwargs" in kwargs:  # a config or workdir from before SimCLR had views
        raise ValueError(
            "task_kwargs.augment_kwargs was replaced by task_kwargs.views (two view dicts, e.g. "
            "ssl_jax.data.augment.recipes.simclr_views(strength=0.5)); a SimCLR workdir or "
            "export made before that change cannot be resumed or loaded: train it again."
        )
    return SimCLRTask(encoder, rngs=rngs, **kwargs)
