"""Evaluators chosen by the config: linear probes (on other datasets too) and
fine-tuning from the pretrained encoder next to the same recipe from scratch."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import config_lib, evaluators, experiment, inference, optim, train
from ssl_jax.evaluators import fine_tune, probes
from ssl_jax.evaluators.supervised import supervised_config
from tests.test_main import run_main


def _supervised_config(**overrides):
    config = config_lib.base_config()
    config.update(
        task="supervised",
        model="convnet_tiny",
        image_size=8,
        batch_size=4,
        train_steps=1,
        log_every=1,
        checkpoint_every=1,
    )
    config.task_kwargs = config_lib.ConfigDict({"num_classes": 3})
    config.optimizer.update(name="sgd", learning_rate=1e-9, warmup_steps=0, weight_decay=0.0)
    config.update(overrides)
    return config


def _with_evals(evals):
    """The base config with these `config.evals` entries."""
    config = config_lib.base_config()
    config.evals = evals
    return config


def test_training_starts_from_the_given_encoder_and_keeps_the_callers_arrays(tmp_path):
    donor = inference.build_task(_supervised_config(seed=7))  # another init: other weights
    weights = nnx.state(donor.encoder)
    arrays = {
        "image": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "label": np.arange(8, dtype=np.int32) % 3,
    }
    trained, _ = train.train(_supervised_config(), str(tmp_path), arrays, init_encoder=weights)
    # One step at lr 1e-9: the encoder is the donor's, not seed 0's init.
    after = nnx.state(trained.module().encoder, nnx.Param)
    fresh = nnx.state(inference.build_task(_supervised_config()).encoder, nnx.Param)
    donor_params = nnx.state(donor.encoder, nnx.Param)
    for a, d, f in zip(*(jax.tree.leaves(t) for t in (after, donor_params, fresh)), strict=True):
        np.testing.assert_allclose(a, d, atol=1e-6)
        if a.ndim > 1:  # kernels differ between inits (batch-norm offsets start at 0)
            assert not np.allclose(a, f)
    jax.tree.map(np.asarray, weights)  # still alive: the loop donated copies


def test_fine_tune_and_transfer_from_the_config_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = run_main(
        workdir,
        "--config.baselines.random_init=false",
        config="configs/simclr.py:runlocal,finetune,transfer=synthetic:num_classes=4",
    )
    results = json.loads((workdir / "results.json").read_text())
    (point,) = results["fine_tune"]["points"]
    assert point["per_class"] == 14 and point["train_size"] == 140  # 10% of 1438, balanced
    assert 0 <= point["top1"] <= 1 and 0 <= point["from_scratch_top1"] <= 1
    (tuned_dir,) = (workdir / "fine_tune").glob("*/14_per_class")
    assert str(tuned_dir.parent) == results["fine_tune"]["directory"]
    assert (tuned_dir / "metrics.jsonl").exists() and not (tuned_dir / "results.json").exists()
    assert list((workdir / "fine_tune_from_scratch").glob("*/14_per_class/metrics.jsonl"))
    assert json.loads((tuned_dir / "config.json").read_text())["dataset"] == "digits"
    assert results["transfer"]["dataset"] == "synthetic:num_classes=4"
    assert results["transfer"]["top5"] == 1.0  # 4 classes
    assert (workdir / "embedding_pca_transfer.png").exists()
    with open(workdir / "label_efficiency.csv") as f:
        encoders = {row["encoder"] for row in csv.DictReader(f)}
    assert {"fine-tuned", "same recipe from scratch"} <= encoders
    assert "Fine-tuned on digits" in result.stdout and "transfer (synthetic" in result.stdout


def test_fine_tuning_takes_nothing_from_the_pretraining_optimizer():
    pretraining = config_lib.get_config("barlow_twins", "dataset=tfds:imagenet2012,finetune")
    assert pretraining.optimizer.bias_lr_scale != 1.0  # what must not leak
    tuned = fine_tune.fine_tune_config(pretraining, pretraining.evals.fine_tune, 1000)
    defaults = optim.default_config(**config_lib.FINE_TUNE["optimizer"])
    assert tuned.optimizer.to_dict() == defaults.to_dict()


def test_fine_tune_runs_are_keyed_by_their_weights_and_data():
    config = _supervised_config()
    weights = nnx.state(inference.build_task(config).encoder)
    other_weights = nnx.state(inference.build_task(_supervised_config(seed=7)).encoder)
    tuned, scratch = fine_tune.fine_tune_dirs("w", "ft", config, weights)
    assert os.path.dirname(tuned) == os.path.join("w", "ft")
    assert os.path.dirname(scratch) == os.path.join("w", "ft_from_scratch")
    assert fine_tune.fine_tune_dirs("w", "ft", config, weights) == (tuned, scratch)
    # Other pretrained weights: another fine-tune run, the same from-scratch one.
    assert fine_tune.fine_tune_dirs("w", "ft", config, other_weights) != (tuned, scratch)
    assert fine_tune.fine_tune_dirs("w", "ft", config, other_weights)[1] == scratch
    # Other data: both change.
    other_data = _supervised_config(dataset="synthetic")
    changed = fine_tune.fine_tune_dirs("w", "ft", other_data, weights)
    assert changed[0] != tuned and changed[1] != scratch


def test_fine_tune_entries_are_checked_before_pretraining():
    good = config_lib.ConfigDict({"ft": dict(config_lib.FINE_TUNE)})
    evaluators.check(_with_evals(good), num_devices=8)
    partial = config_lib.ConfigDict({"ft": {"type": "fine_tune", "steps": 10}})
    with pytest.raises(ValueError, match="config.evals.ft lacks .*batch_size"):
        evaluators.check(_with_evals(partial))
    bad_batch = config_lib.ConfigDict({"ft": {**config_lib.FINE_TUNE, "batch_size": 12}})
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        evaluators.check(_with_evals(bad_batch), num_devices=8)
    bad_optimizer = config_lib.ConfigDict({"ft": dict(config_lib.FINE_TUNE)})
    bad_optimizer.ft.optimizer.name = "adamx"
    with pytest.raises(ValueError, match="config.evals.ft.optimizer"):
        evaluators.check(_with_evals(bad_optimizer))


def test_the_table_needs_no_linear_probe_entry():
    results = {"task": "simclr", "model": "convnet", "probe_dataset": "digits"}
    results.update(train_steps=1, fine_tune={"dataset": "digits", "steps": 5, "points": []})
    assert "Linear probe" in experiment.format_table(results)


def test_a_fine_tune_budget_beyond_the_memory_limit_is_refused_before_pretraining():
    class Split:  # what the check reads of a (streamed) train split
        num_classes = 1000

        def __len__(self):
            return 1_281_167

    config = config_lib.get_config("simclr", "dataset=tfds:imagenet2012,finetune")
    assert config.image_size == 224
    with pytest.raises(ValueError, match=r"fine_tune: its largest label budget \(1281000 images"):
        evaluators.check_data(config, lambda name: (Split(), None))
    with config.unlocked():
        config.evals.fine_tune.label_fractions = (0.01, 0.1)  # 128,000 images: 18 GB
        config.input.memory_limit_gb = 20.0
    evaluators.check_data(config, lambda name: (Split(), None))


def test_fine_tuning_trains_the_patch_projection_moco_v3_froze():
    pretraining = config_lib.get_config("moco_v3", "dataset=tfds:imagenet2012,finetune")
    assert pretraining.model_kwargs.frozen_patch_embed
    tuned = fine_tune.fine_tune_config(pretraining, pretraining.evals.fine_tune, 1000)
    assert not tuned.model_kwargs.frozen_patch_embed
    assert pretraining.model_kwargs.frozen_patch_embed  # the pretraining config is unchanged


def test_encoder_lr_scale_slows_the_pretrained_encoder_only():
    """Fine-tuning at `encoder_lr_scale`: the pretrained run's encoder steps
    are scaled (its own key), the run from scratch keeps the full rate."""
    config = _supervised_config()
    weights = nnx.state(inference.build_task(config).encoder)
    slow = fine_tune.pretrained_config(config, 0.1)
    assert slow.optimizer.module_lr_scales == (("encoder", 0.1),)
    assert fine_tune.pretrained_config(config, 1.0) is config
    plain = fine_tune.fine_tune_dirs("w", "ft", config, weights)
    scaled = fine_tune.fine_tune_dirs("w", "ft", config, weights, pretrained=slow)
    assert scaled[0] != plain[0] and scaled[1] == plain[1]
    trained = inference.split_task(inference.build_task(slow))
    tx, _ = optim.make_optimizer(slow.optimizer, batch_size=16, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, trained.params)
    state = tx.init(trained.params)
    for _ in range(3):  # past the warm-up's zero first step
        updates, state = tx.update(grads, state, trained.params)
    full_tx, _ = optim.make_optimizer(config.optimizer, batch_size=16, total_steps=10)
    full_state = full_tx.init(trained.params)
    for _ in range(3):
        full, full_state = full_tx.update(grads, full_state, trained.params)
    ratio = lambda a, b: float(jnp.linalg.norm(a) / jnp.linalg.norm(b))
    leaves = lambda tree, key: jax.tree.leaves(tree[key])
    for u, f in zip(leaves(updates, "encoder"), leaves(full, "encoder"), strict=True):
        if float(jnp.linalg.norm(f)) > 0:
            assert ratio(u, f) == pytest.approx(0.1, rel=1e-4)
    others = [k for k in trained.params.keys() if k != "encoder"]
    for key in others:
        for u, f in zip(leaves(updates, key), leaves(full, key), strict=True):
            np.testing.assert_allclose(u, f, rtol=1e-6)


def test_simsiam_supervised_baseline_drops_the_predictors_fixed_rate():
    """SimSiam's optimizer names its predictor (fixed_lr_modules); the
    supervised task has none, so its baseline must not inherit that (it
    crashed after pretraining)."""
    config = config_lib.get_config("simsiam", "runlocal,supervised")
    assert config.optimizer.fixed_lr_modules == ("predictor",)
    supervised = supervised_config(config, 4)
    assert supervised.optimizer.fixed_lr_modules == ()
    trained = inference.split_task(inference.build_task(supervised))
    tx, _ = optim.make_optimizer(supervised.optimizer, batch_size=16, total_steps=6)
    tx.init(trained.params)


def test_a_fine_tune_warmup_longer_than_its_steps_is_refused_before_pretraining():
    config = config_lib.get_config("rotation", "runlocal,finetune")
    config.evals.fine_tune.optimizer.update(warmup_fraction=0.0, warmup_steps=50)
    with pytest.raises(ValueError, match="longer than the run"):
        evaluators.check(config)


def test_token_frequencies_count_each_sequences_real_tokens():
    tokens = np.array([[3, 3, 5, 9, 9], [5, 9, 9, 9, 9]], np.int32)  # 9 is padding here
    freq = probes.token_frequencies(tokens, vocab_size=10, pad_id=9)
    expected = np.zeros((2, 10), np.float32)
    expected[0, [3, 5]] = [2 / 3, 1 / 3]
    expected[1, 5] = 1.0
    np.testing.assert_allclose(freq, expected)


def _token_splits(num_classes=3, same_bytes=False):
    """Token data whose classes differ in the bytes they use, or (same_bytes)
    only in the order of the same bytes."""
    from ssl_jax.data.datasets import ArrayDataset

    rng = np.random.default_rng(0)

    def split(n, seed):
        labels = np.random.default_rng(seed).integers(num_classes, size=n).astype(np.int32)
        if same_bytes:  # every row is a shuffle-free rotation of the same 12 bytes
            base = np.arange(97, 109)
            tokens = np.stack([np.roll(base, 4 * c) for c in labels])
        else:
            tokens = 97 + 4 * labels[:, None] + rng.integers(4, size=(n, 12))
        return ArrayDataset(tokens.astype(np.int32), labels, num_classes, "toy", "tokens")

    return split(90, 1), split(60, 2)


@pytest.mark.parametrize("same_bytes", [False, True])
def test_bag_of_tokens_sees_which_bytes_not_their_order(same_bytes, tmp_path):
    config = config_lib.get_config("mlm", "runlocal")
    splits = _token_splits(same_bytes=same_bytes)
    context = evaluators.Context(config, str(tmp_path), None, None, lambda name: splits)
    result = evaluators.build("bag_of_bytes", config.evals.bag_of_bytes).run(context)
    assert result["baseline"] == "bag_of_tokens" and result["few_labels"]
    if same_bytes:  # identical histograms: chance (1/3) at best
        assert result["top1"] < 0.5 and result["knn_top1"] < 0.5
    else:
        assert result["top1"] > 0.95 and result["knn_top1"] > 0.95
    table = experiment.format_table(
        {
            "task": "mlm",
            "model": "t",
            "probe_dataset": "toy",
            "train_steps": 1,
            "linear_probe": result,
            "bag_of_bytes": result,
        }
    )
    assert "bag_of_bytes (no network)" in table


def test_bag_of_tokens_on_images_is_refused_before_pretraining():
    config = config_lib.get_config("mlm", "runlocal")
    images = experiment.load_splits("digits", config_lib.get_config("rotation", "runlocal"))
    with pytest.raises(ValueError, match=r"evals.bag_of_bytes \(bag_of_tokens\) needs a token"):
        evaluators.check_data(config, lambda name: images)
