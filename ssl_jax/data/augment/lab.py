"""sRGB <-> CIE L*a*b* on the device (colorization's colour space).

sRGB (IEC 61966-2-1) in [0, 1] -> linear RGB by the sRGB transfer curve ->
CIE XYZ by the sRGB matrix -> L*a*b* relative to the D65 white, with the CIE
function f(t) = t^(1/3) above (6/29)^3 and its linear toe below. L is in
[0, 100]; a and b lie within about [-87, 99] and [-108, 95] for sRGB colours.

The constants are scikit-image's (`skimage.color.rgb2lab`, which the
colorization reference uses: richzhang/colorization,
resources/caffe_traininglayers.py), so the ab targets are the paper's.
Elementwise in float32, channels last `[..., 3]`; a new module rather than
part of `colour.py`, whose ops work on channel planes for the jitter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Linear sRGB -> XYZ (D65), rows X, Y, Z; and its inverse, computed once in
# float64 (numpy constants: a jax array here would start the backend at import).
RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
XYZ_TO_RGB = np.linalg.inv(RGB_TO_XYZ)
# The D65 reference white (2 degree observer), Y normalised to 1.
D65_WHITE = np.array([0.95047, 1.0, 1.08883])

_DELTA = 6.0 / 29.0
# sRGB transfer curve: linear segment below these values, power 2.4 above.
_SRGB_KNEE = 0.04045
_LINEAR_KNEE = 0.0031308


def _mix(x: jax.Array, matrix: np.ndarray) -> jax.Array:
    """`matrix @ x` per pixel of `x [..., 3]`, as three weighted sums: exact
    float32 arithmetic, where a matmul might run at reduced precision on a GPU."""
    return jnp.stack([sum(float(m) * x[..., j] for j, m in enumerate(row)) for row in matrix], -1)


def _f(t: jax.Array) -> jax.Array:
    # The cube root of the clamped argument: the other branch is picked below the knee.
    return jnp.where(
        t > _DELTA**3, jnp.cbrt(jnp.maximum(t, _DELTA**3)), t / (3 * _DELTA**2) + 4.0 / 29.0
    )


def _f_inverse(t: jax.Array) -> jax.Array:
    return jnp.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
    """sRGB `[..., 3]` in [0, 1] -> L*a*b* `[..., 3]` float32 (L in [0, 100])."""
    rgb = jnp.asarray(rgb, jnp.float32)
    # The power's argument is clamped to the knee: the other branch is picked below it.
    linear = jnp.where(
        rgb <= _SRGB_KNEE, rgb / 12.92, ((jnp.maximum(rgb, _SRGB_KNEE) + 0.055) / 1.055) ** 2.4
    )
    xyz = _mix(linear, RGB_TO_XYZ / D65_WHITE[:, None])  # relative to the white
    fx, fy, fz = (_f(xyz[..., i]) for i in range(3))
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], -1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
    """L*a*b* `[..., 3]` -> sRGB `[..., 3]`, clipped to [0, 1] (a prediction
    may lie outside the sRGB gamut)."""
    lab = jnp.asarray(lab, jnp.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], -1)
    linear = _mix(_f_inverse(f) * D65_WHITE.astype(np.float32), XYZ_TO_RGB)
    rgb = jnp.where(
        linear <= _LINEAR_KNEE,
        12.92 * linear,
        1.055 * jnp.maximum(linear, _LINEAR_KNEE) ** (1 / 2.4) - 0.055,
    )
    return jnp.clip(rgb, 0.0, 1.0)
