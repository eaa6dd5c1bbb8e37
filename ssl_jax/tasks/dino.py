"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties
in Self-Supervised Vision Transformers", ICCV 2021).

A student (encoder + DINO head) sees 2 global and N local crops of every
image; a teacher, the exponential moving average of the student, sees the 2
global ones. The student's softmax over K prototypes matches the teacher's
centred and sharpened softmax of the OTHER crops (`losses.dino_loss`):
centring (subtracting a running mean of the teacher's outputs) prevents one
prototype from dominating, sharpening (a low teacher temperature) prevents the
uniform output; together they avoid collapse without negatives.

Details that matter:
- Multi-crop: the global crops cover 40-100% of the image at the full size,
  the local ones 5-40% at a smaller size (224 and 96 px on ImageNet); only
  the global ones go through the teacher. Different sizes go through the
  encoder separately (a ViT's sin-cos positions fit any grid).
- The head: a 3-layer MLP (GELU; batch norm only with `head_batch_norm`) to a bottleneck, l2
  normalisation, then a weight-normalised linear layer to K prototypes whose
  norm is fixed to 1 (the reference's `norm_last_layer=True`). Its MLP starts
  as the reference's (`head_init="dino"`: std 0.02), which suits the
  reference's 2048-wide layers; the digits and runlocal recipes, whose heads
  are 16-256 wide, keep Flax's default (`"lecun"`): at std 0.02 a 16-wide
  layer shrinks its input ~40-fold and the runlocal run stopped learning.
- The centre (momentum 0.9) is model state updated in `loss` from the teacher
  outputs, as batch-norm statistics are; the teacher temperature warms up
  linearly from `warmup_teacher_temperature` to its final value over the
  first `teacher_temperature_warmup` of the run (a fraction: 30 of the
  reference's 300 epochs is 0.1), read from the run's progress that
  `after_update` keeps.
- The probe uses the TEACHER's encoder, as the paper evaluates it.
- The prototypes are frozen for the start of the run by the optimizer, as
  the reference's `freeze_last_layer` (its first epoch): the configs set
  `optimizer.freeze = (("head/prototypes", fraction),)`, which holds their
  update and their optimizer state (`optim.hold`), so their first step after
  the freeze is a fresh AdamW step. Gradients are clipped per tensor at 3.0,
  as the reference does, by the configs' optimizer (`optimizer.grad_clip =
  "per_tensor"`). Left out: the cosine schedule of the weight decay
  (0.04 -> 0.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses
from ssl_jax.models.heads import MLP
from ssl_jax.registry import TASKS
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import Task, augmented_views, collapse_metrics, view_crops, view_recipes


class Center(nnx.Variable):
    """DINO's running mean of the teacher's outputs: model state."""


class RunProgress(nnx.Variable):
    """The fraction of the run done (steps taken / train_steps), for the
    schedules inside the loss: model state, kept by `after_update`."""


def prototype_layer(bottleneck_dim: int, out_dim: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """The weight-normalised last layer's weights (the reference's trunc-normal 0.02)."""
    init = nnx.initializers.truncated_normal(0.02)
    return nnx.Linear(bottleneck_dim, out_dim, use_bias=False, kernel_init=init, rngs=rngs)


class DINOHead(nnx.Module):
    """MLP -> bottleneck -> l2-normalise -> weight-normalised prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        init: str = "dino",
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.mlp = MLP(
            [in_dim, hidden_dim, hidden_dim, bottleneck_dim],
            norm=batch_norm,
            activation="gelu",
            init=init,
            rngs=rngs,
        )
        self.prototypes = prototype_layer(bottleneck_dim, out_dim, rngs=rngs)

    def embed(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[..., in_dim] -> the l2-normalised bottleneck [..., bottleneck_dim], float32."""
        return losses.l2_normalize(self.mlp(x, train=train).astype(jnp.float32))

    @staticmethod
    def logits(z: jax.Array, prototypes: nnx.Linear) -> jax.Array:
        """Cosines of the bottleneck `z` to the unit-norm `prototypes`."""
        kernel = prototypes.kernel[...].astype(jnp.float32)
        kernel = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)  # weight norm, g = 1
        return z @ kernel

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.logits(self.embed(x, train=train), self.prototypes)


def warmed_up(start: float, end: float, warmup: float, done: jax.Array) -> jax.Array:
    """A linear ramp from `start` to `end` over the first `warmup` of the run
    (`done`: the fraction done), then `end` (the reference's teacher
    temperature schedule)."""
    ramp = jnp.clip(done / max(warmup, 1e-9), 0.0, 1.0)
    return jnp.where(done >= warmup, end, start + (end - start) * ramp)


class DINOTask(Task):
    trainable = teacher.TRAINABLE

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        global_views: Sequence[dict],
        local_view: dict,
        num_local: int = 6,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        teacher_temperature_warmup: float = 0.0,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        freeze_prototypes: float | None = None,
        head_init: str = "dino",
        head_batch_norm: bool = False,
    ):
        if freeze_prototypes is not None:
            raise ValueError(
                f"DINO's task_kwargs.freeze_prototypes={freeze_prototypes} moved to the optimizer: "
                f"set optimizer.freeze=(('head/prototypes', {freeze_prototypes}),) instead."
            )
        if not 0 <= teacher_temperature_warmup <= 1:
            raise ValueError(
                "DINO's teacher_temperature_warmup is a fraction of the run in [0, 1], got "
                f"{teacher_temperature_warmup}."
            )
        if len(global_views) != 2 or num_local < 0:
            raise ValueError(f"DINO needs 2 global views and num_local >= 0, got {global_views}.")
        if min(student_temperature, teacher_temperature, warmup_teacher_temperature) <= 0:
            raise ValueError("DINO's temperatures must be > 0.")
        self.encoder = encoder
        self.head = self.make_head(
            encoder.feature_dim,
            out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            init=head_init,
            batch_norm=head_batch_norm,
            rngs=rngs,
        )
        self.teacher = teacher.Teacher(encoder=encoder, head=self.head)
        self.center = Center(jnp.zeros((1, out_dim), jnp.float32))
        self.progress = RunProgress(jnp.zeros((), jnp.float32))
        self.global_views = view_recipes(global_views)
        self.local_views = view_recipes([local_view] * num_local)
        self.temperatures = (
            float(student_temperature),
            float(warmup_teacher_temperature),
            float(teacher_temperature),
            float(teacher_temperature_warmup),
        )
        self.center_momentum = float(center_momentum)
        self.base_momentum = float(base_momentum)

    def host_crops(self, image_size):
        crops = {"image": view_crops(self.global_views, image_size)["image"]}
        if self.local_views:
            crops["local"] = view_crops(self.local_views, image_size)["image"]
        return crops

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the global views [2B, Hg, Wg, C] and the local views
        [N * B, Hl, Wl, C], normalised (or, from the host's crops: `image`
        [B, 2, ...] and `local` [B, N, ...], augmented without a second crop)."""
        del train
        global_rng, local_rng = jax.random.split(rng)
        out = {"image": augmented_views(global_rng, batch["image"], self.global_views)}
        if self.local_views:
            source = batch.get("local", batch["image"])
            out["local"] = augmented_views(local_rng, source, self.local_views)
        return out

    def make_head(self, in_dim: int, out_dim: int, **kwargs) -> DINOHead:
        """The student's head (the teacher's is its copy); iBOT's adds patch prototypes."""
        return DINOHead(in_dim, out_dim, **kwargs)

    def teacher_temperature(self) -> jax.Array:
        _, start, end, warmup = self.temperatures
        return warmed_up(start, end, warmup, self.progress[...])

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        views = self.augment(batch, rng, train=train)
        features = self.encoder(views["image"], train=train)
        student = [self.head(features, train=train)]
        if "local" in views:
            local = self.encoder(views["local"], train=train)
            student.append(self.head(local, train=train))
        student = jnp.concatenate(student).reshape(-1, n, self.center.shape[-1])
        target = self.teacher.head(self.teacher.encoder(views["image"], train=train), train=train)
        target = jax.lax.stop_gradient(target.reshape(2, n, -1))
        temperature = self.teacher_temperature()
        loss = losses.dino_loss(
            student,
            target,
            self.center[...],
            student_temperature=self.temperatures[0],
            teacher_temperature=temperature,
        )
        if train:
            self.center[...] = losses.dino_update_center(
                self.center[...], target, self.center_momentum
            )
        metrics = {"dino_loss": loss, "teacher_temperature": temperature}
        return loss, {**metrics, **collapse_metrics(features[:n])}

    def after_update(self, step, total_steps):
        self.progress[...] = jnp.asarray(step / max(total_steps, 1), jnp.float32)
        momentum = teacher.momentum_schedule(self.base_momentum, step, total_steps)
        teacher.ema_update(self.teacher.encoder, self.encoder, momentum)
        teacher.ema_update(self.teacher.head, self.head, momentum)

    def feature_encoder(self):
        """The teacher's encoder, which DINO's paper evaluates."""
        return self.teacher.encoder


@TASKS.register("dino")
def dino(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> DINOTask:
    return DINOTask(encoder, rngs=rngs, **kwargs)
