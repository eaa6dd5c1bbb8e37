"""The segmentation probe's scores and loss against plain float64 numpy
references of their published definitions."""

import numpy as np

from ssl_jax.evaluate import segmentation as seg

IGNORE = 255


def reference_scores(predicted, truth, num_classes):
    """Per class, over labelled pixels: IoU = |P and T| / |P or T|; classes
    with an empty union are left out of the mean (Pascal VOC's definition)."""
    labelled = truth != IGNORE
    ious = []
    for c in range(num_classes):
        p, t = (predicted == c) & labelled, (truth == c) & labelled
        union = np.sum(p | t, dtype=np.float64)
        ious.append(np.sum(p & t, dtype=np.float64) / union if union else np.nan)
    ious = np.array(ious)
    accuracy = np.sum((predicted == truth) & labelled) / np.sum(labelled, dtype=np.float64)
    return np.nanmean(ious), accuracy, ious


def test_miou_and_pixel_accuracy_match_the_numpy_reference():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(3, 9, 7)).astype(np.uint8)  # classes 0-3 only
    predicted = truth.copy()
    wrong = rng.random(truth.shape) < 0.4
    predicted[wrong] = rng.integers(0, 6, size=wrong.sum())  # class 5: predicted, never true
    predicted[predicted == 4] = 0  # class 4: in neither: left out of the mean
    truth[rng.random(truth.shape) < 0.1] = IGNORE
    # An ignored pixel predicted as class 5 must not count against it either.
    predicted[truth == IGNORE] = 5

    confusion = seg.confusion_matrix(predicted, truth, 6, IGNORE)
    got = seg.scores(confusion)
    miou, accuracy, ious = reference_scores(predicted, truth, 6)

    assert np.isnan(got["iou"][4]) and np.isnan(ious[4])
    assert got["iou"][5] == 0.0  # predicted but absent from the truth: counts as 0
    np.testing.assert_allclose(got["iou"], ious, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["miou"], miou, rtol=1e-12)
    np.testing.assert_allclose(got["pixel_accuracy"], accuracy, rtol=1e-12)
    assert confusion.sum() == np.sum(truth != IGNORE)


def test_pixel_loss_ignores_unlabelled_pixels_and_adds_the_weight_penalty():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    masks = rng.integers(0, 5, size=(2, 4, 4)).astype(np.uint8)
    masks[0, :2] = IGNORE
    params = {"w": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=5)}
    l2 = 0.01
    # Same resolution: the bilinear resize is the identity.
    got = seg.pixel_loss(params, features, masks, ignore=IGNORE, l2=l2)

    logits = features.astype(np.float64) @ params["w"] + params["b"]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = masks != IGNORE
    nll = -np.take_along_axis(log_p, np.where(keep, masks, 0)[..., None].astype(int), -1)[..., 0]
    expected = nll[keep].mean() + l2 * np.sum(params["w"].astype(np.float64) ** 2)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_head_recovers_masks_from_coarse_one_hot_features():
    """Features that name each 2x2 block's class: the trained head, upsampled
    bilinearly, predicts every pixel's class (the nearest block wins)."""
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 4, size=(32, 4, 4))
    features = np.eye(4, dtype=np.float32)[coarse]
    masks = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2).astype(np.uint8)
    predict, loss = seg.fit_head(
        features,
        masks,
        num_classes=4,
        ignore=IGNORE,
        steps=100,
        batch_size=16,
        learning_rate=0.1,
        l2=0.0,
        seed=0,
    )
    assert np.mean(predict(features) == masks) > 0.99 and loss < 0.5


def reference_bilinear(x, size):
    """[h, w, K] -> [H, W, K]: half-pixel centres, edges clamped (PyTorch's
    align_corners=False), separable, float64."""

    def weights(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(n_out), hi), src - lo)
        return m

    rows, cols = weights(size[0], x.shape[0]), weights(size[1], x.shape[1])
    return np.einsum("Hh,hwk,Ww->HWk", rows, x.astype(np.float64), cols)


def test_scores_are_upsampled_bilinearly_after_the_head():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    params = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    got = seg.upsampled_logits(params, features, (12, 8))
    expected = reference_bilinear(features[0].astype(np.float64) @ params["w"], (12, 8))
    np.testing.assert_allclose(np.asarray(got[0]), expected, atol=1e-5)
