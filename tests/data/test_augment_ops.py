"""The single augmentation ops (brightness, contrast, saturation, hue,
grayscale, blur, solarisation), colour jitter (its draws, order and
probability) and resized crops against the numpy references of
tests/data/augment_references.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment
from tests.data.augment_references import (
    assert_uniform_range,
    image,
    np_blur,
    np_brightness,
    np_contrast,
    np_grayscale,
    np_hue,
    np_jitter,
    np_resized_crop,
    np_saturation,
    np_solarize,
    row,
)

# ----------------------------------------------------------------------------- single ops


@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.7])
def test_brightness_and_contrast_match_numpy(factor):
    x = np.asarray(image())
    np.testing.assert_allclose(
        augment.adjust_brightness(x, factor), np_brightness(x, factor), atol=1e-6
    )
    np.testing.assert_allclose(
        augment.adjust_contrast(x, factor), np_contrast(x, factor), atol=1e-6
    )


def test_contrast_uses_each_channels_own_mean():
    # Channels with different means: a grey (all-channel) mean would move them.
    x = np.stack(
        [np.full((4, 4), 0.2), np.full((4, 4), 0.5), np.linspace(0, 1, 16).reshape(4, 4)], -1
    )
    out = np.asarray(augment.adjust_contrast(x, 0.5))
    np.testing.assert_allclose(out[..., 0], 0.2, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], 0.5, atol=1e-6)
    np.testing.assert_allclose(out, np_contrast(x, 0.5), atol=1e-6)


def _hsv_test_pixels():
    """Random pixels plus the corner cases: black, white, grey, primaries,
    ties between channels."""
    pixels = np.asarray(image(size=6)).reshape(-1, 3)
    corners = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
               [1, 1, 0], [0.3, 0.3, 0.9], [0.9, 0.2, 0.9], [0.2, 0.7, 0.7]]  # fmt: skip
    return np.concatenate([pixels, corners]).reshape(1, -1, 3).astype(np.float32)


@pytest.mark.parametrize("delta", [0.0, 0.05, -0.2, 0.2, 0.5, -0.7, 1.0, 1.3])
def test_adjust_hue_matches_colorsys(delta):
    x = _hsv_test_pixels()
    np.testing.assert_allclose(augment.adjust_hue(x, delta), np_hue(x, delta), atol=2e-6)


@pytest.mark.parametrize("factor", [0.0, 0.2, 1.0, 1.8, 5.0])
def test_adjust_saturation_matches_colorsys(factor):
    x = _hsv_test_pixels()
    np.testing.assert_allclose(
        augment.adjust_saturation(x, factor), np_saturation(x, factor), atol=2e-6
    )


def test_grayscale_uses_bt601_luma():
    x = np.asarray(image())
    np.testing.assert_allclose(augment.grayscale(x), np_grayscale(x), atol=1e-6)


@pytest.mark.parametrize("sigma, kernel_size", [(0.1, 3), (0.7, 5), (2.0, 23), (1.3, 9)])
def test_gaussian_blur_matches_numpy(sigma, kernel_size):
    x = np.asarray(image(size=24))
    np.testing.assert_allclose(
        augment.gaussian_blur(x, sigma, kernel_size), np_blur(x, sigma, kernel_size), atol=1e-6
    )


def test_blur_kernel_is_a_tenth_of_the_image():
    assert [augment.blur_kernel_size(s) for s in (224, 96, 32, 16)] == [23, 9, 3, 3]


def test_solarize_matches_numpy():
    x = np.asarray(image())
    np.testing.assert_allclose(augment.solarize(x), np_solarize(x))
    np.testing.assert_allclose(augment.solarize(x, 0.3), np_solarize(x, 0.3))


def test_ops_take_one_parameter_per_image_of_a_batch():
    x = np.stack([np.asarray(image(s)) for s in range(3)])
    factors, deltas = np.array([0.3, 1.0, 1.6]), np.array([-0.2, 0.1, 0.45])
    for i in range(3):
        np.testing.assert_allclose(
            augment.adjust_contrast(x, factors)[i], np_contrast(x[i], factors[i]), atol=1e-6
        )
        np.testing.assert_allclose(
            augment.adjust_hue(x, deltas)[i], np_hue(x[i], deltas[i]), atol=2e-6
        )
        np.testing.assert_allclose(
            augment.gaussian_blur(x, factors + 0.5, 5)[i],
            np_blur(x[i], factors[i] + 0.5, 5),
            atol=1e-6,
        )


# ----------------------------------------------------------------------------- colour jitter


def _jitter_draws(n, **amounts):
    keys = augment.example_keys(jax.random.key(0), n)
    return jax.tree.map(np.asarray, jax.vmap(lambda k: augment.jitter_params(k, **amounts))(keys))


def test_jitter_draw_ranges_and_zero_amounts():
    d = _jitter_draws(3000, brightness=1.5, contrast=0.3, saturation=0.0, hue=0.1)
    assert_uniform_range(d["brightness"], 0.0, 2.5)  # clipped below at 0
    assert_uniform_range(d["contrast"], 0.7, 1.3)
    np.testing.assert_array_equal(d["saturation"], 1.0)
    assert_uniform_range(d["hue"], -0.1, 0.1)


def test_jitter_order_is_a_uniform_random_permutation():
    d = _jitter_draws(4000, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)
    order = d["order"]
    assert (np.sort(order, axis=1) == np.arange(4)).all()  # permutations
    assert len({tuple(o) for o in order}) == 24  # every order occurs
    for slot in range(4):  # each op in each slot ~1/4 of the time
        np.testing.assert_allclose(np.bincount(order[:, slot], minlength=4) / 4000, 0.25, atol=0.03)


@pytest.mark.parametrize("probability", [0.8, 0.3])
def test_jitter_is_applied_with_its_probability(probability):
    d = _jitter_draws(4000, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1,
                      probability=probability)  # fmt: skip
    assert abs(d["apply"].mean() - probability) < 0.03
    # ... and an image whose draw says no is returned untouched.
    x = np.asarray(image(size=8))
    params = row(d, int(np.argmin(d["apply"])))
    np.testing.assert_array_equal(augment.apply_color_jitter(x, params), x)


def _batch_and_params(n=8, size=8, seed=0):
    images = np.stack([np.asarray(image(seed + i, size)) for i in range(n)])
    d = _jitter_draws(n, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, probability=0.8)
    return images, d


def test_jitter_of_a_batch_matches_numpy_per_image():
    # The batched path: one blend + hue per step, op picked per image.
    images, d = _batch_and_params(n=12)
    assert len({tuple(o) for o in d["order"]}) > 6  # orders differ within the batch
    out = np.asarray(augment.apply_color_jitter(images, d))
    for i in range(len(images)):
        np.testing.assert_allclose(out[i], np_jitter(images[i], row(d, i)), atol=2e-5)


def test_jitter_of_one_image_matches_numpy():
    # The one-image path: a switch per step runs only that step's op.
    images, d = _batch_and_params(n=8, seed=20)
    for i in range(len(images)):
        out = augment.apply_color_jitter(images[i], row(d, i))
        np.testing.assert_allclose(out, np_jitter(images[i], row(d, i)), atol=2e-5)


def test_jitter_order_changes_the_result():
    # Same factors, two orders: contrast then saturation vs the reverse.
    x = np.asarray(image())
    params = {"brightness": 1.0, "contrast": 1.6, "saturation": 0.3, "hue": 0.0, "apply": True}
    outs = [
        augment.apply_color_jitter(x, {**params, "order": jnp.array(o)})
        for o in ([1, 2, 0, 3], [2, 1, 0, 3])
    ]
    assert not np.allclose(outs[0], outs[1], atol=1e-3)


# ----------------------------------------------------------------------------- resized crop


def test_resized_crop_matches_numpy_bilinear_and_scale_and_translate():
    crop = jax.jit(augment.resized_crop, static_argnums=2)
    x = np.asarray(image(size=12))
    for seed in range(4):
        box = augment.crop_box(jax.random.key(seed), 12, 12, scale=(0.1, 1.0))
        for size in ((12, 12), (7, 9), (20, 16)):
            out = np.asarray(crop(x, box, size))
            np.testing.assert_allclose(out, np_resized_crop(x, box, *size), atol=1e-5)
            # jax's own resampler with the same pixel-centre convention.
            s = jnp.array([size[0] / box[2], size[1] / box[3]])
            other = jax.image.scale_and_translate(
                x, (*size, 3), (0, 1), s, -box[:2] * s, method="linear", antialias=False
            )
            np.testing.assert_allclose(out, other, atol=1e-5)
            flipped = crop(x, box, size, flip=True)
            np.testing.assert_array_equal(flipped, out[:, ::-1])


def test_resized_crop_of_the_whole_image_is_exact():
    x = np.asarray(image())
    box = jnp.array([0.0, 0.0, 16.0, 16.0])
    np.testing.assert_array_equal(augment.resized_crop(x, box), x)


def test_crop_box_area_ratio_and_fallback():
    keys = augment.example_keys(jax.random.key(0), 2000)
    boxes = np.asarray(jax.vmap(lambda k: augment.crop_box(k, 40, 30, scale=(0.1, 0.5)))(keys))
    top, left, h, w = boxes.T
    area = h * w / (40 * 30)
    assert area.min() >= 0.1 - 1e-5 and area.max() <= 0.5 + 1e-5
    assert area.min() < 0.12 and area.max() > 0.48
    ratio = np.log(w / h)
    assert ratio.min() >= np.log(3 / 4) - 1e-5 and ratio.max() <= np.log(4 / 3) + 1e-5
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 40 + 1e-4).all() and (left + w <= 30 + 1e-4).all()
    # Boxes that can never fit (ratio 100: far wider than the image): the whole image.
    whole = augment.crop_box(jax.random.key(0), 40, 30, scale=(0.5, 0.5), ratio=(100, 100))
    np.testing.assert_allclose(whole, [0, 0, 40, 30])


@pytest.mark.parametrize("size, expected", [(None, (16, 16)), (8, (8, 8)), ((6, 10), (6, 10))])
def test_random_resized_crop_output_size(size, expected):
    x = image()
    key = jax.random.key(3)
    out = augment.random_resized_crop(key, x, scale=(0.2, 0.6), size=size)
    assert out.shape == (*expected, 3)
    box = augment.crop_box(key, 16, 16, scale=(0.2, 0.6))
    np.testing.assert_allclose(out, np_resized_crop(np.asarray(x), box, *expected), atol=1e-5)
