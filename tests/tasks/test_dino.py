"""DINO's pieces: multi-crop shapes, the weight-normalised head, the teacher
temperature warm-up, the centre kept as model state, the teacher's features."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ssl_jax import inference, losses, train
from ssl_jax.data import decode

ROOT = pathlib.Path(__file__).parents[2]


def _config(**task_overrides):
    spec = importlib.util.spec_from_file_location("dino", ROOT / "configs" / "dino.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.task_kwargs.update(task_overrides)
    return config


def _batch(n=8, size=16):
    images = jax.random.randint(jax.random.key(0), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8)}


def test_multi_crop_views_and_their_host_crops():
    task = inference.build_task(_config())
    views = task.augment(_batch(), jax.random.key(1))
    assert views["image"].shape == (2 * 8, 16, 16, 3)  # 2 global views of 16 px
    assert views["local"].shape == (2 * 8, 8, 8, 3)  # runlocal: 2 local views of 8 px
    crops = task.host_crops(16)
    assert crops["image"] == (decode.CropSpec(16, (0.4, 1.0)),) * 2
    assert crops["local"] == (decode.CropSpec(8, (0.1, 0.4)),) * 2
    # Streamed: the host's crops go through without a second crop.
    host = {
        "image": jnp.zeros((8, 2, 16, 16, 3), jnp.uint8),
        "local": jnp.zeros((8, 2, 8, 8, 3), jnp.uint8),
    }
    streamed = task.augment(host, jax.random.key(1))
    assert streamed["image"].shape == views["image"].shape
    assert streamed["local"].shape == views["local"].shape


def test_the_head_outputs_cosines_to_unit_norm_prototypes():
    task = inference.build_task(_config())
    x = jax.random.normal(jax.random.key(2), (5, task.encoder.feature_dim))
    out = np.asarray(task.head(x, train=True))
    kernel = np.asarray(task.head.prototypes.kernel[...])
    bottleneck = np.asarray(task.head.mlp(x, train=True))
    expected = (bottleneck / np.linalg.norm(bottleneck, axis=1, keepdims=True)) @ (
        kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(out).max() <= 1 + 1e-5
    # Scaling a prototype changes nothing: its norm is fixed to 1.
    task.head.prototypes.kernel[...] = task.head.prototypes.kernel[...] * 7.0
    np.testing.assert_allclose(task.head(x, train=True), out, rtol=1e-5, atol=1e-6)


def test_teacher_temperature_warms_up_linearly_then_stays():
    task = inference.build_task(
        _config(
            warmup_teacher_temperature=0.04,
            teacher_temperature=0.07,
            teacher_temperature_warmup=0.1,
        )
    )
    # The warm-up is a fraction of the run: 10 of 100 steps, 50 of 500 alike.
    for total in (100, 500):
        for done, expected in [(0, 0.04), (0.05, 0.055), (0.1, 0.07), (0.3, 0.07)]:
            task.after_update(jnp.asarray(done * total), total)
            np.testing.assert_allclose(float(task.teacher_temperature()), expected, rtol=1e-6)


def test_the_centre_is_model_state_updated_from_the_teacher_outputs():
    config = _config()
    trained = inference.split_task(inference.build_task(config))
    assert "center" in trained.model_state and "center" not in trained.params
    rng = jax.random.key(3)
    task = trained.module()
    views = task.augment(_batch(), rng)
    target = task.teacher.head(task.teacher.encoder(views["image"], train=True), train=True)
    expected = 0.9 * np.zeros(config.task_kwargs.out_dim) + 0.1 * np.asarray(target).mean(0)
    task.loss(_batch(), rng, train=True)  # updates the centre in place, as batch norm would
    np.testing.assert_allclose(np.asarray(task.center[...])[0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        losses.dino_update_center(
            jnp.zeros((1, config.task_kwargs.out_dim)), target.reshape(2, 8, -1)
        ),
        task.center[...],
        rtol=1e-6,
    )


def test_a_step_counts_itself_and_the_probe_reads_the_teacher():
    config = _config()
    trained = inference.split_task(inference.build_task(config))
    tx = optax.adamw(1e-2)
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(1e-2), seed=0, total_steps=100
    )
    state, metrics = step(train.init_state(trained, tx), _batch())
    assert np.isfinite(metrics["loss"])
    assert float(state["model_state"]["progress"]) == np.float32(1 / 100)
    task = nnx.merge(trained.graphdef, state["params"], state["model_state"])
    images = _batch()["image"]
    teacher = task.teacher.encoder((images / 255.0 - 0.5) / 0.5, train=False)
    np.testing.assert_allclose(task.features(images), teacher, rtol=1e-5, atol=1e-6)
    student = task.encoder((images / 255.0 - 0.5) / 0.5, train=False)
    assert not np.allclose(student, teacher)  # one step apart: the probe must read the teacher


def _mean_cosine(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    return similarity[~np.eye(len(x), dtype=bool)].mean()


def test_head_batch_norm_separates_images_that_share_a_large_common_part():
    """The CIFAR recipe's `head_batch_norm` (the reference's use_bn_in_head):
    pooled ReLU features share a large common part; without batch norm every
    image reaches nearly the same bottleneck point (and, once centred, the
    teacher's output is uniform), with it the images stay apart."""
    rng = np.random.default_rng(0)
    features = 5.0 + 0.05 * rng.normal(size=(64, 32)).astype(np.float32)
    cosines = {}
    for batch_norm in (False, True):
        task = inference.build_task(_config(head_batch_norm=batch_norm, head_init="torch"))
        assert len(task.head.mlp.norms) == (2 if batch_norm else 0)
        head = task.head.mlp
        head_in = jnp.asarray(features[:, : head.linears[0].in_features])
        cosines[batch_norm] = _mean_cosine(np.asarray(head(head_in, train=True)))
    assert cosines[False] > 0.99
    assert cosines[True] < 0.5
