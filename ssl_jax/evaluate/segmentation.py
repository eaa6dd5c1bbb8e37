"""The dense probe: a linear 1x1 head on frozen spatial features, trained per
pixel, and its scores (mean IoU, pixel accuracy).

The head maps each feature vector of the encoder's [h, w, D] map to class
scores; the scores are upsampled bilinearly to the mask's [H, W] (half-pixel
centres, as `jax.image.resize` and PyTorch's `align_corners=False` do) and
trained with per-pixel softmax cross-entropy, pixels marked `ignore` left
out. Features are standardised per channel with the train split's statistics
first, as the linear probe does (`linear_probe.py`).

Scores follow the usual definition (Pascal VOC, Cityscapes): over a split's
confusion matrix, IoU_c = TP_c / (TP_c + FP_c + FN_c); the mean IoU averages
the classes present in the truth or the prediction (a class absent from both
has 0 / 0 and is left out, not counted as 0 or 1); pixel accuracy is the
share of labelled pixels predicted right.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

_STD_EPS = 1e-6


def confusion_matrix(
    predicted: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int
) -> np.ndarray:
    """int64 [K, K], rows the true class, columns the predicted one, over the
    pixels whose truth is not `ignore`."""
    predicted, truth = np.asarray(predicted).reshape(-1), np.asarray(truth).reshape(-1)
    keep = truth != ignore
    index = truth[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
    """{"miou", "pixel_accuracy", "iou": per class, NaN where absent from
    both truth and prediction} of a confusion matrix (see the module docstring)."""
    confusion = np.asarray(confusion, np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
    iou = np.where(union > 0, hits / np.maximum(union, 1.0), np.nan)
    present = union > 0
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(hits.sum() / max(confusion.sum(), 1.0)),
        "iou": iou,
    }


def upsampled_logits(params: dict, features: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Standardised features [B, h, w, D] -> class scores [B, H, W, K]: the 1x1
    head, then bilinear upsampling to `size`."""
    logits = features @ params["w"] + params["b"]
    b, _, _, k = logits.shape
    return jax.image.resize(logits, (b, *size, k), method="bilinear")


def pixel_loss(params, features, masks, *, ignore: int, l2: float) -> jax.Array:
    """Mean per-pixel cross-entropy over the labelled pixels, plus l2 * ||w||^2."""
    logits = upsampled_logits(params, features, masks.shape[1:])
    labelled = masks != ignore
    safe = jnp.where(labelled, masks, 0).astype(jnp.int32)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(jnp.sum(labelled), 1)
    return jnp.sum(per_pixel * labelled) / count + l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "ignore", "num_classes"))
def _fit(features, masks, key, *, steps, batch_size, ignore, num_classes, learning_rate, l2):
    d = features.shape[-1]
    params = {"w": jnp.zeros((d, num_classes), jnp.float32), "b": jnp.zeros(num_classes)}
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    def step(carry, i):
        params, opt_state = carry
        rows = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, len(features))
        loss, grads = jax.value_and_grad(pixel_loss)(
            params, features[rows], masks[rows], ignore=ignore, l2=l2
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
    return params, losses


def fit_head(
    features: np.ndarray,
    masks: np.ndarray,
    *,
    num_classes: int,
    ignore: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    l2: float,
    seed: int,
):
    """Trains the head on train features [N, h, w, D] and masks [N, H, W];
    returns (predict: features -> int32 classes [N, H, W], final loss).
    Minibatches of `batch_size` scenes drawn with replacement, Adam with a
    cosine decay, zero init: deterministic in `seed`."""
    features = np.asarray(features, np.float32)
    mean = features.mean(axis=(0, 1, 2))
    std = features.std(axis=(0, 1, 2)) + _STD_EPS
    params, losses = _fit(
        jnp.asarray((features - mean) / std),
        jnp.asarray(masks),
        jax.random.key(seed),
        steps=steps,
        batch_size=min(batch_size, len(features)),
        ignore=ignore,
        num_classes=num_classes,
        learning_rate=learning_rate,
        l2=l2,
    )
    size = tuple(masks.shape[1:])

    @jax.jit
    def classes(x):
        return jnp.argmax(upsampled_logits(params, (x - mean) / std, size), axis=-1)

    def predict(x: np.ndarray, batch: int = 256) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate(
            [np.asarray(classes(x[i : i + batch])) for i in range(0, len(x), batch)]
        ).astype(np.int32)

    return predict, float(losses[-1])


def palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes + 1, 3]: black for class 0 (background), distinct
    hues for the others, grey last (for ignored pixels)."""
    hues = np.arange(max(num_classes - 1, 1)) / max(num_classes - 1, 1)
    # Hue to RGB on the colour wheel at full saturation and value.
    rgb = np.clip(np.abs(((hues[:, None] * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)
    colours = np.concatenate([[[0, 0, 0]], rgb[: num_classes - 1] * 255, [[128, 128, 128]]])
    return colours.astype(np.uint8)


def masks_picture(images: np.ndarray, truth: np.ndarray, predicted, num_classes, ignore):
    """uint8 [3 S + 2, n (S + 1), 3]: the images, their true masks and the
    predicted ones in three rows (one colour per class, ignored pixels grey)."""
    colours = palette(num_classes)

    def colour(masks):
        return colours[np.where(masks == ignore, num_classes, masks)]

    rows = [np.asarray(images, np.uint8), colour(truth), colour(predicted)]
    n, s = len(images), images.shape[1]
    picture = np.full((3 * s + 2, n * (s + 1) - 1, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for i in range(n):
            picture[r * (s + 1) : r * (s + 1) + s, i * (s + 1) : i * (s + 1) + s] = row[i]
    return picture
