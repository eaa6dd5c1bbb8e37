"""The ViT encoder: patches, sin-cos positions, pooling, parameter counts, decay mask."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import optim
from ssl_jax.models.vit import patchify, sincos_2d, unpatchify
from ssl_jax.registry import MODELS


def build(name="vit_test", seed=0, **kwargs):
    return MODELS.get(name)(rngs=nnx.Rngs(seed), **kwargs)


def num_params(model):
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_names_are_registered():
    assert {"vit", "vit_test", "vit_mini", "vit_tiny", "vit_small", "vit_base"} <= set(
        MODELS.names()
    )


@pytest.mark.parametrize("shape,p", [((2, 8, 12, 3), 4), ((1, 6, 6, 1), 2), ((3, 5, 5, 2), 5)])
def test_unpatchify_inverts_patchify(shape, p):
    x = jax.random.normal(jax.random.key(0), shape)
    patches = patchify(x, p)
    grid = (shape[1] // p, shape[2] // p)
    assert patches.shape == (shape[0], grid[0] * grid[1], p * p * shape[3])
    np.testing.assert_array_equal(unpatchify(patches, p, grid), x)


def test_patchify_order_is_row_major_grid_then_pixels():
    x = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    patches = np.asarray(patchify(jnp.asarray(x), 2))
    # Patch 1 is grid row 0, column 1: pixels rows 0-1, columns 2-3.
    np.testing.assert_array_equal(patches[1, 1], x[1, 0:2, 2:4].reshape(-1))
    np.testing.assert_array_equal(patches[0, 2], x[0, 2:4, 0:2].reshape(-1))


def test_patchify_rejects_indivisible_images():
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        patchify(jnp.zeros((1, 10, 8, 3)), 4)


def test_sincos_matches_an_independent_formula():
    dim, grid = 16, (3, 5)
    emb = sincos_2d(dim, grid)
    assert emb.shape == (15, 16) and emb.dtype == np.float32
    quarter = dim // 4
    for index in range(15):
        row, col = divmod(index, grid[1])
        for half, pos in ((0, row), (1, col)):
            for i in range(quarter):
                angle = pos / 10000 ** (i / quarter)
                base = half * dim // 2
                assert math.isclose(emb[index, base + i], math.sin(angle), abs_tol=1e-6)
                assert math.isclose(emb[index, base + quarter + i], math.cos(angle), abs_tol=1e-6)


def test_sincos_rejects_widths_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(6, (2, 2))


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_forward_shapes_and_pooling(pool):
    model = build(pool=pool)
    forward = nnx.jit(lambda m, x, train: m(x, train=train), static_argnums=2)
    x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    out = forward(model, x, False)
    assert out.shape == (3, model.feature_dim) == (3, 32) and out.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(out))
    tokens = nnx.jit(lambda m, p: m.encode_tokens(p, None, (4, 4)))(model, patchify(x, 4))
    assert tokens.shape == (3, 16 + (pool == "cls"), 32)
    expected = tokens[:, 0] if pool == "cls" else tokens.mean(axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(out, forward(model, x, True))  # no dropout
    # Per example: the batch does not change an image's features.
    np.testing.assert_allclose(forward(model, x[:1], False), out[:1], rtol=1e-5, atol=1e-6)


def test_cls_token_exists_only_when_pooling_on_it():
    assert build(pool="cls").cls_token is not None and build(pool="gap").cls_token is None
    assert num_params(build(pool="cls")) - num_params(build(pool="gap")) == 32
    with pytest.raises(ValueError, match="pool"):
        build(pool="max")


def test_encoding_a_subset_equals_nothing_but_those_tokens():
    """Positions travel with their patches: encoding patches (2, 0) at indices (2, 0)
    equals encoding the two-patch image made of them in any order, and position
    embeddings make the patch order matter otherwise."""
    model = build(pool="gap", depth=1)
    patches = jax.random.normal(jax.random.key(1), (1, 16, 48))
    picked = model.encode_tokens(patches[:, [2, 0]], jnp.array([[2, 0]]), (4, 4))
    swapped = model.encode_tokens(patches[:, [0, 2]], jnp.array([[0, 2]]), (4, 4))
    np.testing.assert_allclose(picked[:, ::-1], swapped, rtol=1e-5, atol=1e-6)
    wrong = model.encode_tokens(patches[:, [2, 0]], jnp.array([[0, 2]]), (4, 4))
    assert not np.allclose(picked, wrong, atol=1e-3)


def test_vit_base_parameter_count():
    # timm's vit_base_patch16_224 (86,567,656) minus the 1000-way head
    # (768 * 1000 + 1000) and the learned position embedding (197 * 768).
    model = nnx.eval_shape(lambda: build("vit_base"))
    assert num_params(model) == 86_567_656 - 769_000 - 197 * 768
    assert model.feature_dim == 768


@pytest.mark.parametrize(
    "name,dim",
    [("vit_test", 32), ("vit_mini", 128), ("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)],
)
def test_named_sizes_accept_any_multiple_of_the_patch_size(name, dim):
    model = nnx.eval_shape(lambda: build(name))
    for size in (model.patch_size, 2 * model.patch_size, 3 * model.patch_size):
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        out = nnx.eval_shape(lambda m, x: m(x, train=False), model, x)
        assert out.shape == (2, dim)


def test_weight_decay_mask_decays_kernels_and_tokens_only():
    params = nnx.state(build(), nnx.Param)
    flat = dict(nnx.to_flat_state(optim.decay_mask(nnx.as_pure(params))))
    named = {"/".join(map(str, k)): v for k, v in flat.items()}
    assert named["cls_token"] is True  # [1, 1, D], decayed as in MAE's reference code
    assert named["patch_embed/kernel"] is True and named["blocks/0/attn/qkv/kernel"] is True
    assert named["patch_embed/bias"] is False and named["norm/scale"] is False
    assert named["blocks/1/norm2/bias"] is False


def test_gradients_reach_every_parameter():
    model = build()
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3), minval=-1, maxval=1)
    target = jax.random.normal(jax.random.key(1), (4, 32))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, train=True) * target)))(model)
    norms = {k: float(jnp.linalg.norm(g[...])) for k, g in nnx.to_flat_state(grads)}
    assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


def test_feature_map_is_the_patch_tokens_on_their_grid():
    """Its mean is the `gap` pooling; with a class token, that token is left out."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 8, 1))
    gap = MODELS.get("vit_test")(rngs=nnx.Rngs(0), pool="gap", in_channels=1)
    fmap = gap.feature_map(x, train=False)
    assert fmap.shape == (2, 4, 2, 32) and gap.in_channels == 1
    np.testing.assert_allclose(fmap.mean(axis=(1, 2)), gap(x, train=False), rtol=1e-5, atol=1e-6)
    cls = MODELS.get("vit_test")(rngs=nnx.Rngs(0), pool="cls", in_channels=1)
    tokens = cls.encode_tokens(patchify(x, 4), None, (4, 2))  # [class, row-major patches]
    fmap = cls.feature_map(x, train=False)
    np.testing.assert_allclose(fmap[:, 3, 1], tokens[:, 1 + 3 * 2 + 1], rtol=1e-6)
    np.testing.assert_allclose(fmap[:, 0, 0], tokens[:, 1], rtol=1e-6)
