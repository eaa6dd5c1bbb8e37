"""SwAV: swapping assignments between views (Caron et al., "Unsupervised
Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020).

Every image gives 2 global crops and N smaller local ones (multi-crop). Each
crop goes through the encoder and a projection MLP to an l2-normalised
embedding z, whose scores against K prototypes (unit vectors, a bias-free
linear layer) are the cosines z . c_k. The 2 global crops are "assigned":
their scores become codes q, a soft assignment of the global batch to the
prototypes that uses every prototype equally (Sinkhorn-Knopp,
`losses.sinkhorn_knopp`). The loss swaps them: each crop's softmax(scores /
0.1) predicts the codes of every other assigned crop (`losses.swav_loss`).
The equal split is what prevents the collapse onto one prototype; there is
no teacher and no negative pair.

Details that matter (checked against facebookresearch/swav, main_swav.py):
- Codes are computed per assigned crop over the GLOBAL batch (the reference
  all-reduces its sums; here the loss is jitted over arrays sharded on the
  `data` axis, so sums over the batch axis are global already), in float32,
  without gradient, with epsilon 0.05 and 3 iterations.
- The prototypes' weights are projected back to unit norm after every update
  in `after_update` (the reference normalises them before each step); the
  gradient flows through the plain linear layer, not through a weight norm.
- Prototype freeze (the reference's `freeze_prototypes_niters`, one epoch,
  in which it drops their gradient): the configs set `optimizer.freeze =
  (("prototypes", fraction),)`, and the optimizer gives them no update and
  keeps their optimizer state (momentum, weight decay, a step count) as it
  was until the freeze ends (`optim.hold`), as the reference's optimizer
  skips a parameter without a gradient. Only the unit-norm projection
  touches them meanwhile, as the reference normalises them every step.
- Optional queue (`queue_length` > 0, for small batches): the last L global
  embeddings of each assigned crop, model state, are scored with the current
  prototypes and put before the batch in the Sinkhorn problem; only the
  batch's codes are kept. It is filled from `queue_start_fraction` of the run
  and used once full, as the reference starts it at `epoch_queue_starts` and
  uses it when its last row is filled. L must be a multiple of the batch.
- Batch norm: the two global crops go through the encoder in one call, the
  local ones in another, and the projection MLP sees all crops at once, as
  the reference groups crops by resolution and concatenates their features.
- The probe and the online probe read the encoder's features of the global
  crops (the reference evaluates the trunk's pooled features).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import JointEmbeddingTask, augmented_views, view_crops, view_recipes

_HIGHEST = jax.lax.Precision.HIGHEST


class Progress(nnx.Variable):
    """The fraction of the run done (steps taken / train_steps): model state
    kept by `after_update` for the queue's start."""


class Queue(nnx.Variable):
    """Past embeddings of the assigned crops [2, L, D], newest first."""


class QueueFilled(nnx.Variable):
    """How many of the queue's L rows hold embeddings; it is used once all do."""


def unit_columns(kernel: jax.Array) -> jax.Array:
    """A [D, K] kernel with each prototype (column) scaled to norm 1."""
    norm = jnp.linalg.norm(kernel.astype(jnp.float32), axis=0, keepdims=True)
    return (kernel / jnp.maximum(norm, 1e-12)).astype(kernel.dtype)


class SwAVTask(JointEmbeddingTask):
    joint_views = True  # both global crops in one encoder call, as the reference

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        global_views: Sequence[dict],
        local_view: dict | None = None,
        num_local: int = 0,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_fraction: float | None = None,
        queue_length: int = 0,
        queue_start_fraction: float = 0.0,
        head_init: str = "torch",
        num_classes: int = 0,
    ):
        if freeze_prototypes_fraction is not None:
            raise ValueError(
                f"SwAV's task_kwargs.freeze_prototypes_fraction={freeze_prototypes_fraction} moved "
                f"to the optimizer: set optimizer.freeze=(('prototypes', "
                f"{freeze_prototypes_fraction}),) instead."
            )
        if not 0.0 <= queue_start_fraction <= 1.0:
            raise ValueError(
                "SwAV's queue_start_fraction is a fraction of the run in [0, 1], got "
                f"{queue_start_fraction}."
            )
        if temperature <= 0 or epsilon <= 0 or sinkhorn_iterations < 1:
            raise ValueError(
                "SwAV needs temperature > 0, epsilon > 0 and sinkhorn_iterations >= 1, got "
                f"{temperature}, {epsilon}, {sinkhorn_iterations}."
            )
        if num_local < 0 or queue_length < 0 or (num_local and local_view is None):
            raise ValueError(
                f"SwAV needs num_local >= 0 (with a local_view) and queue_length >= 0, got "
                f"{num_local}, {local_view}, {queue_length}."
            )
        hidden = [projection_hidden_dim] if projection_hidden_dim else []
        self.projector = MLP(
            [encoder.feature_dim, *hidden, projection_dim], init=head_init, rngs=rngs
        )
        self.prototypes = nnx.Linear(projection_dim, num_prototypes, use_bias=False, rngs=rngs)
        self.prototypes.kernel[...] = unit_columns(self.prototypes.kernel[...])
        self.init_views(encoder, global_views, rngs=rngs, num_classes=num_classes)
        self.local_views = view_recipes([local_view] * num_local) if num_local else ()
        self.progress = Progress(jnp.zeros((), jnp.float32))
        self.queue = (
            Queue(jnp.zeros((2, queue_length, projection_dim), jnp.float32))
            if queue_length
            else None
        )
        self.queue_filled = QueueFilled(jnp.zeros((), jnp.int32)) if queue_length else None
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.queue_start_fraction = float(queue_start_fraction)

    def host_crops(self, image_size):
        crops = super().host_crops(image_size)
        if self.local_views:
            crops["local"] = view_crops(self.local_views, image_size)["image"]
        return crops

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the 2 global views [2B, Hg, Wg, C] and the local
        views [N * B, Hl, Wl, C], normalised (from the host's crops: `image`
        [B, 2, ...] and `local` [B, N, ...], augmented without a second crop)."""
        global_rng, local_rng = jax.random.split(rng)
        out = super().augment(batch, global_rng, train=train)
        if self.local_views:
            source = batch.get("local", batch["image"])
            out["local"] = augmented_views(local_rng, source, self.local_views)
        return out

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        views = self.augment(batch, rng, train=train)
        features = self.forward_views(lambda x: self.encoder(x, train=train), views["image"])
        crops = [features]
        if "local" in views:
            crops.append(self.encoder(views["local"], train=train))
        head = self.projector(jnp.concatenate(crops), train=train)
        z = losses.l2_normalize(head.astype(jnp.float32))
        kernel = self.prototypes.kernel[...].astype(jnp.float32)
        scores = jnp.matmul(z, kernel, precision=_HIGHEST).reshape(-1, n, kernel.shape[1])
        codes, metrics = self.codes(z[: 2 * n].reshape(2, n, -1), scores[:2], kernel, train=train)
        loss = losses.swav_loss(scores, codes, self.temperature)
        metrics = {**metrics, "swav_loss": loss}
        return self.finish(loss, metrics, features, batch)

    def sinkhorn(self, scores: jax.Array) -> jax.Array:
        return losses.sinkhorn_knopp(
            scores, epsilon=self.epsilon, iterations=self.sinkhorn_iterations
        )

    def codes(self, embeddings, scores, kernel, *, train):
        """Codes [2, n, K] of the assigned crops from their scores [2, n, K]
        (each crop's Sinkhorn on its own, as the reference); with a queue,
        over [queue; batch] once the queue is full, then the batch's rows.
        Training also pushes `embeddings` [2, n, D] into the queue."""
        if self.queue is None:
            return jnp.stack([self.sinkhorn(s) for s in scores]), {}
        n, length = scores.shape[1], self.queue.shape[1]
        if length % n:
            raise ValueError(
                f"SwAV's queue_length ({length}) must be a multiple of the batch size ({n}), "
                "as the reference rounds it down to one."
            )
        queue = self.queue[...]
        in_use = self.queue_filled[...] >= length
        queued = jnp.einsum("gld,dk->glk", queue, jax.lax.stop_gradient(kernel), precision=_HIGHEST)
        joint = [jnp.concatenate([q, s]) for q, s in zip(queued, scores, strict=True)]
        with_queue = jnp.stack([self.sinkhorn(problem)[-n:] for problem in joint])
        alone = jnp.stack([self.sinkhorn(s) for s in scores])
        codes = jnp.where(in_use, with_queue, alone)
        if train:
            started = self.progress[...] >= self.queue_start_fraction
            pushed = jnp.concatenate([jax.lax.stop_gradient(embeddings), queue[:, :-n]], axis=1)
            self.queue[...] = jnp.where(started, pushed, queue)
            filled = jnp.minimum(self.queue_filled[...] + n, length)
            self.queue_filled[...] = jnp.where(started, filled, self.queue_filled[...])
        return codes, {"queue_in_use": in_use.astype(jnp.float32)}

    def after_update(self, step, total_steps):
        self.progress[...] = jnp.asarray(step / max(total_steps, 1), jnp.float32)
        self.prototypes.kernel[...] = unit_columns(self.prototypes.kernel[...])


@TASKS.register("swav")
def swav(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SwAVTask:
    return SwAVTask(encoder, rngs=rngs, **kwargs)
