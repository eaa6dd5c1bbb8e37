"""Evaluators chosen by the config: linear probes (on other datasets too) and
fine-tuning from the pretrained encoder next to the same recipe from scratch."""

import csv
import json

import jax
import numpy as np
from flax import nnx

from ssl_jax import config_lib, train
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


def test_training_starts_from_the_given_encoder_and_keeps_the_callers_arrays(tmp_path):
    donor = train.build_task(_supervised_config(seed=7))  # another init: other weights
    weights = nnx.state(donor.encoder)
    arrays = {
        "image": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "label": np.arange(8, dtype=np.int32) % 3,
    }
    trained, _ = train.train(_supervised_config(), str(tmp_path), arrays, init_encoder=weights)
    # One step at lr 1e-9: the encoder is the donor's, not seed 0's init.
    after = nnx.state(trained.module().encoder, nnx.Param)
    fresh = nnx.state(train.build_task(_supervised_config()).encoder, nnx.Param)
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
    assert (workdir / "fine_tune" / "14_per_class" / "results.json").exists() is False
    assert (workdir / "fine_tune" / "14_per_class" / "metrics.jsonl").exists()
    assert (workdir / "fine_tune_from_scratch" / "14_per_class" / "metrics.jsonl").exists()
    assert results["transfer"]["dataset"] == "synthetic:num_classes=4"
    assert results["transfer"]["top5"] == 1.0  # 4 classes
    assert (workdir / "embedding_pca_transfer.png").exists()
    with open(workdir / "label_efficiency.csv") as f:
        encoders = {row["encoder"] for row in csv.DictReader(f)}
    assert {"fine-tuned", "same recipe from scratch"} <= encoders
    assert "Fine-tuned on digits" in result.stdout and "transfer (synthetic" in result.stdout
