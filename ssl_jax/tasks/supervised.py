"""Supervised training on the dataset's labels: the baseline the pretext tasks
are measured against ("how far are we from using every label?").

It is a task like the others, so the same loop, checkpoints and probe apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.models.heads import MLPHead
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import Task, classification_loss


class SupervisedTask(Task):
    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        num_classes: int,
        head_hidden_dims: Sequence[int] = (),
        crop_padding: int = 2,
        flip: bool = True,
    ):
        self.encoder = encoder
        self.head = MLPHead(encoder.feature_dim, tuple(head_hidden_dims), num_classes, rngs=rngs)
        self.crop_padding = crop_padding
        self.flip = flip

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> normalised images, cropped and flipped when training."""
        images = augment.to_float(batch["image"])
        if train:
            images = augment.crop_and_flip_batch(
                rng, images, crop_padding=self.crop_padding, flip=self.flip
            )
        return {"image": augment.normalize(images)}

    def loss(self, batch, rng, *, train):
        if "label" not in batch:
            raise ValueError("The supervised task needs a dataset with labels.")
        features = self.encoder(self.augment(batch, rng, train=train)["image"], train=train)
        return classification_loss(self.head(features, train=train), batch["label"])

    def logits(self, images):
        """Class scores of un-augmented uint8 images: the trained classifier itself,
        for scoring a model trained from scratch on few labels."""
        return self.head(self.features(images), train=False).astype(jnp.float32)


@TASKS.register("supervised")
def supervised(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> SupervisedTask:
    return SupervisedTask(encoder, rngs=rngs, **kwargs)
