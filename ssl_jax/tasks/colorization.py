"""Colorization (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016).

The encoder sees only the lightness L of an image (CIE L*a*b*) and a small
head predicts its colour, the ab channels, at a quarter of the resolution. To
know that grass is green and the sky blue, the network has to recognise them,
which is what the probe then reuses.

Details that matter:
- The input is L alone, scaled to (L - 50) / 50 (the reference subtracts 50),
  so the encoder is built with one input channel (`model_kwargs.in_channels
  = 1`, set by the config for every encoder family) and `features` also
  reads L: evaluators and exports still hand it uint8 RGB images
  (`feature_input`), whose colour it ignores.
- Dense prediction: the encoder's spatial map (`encoder.feature_map`, see the
  encoder contract in tasks/base.py), a 1x1 convolution, bilinear resizing to
  the target grid, a 3x3 and a 1x1 convolution. The target is the image's ab
  taken at every `target_stride`-th pixel (4: the reference's stride-4
  `data_ab_ss`). The paper's VGG keeps a 1/4-resolution map by dilation;
  these encoders pool further (1/8 to 1/32), so the head upsamples.
- `loss="classification"` (the paper's): the ab plane is cut into 10 x 10
  bins, of which the Q that 8-bit sRGB colours reach are classes
  (`gamut_bins`: Q = 261, spanning a in [-90, 100] and b in [-110, 90] as the
  reference's pts_in_hull.npy does; the paper keeps 313 by an in-gamut test
  it does not spell out, so some bins at the gamut's edge differ); the target
  is soft-encoded over the 5 nearest bins with a Gaussian of sigma 5
  (`soft_encode`; the reference's code uses 10 neighbours), and each
  pixel's cross-entropy is weighted by the rebalancing weight of its nearest
  bin, w ~ ((1 - lambda) p~ + lambda / Q)^-1 with lambda = 0.5 and
  E_p~[w] = 1, so rare saturated colours are not drowned by the greys.
  `loss="regression"`: the paper's L2 baseline on ab / 100.
- p~, the smoothed empirical ab distribution, is estimated from the training
  data as the run sees it: the mean of every batch's histogram of nearest
  bins (model state: checkpointed, global over devices, so exact on resume
  and the same on any device count), smoothed by a Gaussian of sigma 5 over
  the bins. The paper computes it over ImageNet once, beforehand; a task here
  is built before it sees data, and after a few batches the running mean is
  that same histogram of the data seen.
- Grey images carry no colour to learn: as in the reference
  (`NonGrayMaskLayer`), an image whose target has no |a| or |b| above 5 is
  left out of the loss (`skip_grey`; off for grey data such as the digits,
  which would otherwise give no loss at all).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.data.augment.lab import D65_WHITE, RGB_TO_XYZ
from ssl_jax.models.layers import global_avg_pool
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import IMAGES, Task, collapse_metrics, spatial_features

LIGHTNESS = dataclasses.replace(
    IMAGES, values="RGB 0-255, of which the encoder sees only CIE L* (D65), as (L - 50) / 50"
)
AB_SCALE = 100.0  # the regression head predicts ab / 100, about [-1, 1]
_ANNEALED_T = 0.38  # the paper's annealed-mean temperature, for the pictures


def _srgb_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> L*a*b*, float64 numpy (the host's copy of `augment.rgb_to_lab`)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = linear @ (RGB_TO_XYZ / D65_WHITE[:, None]).T
    delta = 6 / 29
    f = np.where(t > delta**3, np.cbrt(t), t / (3 * delta**2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


@functools.lru_cache(maxsize=4)
def gamut_bins(bin_size: int = 10) -> np.ndarray:
    """The in-gamut ab bins `[Q, 2]` (centres, multiples of `bin_size`, sorted
    by a then b): every bin whose cell [c - s/2, c + s/2) holds the ab of some
    8-bit sRGB colour. Only the faces of the RGB cube are converted: the ab of
    an inner colour is also that of a colour on the surface (the L line
    through it leaves the gamut somewhere), so the set is exact and takes
    390,152 conversions instead of 16.7 M."""
    v = np.arange(256, dtype=np.float64) / 255.0
    faces = []
    for axis in range(3):
        for end in (0.0, 1.0):
            u, w = np.meshgrid(v, v, indexing="ij")
            face = [u.ravel(), w.ravel()]
            face.insert(axis, np.full(u.size, end))
            faces.append(np.stack(face, 1))
    ab = _srgb_lab(np.concatenate(faces))[:, 1:]
    cells = np.unique(np.floor(ab / bin_size + 0.5).astype(np.int64), axis=0)
    return (cells * bin_size).astype(np.float64)


@functools.lru_cache(maxsize=4)
def smoothing_matrix(bin_size: int = 10, sigma: float = 5.0) -> np.ndarray:
    """`[Q, Q]` Gaussian of width `sigma` between bin centres: p~ = K p,
    renormalised, is the paper's smoothing of the empirical distribution."""
    bins = gamut_bins(bin_size)
    d2 = np.sum(np.square(bins[:, None] - bins[None]), axis=-1)
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def smooth_prior(histogram: jax.Array, bin_size: int = 10, sigma: float = 5.0) -> jax.Array:
    """An empirical histogram over the bins -> p~ (sums to 1; uniform if empty)."""
    kernel = jnp.asarray(smoothing_matrix(bin_size, sigma))
    # Full float32 (a GPU may round matmul inputs to TF32): the weights are targets.
    histogram = histogram.astype(jnp.float32)
    smoothed = jnp.matmul(kernel, histogram, precision=jax.lax.Precision.HIGHEST)
    total = jnp.sum(smoothed)
    uniform = jnp.full_like(smoothed, 1.0 / smoothed.shape[0])
    return jnp.where(total > 0, smoothed / jnp.where(total > 0, total, 1.0), uniform)


# The losses (section 2.1), here rather than in losses.py: nothing else uses them.


def soft_encode(
    ab: jax.Array, bins: jax.Array, *, neighbours: int = 5, sigma: float = 5.0
) -> tuple[jax.Array, jax.Array]:
    """The paper's soft-encoding of ab values `[..., 2]` over the quantised
    gamut `bins [Q, 2]`: the `neighbours` nearest bins (nearest first) and
    their weights, a Gaussian of width `sigma` in the distance, summing to 1.
    Returned as (indices int [..., k], weights [..., k]) rather than a dense
    `[..., Q]` target, which at ImageNet's 56 x 56 targets would be large."""
    ab, bins = ab.astype(jnp.float32), bins.astype(jnp.float32)
    # Squared distances per coordinate (no matmul: exact at any precision).
    d2 = jnp.square(ab[..., None, 0] - bins[:, 0]) + jnp.square(ab[..., None, 1] - bins[:, 1])
    negative, indices = jax.lax.top_k(-d2, neighbours)
    return indices, jax.nn.softmax(negative / (2.0 * sigma**2), axis=-1)


def rebalance_weights(prior: jax.Array, mix: float = 0.5) -> jax.Array:
    """Class-rebalancing weights (eq. 4): w proportional to
    ((1 - mix) p + mix / Q)^-1 over the Q bins of the (smoothed) empirical
    colour distribution `prior`, normalised so that E_p[w] = sum_q p_q w_q = 1."""
    prior = prior.astype(jnp.float32)
    weights = 1.0 / ((1.0 - mix) * prior + mix / prior.shape[-1])
    return weights / jnp.sum(prior * weights)


def colorization_loss(
    logits: jax.Array,
    target_bins: jax.Array,
    target_weights: jax.Array,
    pixel_weights: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """The rebalanced multinomial cross-entropy (eq. 2): per target pixel,
    v * -sum_q Z_q log softmax(logits)_q, with Z the soft-encoded target
    (`soft_encode`: `target_bins`, `target_weights` [B, h, w, k]) and v its
    rebalancing weight (`pixel_weights` [B, h, w]); averaged over the pixels
    of the images `mask` [B] keeps (the paper sums over pixels: a mean keeps
    the step size independent of the resolution). 0 if `mask` keeps none."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, target_bins, axis=-1)
    cross_entropy = -jnp.sum(target_weights.astype(jnp.float32) * picked, axis=-1)
    keep = jnp.broadcast_to(mask.astype(jnp.float32)[:, None, None], cross_entropy.shape)
    total = jnp.sum(keep * pixel_weights.astype(jnp.float32) * cross_entropy)
    return total / jnp.maximum(jnp.sum(keep), 1.0)


def ab_regression_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """The paper's regression baseline (eq. 1): 1/2 ||target - prediction||^2
    per pixel of `[B, h, w, 2]` ab maps, averaged over the pixels of the
    images `mask` [B] keeps; 0 if it keeps none."""
    error = 0.5 * jnp.sum(
        jnp.square(target.astype(jnp.float32) - prediction.astype(jnp.float32)), axis=-1
    )
    keep = jnp.broadcast_to(mask.astype(jnp.float32)[:, None, None], error.shape)
    return jnp.sum(keep * error) / jnp.maximum(jnp.sum(keep), 1.0)


class ColourPrior(nnx.Variable):
    """The running mean of the batches' ab histograms (and how many batches it
    holds): model state, no gradient."""


class ColourHead(nnx.Module):
    """Spatial features `[B, h, w, D]` -> a `[B, gh, gw, out]` map on the target grid."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rngs: nnx.Rngs):
        self.reduce = nnx.Conv(in_dim, hidden, (1, 1), rngs=rngs)
        self.refine = nnx.Conv(hidden, hidden, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.out = nnx.Conv(hidden, out_dim, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array, grid: tuple[int, int]) -> jax.Array:
        x = nnx.relu(self.reduce(x))
        if x.shape[1:3] != tuple(grid):
            x = jax.image.resize(x, (x.shape[0], *grid, x.shape[-1]), "bilinear")
        return self.out(nnx.relu(self.refine(x)))


def lightness_input(images: jax.Array) -> jax.Array:
    """Float RGB `[..., H, W, 3]` in [0, 1] -> the encoder's input `[..., H, W, 1]`."""
    return (augment.rgb_to_lab(images)[..., :1] - 50.0) / 50.0


class ColorizationTask(Task):
    feature_input = LIGHTNESS

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        loss: str = "classification",
        target_stride: int = 4,
        head_dim: int = 128,
        bin_size: int = 10,
        neighbours: int = 5,
        sigma: float = 5.0,
        rebalance: float = 0.5,
        skip_grey: bool = True,
        grey_threshold: float = 5.0,
        crop_padding: int = 2,
        flip: bool = True,
    ):
        if getattr(encoder, "in_channels", None) != 1 or not hasattr(encoder, "feature_map"):
            raise ValueError(
                "Colorization's encoder sees the L channel only and predicts a map: it needs "
                f"model_kwargs.in_channels=1 and a feature_map, got {type(encoder).__name__} "
                f"with in_channels={getattr(encoder, 'in_channels', None)}."
            )
        if loss not in ("classification", "regression"):
            raise ValueError(
                f"task_kwargs.loss must be 'classification' or 'regression', got {loss!r}."
            )
        if not 0.0 <= rebalance <= 1.0:
            raise ValueError(f"task_kwargs.rebalance must be in [0, 1], got {rebalance}.")
        self.encoder = encoder
        self.loss_kind = loss
        self.target_stride = int(target_stride)
        self.bin_size = int(bin_size)
        self.neighbours = int(neighbours)
        self.sigma = float(sigma)
        self.rebalance = float(rebalance)
        self.skip_grey = skip_grey
        self.grey_threshold = float(grey_threshold)
        self.crop_padding = crop_padding
        self.flip = flip
        classes = len(gamut_bins(self.bin_size)) if loss == "classification" else 2
        self.head = ColourHead(encoder.feature_dim, head_dim, classes, rngs=rngs)
        if loss == "classification":
            self.prior = ColourPrior(jnp.zeros((classes,), jnp.float32))
            self.prior_batches = ColourPrior(jnp.zeros((), jnp.float32))

    def augment(self, batch, rng, *, train=True):
        """uint8 RGB -> the encoder's L input `[B, H, W, 1]` and the target ab
        `[B, H / s, W / s, 2]` at every s-th pixel (cropped and flipped when
        training)."""
        images = augment.to_float(batch["image"])
        if train:
            images = augment.crop_and_flip_batch(
                rng, images, crop_padding=self.crop_padding, flip=self.flip
            )
        s = self.target_stride
        grid = (images.shape[1] // s, images.shape[2] // s)
        lab = augment.rgb_to_lab(images)
        return {
            "image": (lab[..., :1] - 50.0) / 50.0,
            "ab": lab[:, : grid[0] * s : s, : grid[1] * s : s, 1:],
        }

    def predict(self, x: jax.Array, grid: tuple[int, int], *, train: bool):
        """L input -> (head output on `grid` in float32, the encoder's map)."""
        fmap = self.encoder.feature_map(x, train=train)
        return self.head(fmap, grid).astype(jnp.float32), fmap

    def _update_prior(self, nearest: jax.Array, keep: jax.Array) -> None:
        """Fold this batch's histogram of nearest bins (over the kept images)
        into the running mean; a batch with none kept changes nothing."""
        classes = self.prior.shape[0]
        # A scatter-add, not a one-hot sum: [B, h, w, Q] would be ~0.8 GB at
        # the ImageNet recipe. Still one sum over the global batch.
        per_pixel = jnp.broadcast_to(keep[:, None, None].astype(jnp.float32), nearest.shape)
        counts = jnp.zeros(classes, jnp.float32).at[nearest.reshape(-1)].add(per_pixel.reshape(-1))
        pixels = jnp.sum(counts)
        n = self.prior_batches[...] + (pixels > 0)
        histogram = counts / jnp.maximum(pixels, 1.0)
        update = jnp.where(pixels > 0, (histogram - self.prior[...]) / jnp.maximum(n, 1.0), 0.0)
        self.prior[...] = self.prior[...] + update
        self.prior_batches[...] = n

    def loss(self, batch, rng, *, train):
        inputs = self.augment(batch, rng, train=train)
        ab = inputs["ab"]
        out, fmap = self.predict(inputs["image"], ab.shape[1:3], train=train)
        colourful = jnp.any(jnp.abs(ab) > self.grey_threshold, axis=(1, 2, 3))
        keep = colourful.astype(jnp.float32) if self.skip_grey else jnp.ones(ab.shape[0])
        metrics = {"colour_fraction": jnp.mean(colourful.astype(jnp.float32))}
        pixels = jnp.maximum(jnp.sum(keep) * ab.shape[1] * ab.shape[2], 1.0)
        if self.loss_kind == "classification":
            bins = jnp.asarray(gamut_bins(self.bin_size), jnp.float32)
            indices, weights = soft_encode(ab, bins, neighbours=self.neighbours, sigma=self.sigma)
            nearest = indices[..., 0]
            if train:
                self._update_prior(nearest, keep)
            prior = smooth_prior(self.prior[...], self.bin_size, self.sigma)
            pixel_weights = rebalance_weights(prior, self.rebalance)[nearest]
            loss = colorization_loss(out, indices, weights, pixel_weights, keep)
            hits = (jnp.argmax(out, axis=-1) == nearest).astype(jnp.float32)
            metrics["colour_accuracy"] = jnp.sum(hits * keep[:, None, None]) / pixels
        else:
            loss = ab_regression_loss(out, ab / AB_SCALE, keep)
            error = jnp.sum(jnp.square(out * AB_SCALE - ab), axis=-1)
            metrics["ab_rmse"] = jnp.sqrt(jnp.sum(error * keep[:, None, None]) / pixels)
        return loss, {**metrics, **collapse_metrics(global_avg_pool(fmap))}

    def features(self, images):
        """The encoder's pooled features of the L channel of uint8 RGB images."""
        x = lightness_input(augment.to_float(images))
        return self.encoder(x, train=False).astype(jnp.float32)

    def feature_maps(self, images):
        """The encoder's spatial map of the L channel, as `features` reads it."""
        return spatial_features(self.encoder, lightness_input(augment.to_float(images)))

    def colourise(self, images: jax.Array) -> jax.Array:
        """uint8 RGB -> uint8 RGB with the predicted colour on the true L: the
        annealed mean of the bins (T = 0.38, the paper's) or the regressed ab,
        resized bilinearly to the full image."""
        rgb = augment.to_float(images)
        lab = augment.rgb_to_lab(rgb)
        s = self.target_stride
        grid = (rgb.shape[1] // s, rgb.shape[2] // s)
        out, _ = self.predict((lab[..., :1] - 50.0) / 50.0, grid, train=False)
        if self.loss_kind == "classification":
            bins = jnp.asarray(gamut_bins(self.bin_size), jnp.float32)
            ab = jax.nn.softmax(out / _ANNEALED_T, axis=-1) @ bins
        else:
            ab = out * AB_SCALE
        ab = jax.image.resize(ab, (*lab.shape[:3], 2), "bilinear")
        colour = augment.lab_to_rgb(jnp.concatenate([lab[..., :1], ab], axis=-1))
        return jnp.round(colour * 255.0).astype(jnp.uint8)

    def visualize(self, batch, rng) -> jax.Array:
        """uint8 [3H, nW, 3]: one column per example; rows: the original, its
        lightness as grey, and the colourised lightness."""
        del rng
        original = batch["image"].astype(jnp.uint8)
        lab = augment.rgb_to_lab(augment.to_float(original))
        grey = augment.lab_to_rgb(lab.at[..., 1:].set(0.0))
        grey = jnp.round(grey * 255.0).astype(jnp.uint8)
        rows = (original, grey, self.colourise(original))
        return jnp.concatenate([jnp.concatenate(list(r), axis=1) for r in rows], axis=0)


@TASKS.register("colorization")
def colorization(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> ColorizationTask:
    return ColorizationTask(encoder, rngs=rngs, **kwargs)
