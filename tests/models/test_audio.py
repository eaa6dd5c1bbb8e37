"""The log-mel front end against a float64 numpy reference written from the
formulas (HTK mel scale, periodic Hann window, power spectrum by the DFT's
definition), and the spectrogram ViT's shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.models.audio import MelSpec, log_mel, mel_filterbank
from ssl_jax.registry import ENCODERS, MODELS

SPEC = MelSpec()  # 16 kHz, 25 ms frames every 10 ms, 512-point FFT, 64 mel bands


def reference_filterbank(spec):
    """Triangles on the HTK mel scale, m = 1127 ln(1 + f / 700) (the same scale
    as 2595 log10(1 + f / 700)), one filter and one bin at a time."""
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (math.exp(m / 1127.0) - 1.0)
    lo, hi = mel(spec.fmin), mel(spec.fmax)
    corners = [hz(lo + (hi - lo) * i / (spec.n_mels + 1)) for i in range(spec.n_mels + 2)]
    bins = spec.n_fft // 2 + 1
    out = np.zeros((bins, spec.n_mels))
    for m in range(spec.n_mels):
        left, centre, right = corners[m], corners[m + 1], corners[m + 2]
        for k in range(bins):
            f = k * spec.sample_rate / spec.n_fft
            if left < f <= centre:
                out[k, m] = (f - left) / (centre - left)
            elif centre < f < right:
                out[k, m] = (right - f) / (right - centre)
    return out


def reference_log_mel(waveform, spec):
    """float64: frames, periodic Hann, |sum_n x[n] e^(-2 pi i k n / N)|^2 over
    the zero-padded frame, the reference filterbank, log with the floor."""
    n = spec.frame_length
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / n) for i in range(n)])
    count = (len(waveform) - n) // spec.hop_length + 1
    k = np.arange(spec.n_fft // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(n)[None, :] / spec.n_fft)  # the padding adds 0
    power = np.stack(
        [
            np.abs(dft @ (waveform[t * spec.hop_length : t * spec.hop_length + n] * window)) ** 2
            for t in range(count)
        ]
    )
    return np.log(np.maximum(power @ reference_filterbank(spec), spec.floor))


def _waveforms():
    """Two clips: a chord over noise, and a glide; the noise keeps every band
    far above float32's rounding of the loudest bin."""
    rng = np.random.default_rng(0)
    t = np.arange(4000) / SPEC.sample_rate
    chord = sum(0.3 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    glide = 0.5 * np.sin(2 * np.pi * (300.0 * t + 2000.0 * t**2))  # 300 -> 1300 Hz
    return np.stack([chord, glide]) + 0.01 * rng.standard_normal((2, len(t)))


def test_filterbank_matches_the_htk_formula():
    np.testing.assert_allclose(mel_filterbank(SPEC), reference_filterbank(SPEC), atol=1e-6)
    other = MelSpec(sample_rate=8000, n_fft=256, frame_length=200, n_mels=20, fmin=0, fmax=4000)
    np.testing.assert_allclose(mel_filterbank(other), reference_filterbank(other), atol=1e-6)


def test_log_mel_matches_the_float64_reference():
    x = _waveforms()
    got = np.asarray(jax.jit(lambda w: log_mel(w, SPEC))(jnp.asarray(x, jnp.float32)))
    want = np.stack([reference_log_mel(w, SPEC) for w in x])
    assert got.shape == want.shape == (2, 1 + (4000 - 400) // 160, 64)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_silence_sits_at_the_floor_and_filters_must_reach_a_bin():
    got = log_mel(jnp.zeros((1, 800)), SPEC)
    np.testing.assert_array_equal(got, np.log(np.float32(SPEC.floor)))
    with pytest.raises(ValueError, match="fall between FFT bins"):
        mel_filterbank(MelSpec(n_mels=128, fmin=0.0))
    with pytest.raises(ValueError, match="fmin < fmax"):
        MelSpec(fmax=9000.0)


@pytest.mark.parametrize("test", [False, True])
def test_spectrogram_vit_maps_spectrograms_to_features(test):
    preset = ENCODERS.get("audio_vit")(16, test=test)
    model = nnx.eval_shape(lambda: MODELS.get(preset.model)(rngs=nnx.Rngs(0), **preset.kwargs))
    x = jax.ShapeDtypeStruct((2, 96, 64, 1), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x, train=False), model, x)
    assert out.shape == (2, model.feature_dim) and model.in_channels == 1
    assert model.grid(x) == (6, 4)  # 16 x 16 patches: time x mel bands
