import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import losses
from ssl_jax.tasks import colorization


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


# ---------------------------------------------------------------------------
# BYOL, SimSiam, MoCo v3, DINO, Barlow Twins, VICReg. Every reference below is
# written from the paper's formula (with the reference code's conventions
# where the docstrings of `losses` say so), in float64, with loops.
# ---------------------------------------------------------------------------


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / np.sum(e)


def _reference_byol(p1, p2, z1, z2):
    """Grill et al. 2020: 2 - 2 cos(q, z') per example, both directions summed."""
    n = len(p1)
    return sum((2 - 2 * _cos(p1[i], z2[i])) + (2 - 2 * _cos(p2[i], z1[i])) for i in range(n)) / n


def _reference_simsiam(p1, p2, z1, z2):
    """Chen & He 2021: L = 1/2 D(p1, z2) + 1/2 D(p2, z1), D = -mean cosine."""
    n = len(p1)
    d12 = -sum(_cos(p1[i], z2[i]) for i in range(n)) / n
    d21 = -sum(_cos(p2[i], z1[i]) for i in range(n)) / n
    return 0.5 * d12 + 0.5 * d21


def _reference_moco_ctr(q, k, tau):
    """Chen, Xie & He 2021: -log exp(q.k+/tau) / sum_k exp(q.k/tau) over the
    batch (cosines), mean over queries, times 2 tau (the reference's ctr)."""
    n = len(q)
    total = 0.0
    for i in range(n):
        logits = [_cos(q[i], k[j]) / tau for j in range(n)]
        total += -np.log(np.exp(logits[i]) / sum(np.exp(x) for x in logits))
    return total / n * 2 * tau


def _reference_dino(student, teacher, center, tau_s, tau_t):
    """Caron et al. 2021: H(P_t(g), P_s(v)) over pairs v != g, averaged over
    pairs and examples; P_t = softmax((t - C) / tau_t), P_s = softmax(s / tau_s)."""
    total, pairs = 0.0, 0
    for g in range(len(teacher)):
        for v in range(len(student)):
            if v == g:
                continue
            n = len(student[v])
            ce = 0.0
            for i in range(n):
                p_t = _softmax((teacher[g][i] - center) / tau_t)
                p_s = _softmax(student[v][i] / tau_s)
                ce += -np.sum(p_t * np.log(p_s))
            total += ce / n
            pairs += 1
    return total / pairs


def _reference_barlow(z1, z2, lambd, eps):
    """Zbontar et al. 2021 eq. 1, C from batch-standardised views (biased var)."""
    n, d = z1.shape

    def standardise(z):
        out = np.empty_like(z)
        for j in range(d):
            col = z[:, j]
            var = np.mean((col - col.mean()) ** 2)
            out[:, j] = (col - col.mean()) / np.sqrt(var + eps)
        return out

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def _reference_vicreg_terms(z1, z2, gamma, eps):
    """Bardes et al. 2022 as in the reference code: per-element MSE, the two
    views' variance terms averaged, their covariance terms summed."""
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(z):
        total = 0.0
        for j in range(d):
            col = z[:, j]
            var = np.sum((col - col.mean()) ** 2) / (n - 1)
            total += max(0.0, gamma - np.sqrt(var + eps))
        return total / d

    def covariance(z):
        mean = z.mean(axis=0)
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    c_ab = sum((z[k, a] - mean[a]) * (z[k, b] - mean[b]) for k in range(n))
                    total += (c_ab / (n - 1)) ** 2
        return total / d

    return invariance, (variance(z1) + variance(z2)) / 2, covariance(z1) + covariance(z2)


def _normal(seed, shape, scale=1.0, shift=0.0):
    return shift + scale * jax.random.normal(jax.random.key(seed), shape)


def _four_views(seed, n=6, d=5):
    return tuple(_normal(seed * 10 + i, (n, d)) for i in range(4))


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byol_and_simsiam_match_reference(seed):
    p1, p2, z1, z2 = _four_views(seed)
    np.testing.assert_allclose(
        losses.byol_loss(p1, p2, z1, z2), _reference_byol(*_f64(p1, p2, z1, z2)), rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.simsiam_loss(p1, p2, z1, z2),
        _reference_simsiam(*_f64(p1, p2, z1, z2)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_byol_and_simsiam_minimum_at_identical_views():
    x = _normal(3, (8, 5))
    np.testing.assert_allclose(losses.byol_loss(x, x, x, x), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.simsiam_loss(x, x, x, x), -1.0, rtol=1e-6)
    # Only the direction counts: a prediction at any positive scale of its target.
    p1, p2, z1, z2 = _four_views(4)
    np.testing.assert_allclose(losses.byol_loss(3.0 * z2, 0.5 * z1, z1, z2), 0.0, atol=1e-6)
    assert float(losses.byol_loss(p1, p2, z1, z2)) > 1.0  # random pairs: near 4


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.2), (1, 1.0), (2, 0.07), (3, 0.5)])
def test_moco_v3_matches_reference(seed, temperature):
    q1, q2, k1, k2 = _four_views(seed, n=7, d=4)
    np.testing.assert_allclose(
        losses.moco_v3_contrastive(q1, k2, temperature),
        _reference_moco_ctr(*_f64(q1, k2), temperature),
        rtol=1e-5,
    )
    expected = _reference_moco_ctr(*_f64(q1, k2), temperature) + _reference_moco_ctr(
        *_f64(q2, k1), temperature
    )
    np.testing.assert_allclose(
        losses.moco_v3_loss(q1, q2, k1, k2, temperature=temperature), expected, rtol=1e-5
    )


def _dino_inputs(seed, crops=5, n=4, k=7):
    teacher = _normal(seed, (2, n, k), scale=2.0)
    student = _normal(seed + 100, (crops, n, k), scale=2.0)
    center = _normal(seed + 200, (k,), scale=0.5)
    return student, teacher, center


@pytest.mark.parametrize(
    ("seed", "crops", "tau_s", "tau_t"),
    [(0, 2, 0.1, 0.04), (1, 5, 0.1, 0.04), (2, 6, 0.1, 0.07), (3, 3, 0.2, 0.05)],
)
def test_dino_matches_reference(seed, crops, tau_s, tau_t):
    student, teacher, center = _dino_inputs(seed, crops)
    expected = _reference_dino(*_f64(student, teacher, center), tau_s, tau_t)
    got = losses.dino_loss(
        student, teacher, center, student_temperature=tau_s, teacher_temperature=tau_t
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Lists of per-crop [N, K] arrays mean the same as the stacked arrays.
    got_lists = losses.dino_loss(
        list(student), list(teacher), center, student_temperature=tau_s, teacher_temperature=tau_t
    )
    np.testing.assert_allclose(got_lists, got, rtol=1e-6)


def test_dino_center_update_by_hand():
    teacher = jnp.array([[[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], [[0.0, 2.0, 0.0], [0.0, 2.0, 4.0]]])
    center = jnp.array([10.0, 0.0, -10.0])  # the mean of the 4 teacher rows is [1, 1, 1]
    np.testing.assert_allclose(
        losses.dino_update_center(center, teacher), [9.1, 0.1, -8.9], rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.dino_update_center(center, teacher, momentum=0.5), [5.5, 0.5, -4.5], rtol=1e-6
    )
    # The reference's [1, K] centre keeps its shape.
    assert losses.dino_update_center(center[None], teacher).shape == (1, 3)


def test_dino_center_removes_a_constant_offset_of_the_teacher():
    # Centring is what the centre is for: shifting every teacher output and
    # the centre by the same vector changes nothing.
    student, teacher, center = _dino_inputs(5)
    shift = _normal(6, (7,), scale=3.0)
    np.testing.assert_allclose(
        losses.dino_loss(student, teacher + shift, center + shift),
        losses.dino_loss(student, teacher, center),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    ("seed", "lambd", "eps"),
    [(0, 5e-3, 1e-5), (1, 0.0051, 1e-5), (2, 0.5, 1e-5), (3, 0.0, 1e-5), (4, 5e-3, 0.3)],
)
def test_barlow_twins_matches_reference(seed, lambd, eps):
    # The large eps makes where it sits (inside the square root) visible.
    z1, z2 = _normal(seed, (16, 6), 2.0, 1.0), _normal(seed + 50, (16, 6), 0.5, -3.0)
    np.testing.assert_allclose(
        losses.barlow_twins_loss(z1, z2, lambd=lambd, eps=eps),
        _reference_barlow(*_f64(z1, z2), lambd, eps),
        rtol=1e-5,
    )


def test_barlow_twins_on_a_hand_built_cross_correlation():
    # Three zero-mean, mutually orthogonal +-1 columns of a 4x4 Hadamard matrix:
    # each standardises to itself (biased std 1), so C_ij = h_i . h_j / 4 is
    # known exactly. Scales and offsets must be removed by the standardisation.
    h1, h2, h3 = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)
    z1 = jnp.stack([3 * h1 + 7, h2, 0.5 * h3 - 2], axis=1)
    z2 = jnp.stack([h1 + 1, -h2, 4 * h1], axis=1)
    c = np.array([[1.0, 0.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.barlow_twins_cross_correlation(z1, z2, eps=0.0), c, atol=1e-6)
    terms = losses.barlow_twins_terms(z1, z2, eps=0.0)
    # (1 - 1)^2 + (1 + 1)^2 + (1 - 0)^2 on the diagonal; C_02 = 1 off it.
    np.testing.assert_allclose(terms["invariance"], 5.0, rtol=1e-6)
    np.testing.assert_allclose(terms["redundancy"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        losses.barlow_twins_loss(z1, z2, lambd=0.25, eps=0.0), 5.25, rtol=1e-6
    )
    # Identical decorrelated views are the optimum, C = I, loss 0.
    z = jnp.stack([h1, h2, h3], axis=1)
    np.testing.assert_allclose(losses.barlow_twins_loss(z, z, eps=0.0), 0.0, atol=1e-6)


@pytest.mark.parametrize(
    ("seed", "scale", "gamma", "eps"),
    [(0, 1.0, 1.0, 1e-4), (1, 0.5, 1.0, 1e-4), (2, 3.0, 1.0, 1e-4), (3, 1.0, 2.0, 1e-2)],
)
def test_vicreg_terms_match_reference(seed, scale, gamma, eps):
    z1 = _normal(seed, (10, 5), scale) + _normal(seed + 1, (1, 5))
    z2 = z1 + _normal(seed + 2, (10, 5), 0.3)
    terms = losses.vicreg_terms(z1, z2, gamma=gamma, eps=eps)
    invariance, variance, covariance = _reference_vicreg_terms(*_f64(z1, z2), gamma, eps)
    np.testing.assert_allclose(terms["invariance"], invariance, rtol=1e-5)
    np.testing.assert_allclose(terms["variance"], variance, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms["covariance"], covariance, rtol=1e-5)
    np.testing.assert_allclose(
        losses.vicreg_loss(z1, z2, gamma=gamma, eps=eps),
        25 * invariance + 25 * variance + covariance,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        losses.vicreg_loss(
            z1,
            z2,
            invariance_weight=2.0,
            variance_weight=3.0,
            covariance_weight=0.5,
            gamma=gamma,
            eps=eps,
        ),
        2 * invariance + 3 * variance + 0.5 * covariance,
        rtol=1e-5,
    )


def test_vicreg_terms_by_hand():
    h1, h2, h3 = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)
    # Invariance is a per-element mean: a constant shift of 0.5 costs 0.25.
    z = jnp.stack([h1, h2, h3], axis=1)
    terms = losses.vicreg_terms(z, z + 0.5)
    np.testing.assert_allclose(terms["invariance"], 0.25, rtol=1e-6)
    # Orthogonal zero-mean columns: no covariance.
    np.testing.assert_allclose(terms["covariance"], 0.0, atol=1e-7)
    # A +-1 column of 4 rows has unbiased variance 4/3. Two copies of it:
    # Cov = 4/3 everywhere, off-diagonal sum of squares 2 (4/3)^2, / d = 2,
    # so 16/9 per view, summed over the two views.
    twin = jnp.stack([h1, h1], axis=1)
    terms = losses.vicreg_terms(twin, twin, eps=0.0)
    np.testing.assert_allclose(terms["covariance"], 2 * 16 / 9, rtol=1e-6)
    # Variance: std sqrt(4/3) > 1 is not penalised; at 0.25 x the column the
    # std is sqrt(4/3) / 4 and each view's hinge is 1 - that; the two views'
    # terms are averaged (view 2 is unpenalised here, so half of view 1's).
    np.testing.assert_allclose(terms["variance"], 0.0, atol=1e-7)
    small = 0.25 * twin
    terms = losses.vicreg_terms(small, twin, eps=0.0)
    np.testing.assert_allclose(terms["variance"], 0.5 * (1 - np.sqrt(4 / 3) / 4), rtol=1e-6)


# The six losses, each on its own kind of input, for the shared properties:
# name -> (loss of the inputs, input builder, batch axis of each input).
_CASES = {
    "byol": (losses.byol_loss, lambda s: _four_views(s), (0, 0, 0, 0)),
    "simsiam": (losses.simsiam_loss, lambda s: _four_views(s), (0, 0, 0, 0)),
    "moco_v3": (
        lambda q1, q2, k1, k2: losses.moco_v3_loss(q1, q2, k1, k2, temperature=0.2),
        lambda s: _four_views(s),
        (0, 0, 0, 0),
    ),
    "dino": (losses.dino_loss, lambda s: _dino_inputs(s), (1, 1, None)),
    "barlow_twins": (
        losses.barlow_twins_loss,
        lambda s: (_normal(s, (12, 6)), _normal(s + 1, (12, 6))),
        (0, 0),
    ),
    "vicreg": (
        losses.vicreg_loss,
        lambda s: (_normal(s, (12, 6), 0.7), _normal(s + 1, (12, 6), 0.7)),
        (0, 0),
    ),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_permuting_the_batch_changes_nothing(name):
    loss_fn, make_inputs, batch_axes = _CASES[name]
    inputs = make_inputs(7)
    n = inputs[0].shape[batch_axes[0]]
    perm = np.asarray(jax.random.permutation(jax.random.key(8), n))
    permuted = [
        x if axis is None else jnp.take(x, perm, axis=axis)
        for x, axis in zip(inputs, batch_axes, strict=True)
    ]
    np.testing.assert_allclose(loss_fn(*permuted), loss_fn(*inputs), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_bfloat16_inputs_are_computed_in_float32(name):
    loss_fn, make_inputs, _ = _CASES[name]
    inputs = make_inputs(9)
    low = [x.astype(jnp.bfloat16) for x in inputs]
    got = loss_fn(*low)
    assert got.dtype == jnp.float32 and got.shape == ()
    # Same values in float32: equal up to float32 rounding, which a bfloat16
    # computation (8 mantissa bits, ~4e-3 relative) would not be.
    np.testing.assert_allclose(got, loss_fn(*[x.astype(jnp.float32) for x in low]), rtol=1e-6)
    # And close to the loss of the unrounded inputs.
    np.testing.assert_allclose(got, loss_fn(*inputs), rtol=0.05, atol=0.02)


# Which arguments the method stops gradients at: (online, target) positions.
_STOP_GRADIENT = {
    "byol": ((0, 1), (2, 3)),
    "simsiam": ((0, 1), (2, 3)),
    "moco_v3": ((0, 1), (2, 3)),
    "dino": ((0,), (1, 2)),
}


@pytest.mark.parametrize("name", sorted(_STOP_GRADIENT))
def test_no_gradient_reaches_the_target(name):
    loss_fn, make_inputs, _ = _CASES[name]
    online, target = _STOP_GRADIENT[name]
    grads = jax.grad(loss_fn, argnums=online + target)(*make_inputs(11))
    for g in grads[: len(online)]:
        assert float(jnp.max(jnp.abs(g))) > 1e-4  # the online side does learn
    for g in grads[len(online) :]:
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_symmetric_losses_train_both_views(name):
    loss_fn, make_inputs, _ = _CASES[name]
    for g in jax.grad(loss_fn, argnums=(0, 1))(*make_inputs(12)):
        assert float(jnp.max(jnp.abs(g))) > 1e-4


@pytest.mark.parametrize("name", sorted(_CASES))
def test_losses_compile(name):
    loss_fn, make_inputs, _ = _CASES[name]
    inputs = make_inputs(13)
    np.testing.assert_allclose(jax.jit(loss_fn)(*inputs), loss_fn(*inputs), rtol=1e-6)


# ----------------------------------------------------------------------------- colorization


def _reference_soft_encode(ab, bins, k, sigma):
    """Nearest `k` bins by float64 distance (stable order) and their Gaussian weights."""
    ab, bins = np.asarray(ab, np.float64).reshape(-1, 2), np.asarray(bins, np.float64)
    d2 = ((ab[:, None, :] - bins[None]) ** 2).sum(-1)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    w = np.exp(-np.take_along_axis(d2, idx, 1) / (2 * sigma**2))
    return idx, w / w.sum(1, keepdims=True)


def _colour_bins():
    a, b = np.meshgrid(np.arange(-40, 50, 10.0), np.arange(-30, 40, 10.0), indexing="ij")
    return np.stack([a.ravel(), b.ravel()], -1)  # 63 bins


@pytest.mark.parametrize("k,sigma", [(5, 5.0), (3, 2.0), (10, 5.0)])
def test_soft_encode_matches_reference(k, sigma):
    bins = _colour_bins()
    ab = np.random.default_rng(k).uniform(-45, 45, (2, 3, 4, 2))
    idx, w = colorization.soft_encode(
        jnp.asarray(ab, jnp.float32), jnp.asarray(bins), neighbours=k, sigma=sigma
    )
    ref_idx, ref_w = _reference_soft_encode(ab.astype(np.float32), _colour_bins(), k, sigma)
    assert idx.shape == (2, 3, 4, k)
    np.testing.assert_array_equal(np.asarray(idx).reshape(-1, k), ref_idx)
    np.testing.assert_allclose(np.asarray(w).reshape(-1, k), ref_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)


def test_soft_encode_of_a_bin_centre_puts_most_weight_on_it():
    bins = _colour_bins()
    idx, w = colorization.soft_encode(
        jnp.asarray(bins[17:18]), jnp.asarray(bins), neighbours=5, sigma=5.0
    )
    assert int(idx[0, 0]) == 17
    # The four neighbours at distance 10: exp(-100 / 50) each, relative to 1.
    np.testing.assert_allclose(float(w[0, 0]), 1 / (1 + 4 * np.exp(-2.0)), rtol=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_rebalance_weights_match_reference(mix):
    prior = np.random.default_rng(0).dirichlet(np.full(40, 0.3))
    q = len(prior)
    expected = 1.0 / ((1 - mix) * prior + mix / q)
    expected /= (prior * expected).sum()
    got = np.asarray(colorization.rebalance_weights(jnp.asarray(prior, jnp.float32), mix))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose((prior * got).sum(), 1.0, rtol=1e-5)  # E_p[w] = 1
    if mix == 1.0:
        np.testing.assert_allclose(got, 1.0, rtol=1e-5)  # a uniform mix: no rebalancing


def _reference_colorization_loss(logits, idx, wts, pixel_w, mask):
    """Eq. 2 with a dense soft target, loops over pixels, float64."""
    logits = np.asarray(logits, np.float64)
    b, h, w, q = logits.shape
    total, count = 0.0, 0
    for n in range(b):
        if not mask[n]:
            continue
        for i in range(h):
            for j in range(w):
                z = np.zeros(q)
                z[idx[n, i, j]] = wts[n, i, j]
                x = logits[n, i, j]
                log_p = x - x.max() - np.log(np.exp(x - x.max()).sum())
                total += pixel_w[n, i, j] * -(z * log_p).sum()
                count += 1
    return total / max(count, 1)


def test_colorization_loss_matches_reference():
    rng = np.random.default_rng(1)
    bins = _colour_bins()
    ab = rng.uniform(-45, 45, (3, 4, 4, 2))
    idx, wts = _reference_soft_encode(ab, bins, 5, 5.0)
    idx, wts = idx.reshape(3, 4, 4, 5), wts.reshape(3, 4, 4, 5)
    logits = rng.normal(0, 3, (3, 4, 4, len(bins)))
    pixel_w = rng.uniform(0.2, 4.0, (3, 4, 4))
    mask = np.array([1.0, 0.0, 1.0])
    got = colorization.colorization_loss(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(idx),
        jnp.asarray(wts, jnp.float32),
        jnp.asarray(pixel_w, jnp.float32),
        jnp.asarray(mask),
    )
    expected = _reference_colorization_loss(logits, idx, wts, pixel_w, mask)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    none = colorization.colorization_loss(
        jnp.asarray(logits), jnp.asarray(idx), jnp.asarray(wts), jnp.asarray(pixel_w), jnp.zeros(3)
    )
    assert float(none) == 0.0


def test_ab_regression_loss_matches_reference():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(3, 2, 5, 2)), rng.normal(size=(3, 2, 5, 2))
    mask = np.array([0.0, 1.0, 1.0])
    expected = np.mean(0.5 * ((target - pred) ** 2).sum(-1)[mask > 0])
    got = colorization.ab_regression_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
