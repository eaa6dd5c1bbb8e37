"""SimCLR: contrastive learning of visual representations (Chen et al., ICML 2020).

Two random views of every image go through the encoder and a small MLP
projection head; NT-Xent pulls each view towards the other view of its image
and away from the 2N - 2 other views of the batch. The probe uses the
encoder's features, before the projection head, which the paper found far
better than the projections.

Details that matter:
- Both views go through the encoder in ONE call, so batch-norm statistics
  cover all 2N views. The loop jit-compiles `loss` over global arrays sharded
  on the `data` mesh axis: the batch statistics and the 2N x 2N similarity
  matrix are computed over the global batch and XLA inserts the cross-device
  communication itself. There is no pmap and no explicit all_gather, and one
  device or eight compute the same loss.
- Each view's keys are `example_keys(fold_in(rng, view), B)`: a function of
  (seed, step, view, example index) only, not of the device count.
- The views are the task, not a regulariser: `loss` augments whether or not
  `train` is set (`train` only switches batch norm).
- An optional online linear probe (`num_classes > 0`) on the stop-gradient
  features of the first view tracks representation quality during
  pretraining. Its loss is added to the total, but it cannot reach the
  encoder through `stop_gradient`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssl_jax import losses
from ssl_jax.data import augment
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, collapse_metrics


class ProjectionHead(nnx.Module):
    """[Linear -> BatchNorm -> ReLU] x len(hidden_dims) -> Linear -> BatchNorm.

    SimCLR v2's head: every linear layer is bias-free and batch-normalised,
    the output too (without an offset, which the cosine similarity would
    mostly ignore anyway), and with no ReLU after the last layer.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *, rngs: nnx.Rngs):
        dims = [in_dim, *hidden_dims, out_dim]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.linears = nnx.List(
            [nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs) for d_in, d_out in pairs]
        )
        self.norms = nnx.List(
            [
                nnx.BatchNorm(
                    d_out,
                    momentum=0.9,
                    use_running_average=False,
                    use_bias=i < len(pairs) - 1,
                    rngs=rngs,
                )
                for i, (_, d_out) in enumerate(pairs)
            ]
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        last = len(self.linears) - 1
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            x = norm(linear(x), use_running_average=not train)
            if i < last:
                x = nnx.relu(x)
        return x


class SimCLRTask(Task):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        projection_hidden_dims: Sequence[int] = (512,),
        projection_dim: int = 128,
        temperature: float = 0.5,
        num_classes: int = 0,
        augment_kwargs: dict | None = None,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        known = set(inspect.signature(augment.simclr_view).parameters) - {"rng", "image"}
        unknown = sorted(set(augment_kwargs or {}) - known)
        if unknown:
            raise ValueError(f"Unknown augment_kwargs {unknown}; known: {sorted(known)}.")
        self.encoder = encoder
        self.projection = ProjectionHead(
            encoder.feature_dim, tuple(projection_hidden_dims), projection_dim, rngs=rngs
        )
        self.temperature = temperature
        self.num_classes = num_classes
        self.online_probe = (
            nnx.Linear(encoder.feature_dim, num_classes, rngs=rngs) if num_classes else None
        )
        # Keyword arguments of `augment.simclr_view` (from the config), kept as
        # a sorted tuple of pairs: static module attributes must be hashable.
        self.augment_kwargs = tuple(
            sorted(
                (k, tuple(v) if isinstance(v, list | tuple) else v)
                for k, v in (augment_kwargs or {}).items()
            )
        )

    def views(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """uint8 [B, H, W, C] -> float [2B, H, W, C] in [0, 1]: view 0 of every
        image, then view 1."""
        images = augment.to_float(images)
        return jnp.concatenate(
            [
                augment.simclr_view_batch(
                    jax.random.fold_in(rng, view), images, **dict(self.augment_kwargs)
                )
                for view in range(2)
            ]
        )

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the two normalised views, stacked `[2B, H, W, C]`.
        Both views are random even when not training: they are the task."""
        del train
        return {"image": augment.normalize(self.views(rng, batch["image"]))}

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        features = self.encoder(self.augment(batch, rng, train=train)["image"], train=train)
        z = self.projection(features, train=train)
        loss = losses.nt_xent(z[:n], z[n:], self.temperature)
        metrics = {
            "contrastive_loss": loss,
            "contrastive_accuracy": losses.contrastive_accuracy(z[:n], z[n:]),
            **collapse_metrics(features[:n]),
        }
        if self.online_probe is not None and "label" in batch:
            logits = self.online_probe(jax.lax.stop_gradient(features[:n])).astype(jnp.float32)
            labels = batch["label"]
            probe_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            metrics["online_probe_loss"] = probe_loss
            metrics["online_probe_accuracy"] = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
            loss = loss + probe_loss
        return loss, metrics


@TASKS.register("simclr")
def simclr(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SimCLRTask:
    if "augment_kwargs" in kwargs and hasattr(kwargs["augment_kwargs"], "to_dict"):
        kwargs["augment_kwargs"] = kwargs["augment_kwargs"].to_dict()
    return SimCLRTask(encoder, rngs=rngs, **kwargs)
