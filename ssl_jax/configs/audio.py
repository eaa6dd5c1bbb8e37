"""python -m ssl_jax.main --config=configs/audio.py --workdir=runs/audio

Masked spectrogram modelling (Audio-MAE; Huang et al., "Masked Autoencoders
that Listen", NeurIPS 2022) of a small spectrogram-patch ViT, then a linear
probe (with few labels) and kNN of its mean-pooled features, against the
same encoder at random initialisation. On the embedded `tones` default
(synthesised one-second clips at 16 kHz, ten classes of sound at random
pitch, loudness and envelope; ssl_jax/data/audio.py) it takes a few minutes
on 2 CPU cores and the probe of the pretrained encoder should beat the
random encoder's: measured 0.583 and 0.575 top-1 (seeds 0 and 1) against
0.273 and 0.268 at random init and 0.312 for a probe of the clips' log-mel
statistics with no network (chance 0.100; docs/runs/audio/).

Variants, picked by the argument after the colon (comma-separated):
  configs/audio.py:runlocal                         tiny ViT, a handful of steps (tests)
  configs/audio.py:dataset=audiofolder:/data/sounds a folder of WAV files,
                                                    train/<class>/*.wav and test/<class>/*.wav
  configs/audio.py:dataset=audiorecords:/records    the same, written by
      python -m ssl_jax.prepare --source=audiofolder:/data/sounds --out=/records
  configs/audio.py:mask_ratio=0.7                   another mask ratio (Audio-MAE: 0.8)

The recipe follows Audio-MAE's pretraining (its appendix; the
facebookresearch/AudioMAE code): 25 ms / 10 ms log-mel frames, 16 x 16
patches, mask ratio 0.8 unstructured, per-patch normalised targets, AdamW
with betas (0.9, 0.95), weight decay 0.05, a linear-scaled rate with a
warm-up then cosine, mean-pooled patch tokens as features. Departs, to run
on a CPU in minutes: 1 s clips at 64 mel bands (the paper: 10 s at 128,
1,024 frames, 512 patches; here 96 frames, 24 patches), a width-128 depth-4
encoder (ViT-B) with a 64-wide 2-block vanilla decoder (a 16-block one with
local attention), batch 128 for 600 steps (512 for 32 epochs of AudioSet),
and a rate of 1e-3 per 256 clips (2e-4 x 512 / 256 in the paper: at this
size and length the larger step is what moves the ViT, as for MAE on digits).
"""

import dataclasses

from ssl_jax import config_lib
from ssl_jax.models.audio import MelSpec
from ssl_jax.tasks.audio_mae import NORM_MEAN, NORM_STD

MODALITY = "audio"  # batches hold `audio`; the image-only tests skip this config
_FAMILY = "audio_vit"
# runlocal on the embedded default: enough clips for its 10-per-class probe.
_RUNLOCAL_TONES = "tones:train_per_class=16,test_per_class=4"


def get_config(arg: str | None = None):
    options = config_lib.options(arg, dataset="tones", mask_ratio=0.8)
    config_lib.image_only_options(options, "audio", _FAMILY)
    config = config_lib.base_config()
    config.task = "audio_mae"
    config.dataset = options.dataset
    # Spectrograms have no image size: this only satisfies the shared
    # fields (a multiple of the patch size, as config_lib.validate asks).
    config.image_size = 16
    config_lib.update(
        config,
        {
            "task_kwargs": {
                "mask_ratio": options.mask_ratio,
                "norm_pix_loss": True,
                "decoder_dim": 64,
                "decoder_depth": 2,
                "decoder_heads": 4,
                # The front end, spelt out so it can be changed from the
                # command line (--config.task_kwargs.mel.n_mels=32) and is
                # written into exports: 25 ms frames every 10 ms, 64 mel bands.
                "mel": dataclasses.asdict(MelSpec()),
                # The spectrogram's standardisation (Audio-MAE: AudioSet's).
                "norm_mean": NORM_MEAN,
                "norm_std": NORM_STD,
            },
            "batch_size": 128,
            "train_steps": 600,
            "log_every": 50,
            "optimizer": {
                "name": "adamw",
                "learning_rate": 1e-3,
                "lr_scaling": "linear",
                "warmup_fraction": 0.05,
                "b1": 0.9,
                "b2": 0.95,
                "weight_decay": 0.05,
            },
            "probe": {"labels_per_class": (1, 5, 10, 20)},
        },
    )
    embedded = options.dataset.startswith("tones")
    if options.runlocal:
        config_lib.update(
            config, {"task_kwargs": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}}
        )
        if options.dataset == "tones":
            config.dataset = _RUNLOCAL_TONES
    config = config_lib.finish(config, options, "", encoder=_FAMILY)
    # CPU-sized: float32 on the embedded tones, bfloat16 on real recordings (accelerators).
    config.compute_dtype = "float32" if embedded or options.runlocal else "bfloat16"
    return config
