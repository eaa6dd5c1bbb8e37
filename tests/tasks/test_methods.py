"""The teacher-student and redundancy-reduction methods through the one loop:
BYOL, SimSiam, MoCo v3, Barlow Twins, VICReg (DINO has its own file).

In-process: one compiled step each (finite loss, the collapse monitor in the
metrics, teachers outside the trained parameters and moved by the EMA
exactly); end to end (slow): each method learns on tiny data."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import inference, train
from ssl_jax.evaluate import collapse
from ssl_jax.tasks import teacher
from ssl_jax.tasks.base import implements
from tests.test_main import run_main

ROOT = pathlib.Path(__file__).parents[2]
METHODS = ["byol", "simsiam", "moco_v3", "barlow_twins", "vicreg"]
WITH_TEACHER = {"byol", "moco_v3"}


def _config(method, **overrides):
    spec = importlib.util.spec_from_file_location(method, ROOT / "configs" / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.update(overrides)
    return config


def _batch(n=16, size=16):
    images = jax.random.randint(jax.random.key(0), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8), "label": jnp.arange(n) % 4}


def _steps(method, steps=2, **overrides):
    config = _config(method, **overrides)
    trained = inference.split_task(inference.build_task(config))
    tx, schedule = optax.sgd(0.05), optax.constant_schedule(0.05)
    step = train.make_train_step(trained.graphdef, tx, schedule, seed=0, total_steps=steps)
    state = train.init_state(trained, tx)
    history = []
    for _ in range(steps):
        state, metrics = step(state, _batch())
        history.append(jax.device_get(metrics))
    return trained, state, history


@pytest.mark.parametrize("method", METHODS)
def test_a_step_is_finite_and_logs_the_collapse_monitor(method):
    _, _, history = _steps(method)
    for metrics in history:
        assert np.isfinite(metrics["loss"]) and metrics["nonfinite"] == 0
        assert 0 < metrics["embedding_std"] and 1 <= metrics["effective_rank"]


def _teacher_weights(state):
    """{path: array} of the teacher's weights (not its batch-norm statistics)."""
    leaves = jax.tree_util.tree_flatten_with_path(state["model_state"]["teacher"])[0]
    return {
        jax.tree_util.keystr(path): np.asarray(value)
        for path, value in leaves
        if not jax.tree_util.keystr(path).endswith(("['mean']", "['var']"))
    }


def _student_weights(state, teacher_paths):
    leaves = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    student = {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}
    return {path: student[path] for path in teacher_paths}


@pytest.mark.parametrize("method", sorted(WITH_TEACHER))
def test_the_teacher_is_model_state_moved_by_the_ema(method):
    total = 100
    config = _config(method)
    base = config.task_kwargs.base_momentum
    trained = inference.split_task(inference.build_task(config))
    assert implements(trained.module(), "after_update")
    tx = optax.sgd(0.05)
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(0.05), seed=0, total_steps=total
    )
    state = train.init_state(trained, tx)
    before = _teacher_weights(state)
    # No teacher weight is trained: no gradient, no optimizer state, no decay.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert not any("teacher" in p for p in paths if p.startswith(("['params']", "['opt_state']")))
    # The teacher starts as an exact copy of the student.
    for path, value in _student_weights(state, before).items():
        np.testing.assert_array_equal(before[path], value)

    new_state, _ = step(jax.tree.map(jnp.copy, state), _batch())
    m = 1 - (1 - base) * (np.cos(np.pi * 1 / total) + 1) / 2  # BYOL's schedule at step 1
    after, student = _teacher_weights(new_state), _student_weights(new_state, before)
    moved = 0
    for path in before:
        np.testing.assert_allclose(
            after[path], m * before[path] + (1 - m) * student[path], rtol=1e-5, atol=1e-7
        )
        moved += not np.array_equal(after[path], before[path])
    assert moved  # the student moved, so the teacher followed


def test_momentum_schedule_is_byols_cosine():
    for step, total in [(0, 10), (5, 10), (10, 10), (3, 7)]:
        expected = 1 - (1 - 0.996) * (np.cos(np.pi * step / total) + 1) / 2
        assert float(teacher.momentum_schedule(0.996, step, total)) == pytest.approx(expected)
    assert float(teacher.momentum_schedule(0.99, 0, 10)) == pytest.approx(0.99)
    assert float(teacher.momentum_schedule(0.99, 10, 10)) == pytest.approx(1.0)


def test_the_collapse_monitor_flags_a_collapsed_encoder():
    """A SimSiam whose encoder outputs one constant vector: std 0, rank 1;
    the same task at its random init: spread-out features."""
    config = _config("simsiam")
    task = inference.build_task(config)
    images = _batch(64)["image"]
    healthy = task.encoder(task.augment({"image": images}, jax.random.key(0))["image"], train=True)
    # Collapse: the last convolution outputs 0 and its batch norm only its offset.
    last = task.encoder.layers[-1]
    last.conv.kernel[...] = jnp.zeros_like(last.conv.kernel[...])
    last.bn.bias[...] = jnp.linspace(0.1, 1.0, last.bn.bias[...].shape[0])
    collapsed = task.encoder(
        task.augment({"image": images}, jax.random.key(0))["image"], train=True
    )
    assert float(collapse.normalized_std(collapsed)) < 1e-3
    assert float(collapse.effective_rank(collapsed)) < 1.01
    assert float(collapse.normalized_std(healthy)) > 0.05
    assert float(collapse.effective_rank(healthy)) > 3


@pytest.mark.slow
@pytest.mark.parametrize("method", [*METHODS, "dino"])
def test_each_method_learns_on_digits(tmp_path, method):
    """The loss comes down and the probe beats the same encoder at random
    init, in 100 steps of 64 digits with the runlocal network. (DINO's loss
    first rises while its teacher sharpens, so "comes down" is from its peak.)"""
    workdir = tmp_path / method
    run_main(
        workdir,
        "--config.train_steps=100",
        "--config.batch_size=64",
        "--config.log_every=10",
        "--config.checkpoint_every=100",
        "--config.eval_every=0",
        "--config.probe.steps=200",
        "--config.probe.few_label_draws=1",
        config=f"configs/{method}.py:runlocal",
    )
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    peak = max(losses)
    assert losses[-1] < peak - 0.05 * abs(peak), losses
    results = json.loads((workdir / "results.json").read_text())
    assert results["linear_probe"]["top1"] > results["random_init"]["linear_probe"]["top1"]
