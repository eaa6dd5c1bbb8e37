import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses


def _reference_nt_xent(z1, z2, temperature):
    """The published formula, written out with loops in float64."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2  # the other view of the same image
        sim = [
            np.dot(z[i], z[k]) / (np.linalg.norm(z[i]) * np.linalg.norm(z[k])) / temperature
            for k in range(n2)
        ]
        denominator = sum(np.exp(sim[k]) for k in range(n2) if k != i)
        total += -np.log(np.exp(sim[j]) / denominator)
    return total / n2


def _views(seed=0, n=6, d=5):
    a, b = jax.random.split(jax.random.key(seed))
    return jax.random.normal(a, (n, d)), jax.random.normal(b, (n, d))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_nt_xent_matches_reference(temperature):
    z1, z2 = _views(seed=int(temperature * 10))
    expected = _reference_nt_xent(np.asarray(z1), np.asarray(z2), temperature)
    np.testing.assert_allclose(losses.nt_xent(z1, z2, temperature), expected, rtol=1e-5)


def test_nt_xent_invariances():
    z1, z2 = _views()
    loss = losses.nt_xent(z1, z2, 0.5)
    perm = jax.random.permutation(jax.random.key(1), z1.shape[0])
    np.testing.assert_allclose(losses.nt_xent(z1[perm], z2[perm], 0.5), loss, rtol=1e-5)
    np.testing.assert_allclose(losses.nt_xent(3.7 * z1, 3.7 * z2, 0.5), loss, rtol=1e-5)
    np.testing.assert_allclose(losses.nt_xent(z2, z1, 0.5), loss, rtol=1e-5)


def test_aligned_orthogonal_pairs_beat_random():
    n = 4
    aligned = jnp.eye(n)  # pair i shares direction e_i, orthogonal to every other pair
    z1, z2 = _views(n=n, d=n)
    assert losses.nt_xent(aligned, aligned, 0.5) < losses.nt_xent(z1, z2, 0.5)
    # Positive at cosine 1, 2N - 2 negatives at cosine 0.
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 2 * n - 2))
    np.testing.assert_allclose(losses.nt_xent(aligned, aligned, 0.5), expected, rtol=1e-5)
    assert losses.contrastive_accuracy(aligned, aligned) == 1.0


def test_nt_xent_gradient_is_finite_even_for_a_zero_vector():
    z1, z2 = _views()
    z1 = z1.at[0].set(0.0)
    grads = jax.grad(lambda a, b: losses.nt_xent(a, b, 0.1), argnums=(0, 1))(z1, z2)
    for g in grads:
        assert np.all(np.isfinite(g))


def test_contrastive_accuracy_of_random_pairs_is_low():
    z1, z2 = _views(n=64, d=32)
    assert 0.0 <= float(losses.contrastive_accuracy(z1, z2)) < 0.2
