"""Linear probe: multinomial logistic regression on frozen features.

The evaluator sees a features function and datasets, never the model or the
pretext task (STYLE.md, property 6). `linear_probe` extracts features once,
then `fit_linear_probe` standardises them, picks the L2 strength on a
class-stratified holdout of the train split, retrains on the whole train split
and reports test top-1 / top-5.

Objective for one head (W [D, C], b [C]), on standardised features:
    mean_i cross_entropy(x_i W + b, y_i) + l2 * ||W||^2      (bias not penalised)
which is sklearn's LogisticRegression with C = 1 / (2 * l2 * n_train).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Standardisation guard for (nearly) constant features; they centre to ~0 anyway.
_STD_EPS = 1e-6
# Optimiser: full-batch Adam, learning rate decayed to 0 by a cosine over `steps`.
# Why not L-BFGS (optax.lbfgs + zoom linesearch): measured on CPU, N=1500, D=128,
# 10 classes, 6 L2 values x 500 steps, vmapped L-BFGS took 69 s against 1.5 s for
# Adam. Once a weakly regularised head converges in float32 its linesearch finds
# no decrease and runs to its cap (20 evaluations) every iteration, and under
# vmap every head waits for the slowest linesearch. Even before that, 6 vmapped
# L-BFGS heads cost 15x one unbatched head (Adam: 5x). Adam costs one gradient
# per step for every head, whatever the data. With lr 0.1 and cosine decay, 500
# steps reach sklearn's optimum to < 1e-7 in objective for l2 >= 1e-3 and ~1e-3
# for l2 = 1e-4 (standardised, correlated features); weaker L2 does not converge
# (nearly separable data) but moved test top-1 by < 0.5 points against sklearn's
# optimum. A constant rate oscillated late in training.
_LEARNING_RATE = 0.1


class Split(Protocol):
    inputs: np.ndarray  # [N, ...]: uint8 images [N, H, W, 3], token ids, clips
    labels: np.ndarray  # int [N]
    num_classes: int


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    top1: float  # test accuracy, in [0, 1]
    top5: float  # test top-k accuracy with k = min(5, num_classes)
    l2: float  # the L2 strength chosen on the holdout
    holdout_top1: dict[float, float]  # holdout accuracy per L2 candidate

    def to_dict(self) -> dict[str, Any]:
        # String keys so that the result is JSON-serialisable as is.
        holdout = {repr(l2): acc for l2, acc in self.holdout_top1.items()}
        return {"top1": self.top1, "top5": self.top5, "l2": self.l2, "holdout_top1": holdout}


def extract_features(
    features_fn: Callable[[np.ndarray], Any], images: np.ndarray, *, batch_size: int
) -> np.ndarray:
    """Applies `features_fn` to `images` in batches of exactly `batch_size` rows.

    The last batch is padded with zero images and the padded rows are dropped, so
    a jitted `features_fn` sees one shape and compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(images) == 0:
        raise ValueError("extract_features got no images")
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        num_valid = len(batch)
        if num_valid < batch_size:
            padding = np.zeros((batch_size - num_valid, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        # Kept on the device until the end: dispatch is asynchronous, so the host
        # slices the next batch while the device computes this one.
        outputs.append((features_fn(batch), num_valid))
    features = [np.asarray(out, np.float32)[:num_valid] for out, num_valid in outputs]
    if features[0].ndim != 2:
        raise ValueError(f"features_fn must return [batch, dim], got shape {features[0].shape}")
    return np.concatenate(features)


def linear_probe(
    features_fn: Callable[[np.ndarray], Any],
    train: Split,
    test: Split,
    *,
    batch_size: int = 256,
    **fit_kwargs: Any,
) -> ProbeResult:
    """Extracts features of both splits and fits a linear probe on them."""
    if train.num_classes != test.num_classes:
        raise ValueError(f"train has {train.num_classes} classes but test has {test.num_classes}")
    train_x = extract_features(features_fn, train.inputs, batch_size=batch_size)
    test_x = extract_features(features_fn, test.inputs, batch_size=batch_size)
    return fit_linear_probe(
        train_x, train.labels, test_x, test.labels, num_classes=train.num_classes, **fit_kwargs
    )


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    holdout_fraction: float = 0.2,
    steps: int = 500,
    seed: int = 0,
) -> ProbeResult:
    """Chooses L2 on a holdout of the train split, retrains on all of it, tests."""
    train_x, train_y = _check_split("train", train_x, train_y, num_classes)
    test_x, test_y = _check_split("test", test_x, test_y, num_classes)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} features but test has {test_x.shape[1]}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    grid = [float(l2) for l2 in l2_grid]
    if not grid or min(grid) < 0 or len(set(grid)) != len(grid):
        raise ValueError(f"l2_grid must be distinct non-negative values, got {l2_grid}")
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")

    # Statistics of the whole train split, holdout included: they use no labels, so
    # they cannot bias the choice of L2. Sums in float64 for large N.
    mean = train_x.mean(axis=0, dtype=np.float64).astype(np.float32)
    train_x = train_x - mean
    std = np.sqrt(np.mean(np.square(train_x), axis=0, dtype=np.float64)).astype(np.float32)
    train_x /= std + _STD_EPS
    test_x = (test_x - mean) / (std + _STD_EPS)

    if len(grid) == 1:  # nothing to choose: no holdout needed
        best_l2, holdout_top1 = grid[0], {}
    else:
        fit_idx, holdout_idx = _stratified_split(train_y, holdout_fraction, seed)
        heads = _train_heads(
            train_x[fit_idx], train_y[fit_idx], np.asarray(grid, np.float32), num_classes, steps
        )
        holdout_top1 = {
            l2: _topk_accuracy(train_x[holdout_idx], train_y[holdout_idx], w, b, k=1)
            for l2, w, b in zip(grid, *jax.device_get(heads), strict=True)
        }
        # Ties go to the larger L2: the simpler model explains the holdout as well.
        best_l2 = max(grid, key=lambda l2: (holdout_top1[l2], l2))

    (w,), (b,) = jax.device_get(
        _train_heads(train_x, train_y, np.asarray([best_l2], np.float32), num_classes, steps)
    )
    return ProbeResult(
        top1=_topk_accuracy(test_x, test_y, w, b, k=1),
        top5=_topk_accuracy(test_x, test_y, w, b, k=min(5, num_classes)),
        l2=best_l2,
        holdout_top1=holdout_top1,
    )


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` seeded random examples of every class (all of
    a class's examples when it has fewer)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def few_label_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    per_class: int,
    draws: int = 3,
    seed: int = 0,
    **fit_kwargs: Any,
) -> dict[str, float]:
    """The probe trained on `per_class` labelled examples per class: the regime
    self-supervision is for. Small subsets make single results noisy, so it
    averages over `draws` seeded subsets and reports their spread."""
    if per_class == 1 and "l2_grid" in fit_kwargs:
        # One example per class leaves nothing to hold out for choosing L2:
        # take the strongest candidate, the simplest model.
        fit_kwargs = {**fit_kwargs, "l2_grid": (max(fit_kwargs["l2_grid"]),)}
    top1, top5 = [], []
    for draw in range(draws):
        subset = balanced_subset(train_y, per_class, seed=seed * 1000 + draw)
        result = fit_linear_probe(
            train_x[subset],
            train_y[subset],
            test_x,
            test_y,
            num_classes=num_classes,
            seed=seed + draw,
            **fit_kwargs,
        )
        top1.append(result.top1)
        top5.append(result.top5)
    return {
        "per_class": per_class,
        "draws": draws,
        "top1": float(np.mean(top1)),
        "top1_std": float(np.std(top1)),
        "top5": float(np.mean(top5)),
    }


@functools.partial(jax.jit, static_argnums=(3, 4))
def _train_heads(
    x: jax.Array, y: jax.Array, l2s: jax.Array, num_classes: int, steps: int
) -> tuple[jax.Array, jax.Array]:
    """Trains one softmax head per L2 value, all at once; returns W [G, D, C], b [G, C]."""

    def train_one(l2: jax.Array) -> tuple[jax.Array, jax.Array]:
        def loss_fn(params: tuple[jax.Array, jax.Array]) -> jax.Array:
            w, b = params
            logits = x @ w + b
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + l2 * jnp.sum(jnp.square(w))

        optimizer = optax.adam(optax.cosine_decay_schedule(_LEARNING_RATE, steps))

        def step(_: int, carry: Any) -> Any:
            params, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state)
            return optax.apply_updates(params, updates), opt_state

        # Zero init: the objective is convex, and no random init keeps runs identical.
        params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
        params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
        return params

    # vmap shares x across heads, so each step is one [N, D] x [D, G * C] matmul.
    return jax.vmap(train_one)(l2s)


def _check_split(
    name: str, x: np.ndarray, y: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1:
        raise ValueError(f"{name}: need features [N, D] and labels [N], got {x.shape}, {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} feature rows but {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{name} split is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{name}: labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    return x, y.astype(np.int32)


def _stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out `fraction` of every class; returns sorted indices.

    Each class with >= 2 examples puts at least one in the holdout and keeps at
    least one for fitting; a class with a single example stays in the fit part.
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    num_holdout = np.minimum(np.maximum(np.round(fraction * counts), 1), counts - 1)
    # Shuffle, then group by class (stable sort keeps the shuffled order in a class).
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    rank_in_class = np.arange(len(labels)) - (np.cumsum(counts) - counts)[labels[order]]
    in_holdout = rank_in_class < num_holdout[labels[order]]
    if not in_holdout.any():
        raise ValueError("every class has one training example: nothing to hold out to choose L2")
    return np.sort(order[~in_holdout]), np.sort(order[in_holdout])


def _topk_accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> float:
    logits = x @ w + b
    true_logit = logits[np.arange(len(y)), y][:, None]
    # Rank of the true class, ties broken by class index as in argmax, so k=1 is
    # exactly argmax accuracy and top-k can never be below top-1.
    rank = np.sum(logits > true_logit, axis=1) + np.sum(
        (logits == true_logit) & (np.arange(logits.shape[1]) < y[:, None]), axis=1
    )
    return float(np.mean(rank < k))
