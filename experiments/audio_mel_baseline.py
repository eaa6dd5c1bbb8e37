"""A no-network baseline for the embedded audio: the linear probe on each
clip's log-mel statistics (the mean and std over time of every mel band, 128
numbers), next to which the audio config's pretrained and random-init
probes are read.

  python experiments/audio_mel_baseline.py [--dataset=tones]

The features are the task's own front end (`models/audio.log_mel`, default
settings), before any network; the probe is the evaluators'
(`evaluate/linear_probe.fit_linear_probe`, 500 steps, l2 chosen on a
held-out fifth). A pooled spectrum is what a random encoder mostly passes
on; what it lacks is order in time (rising vs falling glides) and fine
pitch relations (major vs minor triads).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ssl_jax.data.datasets import load_dataset
from ssl_jax.evaluate.linear_probe import fit_linear_probe
from ssl_jax.models.audio import MelSpec, log_mel

_DATASET = flags.DEFINE_string("dataset", "tones", "An audio dataset (tones, audiofolder:...).")


def mel_statistics(audio: np.ndarray, batch: int = 200) -> np.ndarray:
    """int16 [N, S] -> float32 [N, 2 * n_mels]: per band, mean and std over time."""
    spectrogram = jax.jit(lambda a: log_mel(a.astype(jnp.float32) / 32768.0, MelSpec()))
    out = []
    for i in range(0, len(audio), batch):
        m = np.asarray(spectrogram(jnp.asarray(audio[i : i + batch])))
        out.append(np.concatenate([m.mean(axis=1), m.std(axis=1)], axis=1))
    return np.concatenate(out)


def main(argv):
    del argv
    train, test = (load_dataset(_DATASET.value, s, image_size=16) for s in ("train", "test"))
    fit = fit_linear_probe(
        mel_statistics(train.inputs),
        train.labels,
        mel_statistics(test.inputs),
        test.labels,
        num_classes=train.num_classes,
        steps=500,
    )
    print(f"{train.name}: linear probe on log-mel statistics, top-1 {fit.top1:.3f}")


if __name__ == "__main__":
    app.run(main)
