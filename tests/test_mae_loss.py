"""`losses.mae_loss` against a plain numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.losses import mae_loss


def reference(pred, target, mask, norm_pix_loss, eps=1e-6):
    """Loops over examples and patches: the mean over masked patches of the
    per-patch mean squared error, targets optionally standardised per patch."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if not mask[b, n]:
                continue
            t = target[b, n].astype(np.float64)
            if norm_pix_loss:
                t = (t - t.mean()) / np.sqrt(t.var() + eps)
            total += np.mean((pred[b, n] - t) ** 2)
            count += 1
    return total / count


def _data(seed=0, shape=(3, 10, 12)):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=shape).astype(np.float32)
    target = (2.0 + 3.0 * rng.normal(size=shape)).astype(np.float32)
    mask = np.zeros(shape[:2], np.float32)
    for row in mask:
        row[rng.permutation(shape[1])[:7]] = 1.0
    return pred, target, mask


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_matches_numpy_reference(norm_pix_loss):
    pred, target, mask = _data()
    got = mae_loss(
        jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), norm_pix_loss=norm_pix_loss
    )
    np.testing.assert_allclose(got, reference(pred, target, mask, norm_pix_loss), rtol=1e-5)


def test_norm_pix_loss_changes_the_target():
    pred, target, mask = _data()
    assert not np.isclose(
        mae_loss(pred, target, mask), mae_loss(pred, target, mask, norm_pix_loss=True)
    )
    # With normalised targets, a patch's offset and scale do not matter.
    shifted = target * 5.0 + 7.0
    np.testing.assert_allclose(
        mae_loss(pred, shifted, mask, norm_pix_loss=True),
        mae_loss(pred, target, mask, norm_pix_loss=True),
        rtol=1e-4,
    )


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_visible_patches_do_not_count(norm_pix_loss):
    pred, target, mask = _data()
    loss = mae_loss(pred, target, mask, norm_pix_loss=norm_pix_loss)
    visible = mask[:, :, None] == 0
    changed_pred = np.where(visible, pred + 100.0, pred)
    changed_target = np.where(visible, -target, target)
    np.testing.assert_allclose(
        mae_loss(changed_pred, changed_target, mask, norm_pix_loss=norm_pix_loss), loss, rtol=1e-6
    )
    # ... while one masked patch does.
    hidden = np.argwhere(mask > 0)[0]
    pred[tuple(hidden)] += 1.0
    assert float(mae_loss(pred, target, mask, norm_pix_loss=norm_pix_loss)) != float(loss)


def test_gradient_is_zero_on_visible_patches():
    pred, target, mask = _data()
    grad = jax.grad(mae_loss)(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    assert np.all(np.asarray(grad)[mask == 0] == 0)
    assert np.all(np.abs(np.asarray(grad)[mask > 0]).sum(axis=-1) > 0)


def test_perfect_prediction_is_zero():
    _, target, mask = _data()
    assert float(mae_loss(target, target, mask)) == 0.0
