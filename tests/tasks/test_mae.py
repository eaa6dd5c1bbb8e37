"""The MAE task: masking, the masked encoder, the decoder, pictures, end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.models import vit
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.mae import num_visible, random_masking
from tests.test_main import run_main

TASK_KWARGS = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


def _task(pool="cls", **overrides):
    encoder = MODELS.get("vit_test")(rngs=nnx.Rngs(0), pool=pool)
    return TASKS.get("mae")(encoder, rngs=nnx.Rngs(1), **{**TASK_KWARGS, **overrides})


def _images(n=4, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return images.astype(jnp.uint8)


@pytest.mark.parametrize("ratio,expected", [(0.75, 16), (0.5, 32), (0.9, 6), (0.999, 1)])
def test_masking_keeps_an_exact_count_per_image(ratio, expected):
    keep, restore, mask = random_masking(jax.random.key(0), 5, 64, ratio)
    assert num_visible(64, ratio) == expected
    assert keep.shape == (5, expected) and restore.shape == (5, 64)
    np.testing.assert_array_equal(mask.sum(axis=1), 64 - expected)
    for b in range(5):
        # The kept indices are distinct and exactly the unmasked positions.
        assert sorted(np.asarray(keep[b]).tolist()) == np.flatnonzero(mask[b] == 0).tolist()


def test_masks_are_deterministic_per_key_and_differ_across_images_and_keys():
    # 64 patches: C(64, 16) possible masks, so two equal rows would mean shared keys.
    _, _, a = random_masking(jax.random.key(0), 8, 64, 0.75)
    _, _, b = random_masking(jax.random.key(0), 8, 64, 0.75)
    _, _, c = random_masking(jax.random.key(1), 8, 64, 0.75)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in np.asarray(a).tolist()}) == 8  # a fresh mask per image
    # Example i's mask depends on its index alone, not on the batch around it.
    _, _, small = random_masking(jax.random.key(0), 3, 64, 0.75)
    np.testing.assert_array_equal(small, a[:3])


def test_restore_puts_shuffled_tokens_back_in_grid_order():
    keep, restore, mask = random_masking(jax.random.key(3), 2, 16, 0.75)
    # [visible tokens (their grid index), masked placeholders (-1)] -> grid order.
    tokens = jnp.concatenate([keep, jnp.full((2, 12), -1)], axis=1)
    restored = jnp.take_along_axis(tokens, restore, axis=1)
    expected = np.where(np.asarray(mask) == 0, np.arange(16)[None], -1)
    np.testing.assert_array_equal(restored, expected)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_the_open_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        nnx.eval_shape(lambda: _task(mask_ratio=ratio))


def test_image_size_not_divisible_by_the_patch_size_is_rejected():
    task = _task()
    batch = {"image": _images(size=18)}
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        jax.eval_shape(lambda: task.loss(batch, jax.random.key(0), train=False))


def test_mae_needs_a_vit():
    encoder = nnx.eval_shape(lambda: MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="needs a ViT"):
        TASKS.get("mae")(encoder, rngs=nnx.Rngs(1))


@pytest.mark.parametrize("pool,prefix", [("cls", 1), ("gap", 0)])
@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_encoder_sees_only_the_visible_patches(monkeypatch, pool, prefix, ratio):
    seen = []
    original = vit.ViT.encode_tokens

    def spy(self, patches, positions, grid):
        out = original(self, patches, positions, grid)
        seen.append((patches.shape, out.shape))
        return out

    monkeypatch.setattr(vit.ViT, "encode_tokens", spy)
    task = _task(pool=pool, mask_ratio=ratio)
    batch = {"image": _images(n=2)}
    jax.eval_shape(lambda: task.loss(batch, jax.random.key(0), train=True))
    visible = num_visible(16, ratio)
    assert seen == [((2, visible, 48), (2, prefix + visible, 32))]


def test_training_cost_falls_with_the_mask_ratio():
    """Compiled FLOPs of forward + backward: fewer visible patches, less work."""
    flops = []
    for ratio in (0.25, 0.75):
        task = _task(mask_ratio=ratio)
        graphdef, params, rest = nnx.split(task, nnx.Param, ...)

        def loss(p, graphdef=graphdef, rest=rest):
            return nnx.merge(graphdef, p, rest).loss(
                {"image": _images(n=2)}, jax.random.key(0), train=True
            )[0]

        cost = jax.jit(jax.grad(loss)).lower(params).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops.append(cost["flops"])
    assert flops[1] < 0.8 * flops[0], flops


def test_loss_is_finite_and_learnable_on_a_fixed_batch():
    task = _task(crop_scale=None, flip=False)
    batch = {"image": _images(n=8)}
    graphdef, params, rest = nnx.split(task, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)

    @jax.jit
    def step(params):
        def loss_fn(p):
            return nnx.merge(graphdef, p, rest).loss(batch, jax.random.key(0), train=True)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), loss, metrics, grads

    params, first, metrics, grads = step(params)
    assert float(metrics["visible_fraction"]) == 0.25
    norms = {k: float(jnp.linalg.norm(g)) for k, g in nnx.to_flat_state(grads)}
    assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms
    for _ in range(30):
        params, loss, _, _ = step(params)
    assert float(loss) < 0.7 * float(first)


def test_loss_uses_rng_for_masks_and_augmentation():
    task = _task()
    batch = {"image": _images()}
    loss = jax.jit(lambda key: task.loss(batch, key, train=True)[0])
    a, b, c = loss(jax.random.key(0)), loss(jax.random.key(0)), loss(jax.random.key(1))
    assert float(a) == float(b) and float(a) != float(c)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_features_are_the_full_image_encoder_output(pool):
    task = _task(pool=pool)
    images = _images()
    features_fn = jax.jit(task.features)
    features = features_fn(images)
    assert features.shape == (4, 32)
    x = (images.astype(jnp.float32) / 255 - 0.5) / 0.5
    direct = jax.jit(lambda x: task.encoder(x, train=False))(x)
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features_fn(images[:1]), features[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_visualize_rows_are_original_masked_and_reconstruction(norm_pix_loss):
    task = _task(norm_pix_loss=norm_pix_loss)
    images = _images(n=3)
    picture = jax.jit(lambda batch: task.visualize(batch, jax.random.key(0)))({"image": images})
    assert picture.shape == (48, 48, 3) and picture.dtype == jnp.uint8
    rows = np.asarray(picture).reshape(3, 16, 3, 16, 3).transpose(0, 2, 1, 3, 4)
    np.testing.assert_array_equal(rows[0], images)
    _, _, mask = random_masking(jax.random.key(0), 3, 16, 0.75)
    hidden = np.asarray(mask).reshape(3, 4, 4).repeat(4, 1).repeat(4, 2)[..., None]
    hidden = np.broadcast_to(hidden, images.shape) > 0
    # Masked input: grey where hidden, the image elsewhere.
    np.testing.assert_array_equal(rows[1], np.where(hidden, 128, images))
    # Reconstruction: visible patches pasted from the input, predictions elsewhere.
    np.testing.assert_array_equal(rows[2][~hidden], np.asarray(images)[~hidden])
    assert not np.array_equal(rows[2][hidden], np.asarray(images)[hidden])


def test_main_runs_mae_end_to_end_and_saves_pictures(tmp_path):
    workdir = tmp_path / "mae"
    result = run_main(workdir, config="configs/mae.py:runlocal")
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "mae" and results["model"] == "vit_test"
    assert np.isfinite(results["final_loss"])
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    assert "mae (pretrained)" in result.stdout
    pictures = sorted(p.name for p in (workdir / "visuals").glob("*.png"))
    assert pictures == ["step_0000000.png", "step_0000003.png", "step_0000006.png"]


def test_the_decoder_knows_where_each_hidden_patch_is():
    # Every visible token the same, so the mask token is the only input at
    # the hidden positions: only the decoder's position embeddings can make
    # its predictions there differ from one position to another.
    task = _task()
    grid = (4, 4)
    keep, restore, mask = random_masking(jax.random.key(0), 2, 16, 0.75)
    tokens = jnp.ones((2, 1 + keep.shape[1], task.encoder.embed_dim))  # class token + visible
    pred = np.asarray(task.decoder(tokens, restore, grid))
    hidden = np.asarray(mask[0]) > 0
    predictions = pred[0][hidden]
    assert not np.allclose(predictions, predictions[:1], atol=1e-4)
