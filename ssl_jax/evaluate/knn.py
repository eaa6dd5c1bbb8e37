"""k-nearest-neighbour classification of frozen features.

Cosine similarity, and each of the k nearest training examples votes for its
class with weight exp(similarity / temperature) (the weighted kNN of Wu et al.
2018, as used by DINO and solo-learn). It needs no training, so it is cheap
enough to run periodically during pretraining.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _predict(train_x, train_y, test_x, *, num_classes: int, k: int, temperature: float):
    similarity = _normalize(test_x) @ _normalize(train_x).T  # [T, N]
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    # Shifted by each row's best similarity: the same vote ratios, but no
    # overflow (exp(1 / 0.01) is inf in float32, and inf votes tie).
    weights = jnp.exp((top_similarity - top_similarity[:, :1]) / temperature)
    votes = jax.nn.one_hot(train_y[top_index], num_classes) * weights[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_top1(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier on the test features."""
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("knn_top1: features and labels differ in length.")
    if not 1 <= k <= len(train_x):
        raise ValueError(f"knn k must be in [1, {len(train_x)}] (train size), got {k}.")
    if temperature <= 0:
        raise ValueError(f"knn temperature must be > 0, got {temperature}.")
    train_x, train_y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32)
    correct = 0
    for start in range(0, len(test_x), batch_size):  # bounds the [T, N] similarity matrix
        predicted = _predict(
            train_x,
            train_y,
            jnp.asarray(test_x[start : start + batch_size], jnp.float32),
            num_classes=num_classes,
            k=k,
            temperature=temperature,
        )
        correct += int(np.sum(np.asarray(predicted) == test_y[start : start + batch_size]))
    return correct / len(test_y)
