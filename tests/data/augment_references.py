"""Independent plain-numpy (and `colorsys`) implementations of the
augmentation ops' published formulas (tf.image's, as SimCLR uses them), and
the test helpers that tests/data/test_augment_ops.py and test_augment_views.py
share."""

import colorsys

import jax
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def image(seed=0, size=16):
    return jax.random.uniform(jax.random.key(seed), (size, size, 3))


def assert_uniform_range(values, low, high):
    """`values` lie in [low, high] and come within 2% of both ends."""
    span = high - low
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
    assert values.min() < low + 0.02 * span and values.max() > high - 0.02 * span


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
