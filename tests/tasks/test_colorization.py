"""Colorization: the quantised gamut, the colour prior and its rebalancing
weights against float64 numpy, features from L alone, training, and the same
loss on one and eight devices."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks import colorization
from tests import sharded
from tests.data.test_lab import _reference_rgb_to_lab

ROOT = pathlib.Path(__file__).parents[2]
KWARGS = {"head_dim": 8, "crop_padding": 1, "flip": True}


def _task(**overrides):
    encoder = MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0), in_channels=1)
    return TASKS.get("colorization")(encoder, rngs=nnx.Rngs(1), **{**KWARGS, **overrides})


def _colour_batch(n=8, size=8, seed=0):
    """Two-colour images: a random colour on the left half, another on the right."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    images[:, :, : size // 2] = rng.integers(0, 256, (n, 1, 1, 3))
    images[:, :, size // 2 :] = rng.integers(0, 256, (n, 1, 1, 3))
    return {"image": jnp.asarray(images), "label": jnp.arange(n) % 3}


def _split(task):
    graphdef, params, rest = nnx.split(task, nnx.Param, ...)
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _loss(graphdef, params, rest, batch, rng, train=True):
    task = nnx.merge(graphdef, params, rest)
    loss, metrics = task.loss(batch, rng, train=train)
    return loss, (metrics, nnx.as_pure(nnx.split(task, nnx.Param, ...)[2]))


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_gamut_bins_are_every_10x10_cell_that_8_bit_srgb_reaches():
    """The faces-only shortcut against all 256^3 colours, in float64."""
    bins = colorization.gamut_bins(10)
    cells = set()
    v = np.arange(256) / 255.0
    for r in range(0, 256, 16):  # 16 red values per chunk: 1 M colours
        g, b, rr = np.meshgrid(v, v, v[r : r + 16], indexing="ij")
        ab = _reference_rgb_to_lab(np.stack([rr.ravel(), g.ravel(), b.ravel()], -1))[:, 1:]
        cells |= set(map(tuple, np.floor(ab / 10 + 0.5).astype(int)))
    expected = np.array(sorted(cells)) * 10.0
    np.testing.assert_array_equal(bins, expected)
    # The paper keeps 313 by its own gamut test; the span is the reference's.
    assert len(bins) == 261
    np.testing.assert_array_equal(bins.min(0), [-90, -110])
    np.testing.assert_array_equal(bins.max(0), [100, 90])
    assert (0.0, 0.0) in set(map(tuple, bins))


def test_smoothed_prior_and_weights_match_numpy():
    bins = colorization.gamut_bins(10)
    q = len(bins)
    histogram = np.zeros(q)
    histogram[[3, 40, 41, 200]] = [0.1, 0.5, 0.3, 0.1]
    d2 = ((bins[:, None] - bins[None]) ** 2).sum(-1)
    smoothed = np.exp(-d2 / 50.0) @ histogram
    smoothed /= smoothed.sum()
    got = np.asarray(colorization.smooth_prior(jnp.asarray(histogram, jnp.float32)))
    np.testing.assert_allclose(got, smoothed, rtol=1e-5, atol=1e-9)
    empty = np.asarray(colorization.smooth_prior(jnp.zeros(q)))
    np.testing.assert_allclose(empty, 1.0 / q)  # no data yet: uniform, so w = 1


def test_features_come_from_lightness_alone():
    """Pairs of colours with the very same float32 L but different ab (and
    RGB) give identical features: the encoder never sees a or b."""
    v = np.arange(0, 256, 4, dtype=np.uint8)
    colours = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    lab = np.asarray(jax.jit(augment.rgb_to_lab)(colours / np.float32(255.0)))
    _, first, inverse = np.unique(lab[:, 0], return_index=True, return_inverse=True)
    pairs = [
        (first[inverse[i]], i)
        for i in range(len(colours))
        if first[inverse[i]] != i and np.abs(lab[first[inverse[i]], 1:] - lab[i, 1:]).max() > 10
    ]
    assert len(pairs) >= 64
    pairs = np.array(pairs[:: len(pairs) // 64][:64])
    a = colours[pairs[:, 0]].reshape(1, 8, 8, 3)
    b = colours[pairs[:, 1]].reshape(1, 8, 8, 3)
    task = _task()
    features = jax.jit(lambda x: task.features(x))
    fa, fb = np.asarray(features(jnp.asarray(a))), np.asarray(features(jnp.asarray(b)))
    # Equal up to float32 rounding: L of a pair agrees to the last bit in the
    # table, but the compiled feature path may round it one ulp apart (7e-9
    # seen); reading a, b or RGB would move the features by ~1e-2.
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-6)
    # Not a constant function: another lightness changes them.
    assert np.abs(np.asarray(features(jnp.asarray(255 - a))) - fa).max() > 1e-4


def test_refuses_a_three_channel_encoder_and_an_unknown_loss():
    with pytest.raises(ValueError, match="in_channels=1"):
        TASKS.get("colorization")(MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="classification"):
        _task(loss="l1")


def test_augment_gives_l_and_subsampled_ab():
    task = _task()
    images = np.random.default_rng(3).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    batch = {"image": jnp.asarray(images)}  # every pixel its own colour
    out = task.augment(batch, jax.random.key(0), train=False)
    lab = _reference_rgb_to_lab(np.asarray(batch["image"]) / 255.0)
    np.testing.assert_allclose(out["image"][..., 0], (lab[..., 0] - 50) / 50, atol=1e-4)
    np.testing.assert_allclose(out["ab"], lab[:, ::4, ::4, 1:], atol=2e-3)
    assert out["ab"].shape == (8, 2, 2, 2)


def test_prior_is_the_running_mean_of_the_batches_nearest_bins():
    task = _task(skip_grey=True)
    graphdef, params, rest = _split(task)
    bins = colorization.gamut_bins(10)
    histograms = []
    for seed in range(2):
        batch = _colour_batch(seed=seed)
        batch["image"] = batch["image"].at[0].set(128)  # a grey image: left out
        # The same draw of the crop as the loss: augment with its key.
        ab = np.asarray(task.augment(batch, jax.random.key(seed), train=True)["ab"], np.float64)
        d2 = ((ab[..., None, :] - bins) ** 2).sum(-1)
        nearest = d2.argmin(-1)[1:]  # without the grey image
        histograms.append(np.bincount(nearest.ravel(), minlength=len(bins)) / nearest.size)
        _, (metrics, rest) = _loss(graphdef, params, rest, batch, jax.random.key(seed))
        np.testing.assert_allclose(float(metrics["colour_fraction"]), 7 / 8)
    np.testing.assert_allclose(rest["prior"], np.mean(histograms, 0), atol=1e-6)
    assert float(rest["prior_batches"]) == 2.0
    # Evaluation (train=False) leaves the prior alone.
    _, (_, after) = _loss(graphdef, params, rest, batch, jax.random.key(5), False)
    np.testing.assert_array_equal(after["prior"], rest["prior"])


@pytest.mark.parametrize("loss_kind", ["classification", "regression"])
def test_loss_is_finite_and_falls_on_a_fixed_batch(loss_kind):
    task = _task(loss=loss_kind)
    graphdef, params, rest = _split(task)
    batch = _colour_batch(n=16)
    # Adam: plain SGD moves a 261-way softmax slowly from its uniform start.
    tx = optax.adam(3e-2)

    @jax.jit
    def step(params, opt_state, rest):
        def objective(p):
            return _loss(graphdef, p, rest, batch, jax.random.key(0))

        (loss, (metrics, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_rest, loss

    opt_state, losses = tx.init(params), []
    for _ in range(20):
        params, opt_state, rest, loss = step(params, opt_state, rest)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
    picture = nnx.merge(graphdef, params, rest).visualize(batch, jax.random.key(0))
    assert picture.shape == (24, 16 * 8, 3) and picture.dtype == jnp.uint8


def test_same_loss_on_one_and_eight_devices():
    out = sharded.losses_on_one_and_eight_devices(
        task="colorization", model_kwargs={"in_channels": 1}, task_kwargs=KWARGS, state=("prior",)
    )
    np.testing.assert_allclose(out["one"], out["eight"], rtol=1e-5)
    assert out["state_gaps"][0] < 1e-6  # the histogram covers the global batch


def test_config_feeds_every_encoder_family_one_channel_and_the_supervised_baseline_rgb():
    from ssl_jax import config_lib
    from ssl_jax.evaluators.supervised import supervised_config

    for arg in ("", "runlocal", "encoder=resnet18", "encoder=vit,runlocal", "dataset=tfds:cifar10"):
        config = config_lib.get_config(str(ROOT / "configs" / "colorization.py"), arg)
        assert config.model_kwargs.in_channels == 1, arg
        assert "in_channels" not in supervised_config(config, 10).model_kwargs, arg
    with pytest.raises(ValueError, match="finetune"):
        config_lib.get_config(str(ROOT / "configs" / "colorization.py"), "finetune")
