"""Collapse monitors against float64 numpy references written from the papers,
and on embeddings whose collapse is known by construction."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.evaluate import collapse


def _reference_normalized_std(z):
    """SimSiam section 4.1: std over the batch of each channel of z / ||z||,
    averaged over channels (population std)."""
    z = np.asarray(z, np.float64)
    n, d = z.shape
    unit = np.array([row / np.sqrt(np.sum(row**2)) for row in z])
    stds = []
    for j in range(d):
        mean = sum(unit[i, j] for i in range(n)) / n
        stds.append(np.sqrt(sum((unit[i, j] - mean) ** 2 for i in range(n)) / n))
    return sum(stds) / d


def _reference_rankme(z, eps=1e-7):
    """Garrido et al. 2023 eq. 1: exp(-sum p_k log p_k), p_k = sigma_k / ||sigma||_1 + eps."""
    sigma = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
    entropy = 0.0
    for s in sigma:
        p = s / np.sum(np.abs(sigma)) + eps
        entropy -= p * np.log(p)
    return np.exp(entropy)


def _gaussian(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def _subspace(seed, n, d, rank):
    """n embeddings filling a random `rank`-dimensional subspace of R^d."""
    coefficients = _gaussian(seed, (n, rank))
    basis, _ = jnp.linalg.qr(_gaussian(seed + 1, (d, rank)))  # [d, rank], orthonormal columns
    return coefficients @ basis.T


@pytest.mark.parametrize(("seed", "n", "d"), [(0, 32, 8), (1, 10, 24), (2, 50, 50)])
def test_match_references(seed, n, d):
    # Shifted and unevenly scaled, so neither function sees an easy case.
    z = _gaussian(seed, (n, d)) * jnp.linspace(0.2, 3.0, d) + 0.7
    np.testing.assert_allclose(collapse.normalized_std(z), _reference_normalized_std(z), rtol=1e-5)
    np.testing.assert_allclose(collapse.effective_rank(z), _reference_rankme(z), rtol=1e-5)


def test_complete_collapse():
    d = 16
    v = _gaussian(3, (d,))
    same = jnp.tile(v, (64, 1))
    scales = jnp.abs(_gaussian(4, (64, 1))) + 0.1
    on_a_ray = scales * v  # one direction, any positive length
    for z in (same, on_a_ray):
        np.testing.assert_allclose(collapse.normalized_std(z), 0.0, atol=1e-6)
        np.testing.assert_allclose(collapse.effective_rank(z), 1.0, atol=1e-3)
    # A line through the origin, both signs: still rank 1 for RankMe.
    signs = jnp.sign(_gaussian(5, (64, 1)))
    np.testing.assert_allclose(collapse.effective_rank(signs * on_a_ray), 1.0, atol=1e-3)
    # All zeros: finite, rank 1 (no NaN from 0 / 0).
    zeros = jnp.zeros((8, d))
    assert float(collapse.normalized_std(zeros)) == 0.0
    np.testing.assert_allclose(collapse.effective_rank(zeros), 1.0, atol=1e-3)


@pytest.mark.parametrize("d", [16, 64])
def test_gaussian_embeddings_are_healthy(d):
    n = 2048
    z = _gaussian(6, (n, d))
    np.testing.assert_allclose(collapse.normalized_std(z), 1 / np.sqrt(d), rtol=0.05)
    rank = float(collapse.effective_rank(z))
    assert 0.97 * d < rank <= d


def test_effective_rank_is_bounded_by_the_batch():
    n, d = 16, 64  # fewer embeddings than dimensions: the rank cannot exceed N
    rank = float(collapse.effective_rank(_gaussian(7, (n, d))))
    assert 0.9 * n < rank <= n


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_dimensional_collapse_shows_in_the_rank(rank):
    d = 64
    z = _subspace(8, 1024, d, rank)
    assert 0.97 * rank < float(collapse.effective_rank(z)) <= rank + 1e-3
    # The std barely notices: the subspace is randomly oriented, so every
    # coordinate still varies. This is why both numbers are logged.
    assert float(collapse.normalized_std(z)) > 0.5 / np.sqrt(d)


def test_jit_and_bfloat16():
    z = _gaussian(9, (64, 16))
    for fn in (collapse.normalized_std, collapse.effective_rank):
        np.testing.assert_allclose(jax.jit(fn)(z), fn(z), rtol=1e-6)
        low = fn(z.astype(jnp.bfloat16))
        assert low.dtype == jnp.float32
        np.testing.assert_allclose(low, fn(z), rtol=0.02)


def test_imports_nothing_from_the_package():
    # evaluate/ is kept independent of ssl_jax, so it can be reused alone.
    tree = ast.parse(pathlib.Path(collapse.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["<relative>"]
        else:
            continue
        for name in names:
            assert name in {"__future__", "jax", "jax.numpy"}, f"collapse.py imports {name}"


def test_collapse_watch_warns_once_after_a_sustained_collapse():
    """SimSiam's collapsing CIFAR run (effective rank 44 -> 7.7 of 128): the
    warning comes at the second log line below 10%, once; a single dip or a
    healthy run says nothing."""
    warnings = []
    watch = collapse.CollapseWatch(0.1, patience=2, warn=warnings.append)
    ranks = {100: 44.0, 200: 20.0, 300: 12.0, 400: 14.0, 500: 9.0, 600: 7.7, 700: 7.5}
    said = [
        watch.observe(s, {"effective_rank": r, "effective_rank_fraction": r / 128})
        for s, r in ranks.items()
    ]
    assert said[:5] == [None] * 5 and said[5] is not None and said[6] is None
    assert len(warnings) == 1 and "step 600" in warnings[0] and "7.7" in warnings[0]
    healthy = collapse.CollapseWatch(0.1, patience=2, warn=warnings.append)
    for s, r in {100: 40.0, 200: 12.0, 300: 30.0, 400: 11.0, 500: 13.0}.items():
        assert healthy.observe(s, {"effective_rank_fraction": r / 128}) is None
    with pytest.raises(ValueError, match="min_rank_fraction"):
        collapse.CollapseWatch(1.5)


def test_rank_fraction_is_the_effective_rank_over_its_maximum():
    from ssl_jax.tasks.base import collapse_metrics

    z = jax.random.normal(jax.random.key(0), (64, 16))
    np.testing.assert_allclose(
        collapse_metrics(z)["effective_rank_fraction"], collapse.effective_rank(z) / 16, rtol=1e-6
    )
