"""`experiments/conv_cpu.py`: its conv variants compute the model's maths, and it runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import conv_cpu
from ssl_jax.models.convnet import ConvNet

# Two stages of two convs: a stride-2 stem, a stride-1 conv, a stride-2 stage opening.
WIDTHS, DEPTH, STEM = (4, 8), 2, 2
SPECS = conv_cpu.layer_specs(3, WIDTHS, DEPTH, STEM)


def _inputs(batch=4, size=8):
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(kx, (batch, size, size, 3))
    labels = jax.random.randint(ky, (batch,), 0, 10)
    params, stats = conv_cpu.init_state(kp, SPECS, 10)
    return params, stats, images, labels


def _loss_and_grads(name, params, stats, images, labels):
    loss_fn = conv_cpu.make_loss(conv_cpu.VARIANTS[name], SPECS)
    return jax.value_and_grad(loss_fn, has_aux=True)(params, stats, images, labels)


@pytest.mark.parametrize("name", ["nchw", "im2col", "im2col_patches", "im2col_strided"])
def test_variants_compute_the_default_outputs_stats_and_gradients(name):
    params, stats, images, labels = _inputs()
    variant = conv_cpu.VARIANTS[name]
    feats, _ = conv_cpu.features(params, stats, images, variant=variant, specs=SPECS)
    want_feats, _ = conv_cpu.features(
        params, stats, images, variant=conv_cpu.VARIANTS["default"], specs=SPECS
    )
    np.testing.assert_allclose(feats, want_feats, rtol=1e-4, atol=1e-5)
    (loss, new_stats), grads = _loss_and_grads(name, params, stats, images, labels)
    (want_loss, want_stats), want_grads = _loss_and_grads("default", params, stats, images, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(
        jax.tree.leaves((new_stats, grads)), jax.tree.leaves((want_stats, want_grads)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_each_conv_matches_lax_conv_on_a_random_odd_input():
    # Odd sizes and a non-square channel count catch a wrong tap order or stride.
    x = jax.random.normal(jax.random.key(1), (2, 7, 7, 5))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 5, 6))
    for stride in (1, 2):
        want = conv_cpu.conv_nhwc(x, kernel, stride)
        for conv in (conv_cpu.conv_im2col, conv_cpu.conv_im2col_patches):
            np.testing.assert_allclose(conv(x, kernel, stride), want, rtol=1e-4, atol=1e-4)
        nchw = conv_cpu.conv_nchw(jnp.transpose(x, (0, 3, 1, 2)), kernel, stride)
        np.testing.assert_allclose(jnp.transpose(nchw, (0, 2, 3, 1)), want, rtol=1e-4, atol=1e-4)


def test_the_default_stack_is_the_projects_convnet():
    model = ConvNet(rngs=nnx.Rngs(0), widths=WIDTHS, depth=DEPTH, stem_stride=STEM)
    params, stats, images, _ = _inputs()
    for p, layer in zip(params["convs"], model.layers, strict=True):
        p["kernel"] = layer.conv.kernel[...]
        p["scale"], p["bias"] = layer.bn.scale[...], layer.bn.bias[...]
    feats, new_stats = conv_cpu.features(
        params, stats, images, variant=conv_cpu.VARIANTS["default"], specs=SPECS
    )
    np.testing.assert_allclose(feats, model(images, train=True), rtol=1e-4, atol=1e-5)
    for s, layer in zip(new_stats, model.layers, strict=True):
        np.testing.assert_allclose(s["mean"], layer.bn.mean[...], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s["var"], layer.bn.var[...], rtol=1e-4, atol=1e-6)


def test_dry_run_prints_one_json_line_per_variant(capsys):
    argv = [
        "--batch=4", "--warmup=0", "--steps=1", "--rounds=1",
        "--variants=default,im2col,nchw", "--widths=4,8", "--image_size=8",
    ]  # fmt: skip
    returned = conv_cpu.main(argv)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == returned
    assert [r["variant"] for r in rows] == ["default", "im2col", "nchw"]
    for row in rows:
        assert row["status"] == "ok" and row["dtype"] == "float32" and row["batch"] == 4
        assert row["step_ms"] > 0 and row["images_per_sec"] > 0 and row["ratio_to_default"] > 0
        assert row["library_calls"]["xla_convs"] >= 0
    assert rows[0]["ratio_to_default"] == 1.0


def test_library_calls_counts_convs_outside_library_fusions():
    hlo = "\n".join([
        "%fused_computation (p: f32[1]) -> f32[1] {",
        "  %c = f32[1] convolution(%p, %p)",
        "}",
        "ENTRY %main (x: f32[1]) -> f32[1] {",
        "  %f = f32[1] fusion(%x), kind=kCustom, calls=%fused_computation,"
        ' backend_config={"fusion_config":{"kind":"__ynn_fusion"}}',
        "  %d = f32[1] convolution(%f, %x)",
        "}",
    ])  # fmt: skip
    assert conv_cpu.library_calls(hlo) == {"__ynn_fusion": 1, "xla_convs": 1}
