import numpy as np
import pytest

from ssl_jax.evaluate.knn import knn_top1


def _reference(train_x, train_y, test_x, num_classes, k, temperature):
    """Plain numpy, one test example at a time."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    predictions = []
    for query in unit(test_x):
        similarity = unit(train_x) @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in nearest:
            votes[train_y[i]] += np.exp(similarity[i] / temperature)
        predictions.append(np.argmax(votes))
    return np.array(predictions)


def test_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    train_y, test_y = rng.integers(0, 5, 200), rng.integers(0, 5, 50)
    for k, temperature in [(1, 0.07), (10, 0.07), (25, 0.5)]:
        expected = np.mean(_reference(train_x, train_y, test_x, 5, k, temperature) == test_y)
        got = knn_top1(
            train_x,
            train_y,
            test_x,
            test_y,
            num_classes=5,
            k=k,
            temperature=temperature,
            batch_size=16,
        )
        assert got == pytest.approx(expected)


def test_clusters_are_classified_and_scale_does_not_matter():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 5
    train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 100)
    train_x = centers[train_y] + rng.normal(size=(300, 8))
    test_x = centers[test_y] + rng.normal(size=(100, 8))
    accuracy = knn_top1(train_x, train_y, test_x, test_y, num_classes=4)
    assert accuracy > 0.95
    assert knn_top1(train_x * 7, train_y, test_x * 0.1, test_y, num_classes=4) == accuracy


def test_bad_arguments():
    x, y = np.ones((3, 2)), np.zeros(3, int)
    with pytest.raises(ValueError, match="k must be"):
        knn_top1(x, y, x, y, num_classes=2, k=4)
    with pytest.raises(ValueError, match="temperature"):
        knn_top1(x, y, x, y, num_classes=2, k=1, temperature=0)


def test_low_temperatures_do_not_overflow_into_ties():
    # exp(1 / 0.005) overflows float32: unshifted, every vote was inf and the
    # tie went to the lowest class; the nearest neighbour's class must win.
    train_x = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]], np.float32)
    train_y = np.array([0, 1, 1])
    test_x = np.array([[0.1, 1.0]], np.float32)  # nearest: the class-1 examples
    for temperature in (0.5, 0.01, 0.005, 0.001):
        accuracy = knn_top1(
            train_x, train_y, test_x, np.array([1]), num_classes=2, k=3, temperature=temperature
        )
        assert accuracy == 1.0, temperature
