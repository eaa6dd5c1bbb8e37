"""The interface between a pretext task and the shared training loop.

A task is an `nnx.Module` that holds the encoder and its own heads, and
answers two questions:

- `loss(batch, rng, train=...) -> (scalar loss, dict of scalar metrics)`:
  `batch` is a dict of global arrays (for image tasks `image`: uint8
  `[B, H, W, C]`, and `label` when the dataset has labels). The task does its
  own augmentation inside, from `rng`, which the loop derives from
  (seed, step). The loop knows nothing else about the task.
- `features(images) -> [B, D]`: frozen, deterministic features of uint8 images
  for the evaluators (linear probe, ...).
- `augment(batch, rng, train=True) -> dict of arrays`: the input pipeline on
  the device (uint8 batch -> the normalised views the encoder sees), which
  `loss` calls first. It has no parameters, so the benchmark can time it
  apart from the rest of the step.

Tasks register a constructor `fn(encoder, *, rngs, **task_kwargs) -> Task`
with `ssl_jax.registry.TASKS`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ssl_jax.data import augment


class Task(nnx.Module):
    """Shared behaviour of image tasks. Subclasses set `self.encoder` and define
    `loss(self, batch, rng, *, train) -> (loss, metrics)`."""

    encoder: nnx.Module

    def features(self, images: jax.Array) -> jax.Array:
        """Encoder features of un-augmented images, batch-norm in inference mode."""
        features = self.encoder(augment.normalize(augment.to_float(images)), train=False)
        return features.astype(jnp.float32)  # bfloat16 compute still hands evaluators float32


def classification_loss(
    logits: jax.Array, labels: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean softmax cross-entropy and top-1 accuracy, in float32 whatever the
    compute dtype of the logits."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"accuracy": accuracy}
