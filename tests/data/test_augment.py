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
