"""The shared loop in-process: non-finite steps, fingerprints, resume."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint, config_lib, inference, nonfinite, optim, train
from ssl_jax.data.datasets import DatasetError
from ssl_jax.registry import TASKS
from ssl_jax.tasks.rotation import RotationTask


class PoisonedRotation(RotationTask):
    """Rotation, except that a batch holding a poisoned example has a NaN loss."""

    def loss(self, batch, rng, *, train):
        loss, metrics = super().loss(batch, rng, train=train)
        return jnp.where(batch["poison"].any(), jnp.nan, loss), metrics


TASKS.register("test_poisoned_rotation")(
    lambda encoder, *, rngs, **kw: PoisonedRotation(encoder, rngs=rngs, **kw)
)


def _config(**overrides):
    config = config_lib.base_config()
    config.update(
        task="test_poisoned_rotation",
        model="convnet_tiny",
        image_size=8,
        batch_size=4,
        train_steps=8,
        log_every=1,
        checkpoint_every=4,
    )
    config.optimizer.warmup_steps = 0
    config.update(overrides)
    return config


def _arrays(poisoned_steps=(), batch_size=4, n=32):
    """Digits-like random images; `poisoned_steps` name the steps whose batch
    holds a poisoned example (data order is a function of seed and step)."""
    from ssl_jax.data import pipeline

    rng = np.random.default_rng(0)
    poison = np.zeros(n, bool)
    for step in poisoned_steps:  # step s (1-based) uses batch index s - 1
        poison[pipeline.batch_indices(n, batch_size, seed=0, step=step - 1)[0]] = True
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return {"image": images, "label": np.zeros(n, np.int32), "poison": poison}


def _metrics(workdir):
    import json

    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_nonfinite_loss_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(
        nonfinite.NonFiniteLossError, match="NaN/Inf at step 6; the last good checkpoint is step 4"
    ):
        train.train(_config(), str(tmp_path), _arrays(poisoned_steps=(6,)))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]
    assert [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3, 4, 5]  # step 6 never logged


def test_skip_mode_leaves_the_state_unchanged_on_a_poisoned_step(tmp_path):
    arrays = _arrays(poisoned_steps=(3,))
    # A constant learning rate, so that runs of different lengths share their first steps.
    constant = {"warmup_steps": 0, "end_lr_fraction": 1.0}

    def run(name, steps):
        config = _config(
            nonfinite="skip", train_steps=steps, checkpoint_every=steps, max_skipped_fraction=0.5
        )
        config.optimizer.update(constant)
        return train.train(config, str(tmp_path / name), arrays)

    after_two, _ = run("two", 2)
    after_three, _ = run("three", 3)
    after_eight, summary = run("eight", 8)
    leaves = lambda t: jax.tree.leaves((t.params, t.model_state))
    for a, b in zip(leaves(after_two), leaves(after_three), strict=True):
        np.testing.assert_array_equal(a, b)  # the poisoned step 3 changed nothing
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(leaves(after_three), leaves(after_eight), strict=True)
    )

    records = _metrics(tmp_path / "eight")
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 0, 0, 0, 0, 0]
    assert "loss" not in records[2]
    # The schedule's rate, also on the skipped step's own line (not 0).
    assert [r["learning_rate"] for r in records] == pytest.approx([records[0]["learning_rate"]] * 8)
    assert all(np.isfinite(r["loss"]) for i, r in enumerate(records) if i != 2)
    assert np.isfinite(summary["final_loss"])


def test_fingerprint_is_deterministic_and_sensitive():
    config = _config(task="rotation")
    trained = inference.split_task(inference.build_task(config))
    tx, _ = optim.make_optimizer(config.optimizer, batch_size=4, total_steps=8)
    state = train.init_state(trained, tx)
    again = train.init_state(inference.split_task(inference.build_task(config)), tx)
    assert checkpoint.state_fingerprint(state) == checkpoint.state_fingerprint(again)
    nudged = jax.tree.map(lambda x: x, state)
    leaf = jax.tree.leaves(nudged["params"])[0]
    nudged["params"] = jax.tree.map(
        lambda x: x.at[(0,) * x.ndim].add(1e-7) if x is leaf else x, nudged["params"]
    )
    assert checkpoint.state_fingerprint(nudged) != checkpoint.state_fingerprint(state)
    assert len(checkpoint.state_fingerprint(state)) == 64


class PicturedRotation(RotationTask):
    def visualize(self, batch, rng):
        del rng
        features = self.features(batch["image"])  # depends on the parameters
        shade = (jnp.tanh(features.mean()) + 1.0) * 127.5
        row = jnp.concatenate(list(batch["image"]), axis=1)
        return jnp.concatenate([row, jnp.full_like(row, shade.astype(jnp.uint8))], axis=0)


TASKS.register("test_pictured_rotation")(
    lambda encoder, *, rngs, **kw: PicturedRotation(encoder, rngs=rngs, **kw)
)


def test_tasks_with_visualize_get_a_picture_per_checkpoint(tmp_path):
    from PIL import Image

    config = _config(task="test_pictured_rotation", train_steps=8, checkpoint_every=4)
    arrays = _arrays()
    arrays.pop("poison")
    train.train(config, str(tmp_path), arrays)
    pictures = sorted((tmp_path / "visuals").iterdir())
    assert [p.name for p in pictures] == [
        "step_0000000.png",
        "step_0000004.png",
        "step_0000008.png",
    ]
    first = np.asarray(Image.open(pictures[0]))
    # 16 x 64 px, upscaled by whole pixels (x24) to a 384 px shorter side.
    assert first.shape == (16 * 24, 64 * 24, 3)
    expected = np.concatenate(list(arrays["image"][:8]), axis=1)
    np.testing.assert_array_equal(first[: 8 * 24 : 24, ::24], expected)


def test_tasks_without_visualize_get_no_pictures(tmp_path):
    config = _config(task="rotation", train_steps=2, checkpoint_every=2)
    train.train(config, str(tmp_path), {"image": _arrays()["image"]})
    assert not (tmp_path / "visuals").exists()


def test_classifier_top1_is_the_supervised_heads_own_accuracy():
    from ssl_jax.data import pipeline
    from ssl_jax.data.datasets import load_dataset
    from ssl_jax.evaluators.probes import classifier_top1

    config = config_lib.base_config()
    config.update(task="supervised", model="convnet_tiny", image_size=16)
    config.task_kwargs = {"num_classes": 10}
    config.probe.batch_size = 64  # the 359 test images need a padded last batch
    split = load_dataset("digits", "test", image_size=16)
    task = inference.build_task(config)
    expected = np.mean(np.argmax(np.asarray(task.logits(split.images)), axis=1) == split.labels)
    got = classifier_top1(inference.split_task(task), config, split, pipeline.make_mesh())
    assert got == pytest.approx(expected, abs=1e-6)


def test_the_step_and_the_evaluators_features_compile_once_even_across_a_resume(tmp_path):
    from ssl_jax import perf

    perf.CompileCounter.install()
    config = _config(eval_every=2, log_every=2, checkpoint_every=4)
    features_before = perf.CompileCounter.count("apply_task_method")
    evaluations = []

    def evaluator(trained):
        features = inference.make_features_fn(trained, jax.sharding.Mesh(jax.devices(), ("data",)))
        evaluations.append(features(np.zeros((4, 8, 8, 3), np.uint8)))
        return {}

    _, summary = train.train(config, str(tmp_path), _arrays(), evaluator=evaluator)
    assert summary["step_perf"]["compilations"] == 1
    assert len(evaluations) == 4  # steps 2, 4, 6, 8
    assert perf.CompileCounter.count("apply_task_method") - features_before == 1

    # A resumed run compiles its step once more, in its own process's life: once.
    config.train_steps = 12
    _, summary = train.train(
        config, str(tmp_path), _arrays(), evaluator=evaluator, allow_config_change=True
    )
    assert summary["resumed_from_step"] == 8 and summary["step_perf"]["compilations"] == 1


def test_a_resumed_run_carries_its_skip_counts_from_the_checkpoint(tmp_path):
    config = _config(train_steps=4, checkpoint_every=2, log_every=2)
    train.train(config, str(tmp_path), _arrays())
    # Checkpoint 2 rewritten as one saved by a run that had replaced 7
    # records; the resumed run trains steps 3-4 through the loop.
    saved = checkpoint.Checkpointer(str(tmp_path), keep=3)
    step, state, _ = saved.restore_latest(like=_restorable(config))
    saved.close()
    assert step == 4
    for name in ("2", "4"):
        shutil.rmtree(tmp_path / "checkpoints" / name)
    rewritten = checkpoint.Checkpointer(str(tmp_path), keep=3)
    rewritten.save(2, jax.tree.map(jnp.asarray, state), counters={"skipped_examples": 7})
    rewritten.close()
    _, summary = train.train(config, str(tmp_path), _arrays())
    assert summary["resumed_from_step"] == 2
    assert (summary["skipped_steps"], summary["skipped_examples"]) == (0, 7)


def test_a_skipped_step_still_counts_the_records_its_batch_replaced(tmp_path):
    arrays = {**_arrays(poisoned_steps=(2,)), "skipped": np.ones(32, np.int32)}
    config = _config(nonfinite="skip", train_steps=4, max_skipped_fraction=0.5)
    config.input.max_bad_record_fraction = 1.0
    _, summary = train.train(config, str(tmp_path), arrays)
    records = _metrics(tmp_path)
    assert [r["skipped_steps"] for r in records] == [0, 1, 0, 0]
    # Every batch of 4 replaced 4 records, the skipped step's too.
    assert [r["skipped_examples"] for r in records] == [4, 4, 4, 4]
    assert summary["skipped_examples"] == 16


def test_replacing_more_records_than_the_limit_fails_the_run_in_one_line(tmp_path):
    # Every draw replaced, against a limit of half the run's 8 x 4 planned
    # draws: 20 > 16 at step 5, after checkpoint 4.
    arrays = {**_arrays(), "skipped": np.ones(32, np.int32)}
    config = _config(train_steps=8)
    config.input.max_bad_record_fraction = 0.5
    with pytest.raises(DatasetError) as error:
        train.train(config, str(tmp_path), arrays)
    message = str(error.value)
    assert message.startswith("20 of the first 20 records drawn were unreadable")
    assert "max_bad_record_fraction of the run's 32 draws" in message
    assert "last good checkpoint is step 4" in message and "\n" not in message
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4]


def _restorable(config):
    trained = inference.split_task(inference.build_task(config))
    tx, _ = optim.make_optimizer(config.optimizer, batch_size=4, total_steps=config.train_steps)
    return train.init_state(trained, tx)


def test_a_carried_interval_with_other_metrics_is_dropped_with_one_warning(tmp_path, caplog):
    # Rows at steps 2 and 4; checkpoint 1 carries step 1's sums (an open interval).
    from tests.test_faults import _rows  # metrics.jsonl without wall-clock fields

    config = _config(train_steps=4, checkpoint_every=1, log_every=2, keep_checkpoints=4)

    train.train(config, str(tmp_path), _arrays())
    straight = _rows(tmp_path)
    for name in ("2", "3", "4"):
        shutil.rmtree(tmp_path / "checkpoints" / name)
    # Checkpoint 1 rewritten as a run with another metric set leaves it: its
    # interval also sums a metric this run's step lacks (as after a resume
    # with --allow_config_change that drops, e.g., the online probe).
    saved = checkpoint.Checkpointer(str(tmp_path), keep=4)
    step, state, counters = saved.restore_latest(like=_restorable(config))
    interval = counters["open_interval"]
    assert step == 1 and interval["count"] == 1
    interval["sums"]["probe_loss"], interval["dtypes"]["probe_loss"] = 1.0, "float32"
    saved.close()
    shutil.rmtree(tmp_path / "checkpoints" / "1")
    rewritten = checkpoint.Checkpointer(str(tmp_path), keep=4)
    rewritten.save(1, jax.tree.map(jnp.asarray, state), counters=counters)
    rewritten.close()
    with caplog.at_level("WARNING", logger="ssl_jax.metrics"):
        _, summary = train.train(config, str(tmp_path), _arrays())
    assert summary["resumed_from_step"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "open log interval" in r.getMessage()]
    assert "added none, removed ['probe_loss']" in line and "\n" not in line
    resumed = _rows(tmp_path)
    assert [r["step"] for r in resumed] == [2, 4] and resumed[1] == straight[1]
    # Row 2 is step 2 alone: with step 1's loss (the carried sum) it makes
    # the uninterrupted run's mean over steps 1-2.
    step_1, step_2 = interval["sums"]["loss"], resumed[0]["loss"]
    assert resumed[0]["loss"] != straight[0]["loss"]
    assert (step_1 + step_2) / 2 == pytest.approx(straight[0]["loss"], rel=1e-6)


def test_an_accepted_change_that_lays_the_state_out_differently_is_one_clear_line(tmp_path):
    config = _config(train_steps=4)
    config.optimizer.update(name="adamw", weight_decay=0.01)
    train.train(config, str(tmp_path), _arrays())
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    config.optimizer.weight_decay_end = 0.05  # a scheduled decay keeps a step count
    config.train_steps = 8
    with pytest.raises(checkpoint.CheckpointError, match=r"weight_decay_end.*lays it out differ"):
        train.train(config, str(tmp_path), _arrays(), allow_config_change=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
