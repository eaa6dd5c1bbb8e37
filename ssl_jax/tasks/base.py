"""The whole interface between a pretext task and the rest of ssl_jax.

A task is an `nnx.Module` holding an encoder and its own heads, built by a
constructor registered with `ssl_jax.registry.TASKS`:

    @TASKS.register("name")
    def name(encoder, *, rngs, **task_kwargs) -> Task: ...

`config.task_kwargs` are the keyword arguments. Subclass `Task` and define:

Required
- `augment(batch, rng, *, train=True) -> dict of arrays`: the task's input
  pipeline on the device: uint8 batch -> what the networks see (views,
  rotations, crops). It has no parameters, so the benchmark can time it
  apart from the rest of the step.
- `loss(batch, rng, *, train) -> (scalar loss, dict of scalar metrics)`: calls
  `augment` first. `batch` is a dict of global arrays: the dataset's inputs
  under its `input_key` (image tasks: `image` uint8 [B, H, W, C]; masked
  words: `tokens` int32 [B, T]; missing frames: `video` uint8
  [B, T, H, W, C]; masked spectrograms: `audio` int16 [B, S]), and `label`
  int32 [B] when the dataset has labels;
  `rng` is derived by the loop from (seed, step), and per-example keys from it
  with `augment.example_keys`, so draws survive a resume and do not depend on
  the device count. The loop knows nothing else about the task. Losses and
  metrics are float32 whatever the compute dtype.

Provided (override when the default is wrong for the task)
- `features(inputs) -> [B, D] float32`: frozen, deterministic features of a
  batch of the dataset's inputs for every evaluator (linear probe, kNN, ...),
  for `ssl_jax.load_encoder` and for exports (`ssl_jax/inference.py` is the
  one caller); the default reads uint8 images: the `feature_encoder()` on the
  normalised image, batch norm in inference mode. Tasks of other modalities
  override it. It reads no variable outside `feature_encoder()`: an export
  holds only that encoder.
- `feature_maps(inputs) -> [B, h, w, D] float32`: the spatial counterpart
  of `features`, for dense evaluators (the segmentation probe): the same
  inputs, the same `feature_encoder()`, its `feature_map` instead of its
  pooled output. The default reads uint8 images as `features` does; a task
  whose `features` prepares images otherwise (colorization's lightness,
  jigsaw's standardisation) overrides both alike. Encoders without a spatial
  map (text, clips) have none: a TypeError.
- `feature_input`: a `FeatureInput`, what `features` takes (its batch key,
  dtype, axes and value convention); exports write it into their header and a
  loaded encoder refuses other input. Default `IMAGES`; a task of another
  modality sets its own beside its `features`.
- `feature_encoder() -> nnx.Module`: the encoder the features come from (and
  that `ssl_jax.export_encoder` exports): `self.encoder`, or DINO's teacher.
- `host_crops(image_size) -> {batch key: crop specs} | None`: what streamed
  data (`data/streaming.py`) crops from each ORIGINAL image on the host,
  before the batch reaches the device (`data/decode.CropSpec`); None (the
  default) is the centre square at `image_size`, as the in-memory data holds
  it. Tasks whose augmentation starts with random-resized crops return them,
  so crops come from the full-resolution original as in the papers; their
  `augment` then receives the key as [B, views, S, S, C] and does not crop
  again (`augmented_views` handles both layouts).
- `trainable`: an `nnx` filter of the variables the optimizer trains (default
  every `nnx.Param`). Everything else (batch-norm statistics, a momentum
  teacher, DINO's centre) is "model state": carried through the step,
  checkpointed, never given gradients or weight decay.

Optional hooks (the base versions do nothing; `implements(task, name)` tells
whether a task overrides one)
- `after_update(step, total_steps)`: called inside the compiled step after the
  optimizer update, with the new parameters in place; updates model state that
  is not trained by gradients (an EMA teacher) and may rewrite parameters
  (SwAV projects its prototypes back to unit norm); the loop keeps both.
  `step` counts from 1.
- `visualize(batch, rng) -> uint8 [H, W, 3]`: a picture of what the task does
  on a few fixed examples (MAE's reconstructions), saved at every checkpoint.
- `logits(images) -> [B, num_classes] float32`: a task with its own classifier
  (the supervised baseline) scores un-augmented images with it.

The encoder contract, which every model in `ssl_jax/models` follows and every
task relies on:
- `encoder(x, *, train) -> [B, encoder.feature_dim]`: float images
  [B, H, W, C] (NHWC, roughly in [-1, 1], see `augment.normalize`) to pooled
  features, no classifier head;
- `encoder.feature_map(x, *, train) -> [B, h, w, feature_dim]`: the spatial
  map before pooling (the last convolutional stage; a ViT's patch tokens on
  their grid), for dense pretext tasks (colorization); `encoder.in_channels`:
  the channels C it was built for (`model_kwargs.in_channels`, default 3);
- `train=True` uses batch statistics (and updates the running averages),
  `train=False` only the running averages, so evaluation is per example;
  there is no `axis_name`: the loop jits over globally sharded arrays, so
  batch statistics already cover the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssl_jax.data import augment, decode
from ssl_jax.evaluate import collapse

HOOKS = ("after_update", "visualize", "logits")


@dataclasses.dataclass(frozen=True)
class FeatureInput:
    """What a task's `features` takes, said once for the evaluators, exports
    and loaded encoders alike."""

    key: str  # the batch key the dataset delivers it under (`input_key`)
    dtype: str  # numpy's name; an integer dtype accepts integers within its range
    axes: tuple[str | int, ...]  # "N" first; a number is a size the input must have
    values: str  # what the values are and what `features` does to them first

    def describe(self) -> str:
        return f"{self.key}: {self.dtype} [{', '.join(map(str, self.axes))}], {self.values}"

    def check(self, inputs) -> np.ndarray:
        """`inputs` as this dtype; a one-line ValueError naming the expected
        input if they are something else (images given to a text encoder)."""
        inputs = np.asarray(inputs)
        expected = np.dtype(self.dtype)
        # Token ids arrive as int64 as often as int32: any integers are taken
        # if they fit, but a cast must never wrap (16-bit pixels into uint8).
        same_kind = inputs.dtype == expected or (
            np.issubdtype(expected, np.integer)
            and np.issubdtype(inputs.dtype, np.integer)
            and (
                inputs.size == 0
                or np.iinfo(expected).min <= inputs.min() <= inputs.max() <= np.iinfo(expected).max
            )
        )
        sizes = zip(self.axes, inputs.shape, strict=False)
        if (
            not same_kind
            or inputs.ndim != len(self.axes)
            or any(isinstance(axis, int) and axis != size for axis, size in sizes)
        ):
            raise ValueError(
                f"This encoder takes {self.describe()}; got {inputs.dtype} {list(inputs.shape)}."
            )
        return inputs.astype(expected, copy=False)


IMAGES = FeatureInput(
    "image", "uint8", ("N", "H", "W", 3), "RGB 0-255, scaled to x / 255, then (x - 0.5) / 0.5"
)


class Task(nnx.Module):
    """Base class of every task; see the module docstring for the contract."""

    encoder: nnx.Module
    trainable = nnx.Param
    feature_input: ClassVar[FeatureInput] = IMAGES

    def augment(self, batch: dict, rng: jax.Array, *, train: bool = True) -> dict:
        raise TypeError(f"{type(self).__name__} must define augment(batch, rng, *, train).")

    def loss(
        self, batch: dict, rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise TypeError(f"{type(self).__name__} must define loss(batch, rng, *, train).")

    def host_crops(self, image_size: int) -> dict[str, tuple[decode.CropSpec, ...]] | None:
        """Crops of each original image that streamed data delivers (see above)."""
        return None

    def feature_encoder(self) -> nnx.Module:
        """The encoder evaluators read (and exports hold)."""
        return self.encoder

    def features(self, images: jax.Array) -> jax.Array:
        """Encoder features of un-augmented images, batch-norm in inference mode."""
        encoder = self.feature_encoder()
        features = encoder(augment.normalize(augment.to_float(images)), train=False)
        return features.astype(jnp.float32)  # bfloat16 compute still hands evaluators float32

    def feature_maps(self, images: jax.Array) -> jax.Array:
        """The encoder's spatial map of un-augmented images, batch-norm in inference mode."""
        return spatial_features(self.feature_encoder(), augment.normalize(augment.to_float(images)))

    # Optional hooks: the loop and the evaluators call them only when a task
    # overrides them (`implements`).

    def after_update(self, step: jax.Array, total_steps: int) -> None:
        """Update non-gradient model state (or project parameters) after the optimizer step."""

    def visualize(self, batch: dict, rng: jax.Array) -> jax.Array:
        """uint8 [H, W, 3] picture of the task on `batch`."""
        raise TypeError(f"{type(self).__name__} draws no pictures.")

    def logits(self, images: jax.Array) -> jax.Array:
        """Class scores of un-augmented uint8 images by the task's own classifier."""
        raise TypeError(f"{type(self).__name__} has no classifier of its own.")


class JointEmbeddingTask(Task):
    """The shared opening of the two-view (joint-embedding) methods: SimCLR,
    BYOL, SimSiam, MoCo v3, Barlow Twins and VICReg, as solo-learn's
    `BaseMethod` gives its methods theirs.

    It owns the views (`views`: one augmentation recipe per view, cropped on
    the host when data is streamed), their augmentation, the network call
    over the views and an optional online linear probe. A method sets them up
    with `init_views` and writes only its heads and its loss.

    - Batch norm over one view or all: `forward_views` runs a network over
      the views as `joint_views` says. False (the default): on each view's
      rows separately, so batch-norm statistics are those of one view, as the
      BYOL, SimSiam, MoCo v3, Barlow Twins and VICReg references compute them
      (each view through the backbone on its own). True: one call over all
      views, so the statistics cover every view of the batch, as SimCLR's
      reference does (google-research/simclr concatenates the views).
    - Online probe (`num_classes > 0`; `None` in a config is filled with the
      dataset's class count): a linear classifier on the stop-gradient
      features of the first view, trained with the method; its loss is added
      to the total but cannot reach the encoder. It tracks the
      representation's quality during pretraining (BYOL's reference does it).
    """

    # Whether `forward_views` makes one network call over all views (see above).
    joint_views: bool = False

    def init_views(self, encoder, views, *, rngs: nnx.Rngs, count: int = 2, num_classes=0):
        if len(views) != count:
            raise ValueError(f"{type(self).__name__} needs {count} views, got {len(views)}.")
        self.encoder = encoder
        self.views = view_recipes(views)
        self.online_probe = (
            nnx.Linear(encoder.feature_dim, num_classes, rngs=rngs) if num_classes else None
        )

    def host_crops(self, image_size):
        return view_crops(self.views, image_size)

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the normalised views, stacked [V * B, H, W, C].
        The views are random even when not training: they are the task."""
        del train
        return {"image": augmented_views(rng, batch["image"], self.views)}

    def forward_views(self, network, x):
        """`network` over the views `x` ([V * B, ...], view 0 first): one call
        on all rows if `joint_views`, else `network(rows)` on each view's rows,
        concatenated; outputs may be a tuple of arrays."""
        if self.joint_views:
            return network(x)
        outputs = [network(rows) for rows in jnp.split(x, len(self.views))]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)

    def finish(self, loss, metrics, features, batch):
        """The loss and metrics with the collapse monitor on the first view's
        features and, when there is one, the online probe's loss added."""
        n = features.shape[0] // len(self.views)
        metrics = {**metrics, **collapse_metrics(features[:n])}
        if self.online_probe is not None and "label" in batch:
            frozen = jax.lax.stop_gradient(features[:n])
            probe_loss, probe = classification_loss(self.online_probe(frozen), batch["label"])
            metrics["online_probe_loss"] = probe_loss
            metrics["online_probe_accuracy"] = probe["accuracy"]
            loss = loss + probe_loss
        return loss, metrics


def spatial_features(encoder: nnx.Module, x: jax.Array) -> jax.Array:
    """`encoder.feature_map(x, train=False)` in float32; a TypeError naming
    the encoder when it has no spatial map."""
    if not hasattr(encoder, "feature_map"):
        raise TypeError(f"{type(encoder).__name__} has no feature_map: no spatial features.")
    return encoder.feature_map(x, train=False).astype(jnp.float32)


def implements(task: nnx.Module | type, hook: str) -> bool:
    """Whether `task` (or its class) overrides the optional `hook`."""
    if hook not in HOOKS:
        raise ValueError(f"Unknown task hook {hook!r}; hooks are {HOOKS}.")
    cls = task if isinstance(task, type) else type(task)
    return getattr(cls, hook) is not getattr(Task, hook)


def classification_loss(
    logits: jax.Array, labels: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean softmax cross-entropy and top-1 accuracy, in float32 whatever the
    compute dtype of the logits."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"accuracy": accuracy}


def view_recipes(views) -> tuple[augment.ViewRecipe, ...]:
    """Config dicts (fields of `augment.ViewRecipe`, one per view) as recipes;
    tuples, so a module can keep them as static attributes."""
    known = {field.name for field in dataclasses.fields(augment.ViewRecipe)}
    recipes = []
    for view in views:
        fields = view.to_dict() if hasattr(view, "to_dict") else dict(view)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"Unknown view fields {unknown}; known: {sorted(known)}.")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        recipes.append(augment.ViewRecipe(**fields))
    return tuple(recipes)


def augmented_views(rng: jax.Array, images: jax.Array, recipes) -> jax.Array:
    """uint8 [B, H, W, C] -> the normalised views [V * B, h, w, C], view 0 of
    every image first; view v's draws come from fold_in(rng, v) and the
    example's index, so they do not depend on the batch or device count.

    uint8 [B, V, S, S, C] (views already cropped on the host from the original
    images, see `view_crops`): view v is `images[:, v]`, augmented without a
    second crop."""
    images = augment.to_float(images)
    if images.ndim == 5:
        inputs = [images[:, v] for v in range(images.shape[1])]
        # The whole square at its own size: the crop is the identity.
        whole = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "size": None}
        recipes = [dataclasses.replace(recipe, **whole) for recipe in recipes]
    else:
        inputs = [images] * len(recipes)
    # The loop shards the batch over every device; saying so lets a CPU cut
    # it into steps along the shards, so no device gathers another's images.
    views = [
        augment.view_batch(jax.random.fold_in(rng, v), x, recipe, devices=jax.device_count())
        for v, (x, recipe) in enumerate(zip(inputs, recipes, strict=True))
    ]
    return augment.normalize(jnp.concatenate(views))


def view_crops(recipes, image_size: int) -> dict[str, tuple[decode.CropSpec, ...]]:
    """`Task.host_crops` of a task whose views follow `recipes`: each view's
    random-resized crop, taken on the host from the original image."""
    specs = []
    for recipe in recipes:
        size = recipe.size or image_size
        if not isinstance(size, int):
            raise ValueError(f"Host crops are square; got the view size {size}.")
        specs.append(decode.CropSpec(size, tuple(recipe.crop_scale), tuple(recipe.crop_ratio)))
    return {"image": tuple(specs)}


# Rows of the batch the collapse monitor looks at: its SVD must stay a small
# part of the step at ImageNet batch sizes.
_MONITOR_ROWS = 512


def collapse_metrics(embeddings: jax.Array) -> dict[str, jax.Array]:
    """The collapse monitor every task logs (`evaluate/collapse.py`): the
    per-dimension std of the l2-normalised embeddings (about 1/sqrt(D) when
    healthy, 0 when collapsed) and their effective rank (RankMe), on at most
    the first 512 rows, without gradients; the rank also as a fraction of its
    maximum."""
    z = jax.lax.stop_gradient(embeddings[:_MONITOR_ROWS]).astype(jnp.float32)
    rank = collapse.effective_rank(z)
    return {
        "embedding_std": collapse.normalized_std(z),
        "effective_rank": rank,
        # Of the largest rank possible, min(N, D): what `CollapseWatch` reads.
        "effective_rank_fraction": rank / min(z.shape),
    }
