"""Masked spectrogram modelling (Audio-MAE; Huang et al., "Masked
Autoencoders that Listen", NeurIPS 2022).

MAE (`tasks/mae.py`) on the log-mel spectrogram: each clip's waveform goes
through the log-mel front end on the device (`models/audio.log_mel`), the
spectrogram is standardised and cut into square patches (time x mel bands),
a random 80% of them are hidden, the ViT encoder sees the visible fifth, and
the light decoder predicts every hidden patch's normalised log-mel values.
The loss is the MSE on hidden patches only. Everything but the input is
`MAETask`'s: its per-example masking, encoder-on-visible-patches, decoder
and loss.

As in Audio-MAE:
- mask ratio 0.8, unstructured (random patches, not whole time steps or mel
  bands: the paper's best for pretraining);
- `norm_pix_loss`: each target patch standardised by its own mean and std;
- the spectrogram standardised by one mean and std for the whole dataset
  (`norm_mean`, `norm_std`; Audio-MAE uses AudioSet's -4.27 and 4.57 for
  Kaldi fbanks; ours are those of the embedded `tones` under this front end,
  measured: a fixed affine map, so any dataset can use them);
- no other augmentation during pretraining (the paper's mixup and SpecAug are
  for fine-tuning);
- features: the mean of the patch tokens of the whole, unmasked spectrogram.

Departs: a vanilla Transformer decoder rather than the paper's local
window attention (there are 24 patches here, not 512), and a CPU-sized
encoder (`models/audio.py`).

The frames of a clip are cut to a multiple of the patch size (the last
98 - 96 frames of a one-second clip are dropped), so the grid is whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import audio as audio_data
from ssl_jax.losses import mae_loss
from ssl_jax.models.audio import MelSpec, log_mel
from ssl_jax.models.vit import unpatchify
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import FeatureInput, collapse_metrics
from ssl_jax.tasks.mae import MAETask

# One second at 16 kHz, what every audio source delivers (`data/audio.py`):
# the length is part of what the features were measured on.
AUDIO = FeatureInput(
    audio_data.INPUT_KEY,
    "int16",
    ("N", audio_data.SAMPLES),
    "mono 16-bit PCM at 16 kHz, scaled x / 32768, then the task's log-mel spectrogram "
    "(task_kwargs)",
)
# The embedded tones' log-mel mean and std under the default front end, measured
# on `tones:train_per_class=20` (200 clips, every frame and band): -1.88, 2.40.
NORM_MEAN = -1.9
NORM_STD = 2.4


class AudioMAETask(MAETask):
    feature_input = AUDIO

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        mask_ratio: float = 0.8,
        norm_pix_loss: bool = True,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mel: dict | None = None,
        norm_mean: float = NORM_MEAN,
        norm_std: float = NORM_STD,
    ):
        if getattr(encoder, "in_channels", None) != 1 or not hasattr(encoder, "encode_tokens"):
            raise ValueError(
                f"Masked spectrogram modelling needs a one-channel ViT, got "
                f"{type(encoder).__name__}: use encoder=audio_vit."
            )
        self.mel = MelSpec(**(mel or {}))
        if self.mel.n_mels % encoder.patch_size:
            raise ValueError(
                f"task_kwargs.mel.n_mels ({self.mel.n_mels}) must be a multiple of the patch "
                f"size ({encoder.patch_size})."
            )
        if norm_std <= 0:
            raise ValueError(f"task_kwargs.norm_std must be > 0, got {norm_std}.")
        super().__init__(
            encoder,
            rngs=rngs,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
            decoder_dim=decoder_dim,
            decoder_depth=decoder_depth,
            decoder_heads=decoder_heads,
            crop_scale=None,
            flip=False,
        )
        self.norm_mean, self.norm_std = float(norm_mean), float(norm_std)

    def spectrogram(self, audio: jax.Array) -> jax.Array:
        """int16 [B, S] -> the standardised log-mel spectrogram [B, T, n_mels, 1],
        T the clip's frames cut to a multiple of the patch size."""
        x = log_mel(audio.astype(jnp.float32) / 32768.0, self.mel)
        p = self.encoder.patch_size
        frames = x.shape[1] // p * p
        if frames == 0:
            raise ValueError(
                f"Clips of {audio.shape[1]} samples give {x.shape[1]} frames, fewer than one "
                f"patch ({p}); use longer clips."
            )
        return ((x[:, :frames] - self.norm_mean) / self.norm_std)[..., None]

    def augment(self, batch, rng, *, train=True):
        """int16 waveforms -> spectrograms; nothing random (masking is the model's)."""
        del rng, train
        return {"spectrogram": self.spectrogram(batch["audio"])}

    def loss(self, batch, rng, *, train):
        spectrogram = self.augment(batch, rng, train=train)["spectrogram"]
        pred, target, mask, pooled = self.reconstruct(spectrogram, rng)
        loss = mae_loss(pred, target, mask, norm_pix_loss=self.norm_pix_loss)
        return loss, {"visible_fraction": 1.0 - jnp.mean(mask), **collapse_metrics(pooled)}

    def features(self, audio: jax.Array) -> jax.Array:
        """Mean-pooled patch tokens of the whole, unmasked spectrogram."""
        return self.encoder(self.spectrogram(audio), train=False).astype(jnp.float32)

    def visualize(self, batch, rng) -> jax.Array:
        """uint8 [3F, nT, 3]: one column per clip, frequency upwards; rows: the
        spectrogram, the masked input (hidden patches black), the
        reconstruction with the visible patches pasted in. With
        `norm_pix_loss` a predicted patch is shown in its true patch's mean and
        std (a picture only, as MAE's)."""
        x = self.spectrogram(batch["audio"])
        pred, target, mask, _ = self.reconstruct(x, rng)
        if self.norm_pix_loss:
            mean = target.mean(axis=-1, keepdims=True)
            pred = pred * jnp.sqrt(target.var(axis=-1, keepdims=True) + 1e-6) + mean
        hidden = mask[:, :, None] > 0
        p, grid = self.encoder.patch_size, self.encoder.grid(x)
        low, high = jnp.min(x), jnp.max(x)
        masked = jnp.where(hidden, low, target)
        pasted = jnp.where(hidden, pred, target)
        rows = []
        for patches in (target, masked, pasted):
            image = unpatchify(patches, p, grid)[..., 0]  # [B, T, F]
            image = jnp.flip(jnp.swapaxes(image, 1, 2), axis=1)  # frequency up
            rows.append(jnp.concatenate(list(image), axis=1))
        picture = jnp.clip((jnp.concatenate(rows, axis=0) - low) / (high - low + 1e-6), 0, 1)
        return jnp.repeat(jnp.round(picture * 255).astype(jnp.uint8)[..., None], 3, axis=-1)


@TASKS.register("audio_mae")
def audio_mae(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> AudioMAETask:
    return AudioMAETask(encoder, rngs=rngs, **kwargs)
