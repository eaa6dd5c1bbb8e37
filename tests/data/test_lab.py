"""sRGB <-> CIE L*a*b* on the device against a float64 numpy reference,
written here from the definitions (IEC 61966-2-1's transfer curve, the sRGB
-> XYZ matrix, the D65 white and CIE's f(t) with its 6/29 knee)."""

import jax
import numpy as np

from ssl_jax.data import augment

# The constants as scikit-image states them (the colorization reference's rgb2lab).
_M = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
# Lab units: float32 keeps L (0..100) to ~1e-5 relative; measured 6e-5 at
# most on the grid. A just-noticeable difference is about 1.
_LAB_ATOL = 2e-4
_RGB_ATOL = 2e-5  # on [0, 1], measured 6e-6 (one 8-bit step is 4e-3)


def _reference_rgb_to_lab(rgb):
    rgb = np.asarray(rgb, np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _M.T / _WHITE
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


def _reference_lab_to_rgb(lab):
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    d = 6.0 / 29.0
    xyz = np.where(f > d, f**3, 3 * d * d * (f - 4.0 / 29.0)) * _WHITE
    linear = xyz @ np.linalg.inv(_M).T
    safe = np.maximum(linear, 0.0031308)
    rgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * safe ** (1 / 2.4) - 0.055)
    return np.clip(rgb, 0.0, 1.0)


def _grid_colours():
    """Every 4th value per channel (0, 4, ..., 252): 64^3 = 262,144 colours, in [0, 1]."""
    v = np.arange(0, 256, 4)
    r, g, b = np.meshgrid(v, v, v, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], -1) / 255.0


def test_rgb_to_lab_matches_the_float64_reference_on_the_64_cubed_grid():
    rgb = _grid_colours()
    lab = np.asarray(jax.jit(augment.rgb_to_lab)(rgb.astype(np.float32)))
    expected = _reference_rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == (64**3, 3)
    np.testing.assert_allclose(lab, expected, rtol=0, atol=_LAB_ATOL)
    # Both branches of f and of the transfer curve are exercised by the grid.
    assert (rgb <= 0.04045).any() and (expected[:, 0] < 8).any()


def test_known_colours():
    lab = np.asarray(augment.rgb_to_lab(np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0]], np.float32)))
    np.testing.assert_allclose(lab[0], [0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(lab[1], [100, 0, 0], atol=1e-2)  # D65 white: neutral
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.01)  # sRGB red


def test_lab_to_rgb_matches_the_reference_and_round_trips():
    rgb = _grid_colours()
    lab = _reference_rgb_to_lab(rgb)
    back = np.asarray(jax.jit(augment.lab_to_rgb)(lab.astype(np.float32)))
    np.testing.assert_allclose(back, _reference_lab_to_rgb(lab), rtol=0, atol=_RGB_ATOL)
    np.testing.assert_allclose(back, rgb, rtol=0, atol=_RGB_ATOL)
    # Device to device, with 255 itself.
    edges = np.array([[255, 255, 255], [255, 0, 128], [3, 7, 255]]) / 255.0
    both = np.concatenate([rgb, edges]).astype(np.float32)
    again = jax.jit(lambda x: augment.lab_to_rgb(augment.rgb_to_lab(x)))(both)
    np.testing.assert_allclose(np.asarray(again), both, rtol=0, atol=_RGB_ATOL)


def test_lab_to_rgb_clips_colours_outside_the_gamut():
    lab = np.array([[50, 120, -120], [100, 0, 0], [0, 0, 0], [-5, 0, 0]], np.float32)
    rgb = np.asarray(augment.lab_to_rgb(lab))
    assert np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb, _reference_lab_to_rgb(lab), atol=_RGB_ATOL)
