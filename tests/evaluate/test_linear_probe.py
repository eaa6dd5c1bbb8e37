"""Tests of the linear-probe evaluator; sklearn serves as the independent reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ssl_jax.evaluate import linear_probe as lp


def blobs(n, dim, num_classes, *, spread, seed=0):
    """Gaussian class blobs: class means ~ N(0, spread^2), unit noise."""
    rng = np.random.default_rng(seed)
    means = spread * rng.normal(size=(num_classes, dim))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    x = means[labels] + rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def standardise(train_x, test_x):
    mean, std = train_x.mean(0), train_x.std(0) + lp._STD_EPS
    return (train_x - mean) / std, (test_x - mean) / std


# extract_features


def test_extract_features_pads_last_batch_with_zeros_and_drops_it():
    images = np.random.default_rng(0).integers(1, 256, (10, 4, 4, 3), dtype=np.uint8)
    batches = []

    def features_fn(batch):
        batches.append(batch.copy())
        return batch.reshape(len(batch), -1)[:, :5].astype(np.float32)

    features = lp.extract_features(features_fn, images, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[-1][:2], images[8:])
    assert not batches[-1][2:].any()  # padding is zeros
    np.testing.assert_array_equal(features, images.reshape(10, -1)[:, :5])
    assert features.dtype == np.float32


def test_extract_features_compiles_once_and_matches_whole_array():
    images = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 3), dtype=np.uint8)
    projection = np.random.default_rng(1).normal(size=(48, 6)).astype(np.float32)
    traces = []

    @jax.jit
    def features_fn(batch):
        traces.append(batch.shape)  # runs only when jax traces
        return jnp.tanh(batch.reshape(len(batch), -1).astype(jnp.float32) / 255 @ projection)

    features = lp.extract_features(features_fn, images, batch_size=8)
    assert traces == [(8, 4, 4, 3)]
    np.testing.assert_allclose(features, np.asarray(features_fn(images)), rtol=1e-5, atol=1e-6)
    assert features.shape == (23, 6)


# fit_linear_probe: quality


def test_separable_blobs_are_classified_perfectly():
    x, y = blobs(1200, 32, 10, spread=5.0)
    result = lp.fit_linear_probe(x[:800], y[:800], x[800:], y[800:], num_classes=10)
    assert result.top1 >= 0.99
    assert result.top5 == 1.0
    # Every candidate is perfect on the holdout: the tie goes to the strongest L2.
    assert set(result.holdout_top1.values()) == {1.0}
    assert result.l2 == 0.1


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    result = lp.fit_linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=10)
    assert abs(result.top1 - 0.1) < 0.05
    assert 0.4 < result.top5 < 0.6  # chance for top-5 of 10 classes is 0.5
    assert result.top5 >= result.top1


def test_matches_sklearn_logistic_regression_at_fixed_l2():
    x, y = blobs(1500, 16, 5, spread=0.6)  # overlapping: a well-defined optimum
    x = 3 + x * np.logspace(-2, 2, 16, dtype=np.float32)  # the probe must standardise
    (train_x, test_x), (train_y, test_y) = standardise(x[:1000], x[1000:]), (y[:1000], y[1000:])
    l2 = 1e-2
    # sklearn: 0.5 ||W||^2 + C sum(CE). Dividing by C n gives mean(CE) + ||W||^2 / (2 C n).
    reference = LogisticRegression(C=1 / (2 * l2 * len(train_y)), tol=1e-8, max_iter=1000)
    reference.fit(train_x.astype(np.float64), train_y)

    (w,), (b,) = jax.device_get(lp._train_heads(train_x, train_y, np.float32([l2]), 5, 500))
    np.testing.assert_allclose(w, reference.coef_.T, atol=2e-3)
    logits = test_x @ w + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, reference.predict_proba(test_x), atol=2e-3)

    result = lp.fit_linear_probe(
        x[:1000], y[:1000], x[1000:], y[1000:], num_classes=5, l2_grid=[l2]
    )
    assert result.l2 == l2
    assert abs(result.top1 - reference.score(test_x, test_y)) <= 0.01


def test_l2_is_chosen_on_holdout_and_regularises_a_noisy_problem():
    # 200 training examples, 500 features of which 4 carry the class.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 4
    x = rng.normal(size=(300, 500)).astype(np.float32)
    x[:, :4] += 1.5 * rng.normal(size=(4, 4))[y]
    grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    result = lp.fit_linear_probe(x[:200], y[:200], x[200:], y[200:], num_classes=4, l2_grid=grid)
    assert list(result.holdout_top1) == list(grid)
    assert result.l2 > min(grid)
    assert result.holdout_top1[result.l2] >= result.holdout_top1[min(grid)] + 0.1
    assert result.l2 == max(grid, key=lambda l2: (result.holdout_top1[l2], l2))


def test_topk_breaks_ties_like_argmax():
    x = np.eye(3, dtype=np.float32)
    w = np.float32([[2, 2, 0], [0, 1, 0], [5, 5, 5]])  # row 0 ties classes 0 and 1
    y = np.array([1, 1, 2])
    assert lp._topk_accuracy(x, y, w, np.zeros(3, np.float32), k=1) == pytest.approx(1 / 3)
    assert lp._topk_accuracy(x, y, w, np.zeros(3, np.float32), k=2) == pytest.approx(2 / 3)


def test_stratified_split_is_seeded_and_keeps_singletons_for_fitting():
    labels = np.array([0] * 50 + [1] * 10 + [2])
    fit, holdout = lp._stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, holdout])) == list(range(len(labels)))
    assert np.bincount(labels[holdout], minlength=3).tolist() == [10, 2, 0]
    again = lp._stratified_split(labels, 0.2, seed=0)
    other = lp._stratified_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(again[1], holdout)
    assert not np.array_equal(other[1], holdout)


def test_is_deterministic_and_serialisable():
    x, y = blobs(600, 16, 6, spread=0.5)
    kwargs = dict(num_classes=6, l2_grid=(1e-4, 1e-2), steps=100, seed=3)
    first = lp.fit_linear_probe(x[:400], y[:400], x[400:], y[400:], **kwargs)
    second = lp.fit_linear_probe(x[:400], y[:400], x[400:], y[400:], **kwargs)
    assert first == second
    assert first.to_dict()["holdout_top1"] == {
        "0.0001": first.holdout_top1[1e-4],
        "0.01": first.holdout_top1[1e-2],
    }


# Input errors

X, Y = blobs(40, 4, 2, spread=1.0)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((X, Y[:-1], X, Y), {}, "40 feature rows but 39 labels"),
        ((X, Y, X, Y + 1), {}, r"labels must be in \[0, 2\)"),
        ((X, Y - 1, X, Y), {}, r"labels must be in \[0, 2\)"),
        ((X, Y, X[:0], Y[:0]), {}, "test split is empty"),
        ((X, Y, X[:, :3], Y), {}, "4 features but test has 3"),
        ((X, Y, X, Y), {"holdout_fraction": 1.0}, r"holdout_fraction must be in \(0, 1\)"),
        ((X, Y, X, Y), {"holdout_fraction": 0.0}, r"holdout_fraction must be in \(0, 1\)"),
        ((X, Y, X, Y), {"l2_grid": ()}, "l2_grid"),
        ((X[:2], np.array([0, 1]), X, Y), {}, "nothing to hold out"),
    ],
)
def test_bad_inputs_raise_value_error(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lp.fit_linear_probe(*args, num_classes=2, **kwargs)


def test_extract_features_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        lp.extract_features(lambda b: b, np.zeros((2, 4, 4, 3), np.uint8), batch_size=0)


# linear_probe end to end


@dataclasses.dataclass
class Split:
    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int


def test_linear_probe_end_to_end_leaves_encoder_params_unchanged():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    images = rng.integers(0, 20, (300, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, :] += (80 * labels[:, None]).astype(np.uint8)  # class signal in one pixel
    params = {"w": rng.normal(size=(48, 16)).astype(np.float32)}
    before = jax.tree.map(np.copy, params)
    features_fn = jax.jit(lambda im: jnp.tanh(im.reshape(len(im), -1) / 255 @ params["w"]))

    train, test = Split(images[:200], labels[:200], 3), Split(images[200:], labels[200:], 3)
    result = lp.linear_probe(features_fn, train, test, batch_size=64, steps=200)
    assert result.top1 > 0.9
    assert result.top5 == 1.0  # 3 classes: top-5 is top-3
    jax.tree.map(np.testing.assert_array_equal, params, before)


def test_balanced_subset_takes_k_per_class_seeded():
    labels = np.repeat(np.arange(4), [10, 10, 10, 3])
    subset = lp.balanced_subset(labels, 5, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[subset]), [5, 5, 5, 3])
    np.testing.assert_array_equal(subset, lp.balanced_subset(labels, 5, seed=0))
    assert not np.array_equal(subset, lp.balanced_subset(labels, 5, seed=1))
    with pytest.raises(ValueError, match="per_class"):
        lp.balanced_subset(labels, 0, seed=0)


def test_few_label_probe_averages_draws_and_is_below_full_probe_on_hard_data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 20))
    y = rng.integers(0, 5, 1200)
    x = centers[y] + 1.5 * rng.normal(size=(1200, 20))
    train, test = slice(0, 1000), slice(1000, None)
    full = lp.fit_linear_probe(x[train], y[train], x[test], y[test], num_classes=5, steps=200)
    few = lp.few_label_probe(
        x[train], y[train], x[test], y[test], num_classes=5, per_class=2, draws=3, steps=200
    )
    assert few["draws"] == 3 and few["per_class"] == 2
    assert few["top1_std"] > 0  # different draws really differ
    assert 0.2 < few["top1"] < full.top1


def test_one_label_per_class_uses_the_strongest_l2_without_a_holdout():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 10)) * 3
    y = np.repeat(np.arange(3), 50)
    x = centers[y] + rng.normal(size=(150, 10))
    few = lp.few_label_probe(
        x, y, x, y, num_classes=3, per_class=1, draws=2, steps=100, l2_grid=(1e-4, 1e-1)
    )
    assert few["top1"] > 0.8
    single = lp.fit_linear_probe(x[:5], y[:5], x, y, num_classes=3, l2_grid=(0.1,), steps=50)
    assert single.l2 == 0.1 and single.holdout_top1 == {}


def test_test_features_are_standardised_with_the_train_statistics():
    # Two classes split by the sign of feature 0 in train; the test features are
    # the train ones shifted by +10 along it. Standardised with the train's
    # statistics (the honest transform) every test point falls on class 1's
    # side; with their own statistics the shift would be undone and hide it.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100).astype(np.int32)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    x[:, 0] = np.where(labels == 1, 1.0, -1.0) + 0.1 * x[:, 0]
    shifted = x.copy()
    shifted[:, 0] += 10.0
    result = lp.fit_linear_probe(x, labels, shifted, labels, num_classes=2, steps=200)
    assert result.top1 == 0.5
