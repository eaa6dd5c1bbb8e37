"""Masked spectrogram modelling: what the encoder sees is the standardised
log-mel spectrogram of the waveform, 80% of its patches are hidden, the loss
is MAE's on them, and the task refuses an encoder that is not a one-channel
ViT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import config_lib, inference
from ssl_jax.data import audio
from ssl_jax.models.audio import MelSpec, log_mel
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks import audio_mae


@pytest.fixture(scope="module")
def task_and_batch():
    config = config_lib.get_config("audio", "runlocal")
    task = nnx.jit(lambda: inference.build_task(config))()  # one compile, not one per op
    data = audio.load_tones("train_per_class=1,test_per_class=1", "test")
    return task, {"audio": jnp.asarray(data.inputs[:4]), "label": jnp.asarray(data.labels[:4])}


def test_the_encoder_sees_standardised_log_mel_patches_four_fifths_hidden(task_and_batch):
    task, batch = task_and_batch

    @nnx.jit
    def run(task, batch):  # one compilation for everything the test looks at
        spectrogram = task.augment(batch, jax.random.key(0))["spectrogram"]
        loss, metrics = task.loss(batch, jax.random.key(1), train=True)
        picture = task.visualize(batch, jax.random.key(0))
        return spectrogram, loss, metrics, task.features(batch["audio"]), picture

    x, loss, metrics, features, picture = run(task, batch)
    # By hand: x / 32768, log-mel (checked against numpy in models/test_audio),
    # the dataset-wide standardisation, frames cut to whole 16-frame patches.
    mel = np.asarray(log_mel(jnp.asarray(batch["audio"], jnp.float32) / 32768.0, MelSpec()))
    expected = (mel[:, :96] - audio_mae.NORM_MEAN) / audio_mae.NORM_STD
    assert x.shape == (4, 96, 64, 1)
    np.testing.assert_allclose(np.asarray(x)[..., 0], expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(loss) and 0.5 < loss < 2.0  # normalised targets: about 1 untrained
    # 24 patches, round(24 * 0.2) = 5 visible.
    np.testing.assert_allclose(metrics["visible_fraction"], 5 / 24, rtol=1e-6)
    assert features.shape == (4, task.encoder.feature_dim) and features.dtype == jnp.float32
    assert picture.shape == (3 * 64, 4 * 96, 3) and picture.dtype == jnp.uint8


def test_an_rgb_encoder_or_a_bad_mel_setting_is_refused():
    # Shapes only: the task refuses before computing anything.
    build = lambda model, **kwargs: nnx.eval_shape(
        lambda: TASKS.get("audio_mae")(
            MODELS.get(model)(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0), **kwargs
        )
    )
    with pytest.raises(ValueError, match="one-channel ViT.*encoder=audio_vit"):
        build("vit_test")
    with pytest.raises(ValueError, match="n_mels .* multiple of the patch"):
        build("audio_vit_test", mel={"n_mels": 40})
    build("audio_vit_test")  # the defaults are accepted
