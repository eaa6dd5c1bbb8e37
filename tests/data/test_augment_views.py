"""The ops of an augmented view (resized crop, flip, colour jitter,
grayscale, blur, solarisation) against independent plain-numpy (and
`colorsys`) implementations of their published formulas (tf.image's, as
SimCLR uses them), the random draws' ranges and frequencies, and the batched
view pipeline (`ViewRecipe`, `view_params`, `apply_view`, `view_batch`)
against the same references, SimCLR's recipe (`recipes.simclr_views`) among
them."""

import colorsys
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment
from ssl_jax.data.augment import recipes
from ssl_jax.data.augment import views as augment_views

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _image(seed=0, size=16):
    return jax.random.uniform(jax.random.key(seed), (size, size, 3))


def _simclr_recipe(strength=1.0, **overrides):
    """One view of SimCLR's pair (both are the same) as a `ViewRecipe`."""
    return augment.ViewRecipe(**recipes.simclr_views(strength, **overrides)[0])


def _one_view(recipe):
    """The view of one image `[H, W, C]` from its own key, through the batch
    path (a batch of one)."""
    return lambda key, x: augment.view_batch(key, x[None], recipe)[0]


# ----------------------------------------------------------------------------- numpy references


def np_brightness(x, f):
    return np.clip(x * f, 0, 1)


def np_contrast(x, f):  # tf.image.adjust_contrast: per-channel mean over the image
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * f + mean, 0, 1)


def np_hsv_map(x, fn):
    """Apply fn(h, s, v) -> (h, s, v) to every pixel through colorsys."""
    pixels = [colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*p))) for p in x.reshape(-1, 3)]
    return np.asarray(pixels).reshape(x.shape)


def np_saturation(x, f):  # tf.image.adjust_saturation: S * f clipped to 1, in HSV
    return np_hsv_map(x, lambda h, s, v: (h, min(s * f, 1.0), v))


def np_hue(x, delta):  # tf.image.adjust_hue: rotate H by delta turns
    return np_hsv_map(x, lambda h, s, v: ((h + delta) % 1.0, s, v))


def np_grayscale(x):
    return np.repeat((x @ LUMA)[..., None], 3, axis=-1)


def np_blur(x, sigma, kernel_size):
    """Separable Gaussian, reflected edges, by explicit loops over taps."""
    r = kernel_size // 2
    t = np.arange(-r, r + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    h, w, _ = x.shape
    p = np.pad(x, ((r, r), (0, 0), (0, 0)), mode="reflect")
    rows = sum(k[i] * p[i : i + h] for i in range(2 * r + 1))
    p = np.pad(rows, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))


def np_solarize(x, threshold=0.5):
    return np.where(x < threshold, x, 1 - x)


def np_resized_crop(x, box, out_h, out_w):
    """Bilinear resampling of box (top, left, height, width) with pixel
    centres on pixel centres and edge pixels repeated, pixel by pixel."""
    top, left, bh, bw = (float(v) for v in box)
    h, w, _ = x.shape
    out = np.zeros((out_h, out_w, x.shape[2]))
    for i in range(out_h):
        y = min(max(top + (i + 0.5) * bh / out_h - 0.5, 0), h - 1)
        y0 = int(np.floor(y))
        y1, wy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            xx = min(max(left + (j + 0.5) * bw / out_w - 0.5, 0), w - 1)
            x0 = int(np.floor(xx))
            x1, wx = min(x0 + 1, w - 1), xx - x0
            out[i, j] = (1 - wy) * ((1 - wx) * x[y0, x0] + wx * x[y0, x1]) + wy * (
                (1 - wx) * x[y1, x0] + wx * x[y1, x1]
            )
    return out


NP_JITTER = {
    0: lambda x, p: np_brightness(x, p["brightness"]),
    1: lambda x, p: np_contrast(x, p["contrast"]),
    2: lambda x, p: np_saturation(x, p["saturation"]),
    3: lambda x, p: np_hue(x, p["hue"]),
}


def np_jitter(x, params):
    """The jitter of one image's `params` (numpy scalars): ops in `order`."""
    if not params["apply"]:
        return x
    for op in params["order"]:
        x = NP_JITTER[int(op)](x, params)
    return x


def np_view(image, params, size, blur_kernel):
    """SimCLR's view of one image from its drawn params, in the paper's order."""
    x = np_resized_crop(image, params["box"], *size)
    if params["flip"]:
        x = x[:, ::-1]
    x = np_jitter(x, params["jitter"])
    if params["grayscale"]:
        x = np_grayscale(x)
    if params["blur"]:
        x = np_blur(x, float(params["blur_sigma"]), blur_kernel)
    if params["solarize"]:
        x = np_solarize(x)
    return np.clip(x, 0, 1)


def row(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


# ----------------------------------------------------------------------------- single ops


@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.7])
def test_brightness_and_contrast_match_numpy(factor):
    x = np.asarray(_image())
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
    pixels = np.asarray(_image(size=6)).reshape(-1, 3)
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
    x = np.asarray(_image())
    np.testing.assert_allclose(augment.grayscale(x), np_grayscale(x), atol=1e-6)


@pytest.mark.parametrize("sigma, kernel_size", [(0.1, 3), (0.7, 5), (2.0, 23), (1.3, 9)])
def test_gaussian_blur_matches_numpy(sigma, kernel_size):
    x = np.asarray(_image(size=24))
    np.testing.assert_allclose(
        augment.gaussian_blur(x, sigma, kernel_size), np_blur(x, sigma, kernel_size), atol=1e-6
    )


def test_blur_kernel_is_a_tenth_of_the_image():
    assert [augment.blur_kernel_size(s) for s in (224, 96, 32, 16)] == [23, 9, 3, 3]


def test_solarize_matches_numpy():
    x = np.asarray(_image())
    np.testing.assert_allclose(augment.solarize(x), np_solarize(x))
    np.testing.assert_allclose(augment.solarize(x, 0.3), np_solarize(x, 0.3))


def test_ops_take_one_parameter_per_image_of_a_batch():
    x = np.stack([np.asarray(_image(s)) for s in range(3)])
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


def _assert_uniform_range(values, low, high):
    """`values` lie in [low, high] and come within 2% of both ends."""
    span = high - low
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
    assert values.min() < low + 0.02 * span and values.max() > high - 0.02 * span


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_simclr_views_draw_the_papers_jitter_strengths(strength):
    # SimCLR, appendix A: brightness, contrast, saturation 0.8 s; hue 0.2 s.
    # Drawn through simclr_views + view_params, the path view_batch takes
    # (test_view_matches_numpy_reference ties the draws to the output).
    recipe = _simclr_recipe(strength)
    keys = augment.example_keys(jax.random.key(1), 3000)
    params = jax.vmap(lambda k: augment.view_params(k, 8, 8, recipe))(keys)["jitter"]
    for name in ("brightness", "contrast", "saturation"):
        _assert_uniform_range(np.asarray(params[name]), 1 - 0.8 * strength, 1 + 0.8 * strength)
    _assert_uniform_range(np.asarray(params["hue"]), -0.2 * strength, 0.2 * strength)


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
    images = np.stack([np.asarray(_image(i, size=8)) for i in range(6)])
    out = augment.view_batch(
        jax.random.key(4), jnp.asarray(images), _simclr_recipe(s, **jitter_only)
    )
    params = _view_draws(images, written_out, seed=4)
    for i in range(len(images)):
        np.testing.assert_allclose(
            out[i], np_jitter(images[i], row(params["jitter"], i)), atol=2e-5
        )


def test_jitter_draw_ranges_and_zero_amounts():
    d = _jitter_draws(3000, brightness=1.5, contrast=0.3, saturation=0.0, hue=0.1)
    _assert_uniform_range(d["brightness"], 0.0, 2.5)  # clipped below at 0
    _assert_uniform_range(d["contrast"], 0.7, 1.3)
    np.testing.assert_array_equal(d["saturation"], 1.0)
    _assert_uniform_range(d["hue"], -0.1, 0.1)


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
    x = np.asarray(_image(size=8))
    params = row(d, int(np.argmin(d["apply"])))
    np.testing.assert_array_equal(augment.apply_color_jitter(x, params), x)


def _batch_and_params(n=8, size=8, seed=0):
    images = np.stack([np.asarray(_image(seed + i, size)) for i in range(n)])
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
    x = np.asarray(_image())
    params = {"brightness": 1.0, "contrast": 1.6, "saturation": 0.3, "hue": 0.0, "apply": True}
    outs = [
        augment.apply_color_jitter(x, {**params, "order": jnp.array(o)})
        for o in ([1, 2, 0, 3], [2, 1, 0, 3])
    ]
    assert not np.allclose(outs[0], outs[1], atol=1e-3)


# ----------------------------------------------------------------------------- resized crop


def test_resized_crop_matches_numpy_bilinear_and_scale_and_translate():
    crop = jax.jit(augment.resized_crop, static_argnums=2)
    x = np.asarray(_image(size=12))
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
    x = np.asarray(_image())
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
    x = _image()
    key = jax.random.key(3)
    out = augment.random_resized_crop(key, x, scale=(0.2, 0.6), size=size)
    assert out.shape == (*expected, 3)
    box = augment.crop_box(key, 16, 16, scale=(0.2, 0.6))
    np.testing.assert_allclose(out, np_resized_crop(np.asarray(x), box, *expected), atol=1e-5)


# ----------------------------------------------------------------------------- views


def _view_draws(images, recipe, seed=0):
    keys = augment.example_keys(jax.random.key(seed), images.shape[0])
    h, w = images.shape[1:3]
    return jax.vmap(lambda k: augment.view_params(k, h, w, recipe))(keys)


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])  # one image at a time / one batch
def test_view_matches_numpy_reference(monkeypatch, chunk_bytes):
    monkeypatch.setattr(augment_views, "_CPU_CHUNK_BYTES", chunk_bytes)
    images = np.stack([np.asarray(_image(s, size=12)) for s in range(12)])
    recipe = _simclr_recipe(
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
    _assert_uniform_range(p["blur_sigma"], 0.1, 2.0)
    no_flip = augment.ViewRecipe(flip=False)
    assert not np.asarray(_view_draws(np.zeros((200, 8, 8, 3)), no_flip)["flip"]).any()


def test_integer_probabilities_from_a_config_work():
    x = _image()
    recipe = _simclr_recipe(
        color_probability=1, grayscale_probability=0, blur_probability=0, solarize_probability=1
    )
    out = _one_view(recipe)(jax.random.key(0), x)
    assert out.shape == x.shape


def test_view_of_uint8_equals_view_of_floats():
    images = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    recipe = _simclr_recipe(blur_probability=0.5)
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
    images = jnp.stack([_image(s, size=24) for s in range(6)])
    recipe = _simclr_recipe(blur_probability=0.5, solarize_probability=0.2)
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
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_VIEWS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_view_lowers_for_gpu_and_tpu_without_callbacks_or_loops():
    recipe = _simclr_recipe(blur_probability=0.5, solarize_probability=0.2)

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
    "view": _one_view(_simclr_recipe(blur_probability=0.5, solarize_probability=0.2)),
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
            _simclr_recipe(
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
    x = _image()
    for seed in range(3):
        np.testing.assert_allclose(op(jax.random.key(seed), x), x, atol=1e-6)


def test_view_batch_is_per_example_and_independent_of_batch_size():
    images = jnp.stack([_image(s) for s in range(4)])
    rng = jax.random.key(0)
    recipe = _simclr_recipe(blur_probability=0.5)
    batch = augment.view_batch(rng, images, recipe)
    assert batch.shape == images.shape and batch.dtype == jnp.float32
    np.testing.assert_allclose(augment.view_batch(rng, images[:2], recipe), batch[:2], atol=1e-6)
    same = augment.view_batch(rng, jnp.stack([images[0]] * 2), recipe)
    assert not np.allclose(same[0], same[1])  # each example has its own key
