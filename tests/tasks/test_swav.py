"""SwAV's pieces against float64 numpy references written as the reference
code states them (facebookresearch/swav main_swav.py: the K x B plan, the
loops over assigned and predicting crops): Sinkhorn codes and marginals,
the swapped prediction loss, the queue, the unit-norm and frozen
prototypes, multi-crop shapes and the global batch on 1 vs 8 devices."""

import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax import config_lib, inference, losses, optim, train
from ssl_jax.data import decode
from tests import sharded

ROOT = pathlib.Path(__file__).parents[2]


def _config(**task_overrides):
    config = config_lib.get_config("swav", "runlocal")
    config.task_kwargs.num_classes = 4
    config.task_kwargs.update(task_overrides)
    return config


def _batch(n=16, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8), "label": jnp.arange(n) % 4}


def _cosines(seed, n, k, d=6):
    """Scores as SwAV sees them: unit embeddings . unit prototypes."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    c = rng.normal(size=(d, k))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=0, keepdims=True)
    return (z @ c).astype(np.float32)


def _numpy_sinkhorn(scores, epsilon, iterations):
    """The reference's distributed_sinkhorn on one process, in float64: Q is
    K x B; rows (prototypes) scaled to 1/K, then columns (samples) to 1/B."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T
    q /= q.sum()
    k, b = q.shape
    r, c = np.ones(k) / k, np.ones(b) / b
    for _ in range(iterations):
        q *= (r / q.sum(axis=1))[:, None]
        q *= (c / q.sum(axis=0))[None, :]
    return (q / q.sum(axis=0, keepdims=True)).T  # each sample's codes sum to 1


def _numpy_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _numpy_swav(scores, codes, temperature):
    """The reference's loss loop: for each assigned crop, the mean over the
    other crops of -mean_n sum_k q log p, then the mean over assigned crops."""
    scores, codes = np.asarray(scores, np.float64), np.asarray(codes, np.float64)
    num_crops, total = scores.shape[0], 0.0
    for g in range(codes.shape[0]):
        subloss = 0.0
        for v in np.delete(np.arange(num_crops), g):
            log_p = _numpy_log_softmax(scores[v] / temperature)
            subloss -= np.mean(np.sum(codes[g] * log_p, axis=1))
        total += subloss / (num_crops - 1)
    return total / codes.shape[0]


@pytest.mark.parametrize(("n", "k", "epsilon", "iterations"), [(32, 12, 0.05, 3), (8, 20, 0.03, 1)])
def test_sinkhorn_codes_and_marginals_match_numpy(n, k, epsilon, iterations):
    scores = _cosines(0, n, k)
    expected = _numpy_sinkhorn(scores, epsilon, iterations)
    codes = np.asarray(losses.sinkhorn_knopp(scores, epsilon=epsilon, iterations=iterations))
    assert codes.dtype == np.float32
    np.testing.assert_allclose(codes, expected, rtol=1e-4, atol=1e-6)
    plan = codes / n  # the transport plan the algorithm normalises
    # Samples: 1/B each, exact after the last normalisation.
    np.testing.assert_allclose(plan.sum(axis=1), 1.0 / n, atol=1e-5 / n)
    # Prototypes: the numpy plan's marginals (only ~1/K after a few iterations).
    np.testing.assert_allclose(plan.sum(axis=0), (expected / n).sum(axis=0), atol=1e-5)


def test_many_sinkhorn_iterations_split_the_batch_equally():
    """The fixed point: every prototype gets 1/K of the batch."""
    scores = _cosines(1, 48, 6)
    codes = np.asarray(losses.sinkhorn_knopp(scores, epsilon=0.5, iterations=200))
    np.testing.assert_allclose(codes.sum(axis=0) / 48, 1 / 6, atol=1e-5)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    # Three iterations are not there yet on skewed scores: the marginals are
    # the algorithm's, not an assumption.
    skewed = scores + np.linspace(0, 0.5, 6)[None, :]
    few = np.asarray(losses.sinkhorn_knopp(skewed, epsilon=0.05, iterations=3))
    assert np.abs(few.sum(axis=0) / 48 - 1 / 6).max() > 1e-4


def test_sinkhorn_has_no_gradient_and_rejects_bad_settings():
    scores = jnp.asarray(_cosines(2, 8, 4))
    grad = jax.grad(lambda s: jnp.sum(losses.sinkhorn_knopp(s) * s))(scores)
    np.testing.assert_allclose(grad, losses.sinkhorn_knopp(scores), rtol=1e-6)  # codes constant
    with pytest.raises(ValueError, match="iterations"):
        losses.sinkhorn_knopp(scores, iterations=0)


@pytest.mark.parametrize(("crops", "temperature"), [(2, 0.1), (5, 0.1), (4, 0.5)])
def test_swapped_prediction_matches_numpy(crops, temperature):
    scores = np.stack([_cosines(10 + v, 8, 7) for v in range(crops)])
    codes = np.stack([_numpy_sinkhorn(scores[g], 0.05, 3) for g in range(2)]).astype(np.float32)
    got = losses.swav_loss(jnp.asarray(scores), jnp.asarray(codes), temperature)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, _numpy_swav(scores, codes, temperature), rtol=1e-5)
    # No gradient reaches the codes; the scores do learn.
    grad_scores, grad_codes = jax.grad(losses.swav_loss, argnums=(0, 1))(
        jnp.asarray(scores), jnp.asarray(codes)
    )
    np.testing.assert_array_equal(grad_codes, 0.0)
    assert float(jnp.abs(grad_scores).max()) > 1e-4


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_multi_crop_views_and_their_host_crops():
    task = inference.build_task(_config())
    views = task.augment(_batch(8), jax.random.key(1))
    assert views["image"].shape == (2 * 8, 16, 16, 3)
    assert views["local"].shape == (2 * 8, 8, 8, 3)
    crops = task.host_crops(16)
    assert crops["image"] == (decode.CropSpec(16, (0.4, 1.0)),) * 2
    assert crops["local"] == (decode.CropSpec(8, (0.1, 0.4)),) * 2
    host = {
        "image": jnp.zeros((8, 2, 16, 16, 3), jnp.uint8),
        "local": jnp.zeros((8, 2, 8, 8, 3), jnp.uint8),
    }
    streamed = task.augment(host, jax.random.key(1))
    assert streamed["image"].shape == views["image"].shape
    assert streamed["local"].shape == views["local"].shape


def test_bad_settings_are_errors():
    for bad in (
        {"temperature": 0.0},
        {"epsilon": -1.0},
        {"sinkhorn_iterations": 0},
        {"freeze_prototypes_fraction": 0.5},  # moved to optimizer.freeze
        {"queue_length": -1},
    ):
        with pytest.raises(ValueError, match="SwAV"):
            inference.build_task(_config(**bad))
    task = inference.build_task(_config(queue_length=24))  # not a multiple of 16
    with pytest.raises(ValueError, match="multiple of the batch"):
        task.loss(_batch(), jax.random.key(0), train=True)


def _steps(steps, total, tx, config=None, **overrides):
    config = config or _config(**overrides)
    trained = inference.split_task(inference.build_task(config))
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(0.0), seed=0, total_steps=total
    )
    state = train.init_state(trained, tx)
    # Copies (np.array): the step donates the state's buffers.
    kernels, metrics = [np.array(state["params"]["prototypes"]["kernel"])], []
    for i in range(steps):
        state, m = step(state, _batch(seed=i))
        kernels.append(np.array(state["params"]["prototypes"]["kernel"]))
        metrics.append(jax.device_get(m))
    return kernels, metrics, state


def test_prototypes_stay_unit_norm_and_do_not_change_while_frozen():
    # AdamW with a large weight decay: while frozen, the optimizer neither
    # shrinks the prototypes nor advances their state (optimizer.freeze).
    config = _config()
    config.optimizer.update(name="adamw", learning_rate=0.05, lr_scaling="none")
    config.optimizer.update(weight_decay=0.5, warmup_fraction=0.0, grad_clip_norm=0.0)
    config.optimizer.freeze = (("prototypes", 2 / 6),)
    tx, _ = optim.make_optimizer(config.optimizer, batch_size=16, total_steps=6)
    kernels, metrics, state = _steps(4, 6, tx, config=config)
    for kernel in kernels:
        np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
    # Steps 1 and 2 are frozen (iterations 0 and 1 of 6): only the unit-norm
    # projection touches them, by rounding.
    np.testing.assert_allclose(kernels[1], kernels[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(kernels[2], kernels[0], rtol=0, atol=1e-6)
    assert np.abs(kernels[3] - kernels[2]).max() > 1e-4  # then they learn
    held = state["opt_state"].inner_states["frozen0"].inner_state
    assert int(held.count) == 4 and int(held.inner[0].count) == 2  # AdamW's: steps 3-4
    assert all(np.isfinite(m["loss"]) and m["nonfinite"] == 0 for m in metrics)


def test_without_a_freeze_the_prototypes_learn_from_the_first_step():
    kernels, metrics, _ = _steps(1, 6, optax.sgd(0.5))
    assert np.abs(kernels[1] - kernels[0]).max() > 1e-5
    np.testing.assert_allclose(np.linalg.norm(kernels[1], axis=0), 1.0, rtol=1e-5)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_the_queue_fills_then_joins_the_sinkhorn_problem():
    _, metrics, state = _steps(3, 6, optax.sgd(0.05), queue_length=32, queue_start_fraction=0.0)
    # Filled by steps 1 and 2 (16 rows each), used from step 3.
    assert [m["queue_in_use"] for m in metrics] == [0.0, 0.0, 1.0]
    assert int(state["model_state"]["queue_filled"]) == 32
    # Not started yet: the queue stays empty.
    _, metrics, state = _steps(2, 6, optax.sgd(0.05), queue_length=32, queue_start_fraction=0.5)
    assert [m["queue_in_use"] for m in metrics] == [0.0, 0.0]
    assert int(state["model_state"]["queue_filled"]) == 0
    np.testing.assert_array_equal(state["model_state"]["queue"], 0.0)


def test_the_queue_holds_the_newest_embeddings_first():
    task = inference.build_task(_config(queue_length=32))
    reference = nnx.clone(task)
    batch, rng = _batch(), jax.random.key(5)
    old = np.asarray(jax.random.normal(jax.random.key(6), (2, 32, 8)))
    task.queue[...] = jnp.asarray(old)
    task.loss(batch, rng, train=True)
    views = reference.augment(batch, rng)
    features = [reference.encoder(views["image"], train=True)]
    features.append(reference.encoder(views["local"], train=True))
    z = np.asarray(losses.l2_normalize(reference.projector(jnp.concatenate(features), train=True)))
    newest = z[:32].reshape(2, 16, -1)  # the 2 global crops' embeddings
    np.testing.assert_allclose(task.queue[...][:, :16], newest, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(task.queue[...][:, 16:], old[:, :16])


def test_codes_with_a_full_queue_match_numpy():
    task = inference.build_task(_config(queue_length=32))
    rng = np.random.default_rng(3)
    queue = rng.normal(size=(2, 32, 8)).astype(np.float32)
    queue /= np.linalg.norm(queue, axis=-1, keepdims=True)
    task.queue[...] = jnp.asarray(queue)
    task.queue_filled[...] = jnp.asarray(32, jnp.int32)
    kernel = np.asarray(task.prototypes.kernel[...])
    scores = np.stack([_cosines(20 + g, 16, kernel.shape[1], d=8) for g in range(2)])
    codes, metrics = task.codes(None, jnp.asarray(scores), jnp.asarray(kernel), train=False)
    assert metrics["queue_in_use"] == 1.0
    for g in range(2):
        problem = np.concatenate([queue[g].astype(np.float64) @ kernel, scores[g]])
        expected = _numpy_sinkhorn(problem, 0.05, 3)[-16:]
        np.testing.assert_allclose(codes[g], expected, rtol=1e-4, atol=1e-6)
        # The queue changes the codes: the batch alone gives others.
        alone = _numpy_sinkhorn(scores[g], 0.05, 3)
        assert np.abs(alone - expected).max() > 1e-3


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ssl_jax import config_lib, inference, losses

    assert len(jax.devices()) == 8
    mesh = Mesh(jax.devices(), ("data",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    one_device = lambda x: jax.device_put(x, jax.devices()[0])
    scores = jax.random.uniform(jax.random.key(0), (32, 12), minval=-1.0, maxval=1.0)
    sinkhorn = jax.jit(losses.sinkhorn_knopp)
    codes_one, codes_eight = sinkhorn(one_device(scores)), sinkhorn(shard(scores))
    # What the test must tell apart: each device normalising its own 4 rows.
    per_device = jax.shard_map(
        losses.sinkhorn_knopp, mesh=mesh, in_specs=P("data"), out_specs=P("data")
    )(shard(scores))

    config = config_lib.get_config("swav", "runlocal")
    config.task_kwargs.num_classes = 4
    graphdef, params, rest = nnx.split(inference.build_task(config), nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    images = jax.random.randint(jax.random.key(1), (16, 16, 16, 3), 0, 256, jnp.int32)
    batch = {"image": images.astype(jnp.uint8), "label": jnp.arange(16) % 4}

    @jax.jit
    def loss(params, batch):
        return nnx.merge(graphdef, params, rest).loss(batch, jax.random.key(3), train=True)[0]

    one = loss(params, one_device(batch))
    eight = loss(jax.device_put(params, NamedSharding(mesh, P())), shard(batch))
    print(json.dumps({
        "codes_one": np.asarray(codes_one).tolist(),
        "codes_eight": np.asarray(codes_eight).tolist(),
        "codes_per_device": np.asarray(per_device).tolist(),
        "one": float(one),
        "eight": float(eight),
    }))
    """
)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_codes_and_loss_are_the_same_on_one_and_eight_devices():
    """The codes normalise over the GLOBAL batch: sharded over 8 devices (4
    samples each) they equal the one-device codes; a per-device Sinkhorn
    would not."""
    out = sharded.run_script(_SHARDED_SCRIPT)
    np.testing.assert_allclose(out["codes_eight"], out["codes_one"], rtol=1e-5, atol=1e-7)
    assert np.abs(np.subtract(out["codes_per_device"], out["codes_one"])).max() > 1e-2
    np.testing.assert_allclose(out["eight"], out["one"], rtol=1e-5)
