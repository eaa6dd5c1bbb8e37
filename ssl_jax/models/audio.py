"""Audio on the device: the log-mel front end, and the spectrogram ViT.

The front end (`log_mel`) turns waveforms into what the encoder sees, in jnp
inside the compiled step, with no parameters (as `augment.normalize` is for
images):
1. frames of `frame_length` samples every `hop_length` (25 ms every 10 ms at
   16 kHz, the Kaldi fbank framing Audio-MAE uses), no padding, so a frame
   never reaches past the clip: 1 + (L - frame_length) // hop_length frames;
2. each frame times a periodic Hann window, w[n] = 0.5 - 0.5 cos(2 pi n / N)
   (N = frame_length), zero-padded to `n_fft` and transformed with
   `jnp.fft.rfft`; power |X[k]|^2 at the n_fft / 2 + 1 bin frequencies
   k * sample_rate / n_fft;
3. a mel filterbank on the HTK mel scale, m(f) = 2595 log10(1 + f / 700):
   n_mels triangles whose corners are n_mels + 2 points equally spaced in
   mel between fmin and fmax, each rising from 0 at its left corner to 1 at
   its centre and falling to 0 at its right corner, linear in Hz between
   (peak 1, no area normalisation; as librosa's `htk=True` and torchaudio's
   `melscale_fbanks` build them; HTK and Kaldi draw the sides linear in mel,
   which moves a filter weight by at most 0.005 here);
4. the natural log of the filter energies, floored at `floor` so silence has
   a finite value.

Departures from the Kaldi fbank Audio-MAE feeds its ViT: no pre-emphasis
(0.97 there), no per-frame DC removal, a periodic instead of a symmetric
Hann window, and a 60 Hz - 7.8 kHz band instead of 20 Hz - Nyquist.

`mel_filterbank` is numpy, computed once per setting in float64 and cast to
float32. tests/models/test_audio.py checks all four steps against its own
float64 numpy reference of these formulas.

The encoder is the ViT of `models/vit.py` on the log-mel spectrogram as a
one-channel image [B, frames, n_mels, 1] (time down, frequency across),
patches of `patch_size` squared (Audio-MAE's 16 x 16): a spectrogram-patch
ViT as AST and Audio-MAE build it, with the fixed 2-D sin-cos positions that
follow the patch grid. Registered variants:
  audio_vit       width 128, depth 4, 4 heads, 16 x 16 patches, mean-pooled
                  patch tokens (Audio-MAE's pooling): a CPU-sized model
  audio_vit_test  width 32, depth 1, 2 heads: for tests and `runlocal`
and the encoder family `audio_vit` (`config.encoder`), which has no image size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.models.presets import EncoderPreset
from ssl_jax.models.vit import ViT
from ssl_jax.registry import ENCODERS, MODELS


@dataclasses.dataclass(frozen=True)
class MelSpec:
    """The front end's settings (defaults: 16 kHz speech-style features)."""

    sample_rate: int = 16_000
    frame_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 64
    fmin: float = 60.0
    fmax: float = 7_800.0
    floor: float = 1e-6

    def __post_init__(self):
        if not 0 < self.frame_length <= self.n_fft or self.hop_length < 1:
            raise ValueError(
                f"The log-mel front end needs 0 < frame_length <= n_fft and hop_length >= 1, "
                f"got {self.frame_length}, {self.n_fft}, {self.hop_length}."
            )
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"The mel filterbank needs 0 <= fmin < fmax <= sample_rate / 2, got "
                f"fmin={self.fmin}, fmax={self.fmax} at {self.sample_rate} Hz."
            )

    def num_frames(self, samples: int) -> int:
        return 1 + (samples - self.frame_length) // self.hop_length


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(spec: MelSpec) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels]: filter m's weight at each FFT bin."""
    corners = mel_to_hz(np.linspace(hz_to_mel(spec.fmin), hz_to_mel(spec.fmax), spec.n_mels + 2))
    bins = np.arange(spec.n_fft // 2 + 1) * spec.sample_rate / spec.n_fft
    left, centre, right = corners[:-2], corners[1:-1], corners[2:]
    rising = (bins[:, None] - left) / (centre - left)
    falling = (right - bins[:, None]) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if not np.all(weights.max(axis=0) > 0):
        raise ValueError(
            f"{spec}: some mel filters fall between FFT bins; use fewer n_mels, a larger n_fft "
            "or a higher fmin."
        )
    return weights.astype(np.float32)


def hann(length: int) -> np.ndarray:
    """The periodic Hann window (the DFT-even one spectrograms use)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def log_mel(waveform: jax.Array, spec: MelSpec) -> jax.Array:
    """float waveforms [B, L] -> float32 log filter energies [B, frames, n_mels]."""
    waveform = waveform.astype(jnp.float32)
    frames = spec.num_frames(waveform.shape[-1])
    if frames < 1:
        raise ValueError(
            f"Clips of {waveform.shape[-1]} samples are shorter than one frame "
            f"({spec.frame_length} samples)."
        )
    starts = np.arange(frames)[:, None] * spec.hop_length
    window = jnp.asarray(hann(spec.frame_length), jnp.float32)
    framed = waveform[:, starts + np.arange(spec.frame_length)] * window  # [B, T, N]
    spectrum = jnp.fft.rfft(framed, n=spec.n_fft, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    # HIGHEST: a TPU would otherwise multiply in bfloat16.
    energies = jnp.matmul(
        power, jnp.asarray(mel_filterbank(spec)), precision=jax.lax.Precision.HIGHEST
    )
    return jnp.log(jnp.maximum(energies, spec.floor))


# ----------------------------------------------------------------------------- encoders
_AUDIO = {"embed_dim": 128, "depth": 4, "num_heads": 4}
_AUDIO_TEST = {"embed_dim": 32, "depth": 1, "num_heads": 2}
# A spectrogram is one channel; Audio-MAE pools the mean of the patch tokens.
_SPECTROGRAM = {"patch_size": 16, "in_channels": 1, "pool": "gap"}


@MODELS.register("audio_vit")
def audio_vit(*, rngs: nnx.Rngs, **kwargs) -> ViT:
    return ViT(rngs=rngs, **{**_SPECTROGRAM, **_AUDIO, **kwargs})


@MODELS.register("audio_vit_test")
def audio_vit_test(*, rngs: nnx.Rngs, **kwargs) -> ViT:
    return ViT(rngs=rngs, **{**_SPECTROGRAM, **_AUDIO_TEST, **kwargs})


# AdamW with MAE's betas (Audio-MAE's pretraining optimizer), per 256 clips.
_ADAMW = {
    "name": "adamw",
    "learning_rate": 1e-3,
    "lr_scaling": "linear",
    "b1": 0.9,
    "b2": 0.95,
    "weight_decay": 0.05,
}


@ENCODERS.register("audio_vit")
def audio_vit_preset(image_size: int, *, test: bool = False) -> EncoderPreset:
    """Spectrograms have no image size: one CPU-sized ViT, its test variant
    for `runlocal`."""
    del image_size
    return EncoderPreset("audio_vit_test" if test else "audio_vit", {}, optimizer=_ADAMW)
