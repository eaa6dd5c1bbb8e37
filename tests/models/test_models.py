"""The encoder contract: shapes, parameter counts, batch norm, gradients, lookup."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.models.resnet import Bottleneck, ResNet
from ssl_jax.registry import MODELS, UnknownNameError

OURS = ["convnet", "convnet_tiny", "resnet18", "resnet34", "resnet50", "resnet_tiny"]


def build(name, seed=0, **kwargs):
    return MODELS.get(name)(rngs=nnx.Rngs(seed), **kwargs)


def abstract(name, **kwargs):
    """The model with shape-only leaves: nothing is allocated or computed."""
    return nnx.eval_shape(lambda: build(name, **kwargs))


def images(batch, size, seed=0, channels=3):
    return jax.random.uniform(
        jax.random.key(seed), (batch, size, size, channels), minval=-1, maxval=1
    )


@nnx.jit(static_argnames="train")
def forward(model, x, train):
    """`model(x, train=train)`, compiled: one compile per model is cheaper in
    tests than eager mode, which compiles every op of every new shape."""
    return model(x, train=train)


def num_params(model):
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def batch_stats(model):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_all_models_are_registered():
    assert set(OURS) <= set(MODELS.names())


# Models registered by other modules are checked too; add their input size here
# if 32 px does not suit them, or their inputs if they are not images.
INPUT_SIZE = {"resnet18": 224, "resnet34": 224, "resnet50": 224}
TOKENS = jax.ShapeDtypeStruct((2, 16), jnp.int32)
CLIPS = jax.ShapeDtypeStruct((2, 4, 16, 16, 3), jnp.float32)  # the default 16 px frames
SPECTROGRAMS = jax.ShapeDtypeStruct((2, 96, 64, 1), jnp.float32)  # 1 s of log-mel, 64 bands
INPUTS = {
    "audio_vit": SPECTROGRAMS,
    "audio_vit_test": SPECTROGRAMS,
    "token_transformer": TOKENS,
    "token_transformer_test": TOKENS,
    "clip_transformer": CLIPS,
    "clip_transformer_test": CLIPS,
}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_maps_its_inputs_to_features_abstractly(name):
    model = abstract(name)
    size = INPUT_SIZE.get(name, 32)
    x = INPUTS.get(name, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    for train in (True, False):
        out = nnx.eval_shape(lambda m, x, train=train: m(x, train=train), model, x)
        assert isinstance(model.feature_dim, int)
        assert out.shape == (2, model.feature_dim) and out.dtype == jnp.float32


@pytest.mark.parametrize(
    "name,size,kwargs",
    [
        ("convnet_tiny", 16, {}),
        ("convnet", 32, {}),
        ("convnet", 16, {"stem_stride": 1}),
        ("resnet_tiny", 16, {}),
        ("resnet_tiny", 32, {"stem": "imagenet"}),
        ("resnet_tiny", 16, {"in_channels": 1}),
    ],
)
def test_forward_gives_finite_float32_features(name, size, kwargs):
    model = build(name, **kwargs)
    x = images(4, size, channels=kwargs.get("in_channels", 3))
    for train in (True, False):
        out = forward(model, x, train)
        assert out.shape == (4, model.feature_dim) and out.dtype == jnp.float32
        assert jnp.all(jnp.isfinite(out)) and jnp.any(out != 0)


@pytest.mark.parametrize(
    "name,kwargs,dim",
    [
        ("resnet18", {}, 512),
        ("resnet34", {}, 512),
        ("resnet50", {}, 2048),
        ("resnet50", {"width": 32}, 1024),
        ("resnet_tiny", {}, 16),
        ("resnet_tiny", {"width": 4}, 8),
        ("convnet", {}, 128),
        ("convnet", {"widths": (8, 24)}, 24),
        ("convnet_tiny", {}, 16),
    ],
)
def test_feature_dim(name, kwargs, dim):
    assert abstract(name, **kwargs).feature_dim == dim


@pytest.mark.parametrize(
    "name,expected",
    [
        # torchvision's counts minus the fc layer (feature_dim * 1000 + 1000).
        ("resnet18", 11_689_512 - (512 * 1000 + 1000)),
        ("resnet34", 21_797_672 - (512 * 1000 + 1000)),
        ("resnet50", 25_557_032 - (2048 * 1000 + 1000)),
    ],
)
def test_parameter_counts_match_torchvision(name, expected):
    assert num_params(abstract(name, stem="imagenet")) == expected


def test_cifar_stem_is_smaller_than_imagenet_stem():
    # 7x7x3x64 kernel vs 3x3x3x64: the only difference between the two stems.
    diff = num_params(abstract("resnet18", stem="imagenet")) - num_params(abstract("resnet18"))
    assert diff == (49 - 9) * 3 * 64


@pytest.mark.parametrize(
    "name,kwargs,size,expected",
    [
        # Stages at strides 1, 2 after the stem: the imagenet stem divides by 4.
        ("resnet_tiny", {"stem": "imagenet"}, 64, 8),
        ("resnet_tiny", {"stem": "cifar"}, 64, 32),
        ("resnet_tiny", {"stem": "imagenet"}, 30, 4),  # 30 -> 15 -> 8 -> 4, as in PyTorch.
        ("resnet18", {"stem": "imagenet"}, 224, 7),
        ("resnet18", {"stem": "cifar"}, 32, 4),
        ("convnet", {}, 32, 4),
        ("convnet", {"stem_stride": 1}, 32, 8),
        ("convnet_tiny", {}, 16, 8),
    ],
)
def test_feature_map_resolution(name, kwargs, size, expected):
    model = abstract(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    fmap = nnx.eval_shape(lambda m, x: m.feature_map(x, train=False), model, x)
    assert fmap.shape == (1, expected, expected, model.feature_dim)


@pytest.mark.parametrize("name", ["convnet_tiny", "resnet_tiny"])
def test_train_updates_running_stats_and_eval_does_not(name):
    model = build(name)
    x = images(8, 16)
    before = batch_stats(model)
    forward(model, x, False)
    assert all(np.array_equal(a, b) for a, b in zip(before, batch_stats(model), strict=True))
    forward(model, x, True)
    after = batch_stats(model)
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", ["convnet_tiny", "resnet_tiny"])
def test_eval_is_per_example_and_train_uses_the_batch(name):
    model = build(name)
    x = images(8, 16)
    # Same first example, different company.
    y = x.at[1:].set(images(7, 16, seed=1))
    assert np.allclose(
        forward(model, x, False)[0], forward(model, y, False)[0], rtol=1e-5, atol=1e-6
    )
    assert np.allclose(
        forward(model, x, False)[:1], forward(model, x[:1], False), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(
        forward(model, x, True)[0], forward(model, y, True)[0], rtol=1e-3, atol=1e-4
    )


def test_eval_uses_running_stats_after_training():
    model = build("convnet_tiny")
    x = images(8, 16)
    untrained = forward(model, x, False)
    for _ in range(3):
        forward(model, x, True)
    assert not np.allclose(untrained, forward(model, x, False), rtol=1e-3, atol=1e-4)


def _grads(model, x):
    target = jax.random.normal(jax.random.key(7), (x.shape[0], model.feature_dim))
    return nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, train=True) * target)))(model)


def _norms(grads):
    """{"blocks/0/conv1/conv/kernel": gradient norm, ...} for every parameter."""
    return {
        "/".join(map(str, path)): float(jnp.linalg.norm(g[...]))
        for path, g in nnx.to_flat_state(grads)
    }


def test_convnet_gradients_reach_every_parameter():
    norms = _norms(_grads(build("convnet_tiny"), images(8, 16)))
    assert len([p for p in norms if p.endswith("kernel")]) == 2
    assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


def test_resnet_gradients_without_zero_init_reach_every_conv():
    norms = _norms(_grads(build("resnet_tiny", zero_init_residual=False), images(8, 16)))
    kernels = {p: n for p, n in norms.items() if p.endswith("kernel")}
    # Stem, 2 convs in each of 2 blocks, 1 projection shortcut.
    assert len(kernels) == 6
    assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


def test_resnet_zero_init_residual():
    model = build("resnet_tiny")
    x = images(8, 16)
    # Every block starts as its shortcut: block 0 (identity shortcut) returns
    # its input (which is post-ReLU, so the final ReLU changes nothing).
    h, out = nnx.jit(lambda m, x: (h := m.stem(x, train=True), m.blocks[0](h, train=True)))(
        model, x
    )
    assert np.allclose(out, h) and jnp.any(h != 0)

    norms = _norms(_grads(model, x))
    assert all(np.isfinite(n) for n in norms.values())
    for path, norm in norms.items():
        if "shortcut" in path or "stem" in path or "conv2/bn" in path:
            # Signal flows through the shortcuts; the zeroed BN scale (and its
            # bias) is what gets the first update and lets the branch grow in.
            assert norm > 0, path
        else:
            # The rest of each branch sits behind a zero scale, so its gradient
            # is exactly zero on the first step.
            assert "blocks" in path and norm == 0, path


def _tiny_bottleneck_resnet(**kwargs):
    return ResNet(Bottleneck, (1, 1), width=4, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize(
    "make",
    [lambda **kw: build("resnet_tiny", **kw), _tiny_bottleneck_resnet],
    ids=["basic", "bottleneck"],
)
def test_zero_init_residual_sets_last_bn_scale_to_zero(make):
    for zero in (True, False):
        model = make(zero_init_residual=zero)
        for block in model.blocks:
            last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
            assert np.all(last.bn.scale[...] == (0 if zero else 1))
            assert np.all(block.conv1.bn.scale[...] == 1)


def test_bottleneck_resnet_forward():
    model = _tiny_bottleneck_resnet()
    assert model.feature_dim == 8 * Bottleneck.expansion
    out = forward(model, images(4, 16), True)
    assert out.shape == (4, 32) and jnp.all(jnp.isfinite(out))


def test_unknown_model_name_suggests_the_right_one():
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        MODELS.get("resnt18")


@pytest.mark.parametrize("name", OURS)
def test_unknown_kwarg_fails(name):
    with pytest.raises(TypeError, match="widht"):
        abstract(name, widht=32)


def test_unknown_stem_fails():
    with pytest.raises(ValueError, match="stem"):
        abstract("resnet_tiny", stem="tiny")


def test_resnet50_strides_on_the_3x3_conv():
    # "v1.5": the first block of a later stage downsamples in its 3x3 conv.
    block = abstract("resnet50").blocks[3]  # first block of stage 2
    assert block.conv1.conv.strides == 1 and block.conv2.conv.strides == 2
    assert block.shortcut.conv.strides == 2
    assert block.conv2.conv.kernel.shape == (3, 3, 128, 128)


def test_conv_kernels_have_he_fan_out_init():
    model = build("convnet")
    kernel = model.layers[3].conv.kernel[...]  # 3x3, 64 -> 64
    fan_out = 3 * 3 * 64
    assert kernel.shape == (3, 3, 64, 64)
    assert np.isclose(float(jnp.std(kernel)), math.sqrt(2 / fan_out), rtol=0.05)
    assert not model.layers[3].conv.use_bias


@pytest.mark.parametrize("conv_init", ["he", "torch"])
def test_convnet_conv_init_statistics(conv_init):
    """ "he": He normal with fan_out (std sqrt(2 / (9 out))); "torch": PyTorch's
    nn.Conv2d default, U(+-1/sqrt(fan_in)) (std 1/sqrt(3 * 9 in)). The CIFAR
    recipes' choice rests on the difference, so both are pinned."""
    model = build("convnet", conv_init=conv_init, widths=(64, 64), depth=1)
    w = np.asarray(model.layers[1].conv.kernel[...])  # 3x3, 64 -> 64
    fan_in = fan_out = 9 * 64
    if conv_init == "he":
        np.testing.assert_allclose(w.std(), math.sqrt(2 / fan_out), rtol=0.05)
    else:
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.05)


def test_convnet_torch_init_matches_pytorch_itself():
    torch = pytest.importorskip("torch")
    reference = torch.nn.Conv2d(64, 128, 3, bias=False).weight.detach().numpy()
    ours = np.asarray(
        build("convnet", conv_init="torch", widths=(64, 128), depth=1).layers[1].conv.kernel[...]
    )
    np.testing.assert_allclose(ours.std(), reference.std(), rtol=0.03)
    np.testing.assert_allclose(np.abs(ours).max(), np.abs(reference).max(), rtol=0.01)


def test_unknown_conv_init_is_refused():
    with pytest.raises(ValueError, match="conv_init 'lecun'; choose one of he, torch"):
        build("convnet", conv_init="lecun")
