"""Each SimCLR augmentation op alone: shape, dtype, range, determinism per key,
identity at zero strength, and a property of what it does."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment


def _image(seed=0, size=16):
    return jax.random.uniform(jax.random.key(seed), (size, size, 3))


RANDOM_OPS = {
    "resized_crop": lambda k, x: augment.random_resized_crop(k, x),
    "color_jitter": lambda k, x: augment.random_color_jitter(k, x, strength=1.0, probability=1.0),
    "grayscale": lambda k, x: augment.random_grayscale(k, x, 0.5),
    "blur": lambda k, x: augment.random_blur(k, x, probability=1.0),
    "solarize": lambda k, x: augment.random_solarize(k, x, probability=0.5),
    "view": lambda k, x: augment.simclr_view(k, x, blur_probability=0.5, solarize_probability=0.2),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_op_shape_dtype_range_and_determinism(name):
    op = jax.jit(RANDOM_OPS[name])
    x = _image()
    a = op(jax.random.key(1), x)
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, op(jax.random.key(1), x))
    outputs = [op(jax.random.key(k), x) for k in range(2, 8)]
    assert any(not np.allclose(a, b) for b in outputs)  # the key matters


@pytest.mark.parametrize(
    "op",
    [
        lambda k, x: augment.random_color_jitter(k, x, strength=0.0),
        lambda k, x: augment.random_color_jitter(k, x, strength=1.0, probability=0.0),
        lambda k, x: augment.random_grayscale(k, x, 0.0),
        lambda k, x: augment.random_blur(k, x, probability=0.0),
        lambda k, x: augment.random_solarize(k, x, probability=0.0),
        lambda k, x: augment.random_resized_crop(k, x, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
        lambda k, x: augment.color_jitter(
            k, x, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
        ),
        lambda k, x: augment.simclr_view(
            k,
            x,
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            flip=False,
            color_strength=0.0,
            grayscale_probability=0.0,
        ),
    ],
)
def test_identity_at_zero_strength(op):
    x = _image()
    for seed in range(3):
        np.testing.assert_allclose(op(jax.random.key(seed), x), x, atol=1e-6)


def test_resized_crop_zooms_in_and_falls_back_to_the_whole_image():
    # A horizontal ramp: a crop of it spans a narrower range of values.
    ramp = jnp.broadcast_to(jnp.linspace(0, 1, 32)[None, :, None], (32, 32, 3))
    crop = augment.random_resized_crop(jax.random.key(0), ramp, scale=(0.1, 0.2), ratio=(1, 1))
    assert float(crop.max() - crop.min()) < 0.6
    # Impossible boxes (ratio 100: wider than the image) -> the whole image.
    whole = augment.random_resized_crop(jax.random.key(0), ramp, scale=(0.5, 0.5), ratio=(100, 100))
    np.testing.assert_allclose(whole, ramp, atol=1e-6)


def test_grayscale_has_equal_channels_and_keeps_luma():
    x = _image()
    g = augment.grayscale(x)
    np.testing.assert_allclose(g[..., 0], g[..., 1])
    np.testing.assert_allclose(g[..., 0], g[..., 2])
    luma = lambda im: np.asarray(im) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(luma(g), luma(x), rtol=1e-5)
    np.testing.assert_allclose(g[..., 0], luma(x), rtol=1e-5)


def test_hsv_round_trip_and_colorsys_reference():
    pixels = np.asarray(_image(size=4)).reshape(-1, 3)
    pixels = np.concatenate([pixels, [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0]]])
    hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(pixels, jnp.float32)))
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in pixels], atol=1e-5)
    back = augment.hsv_to_rgb(jnp.asarray(hsv))
    np.testing.assert_allclose(back, pixels, atol=1e-5)


@pytest.mark.parametrize("delta", [0.0, 0.1, -0.3, 0.5, 1.0])
def test_adjust_hue_matches_colorsys(delta):
    x = _image(size=4)
    expected = [
        colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in np.asarray(x).reshape(-1, 3))
    ]
    out = augment.adjust_hue(x, delta)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3), expected, atol=1e-5)
    if delta in (0.0, 1.0):
        np.testing.assert_allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.7])
def test_adjust_saturation_matches_colorsys(factor):
    x = _image(size=4)
    expected = [
        colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)
        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in np.asarray(x).reshape(-1, 3))
    ]
    out = augment.adjust_saturation(x, factor)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3), expected, atol=1e-5)
    if factor == 0.0:  # no saturation: every channel equals the max (HSV value)
        np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)


def test_brightness_and_contrast():
    x = 0.25 + 0.5 * _image()  # in [0.25, 0.75]: no clipping below
    np.testing.assert_allclose(augment.adjust_brightness(x, 1.2), 1.2 * x, rtol=1e-6)
    assert float(augment.adjust_brightness(x, 0.5).mean()) < float(x.mean())
    np.testing.assert_allclose(augment.adjust_brightness(x, 1.0), x)
    low = augment.adjust_contrast(x, 0.5)
    np.testing.assert_allclose(low.mean(axis=(0, 1)), x.mean(axis=(0, 1)), rtol=1e-5)
    assert float(low.std()) < float(x.std())
    np.testing.assert_allclose(augment.adjust_contrast(x, 0.0).std(axis=(0, 1)), 0.0, atol=1e-5)


def test_color_jitter_order_is_random_per_key():
    # With only contrast and saturation on, the output must be one of the two
    # compositions for the drawn factors, and both orders must occur. This
    # re-derives the factors from the key as `color_jitter` does.
    x = _image()
    orders = set()
    for seed in range(12):
        key = jax.random.key(seed)
        keys = jax.random.split(key, 5)
        c = jax.random.uniform(keys[1], minval=0.5, maxval=1.5)
        s = jax.random.uniform(keys[2], minval=0.5, maxval=1.5)
        out = augment.color_jitter(key, x, brightness=0, contrast=0.5, saturation=0.5, hue=0)
        c_first = augment.adjust_saturation(augment.adjust_contrast(x, c), s)
        s_first = augment.adjust_contrast(augment.adjust_saturation(x, s), c)
        assert not np.allclose(c_first, s_first, atol=1e-4)
        matches = [np.allclose(out, c_first, atol=1e-5), np.allclose(out, s_first, atol=1e-5)]
        assert sum(matches) == 1
        orders.add(matches.index(True))
    assert orders == {0, 1}


def test_blur_preserves_constants_and_is_identity_at_tiny_sigma():
    constant = jnp.full((16, 16, 3), 0.3)
    np.testing.assert_allclose(augment.gaussian_blur(constant, 1.5, 5), constant, atol=1e-6)
    x = _image()
    np.testing.assert_allclose(augment.gaussian_blur(x, 1e-3, 5), x, atol=1e-6)
    blurred = augment.gaussian_blur(x, 2.0, 5)
    assert float(jnp.abs(jnp.diff(blurred, axis=1)).mean()) < float(
        jnp.abs(jnp.diff(x, axis=1)).mean()
    )
    np.testing.assert_allclose(blurred.mean(), x.mean(), atol=0.02)
    assert augment.blur_kernel_size(224) == 23 and augment.blur_kernel_size(16) == 3


def test_solarize_inverts_above_threshold():
    x = jnp.array([0.0, 0.2, 0.49, 0.5, 0.8, 1.0]).reshape(1, 6, 1)
    np.testing.assert_allclose(augment.solarize(x).ravel(), [0.0, 0.2, 0.49, 0.5, 0.2, 0.0])


def test_view_batch_is_per_example_and_independent_of_batch_size():
    images = jnp.stack([_image(s) for s in range(4)])
    rng = jax.random.key(0)
    batch = augment.simclr_view_batch(rng, images, blur_probability=0.5)
    assert batch.shape == images.shape and batch.dtype == jnp.float32
    np.testing.assert_allclose(
        augment.simclr_view_batch(rng, images[:2], blur_probability=0.5), batch[:2], atol=1e-6
    )
    same = augment.simclr_view_batch(rng, jnp.stack([images[0]] * 2), blur_probability=0.5)
    assert not np.allclose(same[0], same[1])  # each example has its own key
