"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al.,
"iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022).

DINO (tasks/dino.py) plus masked image modelling in which the momentum
teacher is the tokenizer: the student sees the two global crops with blocks
of patches hidden (their embeddings replaced by one learned mask token, the
position kept), the teacher sees them whole, and at every hidden patch the
student's output distribution over the patch prototypes must match the
teacher's centred, sharpened one at the same patch of the same crop. The
[CLS] token keeps DINO's loss across crops (the student's [CLS] of a global
crop is that of its masked view, as in the reference); local crops are not
masked and get only the [CLS] loss. Total: cls + `patch_loss_weight` x patch
(the reference's lambda1 = lambda2 = 1; lambda1 is fixed at 1 here).

Details that matter:
- Masks (`block_masking.py`): BEiT's blockwise masks, per global crop from
  its own key: half of the crops are masked at all, at a ratio uniform in
  0.1-0.5 of their patches.
- Patch loss (`masked_patch_loss`): per crop, the cross-entropy averaged over
  its hidden patches only (an unmasked crop counts 0), then the mean over
  crops and images, as the reference's `iBOTLoss` divides by the masked count
  of each image (at least 1) and then takes the batch mean.
- Patch centre and temperatures: a running centre of the teacher's patch
  outputs of its own (over every patch of both global crops, momentum
  `center_momentum` as the [CLS] centre), and a teacher patch temperature
  warming from `warmup_teacher_patch_temperature` (0.04) to
  `teacher_patch_temperature` (0.07) over the same fraction of the run as the
  [CLS] one.
- The head (`IBOTHead`): DINO's head runs on every token (the MLP and the l2
  normalisation are always shared, as in the reference's `iBOTHead`); with
  `shared_head` the patch tokens also share the [CLS] prototypes (then
  `patch_out_dim` must equal `out_dim`), else they have their own
  weight-normalised prototypes of `patch_out_dim`. The teacher's head is the
  EMA of the student's in both cases; the reference's default pairs a
  separate student patch layer with a shared TEACHER head
  (`--shared_head_teacher true`), whose patch prototypes are then the
  teacher's [CLS] ones: not reproduced (its recipes set shared_head true).
- The DINOv2 options (Oquab et al. 2023), off by default:
  `koleo_weight` > 0 adds the KoLeo regulariser (Sablayrolles et al. 2019) on
  the student's [CLS] embeddings (the encoder's pooled class token), one term
  per global crop, summed as DINOv2 does; DINOv2 computes it within each
  GPU's share of the batch, here over the global batch (the loss must not
  depend on the device count). `centering="sinkhorn"` replaces the running
  centres by Sinkhorn-Knopp codes of the teacher's outputs over the global
  batch (`losses.sinkhorn_knopp`, epsilon = the teacher temperature, 3
  iterations): for [CLS], both global crops of every image; for patches, the
  hidden patches only, as DINOv2 assigns them. The running centres are then
  neither used nor updated.
- Features for the probe: the TEACHER's encoder (its class token), as DINO.
- Left out, as in tasks/dino.py: the weight-decay schedule (0.04 -> 0.4),
  the student's stochastic depth (drop_path 0.1), the reference's
  `norm_last_layer=False` (its ViT-S recipe trains the prototypes' norms;
  here they are fixed to 1, the reference's default), the reference's
  `pred_start_epoch` (masking from the first step, its ViT setting).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import losses
from ssl_jax.models.vit import patchify
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import collapse_metrics
from ssl_jax.tasks.block_masking import BlockMasking
from ssl_jax.tasks.dino import Center, DINOHead, DINOTask, prototype_layer, warmed_up

CENTERINGS = ("running", "sinkhorn")


# ----------------------------------------------------------------------------- losses
def masked_patch_loss(
    student: jax.Array,
    targets: jax.Array,
    hidden: jax.Array,
    student_temperature: float = 0.1,
) -> jax.Array:
    """iBOT's masked patch loss (the reference's `iBOTLoss`, its `loss2`).

    student: [G, B, N, K] the student's patch logits of the G masked global
    crops; targets: [G, B, N, K] the teacher's patch distributions of the same
    crops unmasked (no gradient); hidden: bool [G, B, N], the patches the
    student did not see. Per crop: -sum_k P_t log softmax(s / tau_s)_k
    averaged over its hidden patches (a crop with none counts 0: its sum is
    divided by max(count, 1)); then the mean over every crop of every image.
    Visible patches contribute nothing, not even a gradient. float32."""
    log_probs = jax.nn.log_softmax(student.astype(jnp.float32) / student_temperature, axis=-1)
    targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
    cross_entropy = -jnp.sum(targets * log_probs, axis=-1)
    weights = hidden.astype(jnp.float32)
    per_crop = jnp.sum(cross_entropy * weights, axis=-1) / jnp.maximum(jnp.sum(weights, -1), 1.0)
    return jnp.mean(per_crop)


def koleo_loss(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """KoLeo (Sablayrolles et al., "Spreading vectors for similarity search",
    ICLR 2019) as DINOv2 computes it: on the l2-normalised rows of x [N, D],
    minus the mean log distance of each row to its nearest other row,
    -1/N sum_i log(||x_i - x_nn(i) + eps|| + eps) (torch's PairwiseDistance
    adds eps to the difference). Nearest by cosine; float32."""
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    cosines = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    cosines = jnp.where(jnp.eye(x.shape[0], dtype=bool), -2.0, cosines)  # never itself
    nearest = x[jnp.argmax(cosines, axis=1)]
    distance = jnp.linalg.norm(x - nearest + eps, axis=-1)
    return -jnp.mean(jnp.log(distance + eps))


# ----------------------------------------------------------------------------- head
class IBOTHead(DINOHead):
    """DINO's head over every token: the [CLS] token to the prototypes, the
    patch tokens to their own prototypes or (shared) to the same ones."""

    def __init__(self, in_dim: int, out_dim: int, *, patch_out_dim: int | None = None, **kwargs):
        super().__init__(in_dim, out_dim, **kwargs)
        self.patch_prototypes = (
            None
            if patch_out_dim is None
            else prototype_layer(self.prototypes.in_features, patch_out_dim, rngs=kwargs["rngs"])
        )

    def tokens(self, tokens: jax.Array, *, train: bool):
        """Encoder tokens [B, 1 + N, D] ([CLS] first) -> ([CLS] logits [B, K],
        patch logits [B, N, K_patch])."""
        z = self.embed(tokens, train=train)
        patch_layer = self.prototypes if self.patch_prototypes is None else self.patch_prototypes
        return self.logits(z[:, 0], self.prototypes), self.logits(z[:, 1:], patch_layer)


# ----------------------------------------------------------------------------- task
class IBOTTask(DINOTask):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        out_dim: int = 8192,
        patch_out_dim: int | None = None,
        shared_head: bool = True,
        warmup_teacher_patch_temperature: float = 0.04,
        teacher_patch_temperature: float = 0.07,
        patch_loss_weight: float = 1.0,
        mask_ratio: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        mask_aspect: Sequence[float] = (0.3, 1 / 0.3),
        mask_min_patches: int | None = None,
        koleo_weight: float = 0.0,
        centering: str = "running",
        sinkhorn_iterations: int = 3,
        **dino_kwargs,
    ):
        if not hasattr(encoder, "encode_tokens") or encoder.num_prefix_tokens != 1:
            raise ValueError(
                "iBOT distils a ViT's class token and its patch tokens, got "
                f"{type(encoder).__name__} without both: use encoder=vit with pool='cls'."
            )
        if shared_head and patch_out_dim not in (None, out_dim):
            raise ValueError(
                f"iBOT's shared head gives the patches the [CLS] prototypes: patch_out_dim "
                f"({patch_out_dim}) must be None or out_dim ({out_dim})."
            )
        if centering not in CENTERINGS:
            raise ValueError(f"iBOT's centering must be one of {CENTERINGS}, got {centering!r}.")
        if min(warmup_teacher_patch_temperature, teacher_patch_temperature) <= 0:
            raise ValueError("iBOT's patch temperatures must be > 0.")
        if patch_loss_weight < 0 or koleo_weight < 0 or sinkhorn_iterations < 1:
            raise ValueError(
                "iBOT needs patch_loss_weight >= 0, koleo_weight >= 0 and sinkhorn_iterations "
                f">= 1, got {patch_loss_weight}, {koleo_weight}, {sinkhorn_iterations}."
            )
        # Read by make_head, which DINOTask's constructor calls.
        self.shared_head = bool(shared_head)
        self.patch_out_dim = int(out_dim if patch_out_dim is None else patch_out_dim)
        super().__init__(encoder, rngs=rngs, out_dim=out_dim, **dino_kwargs)
        # Zeros and weight-decayed (2-D), as the reference's `masked_embed`;
        # the student's alone (the teacher never sees a masked patch).
        self.mask_token = nnx.Param(jnp.zeros((1, encoder.embed_dim), jnp.float32))
        self.patch_center = Center(jnp.zeros((1, self.patch_out_dim), jnp.float32))
        self.patch_temperatures = (
            float(warmup_teacher_patch_temperature),
            float(teacher_patch_temperature),
        )
        self.masking = BlockMasking(
            ratio=tuple(float(r) for r in mask_ratio),
            probability=float(mask_probability),
            aspect=tuple(float(a) for a in mask_aspect),
            min_patches=mask_min_patches,
        )
        self.patch_loss_weight = float(patch_loss_weight)
        self.koleo_weight = float(koleo_weight)
        self.centering = centering
        self.sinkhorn_iterations = int(sinkhorn_iterations)

    def make_head(self, in_dim, out_dim, **kwargs):
        patch_out_dim = None if self.shared_head else self.patch_out_dim
        return IBOTHead(in_dim, out_dim, patch_out_dim=patch_out_dim, **kwargs)

    def teacher_patch_temperature(self) -> jax.Array:
        start, end = self.patch_temperatures
        return warmed_up(start, end, self.temperatures[3], self.progress[...])

    def hidden_patches(self, rng: jax.Array, batch_size: int, grid) -> jax.Array:
        """bool [2 * B, N]: the hidden patches of each global crop (view-major,
        as the views), crop v's masks from fold_in(rng, v)."""
        masks = [self.masking.sample(jax.random.fold_in(rng, v), batch_size, grid) for v in (0, 1)]
        return jnp.concatenate(masks)

    def targets(self, teacher_cls, teacher_patch, hidden):
        """The teacher's [CLS] [2, B, K] and patch [2, B, N, Kp] target
        distributions: centred and sharpened, or Sinkhorn codes."""
        temperature, patch_temperature = (
            self.teacher_temperature(),
            self.teacher_patch_temperature(),
        )
        if self.centering == "running":
            cls = jax.nn.softmax((teacher_cls - self.center[...]) / temperature, axis=-1)
            patch = (teacher_patch - self.patch_center[...]) / patch_temperature
            return cls, jax.nn.softmax(patch, axis=-1)
        sinkhorn = {"iterations": self.sinkhorn_iterations}
        k, kp = teacher_cls.shape[-1], teacher_patch.shape[-1]
        cls = losses.sinkhorn_knopp(teacher_cls.reshape(-1, k), epsilon=temperature, **sinkhorn)
        patch = losses.sinkhorn_knopp(
            teacher_patch.reshape(-1, kp),
            epsilon=patch_temperature,
            valid=hidden.reshape(-1),
            **sinkhorn,
        )
        return cls.reshape(teacher_cls.shape), patch.reshape(teacher_patch.shape)

    def loss(self, batch, rng, *, train):
        n = batch["image"].shape[0]
        view_rng, mask_rng = jax.random.split(rng)
        views = self.augment(batch, view_rng, train=train)
        grid = self.encoder.grid(views["image"])
        patches = patchify(views["image"], self.encoder.patch_size)
        hidden = self.hidden_patches(mask_rng, n, grid)

        tokens = self.encoder.encode_tokens(
            patches, None, grid, hidden=hidden, mask_token=self.mask_token[...]
        )
        student_cls, student_patch = self.head.tokens(tokens, train=train)
        student_cls = [student_cls]
        if "local" in views:  # unmasked, [CLS] only
            local = self.encoder(views["local"], train=train)
            student_cls.append(self.head(local, train=train))
        student_cls = jnp.concatenate(student_cls).reshape(-1, n, self.center.shape[-1])

        teacher_tokens = self.teacher.encoder.encode_tokens(patches, None, grid)
        teacher_cls, teacher_patch = self.teacher.head.tokens(teacher_tokens, train=train)
        teacher_cls = jax.lax.stop_gradient(teacher_cls.reshape(2, n, -1))
        teacher_patch = jax.lax.stop_gradient(teacher_patch.reshape(2, n, *teacher_patch.shape[1:]))
        hidden = hidden.reshape(2, n, -1)
        cls_targets, patch_targets = self.targets(teacher_cls, teacher_patch, hidden)

        student_temperature = self.temperatures[0]
        cls_loss = losses.dino_cross_entropy(student_cls, cls_targets, student_temperature)
        patch_loss = masked_patch_loss(
            student_patch.reshape(teacher_patch.shape), patch_targets, hidden, student_temperature
        )
        loss = cls_loss + self.patch_loss_weight * patch_loss
        embeddings = self.encoder.pool_tokens(tokens)  # the student's [CLS] of each masked crop
        metrics = {
            "cls_loss": cls_loss,
            "patch_loss": patch_loss,
            "masked_fraction": jnp.mean(hidden),
            "teacher_temperature": self.teacher_temperature(),
            "teacher_patch_temperature": self.teacher_patch_temperature(),
        }
        if self.koleo_weight:
            koleo = koleo_loss(embeddings[:n]) + koleo_loss(embeddings[n:])
            metrics["koleo_loss"] = koleo
            loss = loss + self.koleo_weight * koleo
        if train and self.centering == "running":
            momentum = self.center_momentum
            self.center[...] = losses.dino_update_center(self.center[...], teacher_cls, momentum)
            # The mean over every patch of both crops (the reference's center2).
            patch_mean = jnp.mean(teacher_patch.astype(jnp.float32), axis=(0, 1, 2))
            self.patch_center[...] = momentum * self.patch_center[...] + (1 - momentum) * patch_mean
        return loss, {**metrics, **collapse_metrics(embeddings[:n])}


@TASKS.register("ibot")
def ibot(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> IBOTTask:
    return IBOTTask(encoder, rngs=rngs, **kwargs)
