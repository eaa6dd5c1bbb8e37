import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.rotation import rotate_batch


def _task(name="rotation", **kwargs):
    encoder = MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0))
    return TASKS.get(name)(encoder, rngs=nnx.Rngs(1), **kwargs)


def _batch(n=4, size=8, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8), "label": jnp.arange(n) % 3}


def test_rotate_batch_groups_copies_by_rotation():
    images = jax.random.uniform(jax.random.key(0), (3, 5, 5, 2))
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (12, 5, 5, 2)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    for k in range(4):
        for i in range(3):
            np.testing.assert_array_equal(rotated[3 * k + i], np.rot90(np.asarray(images[i]), k))


def test_rotate_batch_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(jnp.zeros((1, 4, 6, 3)))


def test_rotation_loss_is_chance_level_at_init_and_learnable():
    task = _task(crop_padding=0, flip=False)
    # Images brighter towards the top: their orientation is visible.
    ramp = jnp.linspace(255, 0, 8)[None, :, None, None]
    noise = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3), minval=-40, maxval=40)
    batch = {"image": jnp.clip(ramp + noise, 0, 255).astype(jnp.uint8)}
    loss, metrics = task.loss(batch, jax.random.key(0), train=True)
    assert np.isfinite(loss)
    assert abs(float(loss) - np.log(4)) < 0.7  # near chance before any training
    assert 0.0 <= float(metrics["rotation_accuracy"]) <= 1.0

    graphdef, params, rest = nnx.split(task, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)

    @jax.jit
    def step(params, rest):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            loss, _ = m.loss(batch, jax.random.key(0), train=True)
            return loss, nnx.as_pure(nnx.split(m, nnx.Param, ...)[2])

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), rest, loss

    losses = []
    for _ in range(30):
        params, rest, loss = step(params, rest)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]  # it can fit the rotations of a fixed batch


def test_rotation_loss_ignores_labels_and_uses_rng_only_when_training():
    task = _task(crop_padding=2, flip=True)
    batch = _batch()
    relabelled = {**batch, "label": batch["label"] + 1}
    a, _ = task.loss(batch, jax.random.key(0), train=False)
    b, _ = task.loss(relabelled, jax.random.key(5), train=False)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c, _ = task.loss(batch, jax.random.key(0), train=True)
    d, _ = task.loss(batch, jax.random.key(1), train=True)
    assert float(c) != float(d)  # augmentation differs with the key


def test_features_are_deterministic_eval_mode_encoder_outputs():
    task = _task()
    images = _batch()["image"]
    f1 = task.features(images)
    f2 = task.features(images)
    assert f1.shape == (4, task.encoder.feature_dim)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(task.features(images[:1]), f1[:1], rtol=1e-5, atol=1e-6)


def test_supervised_task_uses_labels():
    task = _task("supervised", num_classes=3, crop_padding=0, flip=False)
    batch = _batch()
    a, metrics = task.loss(batch, jax.random.key(0), train=False)
    b, _ = task.loss({**batch, "label": (batch["label"] + 1) % 3}, jax.random.key(0), train=False)
    assert float(a) != float(b)
    assert "accuracy" in metrics
    with pytest.raises(ValueError, match="labels"):
        task.loss({"image": batch["image"]}, jax.random.key(0), train=False)
