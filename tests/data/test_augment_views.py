"""The batched view pipeline (`ViewRecipe`, `view_params`, `apply_view`,
`view_batch`) against the numpy references of
tests/data/augment_references.py: SimCLR's recipe (`recipes.simclr_views`)
and its jitter strengths, the draws' frequencies, the CPU's chunks and
shards, lowering for accelerators, and per-example determinism of every
random op."""

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment
from ssl_jax.data.augment import recipes
from ssl_jax.data.augment import views as augment_views
from tests import forkserver
from tests.data.augment_references import assert_uniform_range, image, np_jitter, np_view, row

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _simclr_view_recipe(strength=1.0, **overrides):
    """One view of SimCLR's pair (both are the same) as a `ViewRecipe`."""
    return augment.ViewRecipe(**recipes.simclr_views(strength, **overrides)[0])


def _one_view(recipe):
    """The view of one image `[H, W, C]` from its own key, through the batch
    path (a batch of one)."""
    return lambda key, x: augment.view_batch(key, x[None], recipe)[0]


def _view_draws(images, recipe, seed=0):
    keys = augment.example_keys(jax.random.key(seed), images.shape[0])
    h, w = images.shape[1:3]
    return jax.vmap(lambda k: augment.view_params(k, h, w, recipe))(keys)


# ----------------------------------------------------------------------------- SimCLR's jitter


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_simclr_views_draw_the_papers_jitter_strengths(strength):
    # SimCLR, appendix A: brightness, contrast, saturation 0.8 s; hue 0.2 s.
    # Drawn through simclr_views + view_params, the path view_batch takes
    # (test_view_matches_numpy_reference ties the draws to the output).
    recipe = _simclr_view_recipe(strength)
    keys = augment.example_keys(jax.random.key(1), 3000)
    params = jax.vmap(lambda k: augment.view_params(k, 8, 8, recipe))(keys)["jitter"]
    for name in ("brightness", "contrast", "saturation"):
        assert_uniform_range(np.asarray(params[name]), 1 - 0.8 * strength, 1 + 0.8 * strength)
    assert_uniform_range(np.asarray(params["hue"]), -0.2 * strength, 0.2 * strength)


def test_simclr_views_jitter_with_the_papers_strengths():
    # Output-level: the views of simclr_views(s), jitter alone, equal the
    # numpy jitter of the amounts drawn with the paper's constants, written
    # out here (same keys: view_batch gives row i example i's key).
    s = 0.7
    jitter_only = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip": False,
                   "color_probability": 1.0, "grayscale_probability": 0.0,
                   "blur_probability": 0.0}  # fmt: skip
    written_out = augment.ViewRecipe(
        brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, **jitter_only
    )
    images = np.stack([np.asarray(image(i, size=8)) for i in range(6)])
    out = augment.view_batch(
        jax.random.key(4), jnp.asarray(images), _simclr_view_recipe(s, **jitter_only)
    )
    params = _view_draws(images, written_out, seed=4)
    for i in range(len(images)):
        np.testing.assert_allclose(
            out[i], np_jitter(images[i], row(params["jitter"], i)), atol=2e-5
        )


# ----------------------------------------------------------------------------- views


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])  # one image at a time / one batch
def test_view_matches_numpy_reference(monkeypatch, chunk_bytes):
    monkeypatch.setattr(augment_views, "_CPU_CHUNK_BYTES", chunk_bytes)
    images = np.stack([np.asarray(image(s, size=12)) for s in range(12)])
    recipe = _simclr_view_recipe(
        blur_probability=0.5, solarize_probability=0.3, grayscale_probability=0.3
    )
    params = _view_draws(images, recipe, seed=2)
    # Every stage is drawn for some images and not for others.
    for drawn in (params["flip"], params["grayscale"], params["blur"], params["solarize"],
                  params["jitter"]["apply"]):  # fmt: skip
        assert 0 < int(np.sum(drawn)) < len(images)
    out = np.asarray(augment.apply_view(jnp.asarray(images), params, recipe))
    for i in range(len(images)):
        expected = np_view(images[i], row(params, i), (12, 12), augment.blur_kernel_size(12))
        np.testing.assert_allclose(out[i], expected, atol=3e-5)
    # view_batch draws row i from example i's key; and one image alone (its
    # draws in a batch of one) gets the view of its row.
    rng = jax.random.key(2)
    batch = augment.view_batch(rng, jnp.asarray(images), recipe)
    np.testing.assert_allclose(batch, out, atol=1e-6)
    alone = augment.view_params(augment.example_keys(rng, 12)[3], 12, 12, recipe)
    one = augment.apply_view(
        jnp.asarray(images[3:4]), jax.tree.map(lambda p: p[None], alone), recipe
    )
    np.testing.assert_allclose(one[0], out[3], atol=1e-6)


def test_view_draw_frequencies():
    recipe = augment.ViewRecipe(
        grayscale_probability=0.2, blur_probability=0.5, solarize_probability=0.1
    )
    p = jax.tree.map(np.asarray, _view_draws(np.zeros((4000, 8, 8, 3)), recipe))
    for name, expected in [("flip", 0.5), ("grayscale", 0.2), ("blur", 0.5), ("solarize", 0.1)]:
        assert abs(p[name].mean() - expected) < 0.03, name
    assert_uniform_range(p["blur_sigma"], 0.1, 2.0)
    no_flip = augment.ViewRecipe(flip=False)
    assert not np.asarray(_view_draws(np.zeros((200, 8, 8, 3)), no_flip)["flip"]).any()


def test_integer_probabilities_from_a_config_work():
    x = image()
    recipe = _simclr_view_recipe(
        color_probability=1, grayscale_probability=0, blur_probability=0, solarize_probability=1
    )
    out = _one_view(recipe)(jax.random.key(0), x)
    assert out.shape == x.shape


def test_view_of_uint8_equals_view_of_floats():
    images = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    recipe = _simclr_view_recipe(blur_probability=0.5)
    params = _view_draws(images, recipe)
    a = augment.apply_view(jnp.asarray(images), params, recipe)
    b = augment.apply_view(augment.to_float(jnp.asarray(images)), params, recipe)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cpu_chunks_give_the_whole_batch_result(monkeypatch):
    # On accelerators apply_view runs `_apply_view_whole` on the batch at once;
    # on a CPU, chunks of it (here 2 images) must give the same views.
    image_bytes = 4 * 3 * 24 * 24
    monkeypatch.setattr(augment_views, "_CPU_CHUNK_BYTES", 2 * image_bytes)
    assert augment_views._images_per_step(6, image_bytes, jax.device_count()) == 2
    images = jnp.stack([image(s, size=24) for s in range(6)])
    recipe = _simclr_view_recipe(blur_probability=0.5, solarize_probability=0.2)
    params = _view_draws(images, recipe)
    whole = augment_views._apply_view_whole(images, params, recipe, (24, 24))
    # (float sums reassociate differently per chunk: ~1e-6.)
    np.testing.assert_allclose(augment.apply_view(images, params, recipe), whole, atol=1e-5)


def test_images_per_step_fit_the_budget_and_follow_the_shards():
    assert augment_views._images_per_step(256, 12 * 1024, 1) == 16  # 32 px: 21 fit, 16 divides
    assert augment_views._images_per_step(32, 4 * 3 * 224 * 224, 1) == 1
    assert augment_views._images_per_step(7, 1000, 1) == 7
    assert augment_views._images_per_step(7, 50_000, 1) == 1
    # Over 8 devices: the per-device count, 8 times (32 images each at 32 px).
    assert augment_views._images_per_step(256, 12 * 1024, 8) == 8 * 16
    assert augment_views._images_per_step(32, 4 * 3 * 224 * 224, 8) == 8
    assert augment_views._images_per_step(12, 1000, 8) == 12  # not shardable by 8: as on 1


SHARDED_VIEWS = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ssl_jax.data import augment

augment.views._CPU_CHUNK_BYTES = 4 * 3 * 12 * 12  # one 12 px image per device per step
images = jax.random.uniform(jax.random.key(0), (32, 12, 12, 3))
recipe = augment.ViewRecipe(**augment.recipes.simclr_views(blur_probability=0.5)[0])
# The caller passes the device count its batch is sharded over.
views = lambda rng, x: augment.view_batch(rng, x, recipe, devices=jax.device_count())
rng = jax.random.key(1)
alone = jax.jit(views)(rng, images)
sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
sharded = jax.jit(views, out_shardings=sharding)
compiled = sharded.lower(rng, jax.device_put(images, sharding)).compile()
assert "all-gather" not in compiled.as_text()  # each device makes its own views
# (XLA may reassociate float sums differently with and without sharding: ~1e-6.)
np.testing.assert_allclose(compiled(rng, jax.device_put(images, sharding)), alone, atol=1e-5)
print("ok")
"""


def test_views_of_a_batch_sharded_over_8_devices(tmp_path):
    # The CPU loop cuts the batch along its shards: no device gathers the batch.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = forkserver.run(
        [sys.executable, "-c", SHARDED_VIEWS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_view_lowers_for_gpu_and_tpu_without_callbacks_or_loops():
    recipe = _simclr_view_recipe(blur_probability=0.5, solarize_probability=0.2)

    def views(rng, x):
        return augment.view_batch(rng, x, recipe)

    args = (jax.random.key(0), jnp.zeros((4, 16, 16, 3)))
    for platform in ("cuda", "tpu"):
        text = jax.export.export(jax.jit(views), platforms=[platform])(*args).mlir_module()
        ops = set(re.findall(r"stablehlo\.[a-z_]+", text))
        assert "stablehlo.custom_call" not in ops  # host callbacks lower to custom calls
        assert "stablehlo.while" not in ops  # the whole batch at once, no CPU chunks
        assert "stablehlo.case" in ops  # (the test sees the ops: skipping stages lowers to case)
    cpu = jax.export.export(jax.jit(views), platforms=["cpu"])(*args).mlir_module()
    assert "stablehlo.custom_call" not in cpu


RANDOM_OPS = {
    "resized_crop": lambda k, x: augment.random_resized_crop(k, x),
    "color_jitter": lambda k, x: augment.color_jitter(
        k, x, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2
    ),
    "grayscale": lambda k, x: augment.random_grayscale(k, x, 0.5),
    "blur": lambda k, x: augment.random_blur(k, x, probability=1.0),
    "solarize": lambda k, x: augment.random_solarize(k, x, probability=0.5),
    "view": _one_view(_simclr_view_recipe(blur_probability=0.5, solarize_probability=0.2)),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_op_shape_dtype_range_and_determinism(name):
    op = jax.jit(RANDOM_OPS[name])
    x = image()
    a = op(jax.random.key(1), x)
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, op(jax.random.key(1), x))
    outputs = [op(jax.random.key(k), x) for k in range(2, 8)]
    assert any(not np.allclose(a, b) for b in outputs)  # the key matters
    batch = jax.vmap(op)(augment.example_keys(jax.random.key(1), 3), jnp.stack([x] * 3))
    np.testing.assert_allclose(
        batch[0], op(augment.example_keys(jax.random.key(1), 3)[0], x), atol=1e-6
    )


@pytest.mark.parametrize(
    "op",
    [
        lambda k, x: augment.apply_color_jitter(
            x,
            augment.jitter_params(
                k, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, probability=0.0
            ),
        ),
        lambda k, x: augment.random_grayscale(k, x, 0.0),
        lambda k, x: augment.random_blur(k, x, probability=0.0),
        lambda k, x: augment.random_solarize(k, x, probability=0.0),
        lambda k, x: augment.random_resized_crop(k, x, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
        lambda k, x: augment.color_jitter(
            k, x, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
        ),
        _one_view(
            _simclr_view_recipe(
                0.0,
                crop_scale=(1.0, 1.0),
                crop_ratio=(1.0, 1.0),
                flip=False,
                grayscale_probability=0.0,
                blur_probability=0.0,
            )
        ),
    ],
)
def test_identity_at_zero_strength(op):
    x = image()
    for seed in range(3):
        np.testing.assert_allclose(op(jax.random.key(seed), x), x, atol=1e-6)


def test_view_batch_is_per_example_and_independent_of_batch_size():
    images = jnp.stack([image(s) for s in range(4)])
    rng = jax.random.key(0)
    recipe = _simclr_view_recipe(blur_probability=0.5)
    batch = augment.view_batch(rng, images, recipe)
    assert batch.shape == images.shape and batch.dtype == jnp.float32
    np.testing.assert_allclose(augment.view_batch(rng, images[:2], recipe), batch[:2], atol=1e-6)
    same = augment.view_batch(rng, jnp.stack([images[0]] * 2), recipe)
    assert not np.allclose(same[0], same[1])  # each example has its own key
