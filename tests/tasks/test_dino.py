"""DINO's pieces: multi-crop shapes, the weight-normalised head, the teacher
temperature warm-up, the centre kept as model state, the teacher's features."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax import inference, losses, optim, train
from ssl_jax.data import decode

ROOT = pathlib.Path(__file__).parents[2]


def _config(**task_overrides):
    spec = importlib.util.spec_from_file_location("dino", ROOT / "configs" / "dino.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.task_kwargs.update(task_overrides)
    return config


def _batch(n=8, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
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


@pytest.mark.slow  # 30 s on 2 busy cores: the step and the gradient compile
def test_frozen_prototypes_keep_adams_state_then_take_a_fresh_first_step():
    """The runlocal recipe's optimizer.freeze holds the prototypes for steps
    1-2 of 6: no update, AdamW's moments and count untouched (the reference's
    cancelled gradient, which its optimizer skips); step 3 is then AdamW's
    first step (float64 numpy) on the per-tensor-clipped gradient, at the
    run's learning rate of step 3."""
    config = _config()
    assert tuple(config.optimizer.freeze) == (("head/prototypes", 1 / 3),)
    opt, total = config.optimizer, config.train_steps
    trained = inference.split_task(inference.build_task(config))
    tx, schedule = optim.make_optimizer(opt, batch_size=config.batch_size, total_steps=total)
    step = train.make_train_step(trained.graphdef, tx, schedule, config.seed, total_steps=total)
    state = train.init_state(trained, tx)
    copy = lambda tree: jax.tree.map(np.array, tree)  # the step donates its input
    held = lambda s: s["opt_state"][1].inner_states["frozen0"].inner_state  # after the clip
    start, initial = copy(state["params"]["head"]["prototypes"]), copy(held(state).inner)
    for i in range(2):
        state, _ = step(state, _batch(seed=i))
    kernel = lambda s: np.asarray(s["params"]["head"]["prototypes"]["kernel"], np.float64)
    np.testing.assert_array_equal(kernel(state), start["kernel"])
    for now, then in zip(jax.tree.leaves(held(state).inner), jax.tree.leaves(initial), strict=True):
        np.testing.assert_array_equal(np.asarray(now), then)  # moments 0, count 0

    # Step 3's gradient, as the step computes it (same key, same batch).
    on_device = lambda tree: jax.tree.map(jnp.array, tree)  # copies, not donated
    params, model_state = on_device(state["params"]), on_device(state["model_state"])
    batch = _batch(seed=2)
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), 2)

    def loss(p):
        return nnx.merge(trained.graphdef, p, model_state).loss(batch, rng, train=True)[0]

    g = np.asarray(jax.jit(jax.grad(loss))(params)["head"]["prototypes"]["kernel"], np.float64)
    before = kernel(state)
    state, _ = step(state, batch)
    g = g * min(1.0, opt.grad_clip_norm / (np.linalg.norm(g) + 1e-6))  # clip_gradients
    m_hat, v_hat = g, g**2  # (1 - b) g^k / (1 - b^1): the first step's bias correction
    lr = float(schedule(2))
    fresh = -lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + opt.weight_decay * before)
    np.testing.assert_allclose(kernel(state) - before, fresh, rtol=1e-3, atol=1e-9)
    assert int(held(state).inner[0].count) == 1
