"""Tests for ssl_jax.data.decode: decoding every mode, random-resized crops, eval transform."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from ssl_jax.data import base, decode
from ssl_jax.data.datasets import DatasetError
from ssl_jax.data.decode import CropSpec


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _smooth_rgb(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like smooth colour field (JPEG-friendly)."""
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------- decoding


def test_sixteen_bit_png_is_scaled_not_saturated():
    values = np.array([[0, 257, 32896, 65535, 1000, 128]], np.uint16)  # 32896 = 128 * 257
    png = _encode(Image.frombytes("I;16", (6, 1), values.astype("<u2").tobytes()), "PNG")
    out = decode.decode_image(png, "deep.png")
    assert out.shape == (1, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255, 4, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # What PIL alone would do: everything above 255 becomes white.
    assert np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[0, 2, 0] == 255


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I", "<i4")])
def test_sixteen_bit_tiff_modes_are_scaled(mode, dtype):
    values = np.array([[0, 514, 65535, 40000]])
    tiff = _encode(Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes()), "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode in (mode, "I;16B", "I;16")
    out = decode.decode_image(tiff, "deep.tif")
    np.testing.assert_array_equal(out[0, :, 1], np.rint(values[0] / 257))


def test_mode_i_with_eight_bit_values_is_kept():
    values = np.array([[0, 7, 200, 255]])
    tiff = _encode(Image.frombytes("I", (4, 1), values.astype("<i4").tobytes()), "TIFF")
    np.testing.assert_array_equal(decode.decode_image(tiff, "x")[0, :, 0], values[0])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_other_modes_become_rgb(mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    encoded = _encode(image, "JPEG" if mode == "CMYK" else "PNG")
    out = decode.decode_image(encoded, "x")
    assert out.shape == (6, 9, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    if mode == "RGBA":  # Alpha dropped, colours kept.
        np.testing.assert_array_equal(out, np.asarray(rgb))


@pytest.mark.parametrize("data", [b"not an image", b"", None])
def test_undecodable_bytes_name_the_key(data):
    if data is None:  # A truncated JPEG: the header reads, the pixels do not.
        data = _encode(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), "JPEG")[:200]
    message = _error(decode.decode_image, data, "cats/broken_07.jpg")
    assert "cats/broken_07.jpg" in message and "0x" not in message
    message = _error(decode.crops, data, [CropSpec(8)], np.random.default_rng(0), key="k/9.png")
    assert "k/9.png" in message


def test_crop_spec_validates():
    for bad in [
        dict(size=0),
        dict(size=8, scale=(0.5, 0.2)),
        dict(size=8, scale=(0.0, 1.0)),
        dict(size=8, ratio=(2.0, 1.0)),
        dict(size=8, count=0),
    ]:
        with pytest.raises(ValueError):
            CropSpec(**bad)
    assert decode.RECIPES["dino"][1] == CropSpec(96, (0.05, 0.4), count=6)


# ----------------------------------------------------------------------------- crop geometry


def test_sample_crop_distribution_within_ranges():
    rng = np.random.default_rng(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    areas, ratios = [], []
    for _ in range(3000):
        left, top, w, h = decode.sample_crop(400, 400, scale, ratio, rng)
        assert 0 <= left and left + w <= 400 and 0 <= top and top + h <= 400
        areas.append(w * h / (400 * 400))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    # Rounding to whole pixels moves the area and ratio by a pixel's worth at most.
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 - 0.02 and ratios.max() <= 4 / 3 + 0.02
    # The whole ranges are used: small and large crops, tall and wide ones.
    assert areas.min() < 0.1 and areas.max() > 0.9
    assert ratios.min() < 0.78 and ratios.max() > 1.3
    # log-uniform ratio on a square image: as many crops wider than tall as taller than wide.
    assert abs(np.mean(np.log(ratios) > 0) - 0.5) < 0.05
    # Small crops always fit, so below 0.3 the area is uniform: ~equal counts per bin.
    counts = np.histogram(areas, bins=[0.08, 0.155, 0.23, 0.305])[0]
    assert counts.min() > 0.8 * counts.max(), counts


def test_sample_crop_falls_back_to_whole_image_clamped_to_ratio():
    rng = np.random.default_rng(0)
    # An area above the image's can never fit: after 10 draws the fallback is taken.
    assert decode.sample_crop(40, 30, (1.0, 1.0), (2.0, 2.0), rng) == (0, 5, 40, 20)
    assert decode.sample_crop(40, 30, (1.0, 1.0), (1.0, 1.0), rng) == (5, 0, 30, 30)
    assert decode.sample_crop(40, 30, (1.0, 1.0), (4 / 3, 4 / 3), rng) == (0, 0, 40, 30)


def _strips() -> np.ndarray:
    """400 x 100: red left quarter, green middle half, blue right quarter."""
    image = np.zeros((100, 400, 3), np.uint8)
    image[:, :100, 0] = 255
    image[:, 100:300, 1] = 255
    image[:, 300:, 2] = 255
    return image


@pytest.mark.parametrize("as_png", [False, True])
def test_crops_come_from_the_original_image(as_png):
    # The central square (what the in-memory path stores) is all green; crops of
    # the original also see the red and blue ends.
    image = _strips()
    source = _encode(Image.fromarray(image), "PNG") if as_png else image
    spec = CropSpec(16, scale=(0.05, 0.1))
    seen = set()
    for row in range(200):
        crop = decode.random_resized_crop(source, spec, np.random.default_rng([0, 0, row]))
        assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
        colours = {
            int(c) for c in np.argmax(crop.reshape(-1, 3), axis=1)[crop.reshape(-1, 3).max(1) > 200]
        }
        assert len(colours) <= 2  # A small crop sees part of the image, never all of it.
        seen |= colours
    assert seen == {0, 1, 2}


def test_full_scale_crop_is_the_whole_image_resized():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    spec = CropSpec(12, scale=(1.0, 1.0), ratio=(40 / 30, 40 / 30))
    crop = decode.random_resized_crop(image, spec, np.random.default_rng(0), flip_probability=0.0)
    expected = Image.fromarray(image).resize(
        (12, 12), Image.Resampling.BILINEAR, box=(0, 0, 40, 30)
    )
    np.testing.assert_array_equal(crop, np.asarray(expected))


def test_flip_mirrors_the_same_crop():
    image = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    spec = CropSpec(10, scale=(0.2, 0.6))
    kept = decode.random_resized_crop(image, spec, np.random.default_rng(5), flip_probability=0.0)
    flipped = decode.random_resized_crop(
        image, spec, np.random.default_rng(5), flip_probability=1.0
    )
    np.testing.assert_array_equal(flipped, kept[:, ::-1])
    assert not np.array_equal(flipped, kept)
    # With probability 0.5, about half of the crops are the mirrored ones.
    mirrored = 0
    for seed in range(200):
        crop = decode.random_resized_crop(image, spec, np.random.default_rng(seed))
        never = decode.random_resized_crop(
            image, spec, np.random.default_rng(seed), flip_probability=0.0
        )
        mirrored += not np.array_equal(crop, never)
    assert 70 < mirrored < 130, mirrored


def test_crops_are_a_function_of_the_generator_seed():
    encoded = _encode(Image.fromarray(_smooth_rgb(np.random.default_rng(0), 64, 48)), "PNG")
    specs = [CropSpec(16, count=2), CropSpec(8, scale=(0.05, 0.4), count=3)]
    first = decode.crops(encoded, specs, np.random.default_rng([7, 3, 5]))
    again = decode.crops(encoded, specs, np.random.default_rng([7, 3, 5]))
    other = decode.crops(encoded, specs, np.random.default_rng([7, 3, 6]))
    assert [a.shape for a in first] == [(2, 16, 16, 3), (3, 8, 8, 3)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0][0], first[0][1])  # Two views differ.


def test_crops_decode_the_image_once(monkeypatch):
    calls = []
    original = decode.to_rgb
    monkeypatch.setattr(decode, "to_rgb", lambda image: calls.append(1) or original(image))
    encoded = _encode(Image.fromarray(_smooth_rgb(np.random.default_rng(0), 64, 48)), "JPEG")
    decode.crops(encoded, decode.RECIPES["dino"], np.random.default_rng(0))
    assert len(calls) == 1


# ----------------------------------------------------------------------------- draft mode


def test_draft_scale_keeps_every_crop_at_output_resolution():
    assert decode._draft_scale([(0, 0, 800, 600)], [64]) == 8  # 600 / 64 = 9.4
    assert decode._draft_scale([(0, 0, 800, 600)], [224]) == 2  # 2.7
    assert decode._draft_scale([(0, 0, 800, 600), (0, 0, 150, 100)], [64, 32]) == 2
    assert decode._draft_scale([(0, 0, 200, 150)], [96]) == 1  # 1.56
    for (_, _, w, h), size in [((0, 0, 800, 600), 64), ((0, 0, 300, 500), 70)]:
        scale = decode._draft_scale([(0, 0, w, h)], [size])
        assert min(w, h) / scale >= size and (scale == 8 or min(w, h) / (2 * scale) < size)


def test_draft_crops_are_close_to_full_decode_crops():
    rng = np.random.default_rng(0)
    pixels = _smooth_rgb(rng, 960, 720)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    jpeg = _encode(Image.fromarray(pixels), "JPEG", quality=90)
    spec = CropSpec(48, scale=(0.3, 1.0))
    differences = []
    for row in range(8):
        full = decode.random_resized_crop(jpeg, spec, np.random.default_rng(row), draft=False)
        fast = decode.random_resized_crop(jpeg, spec, np.random.default_rng(row), draft=True)
        differences.append(np.abs(full.astype(int) - fast.astype(int)).mean())
    # Draft mode was used (outputs differ a little) and changes pixels by ~1 level.
    assert min(differences) > 0 and max(differences) < 2.5, differences


def test_draft_scale_is_applied_to_jpeg(monkeypatch):
    scales = []
    original = decode._decode_for_crops

    def spy(image, scale):
        out = original(image, scale)
        scales.append((scale, out[1], out[0].size))
        return out

    monkeypatch.setattr(decode, "_decode_for_crops", spy)
    jpeg = _encode(Image.fromarray(_smooth_rgb(np.random.default_rng(0), 800, 640)), "JPEG")
    decode.random_resized_crop(
        jpeg, CropSpec(32, scale=(1.0, 1.0), ratio=(1.25, 1.25)), np.random.default_rng(0)
    )
    assert scales == [(8, 8.0, (100, 80))]


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    "mode, fmt, shape",
    [
        ("RGB", "JPEG", (37, 50)),
        ("L", "PNG", (40, 21)),
        ("P", "PNG", (16, 16)),
        ("RGBA", "PNG", (30, 45)),
        ("CMYK", "JPEG", (25, 18)),
    ],
)
@pytest.mark.parametrize("size", [16, 9])
def test_center_square_equals_in_memory_square(mode, fmt, shape, size):
    pixels = _smooth_rgb(np.random.default_rng(size), shape[1], shape[0])
    encoded = _encode(Image.fromarray(pixels).convert(mode), fmt)
    ours = decode.center_square(decode.decode_image(encoded, "x"), size)
    with Image.open(io.BytesIO(encoded)) as image:
        theirs = base.square(image, size)
    assert ours.shape == (size, size, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_center_square_takes_the_middle():
    image = _strips()  # 400 x 100: the central square is green.
    out = decode.center_square(image, 10)
    assert (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()
    assert math.isclose(decode.center_square(image[:, :100], 10)[..., 0].mean(), 255)
