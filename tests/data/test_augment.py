import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import augment


def _image(seed=0, size=8, channels=3):
    return jax.random.uniform(jax.random.key(seed), (size, size, channels))


def test_to_float_and_normalize_ranges():
    images = jnp.array([[0, 255]], jnp.uint8)
    x = augment.to_float(images)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, [[0.0, 1.0]])
    np.testing.assert_allclose(augment.normalize(x), [[-1.0, 1.0]])


def test_example_keys_depend_on_index_only():
    rng = jax.random.key(3)
    small = augment.example_keys(rng, 4)
    large = augment.example_keys(rng, 10)
    np.testing.assert_array_equal(jax.random.key_data(small), jax.random.key_data(large[:4]))
    assert len({tuple(np.asarray(k)) for k in jax.random.key_data(large)}) == 10


@pytest.mark.parametrize("quarter_turns", [0, 1, 2, 3])
def test_rotate90_matches_numpy_and_is_exact(quarter_turns):
    image = _image()
    np.testing.assert_array_equal(
        augment.rotate90(image, quarter_turns), np.rot90(np.asarray(image), quarter_turns)
    )


def test_four_rotations_compose_to_identity():
    image = _image()
    x = image
    for _ in range(4):
        x = augment.rotate90(x, 1)
    np.testing.assert_array_equal(x, image)


def test_random_crop_is_a_translation_within_padding():
    image = _image(size=10)
    padding = 2
    reference = np.pad(
        np.asarray(image), ((padding, padding), (padding, padding), (0, 0)), mode="reflect"
    )
    seen = set()
    for seed in range(40):
        crop = np.asarray(augment.random_crop(jax.random.key(seed), image, padding))
        assert crop.shape == image.shape
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if np.array_equal(crop, reference[dy : dy + 10, dx : dx + 10])
        ]
        assert matches, "crop is not a window of the padded image"
        seen.update(matches)
    assert len(seen) > 5  # offsets really vary


def test_random_crop_zero_padding_is_identity():
    image = _image()
    np.testing.assert_array_equal(augment.random_crop(jax.random.key(0), image, 0), image)


def test_random_flip_probability_and_exactness():
    image = _image()
    outputs = [augment.random_flip(jax.random.key(s), image) for s in range(200)]
    flipped = [np.array_equal(o, image[:, ::-1]) for o in outputs]
    unchanged = [np.array_equal(o, image) for o in outputs]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 0.35 < np.mean(flipped) < 0.65
    never = [augment.random_flip(jax.random.key(s), image, 0.0) for s in range(20)]
    assert all(np.array_equal(o, image) for o in never)


def test_crop_and_flip_batch_is_per_example_and_deterministic():
    images = jnp.stack([_image(0)] * 16)  # identical images: differences come from the keys
    out1 = augment.crop_and_flip_batch(jax.random.key(1), images, crop_padding=2, flip=True)
    out2 = augment.crop_and_flip_batch(jax.random.key(1), images, crop_padding=2, flip=True)
    out3 = augment.crop_and_flip_batch(jax.random.key(2), images, crop_padding=2, flip=True)
    np.testing.assert_array_equal(out1, out2)
    assert not np.array_equal(out1, out3)
    distinct = {np.asarray(x).tobytes() for x in out1}
    assert len(distinct) > 4
    assert out1.dtype == images.dtype and out1.shape == images.shape


# ----------------------------------------------------------------------------- multi-crop
# No photometric op, so a view is its crop alone.
CROP_ONLY = {
    "flip": False,
    "color_probability": 0.0,
    "global_blur": 0.0,
    "local_blur": 0.0,
    "global_solarize": 0.0,
}


def _multi_crop(rng, images, **kwargs):
    return jax.jit(functools.partial(augment.multi_crop_views, **kwargs))(rng, images)


def _coordinate_image(size):
    """Channel 0 = the column's pixel centre / size, channel 1 = the row's,
    channel 2 = 0.5: bilinear resampling keeps these ramps linear."""
    centres = (np.arange(size) + 0.5) / size
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs, ys, np.full_like(xs, 0.5)], -1).astype(np.float32)


def _box_area(view, image_size):
    """The area fraction of the box a view of `_coordinate_image` shows: the
    ramps span (n - 1)/n of the box side between the first and last pixel."""
    n = view.shape[0]
    side = lambda c: (view[..., c].max() - view[..., c].min()) * n / (n - 1)
    return float(side(0) * side(1)) / 1.0**2


def test_multi_crop_shapes_and_dtype():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), np.uint8))
    g, loc = _multi_crop(
        jax.random.key(0), images, global_size=32, local_size=(12, 16), num_local=4,
        brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_probability=0.2,
    )  # fmt: skip
    assert g.shape == (2 * 3, 32, 32, 3) and loc.shape == (4 * 3, 12, 16, 3)
    assert g.dtype == loc.dtype == jnp.float32
    assert 0.0 <= float(g.min()) and float(loc.max()) <= 1.0


def test_multi_crop_boxes_cover_the_requested_areas():
    images = jnp.asarray(np.stack([_coordinate_image(64)] * 4))
    g, loc = _multi_crop(
        jax.random.key(1), images, global_size=32, local_size=16, num_local=8, **CROP_ONLY
    )
    local_areas = [_box_area(np.asarray(v), 64) for v in loc]
    global_areas = [_box_area(np.asarray(v), 64) for v in g]
    # DINO's defaults: local 5-40% of the image, global 40-100%.
    assert 0.05 - 0.01 <= min(local_areas) and max(local_areas) <= 0.4 + 0.01
    assert min(local_areas) < 0.15 and max(local_areas) > 0.25  # the range is used
    assert 0.4 - 0.01 <= min(global_areas) and max(global_areas) <= 1.0 + 0.01


def test_multi_crop_is_deterministic_and_independent_of_batch_size():
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 24, 24, 3)), jnp.float32)
    kwargs = {"global_size": 16, "local_size": 8, "num_local": 3, "hue": 0.1, "brightness": 0.4}
    rng = jax.random.key(2)
    g, loc = _multi_crop(rng, images, **kwargs)
    g2, loc2 = _multi_crop(rng, images, **kwargs)
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_array_equal(loc, loc2)
    other, _ = _multi_crop(jax.random.key(3), images, **kwargs)
    assert not np.allclose(g, other)
    # The first 2 images alone: the same rows of every view (view-major).
    g_small, loc_small = _multi_crop(rng, images[:2], **kwargs)
    for v in range(2):
        np.testing.assert_allclose(g_small[2 * v : 2 * v + 2], g[4 * v : 4 * v + 2], atol=1e-6)
    for v in range(3):
        np.testing.assert_allclose(loc_small[2 * v : 2 * v + 2], loc[4 * v : 4 * v + 2], atol=1e-6)


def test_multi_crop_per_view_blur_and_solarize():
    # DINO: blur the first global view always and the second never (here),
    # solarise only the second. Whole-image crops make each view exact.
    checker = np.indices((16, 16)).sum(0) % 2 * 0.8 + 0.1
    images = jnp.asarray(np.repeat(checker[None, ..., None], 3, -1), jnp.float32)
    kwargs = {**CROP_ONLY, "global_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    kwargs.update(global_blur=(1.0, 0.0), global_solarize=(0.0, 1.0), blur_sigma=(1.0, 1.0))
    g, _ = _multi_crop(
        jax.random.key(0), images, global_size=16, local_size=8, num_local=1, **kwargs
    )
    kernel = np.exp(-0.5 * np.arange(-1, 2) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(checker, 1, mode="reflect")
    rows = sum(kernel[i] * padded[i : i + 16] for i in range(3))
    blurred = sum(kernel[i] * rows[:, i : i + 16] for i in range(3))
    np.testing.assert_allclose(g[0, ..., 0], blurred, atol=1e-5)
    np.testing.assert_allclose(
        g[1, ..., 0], np.where(checker < 0.5, checker, 1 - checker), atol=1e-6
    )
    with pytest.raises(ValueError, match="global_blur"):
        augment.multi_crop_views(
            jax.random.key(0), images, global_size=8, local_size=4, global_blur=(1.0, 0.5, 0.1)
        )
