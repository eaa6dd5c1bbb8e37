"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018).

Every image of the batch is shown at 0, 90, 180 and 270 degrees and a head
classifies which rotation it sees. To tell the orientation of an object, the
encoder has to recognise the object, which is what the probe then reuses.

Details that matter:
- All four rotations of an image are in the same batch (the paper found this
  better than one random rotation per image); the effective batch is 4x.
- Rotations are exact pixel permutations and the crop only translates, so
  no interpolation artefact differs between rotations for the network to
  cheat with.
- Images must be square, or the rotated copies would not stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.models.heads import MLPHead
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, classification_loss, collapse_metrics

NUM_ROTATIONS = 4


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, H, W, C] -> the 4B rotated copies and their labels (quarter turns).

    Copies are grouped by rotation: rows [kB, (k+1)B) are turned k times.
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"Rotation prediction needs square images, got {images.shape[1:3]}.")
    rotated = jnp.concatenate(
        [jax.vmap(augment.rotate90, in_axes=(0, None))(images, k) for k in range(NUM_ROTATIONS)]
    )
    labels = jnp.repeat(jnp.arange(NUM_ROTATIONS), images.shape[0])
    return rotated, labels


class RotationTask(Task):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        head_hidden_dims: Sequence[int] = (),
        crop_padding: int = 2,
        flip: bool = True,
    ):
        self.encoder = encoder
        self.head = MLPHead(encoder.feature_dim, tuple(head_hidden_dims), NUM_ROTATIONS, rngs=rngs)
        self.crop_padding = crop_padding
        self.flip = flip

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the 4B rotated copies (cropped and flipped when
        training), normalised, and their rotation labels."""
        images = augment.to_float(batch["image"])
        if train:
            images = augment.crop_and_flip_batch(
                rng, images, crop_padding=self.crop_padding, flip=self.flip
            )
        rotated, labels = rotate_batch(images)
        return {"image": augment.normalize(rotated), "label": labels}

    def loss(self, batch, rng, *, train):
        inputs = self.augment(batch, rng, train=train)
        features = self.encoder(inputs["image"], train=train)
        loss, metrics = classification_loss(self.head(features, train=train), inputs["label"])
        # Rows [0, B) are the unrotated images.
        monitor = collapse_metrics(features[: batch["image"].shape[0]])
        return loss, {"rotation_accuracy": metrics["accuracy"], **monitor}


@TASKS.register("rotation")
def rotation(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> RotationTask:
    return RotationTask(encoder, rngs=rngs, **kwargs)
