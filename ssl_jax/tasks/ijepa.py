"""I-JEPA (Assran et al., "Self-Supervised Learning from Images with a
Joint-Embedding Predictive Architecture", CVPR 2023).

From one context block of an image, a narrow ViT predictor predicts the
representations that a target encoder gives several target blocks of the same
image. No pixels are reconstructed and there are no hand-made augmentations:
the views are blocks of patches of one (random-resized) crop.

- Context encoder: the trained ViT (`encoder`), run on the context patches
  only. Target encoder: its exponential moving average (`teacher.encoder`),
  run on the whole image; momentum 0.996 -> 1 LINEARLY over the run (the
  reference's schedule, not BYOL's cosine), as a fraction of `total_steps`.
- Masks (`multiblock_masks`), per example from its own key: `num_targets`
  target blocks of scale 0.15-0.2 of the patches and aspect ratio
  0.75-1.5, one context block of scale 0.85-1.0 (aspect 1) from which every
  target patch is removed. A block's size is the reference's
  (`src/masks/multiblock.py`): k = floor(N * scale) patches, h =
  round(sqrt(k * aspect)), w = round(sqrt(k / aspect)). Departures: the
  reference draws one target size and one context size per batch (all
  examples and all four targets share them) from a single uniform that sets
  both scale and aspect; here every block draws its own scale and aspect
  independently, as the paper's section 3 describes. The reference never
  places a block on the last row or column (`randint(0, H - h)`) and caps
  h at H - 1; here every position is possible and h may be H. When the
  context keeps `min_keep` patches or fewer, the reference tries another
  context position (20 times), then lets the context overlap targets; here
  the first of `_TRIES` positions that keeps more than `min_keep` is taken,
  else the one that keeps most, and the context never overlaps a target.
- Variable counts under static shapes: the reference truncates every
  example's context (and targets) to the smallest count in the batch, which
  drops patches of the other examples and makes an example's input depend on
  its batch. Here each example's context is padded to the largest context a
  block can have and each target to the largest target block
  (`max_block_area`), and attention masks keep the padding out of every
  key (the context encoder's and the predictor's): every patch is used,
  nothing depends on the batch or the device count. Cost: the context
  encoder runs on the padded length (the largest context block, about the
  whole grid) where the reference's runs on the batch's smallest context,
  roughly half the grid at these scales.
- Predictor (`Predictor`): the context tokens, projected to its own width
  with its own sin-cos positions added, plus one learned mask token per
  target patch carrying that patch's position; one call per target block
  (the context repeated), as the reference does; pre-norm ViT blocks, a
  final norm and a projection back to the encoder's width.
- Loss (`losses.ijepa_loss`): the mean squared error (the paper's; the
  reference code's smooth L1 with `distance="smooth_l1"`) against the target
  encoder's outputs normalised over the feature dimension without learned
  parameters, averaged over the target blocks.
- Features: the TARGET encoder on the whole image, the mean of its patch
  tokens, as the paper evaluates (`features`); `feature_source="context"`
  reads the trained (context) encoder instead. The paper's ViT has no class
  token (`pool="gap"`, the recipes' choice but the digits one). A ViT with one
  (the digits ViT that every config's `encoder=vit` shares) keeps it as one
  more token of both encoders, like a register: it is neither predicted nor
  read by the predictor or the features.
- Left out: the reference's trunc-normal init with depth rescaling (the
  repo's ViT init, Xavier as MAE's, is used for both networks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax import losses
from ssl_jax.data import augment, decode
from ssl_jax.models.vit import Block, layer_norm, linear, patchify, sincos_2d
from ssl_jax.registry import TASKS
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import Task, collapse_metrics

# Context positions tried per example (the reference's 20 tries before it
# relaxes the no-overlap constraint).
_TRIES = 20


# ----------------------------------------------------------------------------- masks
def block_masks(u: jax.Array, grid: tuple[int, int], scale, aspect) -> jax.Array:
    """Blocks of patches from uniforms `u` [..., 4] in [0, 1) (scale, aspect,
    top, left) -> bool [..., gh * gw] (row-major grid, True inside the block).

    k = floor(N * scale) patches, h = round(sqrt(k * aspect)) rows and w =
    round(sqrt(k / aspect)) columns (each at least 1 and at most the grid's),
    the top-left corner uniform over every position where the block fits."""
    gh, gw = grid
    s = scale[0] + u[..., 0] * (scale[1] - scale[0])
    ratio = aspect[0] + u[..., 1] * (aspect[1] - aspect[0])
    k = jnp.floor(gh * gw * s)
    h = jnp.clip(jnp.round(jnp.sqrt(k * ratio)), 1, gh)
    w = jnp.clip(jnp.round(jnp.sqrt(k / ratio)), 1, gw)
    # min(): u * n may round up to n in float32 when u is within an ulp of 1.
    top = jnp.minimum(jnp.floor(u[..., 2] * (gh - h + 1)), gh - h)[..., None, None]
    left = jnp.minimum(jnp.floor(u[..., 3] * (gw - w + 1)), gw - w)[..., None, None]
    rows = jnp.arange(gh, dtype=u.dtype)[:, None]
    cols = jnp.arange(gw, dtype=u.dtype)[None, :]
    h, w = h[..., None, None], w[..., None, None]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.reshape(*u.shape[:-1], gh * gw)


def multiblock_masks(
    rng: jax.Array,
    grid: tuple[int, int],
    *,
    num_targets: int,
    target_scale,
    target_aspect,
    context_scale,
    min_keep: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One example's masks: the context bool [N], the targets bool [M, N] and
    the context block before the targets were removed from it bool [N].

    The targets are `num_targets` independent blocks (they may overlap each
    other). The context block has one size (aspect 1) and `_TRIES` candidate
    positions; with the target patches removed, the first position that
    keeps more than `min_keep` patches is taken, else the one keeping most."""
    target_key, context_key = jax.random.split(rng)
    targets = block_masks(
        jax.random.uniform(target_key, (num_targets, 4)), grid, target_scale, target_aspect
    )
    u = jax.random.uniform(context_key, (_TRIES, 4))
    u = u.at[:, :2].set(u[0, :2])  # one size, _TRIES positions
    blocks = block_masks(u, grid, context_scale, (1.0, 1.0))
    candidates = blocks & ~jnp.any(targets, axis=0)
    counts = jnp.sum(candidates, axis=-1)
    enough = counts > min_keep
    pick = jnp.where(jnp.any(enough), jnp.argmax(enough), jnp.argmax(counts))
    return candidates[pick], targets, blocks[pick]


def sample_masks(rng: jax.Array, batch_size: int, grid: tuple[int, int], **kwargs):
    """`multiblock_masks` of every example from its own key (`example_keys`):
    context bool [B, N], targets bool [B, M, N], context blocks bool [B, N];
    example i's masks depend on (rng, i) alone, not on the batch or the
    device count."""
    keys = augment.example_keys(rng, batch_size)
    return jax.vmap(lambda key: multiblock_masks(key, grid, **kwargs))(keys)


def max_block_area(grid: tuple[int, int], scale, aspect, points: int = 1025) -> int:
    """An upper bound (host side, for static shapes) of the patches in any
    block `block_masks` draws with these ranges.

    h grows and w shrinks with the aspect ratio, so on each interval of a
    fine grid of ratios h is at most its value at the right end and w at the
    left end; rounding half up bounds any rounding of ties. The bound is
    exact but for intervals where both h and w step, which only adds padding."""
    gh, gw = grid
    n = gh * gw
    ratios = np.linspace(aspect[0], aspect[1], points) if aspect[1] > aspect[0] else [aspect[0]] * 2
    ratios = np.asarray(ratios, np.float64)
    best = 1
    # +1e-6: float32 scales may land a hair above the float64 product.
    for k in range(int(np.floor(n * scale[0])), int(np.floor(n * scale[1] + 1e-6)) + 1):
        h = np.clip(np.floor(np.sqrt(k * ratios[1:]) + 0.5), 1, gh)
        w = np.clip(np.floor(np.sqrt(k / ratios[:-1]) + 0.5), 1, gw)
        best = max(best, int(np.max(h * w)))
    return min(best, n)


def first_indices(mask: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """bool [..., N] -> (int [..., length]: the grid indices of the True
    entries in grid order, then of False ones as padding; bool [..., length]:
    which slots are True entries)."""
    order = jnp.argsort(~mask, axis=-1, stable=True)[..., :length]
    valid = jnp.arange(length) < jnp.sum(mask, axis=-1, keepdims=True)
    return order, valid


@dataclasses.dataclass(frozen=True)
class Masking:
    """A task's mask settings (frozen: a static, hashable part of the model)."""

    num_targets: int
    target_scale: tuple[float, float]
    target_aspect: tuple[float, float]
    context_scale: tuple[float, float]
    min_keep: int

    def sample(self, rng: jax.Array, batch_size: int, grid: tuple[int, int]):
        """`sample_masks` with these settings."""
        return sample_masks(rng, batch_size, grid, **dataclasses.asdict(self))

    def lengths(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The padded (static) lengths of a context and of a target block."""
        return (
            max_block_area(grid, self.context_scale, (1.0, 1.0)),
            max_block_area(grid, self.target_scale, self.target_aspect),
        )


def target_spread(tokens: jax.Array, eps: float = 1e-5) -> dict[str, jax.Array]:
    """How much the loss's targets vary, and how much of that is position.

    tokens [B, N, D] (the target encoder's patch tokens), layer-normed over D
    as the loss normalises them (each token then has mean square 1 per
    feature). `target_spread`: their variance over images and positions per
    feature, 1 when tokens are uncorrelated, 0 when every token is the same
    vector (full collapse). `target_position_share`: the part of that
    variance explained by the position alone (the mean token of each
    position over the batch), 1 when the tokens carry no image content: a
    predictor given the target positions can then match them without
    reading the context."""
    z = jax.lax.stop_gradient(tokens).astype(jnp.float32)
    z = (z - jnp.mean(z, -1, keepdims=True)) * jax.lax.rsqrt(jnp.var(z, -1, keepdims=True) + eps)
    centred = z - jnp.mean(z, axis=(0, 1))
    total = jnp.mean(jnp.sum(centred**2, -1))
    positional = jnp.mean(jnp.sum(jnp.mean(centred, axis=0) ** 2, -1))
    return {
        "target_spread": total / z.shape[-1],
        "target_position_share": positional / jnp.maximum(total, 1e-12),
    }


# ----------------------------------------------------------------------------- predictor
class Predictor(nnx.Module):
    """Context tokens + mask tokens at the target positions -> predicted
    target-encoder outputs at those positions (the reference's
    `VisionTransformerPredictor`)."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, num_heads: int, *, rngs: nnx.Rngs):
        self.dim = dim
        self.embed = linear(encoder_dim, dim, rngs=rngs)
        # Trunc-normal 0.02 as the reference's; [1, 1, D], so weight-decayed
        # as the reference's (its filter skips only 1-D parameters and biases).
        init = nnx.initializers.truncated_normal(0.02)
        self.mask_token = nnx.Param(init(rngs.params(), (1, 1, dim)))
        self.blocks = nnx.List([Block(dim, num_heads, rngs=rngs) for _ in range(depth)])
        self.norm = layer_norm(dim, rngs=rngs)
        self.proj = linear(dim, encoder_dim, rngs=rngs)

    def __call__(
        self,
        context: jax.Array,
        context_index: jax.Array,
        context_valid: jax.Array,
        target_index: jax.Array,
        target_valid: jax.Array,
        grid: tuple[int, int],
    ) -> jax.Array:
        """context [B, Kc, E] at grid indices context_index [B, Kc] (valid
        where context_valid); targets at target_index [B, M, Kt] -> [B, M, Kt, E]."""
        b, m, kt = target_index.shape
        pos = jnp.asarray(sincos_2d(self.dim, tuple(grid)))
        x = self.embed(context) + pos[context_index].astype(context.dtype)
        x = jnp.repeat(x, m, axis=0)  # [B * M, Kc, d]: example-major, block-minor
        queries = self.mask_token[...] + pos[target_index.reshape(b * m, kt)]
        x = jnp.concatenate([x, queries.astype(x.dtype)], axis=1)
        keys = jnp.concatenate(
            [jnp.repeat(context_valid, m, axis=0), target_valid.reshape(b * m, kt)], axis=1
        )
        for block in self.blocks:
            x = block(x, keys)
        out = self.proj(self.norm(x[:, context.shape[1] :]))
        return out.reshape(b, m, kt, -1)


# ----------------------------------------------------------------------------- task
def _fraction_pair(name: str, value, upper: float = 1.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0.0 < lo <= hi <= upper:
        raise ValueError(f"task_kwargs.{name} must be 0 < lo <= hi <= {upper}, got {value}.")
    return lo, hi


class IJEPATask(Task):
    trainable = teacher.TRAINABLE

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] = (0.85, 1.0),
        min_keep: int = 10,
        predictor_dim: int = 384,
        predictor_depth: int = 6,
        predictor_heads: int = 12,
        base_momentum: float = 0.996,
        distance: str = "l2",
        crop_scale: Sequence[float] | None = (0.3, 1.0),
        feature_source: str = "target",
    ):
        if not hasattr(encoder, "encode_tokens"):
            raise ValueError(
                f"I-JEPA needs a ViT encoder (with encode_tokens), got {type(encoder).__name__}: "
                "use a ViT encoder family (encoder=vit)."
            )
        if num_targets < 1 or min_keep < 0:
            raise ValueError(
                f"I-JEPA needs num_targets >= 1 and min_keep >= 0, got {num_targets}, {min_keep}."
            )
        if predictor_dim % 4 or predictor_dim % predictor_heads:
            raise ValueError(
                f"task_kwargs.predictor_dim ({predictor_dim}) must be divisible by 4 (2-D sin-cos "
                f"positions) and by predictor_heads ({predictor_heads})."
            )
        if distance not in ("l2", "smooth_l1"):
            raise ValueError(f"task_kwargs.distance must be 'l2' or 'smooth_l1', got {distance!r}.")
        if feature_source not in ("target", "context"):
            raise ValueError(
                f"task_kwargs.feature_source must be 'target' (the paper's) or 'context', "
                f"got {feature_source!r}."
            )
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"task_kwargs.base_momentum must be in [0, 1], got {base_momentum}.")
        self.encoder = encoder
        self.masking = Masking(
            num_targets=int(num_targets),
            target_scale=_fraction_pair("target_scale", target_scale),
            target_aspect=_fraction_pair("target_aspect", target_aspect, upper=np.inf),
            context_scale=_fraction_pair("context_scale", context_scale),
            min_keep=int(min_keep),
        )
        self.crop_scale = None if crop_scale is None else _fraction_pair("crop_scale", crop_scale)
        self.base_momentum = float(base_momentum)
        self.distance = distance
        self.feature_source = feature_source
        self.predictor = Predictor(
            encoder.embed_dim, predictor_dim, predictor_depth, predictor_heads, rngs=rngs
        )
        self.teacher = teacher.Teacher(encoder=encoder)

    def host_crops(self, image_size):
        if self.crop_scale is None:
            return None
        return {"image": (decode.CropSpec(image_size, self.crop_scale),)}

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> normalised images, random-resized-cropped when
        training (unless the host cropped them: [B, 1, H, W, C]); no flip, no
        colour: the masks are the task (sampled in `loss`)."""
        images = augment.to_float(batch["image"])
        cropped = images.ndim == 5
        images = images[:, 0] if cropped else images
        if train and self.crop_scale is not None and not cropped:

            def crop(key, image):
                return augment.random_resized_crop(key, image, scale=self.crop_scale)

            images = jax.vmap(crop)(augment.example_keys(rng, images.shape[0]), images)
        return {"image": augment.normalize(images)}

    def predict(self, images: jax.Array, rng: jax.Array):
        """Model-range images -> (predictions [B, M, Kt, E], target-encoder
        outputs there [B, M, Kt, E], target_valid [B, M, Kt], context_valid
        [B, Kc], the target encoder's patch tokens [B, N, E])."""
        p = self.encoder.patch_size
        grid = self.encoder.grid(images)
        patches = patchify(images, p)
        context, targets, _ = self.masking.sample(rng, patches.shape[0], grid)
        context_len, target_len = self.masking.lengths(grid)
        context_index, context_valid = first_indices(context, context_len)
        target_index, target_valid = first_indices(targets, target_len)

        prefix = self.encoder.num_prefix_tokens  # a class token, if any: not a patch
        full = self.teacher.encoder.encode_tokens(patches, None, grid)[:, prefix:]
        full = jax.lax.stop_gradient(full)
        b, mt, kt = target_index.shape
        target = jnp.take_along_axis(full, target_index.reshape(b, mt * kt, 1), axis=1)
        target = target.reshape(b, mt, kt, -1)

        visible = jnp.take_along_axis(patches, context_index[..., None], axis=1)
        # Padding slots hold other patches: blank them as well as masking them
        # out of attention, so no target pixel can reach the context.
        visible = jnp.where(context_valid[..., None], visible, 0.0)
        tokens = self.encoder.encode_tokens(visible, context_index, grid, context_valid)
        tokens = tokens[:, prefix:]
        pred = self.predictor(
            tokens, context_index, context_valid, target_index, target_valid, grid
        )
        return pred, target, target_valid, context_valid, full

    def loss(self, batch, rng, *, train):
        aug_rng, mask_rng = jax.random.split(rng)
        images = self.augment(batch, aug_rng, train=train)["image"]
        pred, target, target_valid, context_valid, full = self.predict(images, mask_rng)
        loss = losses.ijepa_loss(pred, target, target_valid, distance=self.distance)
        n = int(np.prod(self.encoder.grid(images)))
        metrics = {
            "context_fraction": jnp.mean(jnp.sum(context_valid, axis=-1)) / n,
            "target_fraction": jnp.mean(jnp.sum(target_valid, axis=-1)) / n,
        }
        metrics.update(target_spread(full))
        return loss, {**metrics, **collapse_metrics(jnp.mean(full, axis=1))}

    def after_update(self, step, total_steps):
        # The reference's linear schedule (src/train.py's momentum_scheduler).
        progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
        momentum = self.base_momentum + (1.0 - self.base_momentum) * progress
        teacher.ema_update(self.teacher.encoder, self.encoder, momentum)

    def feature_encoder(self):
        """The target encoder, which the paper evaluates, or with
        feature_source="context" the trained one: in a short run the target,
        an average whose momentum starts at 0.996 and rises to 1, still holds
        about exp(-0.002 T) of its random init after T steps (0.45 at 400)."""
        return self.encoder if self.feature_source == "context" else self.teacher.encoder

    def features(self, images):
        """The target encoder's mean patch token of un-augmented images (a
        class token, if the ViT has one, is left out whatever its `pool`)."""
        encoder = self.feature_encoder()
        x = augment.normalize(augment.to_float(images))
        tokens = encoder.encode_tokens(patchify(x, encoder.patch_size), None, encoder.grid(x))
        return jnp.mean(tokens[:, encoder.num_prefix_tokens :], axis=1).astype(jnp.float32)


@TASKS.register("ijepa")
def ijepa(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> IJEPATask:
    return IJEPATask(encoder, rngs=rngs, **kwargs)
