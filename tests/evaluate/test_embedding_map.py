import numpy as np
import pytest

from ssl_jax.evaluate.embedding_map import pca_2d, save_map


def test_pca_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1])
    points, explained = pca_2d(x)
    centred = x - x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    top = eigenvectors[:, ::-1][:, :2]
    for axis in range(2):  # same axes up to sign
        assert abs(abs(np.corrcoef(points[:, axis], centred @ top[:, axis])[0, 1]) - 1) < 1e-9
    np.testing.assert_allclose(explained, eigenvalues[::-1][:2] / eigenvalues.sum(), rtol=1e-6)


def test_pca_signs_are_stable_and_inputs_checked():
    x = np.random.default_rng(1).normal(size=(50, 4))
    np.testing.assert_allclose(pca_2d(x)[0], pca_2d(x.copy())[0])
    np.testing.assert_allclose(pca_2d(x)[0], pca_2d(x + 3.0)[0], atol=1e-9)
    with pytest.raises(ValueError, match="pca_2d"):
        pca_2d(np.ones((1, 3)))


def test_save_map_writes_a_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    path = tmp_path / "map.png"
    save_map(rng.normal(size=(40, 6)), rng.integers(0, 3, 40), str(path), title="test")
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 300
