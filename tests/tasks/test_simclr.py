import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import config_lib, inference
from ssl_jax.data.augment import recipes
from ssl_jax.registry import MODELS, TASKS
from tests import forkserver, sharded

ROOT = pathlib.Path(__file__).parents[2]
TASK_KWARGS = {
    "projection_hidden_dims": (32,),
    "projection_dim": 16,
    "temperature": 1.0,
    "num_classes": 3,
    # SimCLR's own recipe (jitter, grayscale), with blur on half the views.
    "views": recipes.simclr_views(crop_scale=(0.3, 1.0)),
}


def _task(**overrides):
    encoder = MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0))
    return TASKS.get("simclr")(encoder, rngs=nnx.Rngs(1), **{**TASK_KWARGS, **overrides})


def _batch(n=16, size=8, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8), "label": jnp.arange(n) % 3}


def _pure_split(task):
    graphdef, params, rest = nnx.split(task, nnx.Param, ...)
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


# Compiled once per task structure and shared by the tests: eager augmentation
# dispatches hundreds of small ops and is much slower than compiling.
@functools.partial(jax.jit, static_argnums=0)
def _loss(graphdef, params, rest, batch, rng):
    task = nnx.merge(graphdef, params, rest)
    loss, metrics = task.loss(batch, rng, train=True)
    return loss, (metrics, nnx.as_pure(nnx.split(task, nnx.Param, ...)[2]))


@functools.partial(jax.jit, static_argnums=0)
def _grads(graphdef, params, rest, batch, rng):
    """Gradients of the total loss and of the online probe's loss alone."""

    def losses(p):
        loss, (metrics, new_rest) = _loss(graphdef, p, rest, batch, rng)
        return (loss, metrics["online_probe_loss"]), (metrics, new_rest)

    (loss, _), vjp, (metrics, new_rest) = jax.vjp(losses, params, has_aux=True)
    (total_grads,) = vjp((jnp.ones(()), jnp.zeros(())))
    (probe_grads,) = vjp((jnp.zeros(()), jnp.ones(())))
    return loss, metrics, new_rest, total_grads, probe_grads


@functools.partial(jax.jit, static_argnums=0)
def _views(graphdef, params, rest, images, rng):
    return nnx.merge(graphdef, params, rest).augment({"image": images}, rng)["image"]


def test_loss_is_finite_near_chance_and_decreases_on_a_fixed_batch():
    graphdef, params, rest = _pure_split(_task())
    batch = _batch()
    losses = []
    for step in range(15):  # the same views every step: a fixed task to fit
        loss, metrics, rest, grads, _ = _grads(graphdef, params, rest, batch, jax.random.key(0))
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        losses.append(float(metrics["contrastive_loss"]))
        if step == 0:
            assert np.isfinite(loss)
            assert abs(losses[0] - np.log(2 * 16 - 1)) < 0.5  # near chance at init
            assert 0.0 <= float(metrics["contrastive_accuracy"]) <= 1.0
    assert losses[-1] < losses[0] - 0.3


def test_views_differ_and_depend_only_on_the_key():
    graphdef, params, rest = _pure_split(_task())
    images = _batch()["image"]
    views = _views(graphdef, params, rest, images, jax.random.key(0))
    assert views.shape == (32, 8, 8, 3)
    assert not np.allclose(views[:16], views[16:])  # the two views of each image differ
    np.testing.assert_array_equal(views, _views(graphdef, params, rest, images, jax.random.key(0)))
    assert not np.allclose(views, _views(graphdef, params, rest, images, jax.random.key(1)))


def test_unknown_view_fields_and_bad_temperature_are_errors():
    with pytest.raises(ValueError, match="blur_prob"):
        _task(views=[{"blur_prob": 0.5}] * 2)
    with pytest.raises(ValueError, match="temperature"):
        _task(temperature=0.0)
    # A config or workdir from before the views: one line saying what replaced it.
    with pytest.raises(ValueError, match="replaced by task_kwargs.views"):
        _task(augment_kwargs={"strength": 0.5})


def test_features_are_deterministic():
    task = _task()
    images = _batch()["image"]
    f1, f2 = task.features(images), task.features(images)
    assert f1.shape == (16, task.encoder.feature_dim)
    np.testing.assert_array_equal(f1, f2)


def test_online_probe_reports_accuracy_and_cannot_change_the_encoder():
    graphdef, params, rest = _pure_split(_task())
    batch = _batch()
    _, metrics, _, _, grads = _grads(graphdef, params, rest, batch, jax.random.key(0))
    assert 0.0 <= float(metrics["online_probe_accuracy"]) <= 1.0
    encoder_grads = jax.tree.leaves(grads["encoder"])
    assert encoder_grads and all(np.all(np.asarray(g) == 0) for g in encoder_grads)
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["online_probe"]))
    # Without labels there is no probe term.
    _, (unlabelled, _) = _loss(graphdef, params, rest, {"image": batch["image"]}, jax.random.key(0))
    assert "online_probe_accuracy" not in unlabelled


def test_same_loss_on_one_and_eight_devices():
    losses = sharded.losses_on_one_and_eight_devices(
        task="simclr", task_kwargs=TASK_KWARGS, num_classes=3
    )
    np.testing.assert_allclose(losses["one"], losses["eight"], rtol=1e-5)


def test_main_runs_simclr_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [
        sys.executable,
        "-m",
        "ssl_jax.main",
        "--config=configs/simclr.py:runlocal",
        f"--workdir={workdir}",
        "--config.baselines.random_init=false",  # covered by tests/test_main.py
    ]
    result = forkserver.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "simclr" and results["train_steps"] == 6
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert np.isfinite(record["loss"])
        assert {"contrastive_accuracy", "online_probe_accuracy"} <= set(record)


@pytest.mark.parametrize(
    "arg, loss, contrastive",
    # Recorded at c92744f, before SimCLR moved onto the joint-embedding base:
    # the same recipe must keep the same views, head and batch norm.
    [
        ("runlocal", 4.852080345153809, 2.538612127304077),
        ("runlocal,dataset=synthetic", 5.161795616149902, 2.703782081604004),
    ],
)
def test_the_loss_is_the_one_recorded_before_simclr_joined_the_base(arg, loss, contrastive):
    config = config_lib.get_config("simclr", arg)
    with config.unlocked():
        config.task_kwargs.num_classes = 10
    task = inference.build_task(config)
    size = config.image_size
    images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    batch = {"image": jnp.asarray(images), "label": jnp.arange(8) % 10}
    got, metrics = task.loss(batch, jax.random.key(3), train=True)
    # Tight enough that any other random draw, head or batch-norm grouping
    # fails; loose enough for another CPU's rounding.
    assert float(got) == pytest.approx(loss, rel=1e-5)
    assert float(metrics["contrastive_loss"]) == pytest.approx(contrastive, rel=1e-5)
