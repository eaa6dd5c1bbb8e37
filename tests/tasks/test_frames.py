"""Missing-frame prediction: one hidden frame per clip, the loss on it only,
the hidden frame unseen by the encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.frames import hidden_frames


def _task():
    encoder = MODELS.get("clip_transformer_test")(rngs=nnx.Rngs(0), frame_size=8)
    return TASKS.get("frames")(encoder, rngs=nnx.Rngs(1), head_dim=16)


def _video(n=4, frames=5, seed=0):
    x = jax.random.randint(jax.random.key(seed), (n, frames, 8, 8, 3), 0, 256, jnp.int32)
    return x.astype(jnp.uint8)


def test_one_hidden_frame_per_clip_drawn_per_example():
    hidden = np.asarray(hidden_frames(jax.random.key(0), 4000, 6))
    np.testing.assert_array_equal(hidden.sum(1), 1)
    np.testing.assert_allclose(hidden.mean(0), 1 / 6, atol=0.03)  # uniform over frames
    small = hidden_frames(jax.random.key(0), 3, 6)
    np.testing.assert_array_equal(small, hidden[:3])  # example i's draw is its own
    assert not np.array_equal(hidden_frames(jax.random.key(1), 4000, 6), hidden)


def test_loss_is_the_mse_of_the_hidden_frame_only():
    task, video = _task(), _video()
    rng = jax.random.key(2)
    loss, _ = task.loss({"video": video}, rng, train=True)
    hidden = hidden_frames(rng, 4, 5)
    pred, _ = task.predict(augment.normalize(augment.to_float(video)), hidden)
    target = np.asarray(augment.normalize(augment.to_float(video))).reshape(4, 5, -1)
    index = np.asarray(hidden).argmax(1)
    rows = np.arange(4)
    want = np.mean((np.asarray(pred)[rows, index] - target[rows, index]) ** 2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_the_encoder_never_sees_the_hidden_frame():
    task, video = _task(), _video()
    hidden = hidden_frames(jax.random.key(5), 4, 5)
    changed = jnp.where(hidden[:, :, None, None, None] > 0, 255 - video, video)
    x = lambda v: augment.normalize(augment.to_float(v))
    a, _ = task.predict(x(video), hidden)
    b, _ = task.predict(x(changed), hidden)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # ...while a visible frame does change the prediction.
    visible = 1.0 - hidden
    first_visible = jax.nn.one_hot(jnp.argmax(visible, 1), 5)
    other = jnp.where(first_visible[:, :, None, None, None] > 0, 255 - video, video)
    c, _ = task.predict(x(other), hidden)
    assert not np.allclose(a, c)


def test_features_and_picture_shapes():
    task, video = _task(), _video(n=3)
    assert task.features(video).shape == (3, 32)
    picture = task.visualize({"video": video}, jax.random.key(0))
    assert picture.shape == (24, 24, 3) and picture.dtype == jnp.uint8


def test_frames_refuses_an_image_encoder():
    encoder = MODELS.get("vit_test")(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="clip_transformer"):
        TASKS.get("frames")(encoder, rngs=nnx.Rngs(1))
