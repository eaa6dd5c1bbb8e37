"""Text and video tasks learn through the shared loop, on tiny data and a
tiny model: the loss falls to where the context must be used, and the
probes of the pretrained features against the same encoder at random
initialisation (two of them are known gaps at this size, strict xfails)."""

import json

import numpy as np
import pytest

from ssl_jax import config_lib, experiment, inference, train
from ssl_jax.data import pipeline
from ssl_jax.data.datasets import ArrayDataset
from ssl_jax.evaluate.linear_probe import fit_linear_probe
from ssl_jax.evaluators import probes

LR = 2e-3


def _word_pairs(num_examples, seed, num_classes=4, words=16):
    """Text whose class is in its bigrams only: each word is a first letter
    (a-d, uniform) and a second letter (w-z) given by the class's own
    permutation, so every class has the same byte histogram. A bag of bytes
    (what a random encoder's mean pool mostly is) is near chance; predicting a
    masked second letter needs the class, read from the other words."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(num_classes, size=num_examples).astype(np.int32)
    first = rng.integers(4, size=(num_examples, words))
    second = (first + labels[:, None]) % 4  # class c pairs letter i with letter (i + c) % 4
    tokens = np.stack([ord("a") + first, ord("w") + second], axis=-1).reshape(num_examples, -1)
    return ArrayDataset(tokens.astype(np.int32), labels, num_classes, "word_pairs", "tokens")


def _learn(tmp_path, name, arg, steps, data=None, **overrides):
    config = config_lib.get_config(name, arg)
    config.update(train_steps=steps, log_every=10, checkpoint_every=steps, eval_every=0)
    config.update(overrides)
    # Tiny models and few steps: a rate of 2e-3 at this batch (per 256 examples: x 256 / B).
    config.optimizer.learning_rate = LR * 256 / config.batch_size
    mesh = pipeline.make_mesh()
    splits = data or experiment.load_splits(config.dataset, config)
    trained, _ = train.train(
        config, str(tmp_path), experiment.training_data(config, splits[0]), mesh
    )
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logged if "loss" in m]

    def top1(model, probe_splits):
        (train_x, train_y), (test_x, test_y) = probes.features(model, config, probe_splits, mesh)
        fit = fit_linear_probe(
            train_x, train_y, test_x, test_y, num_classes=probe_splits[0].num_classes, steps=200
        )
        return fit.top1

    initial = inference.split_task(inference.build_task(config))
    return config, losses, lambda splits_: (top1(trained, splits_), top1(initial, splits_))


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    splits = (_word_pairs(512, 0), _word_pairs(256, 1))
    _, losses, probe = _learn(
        tmp_path_factory.mktemp("mlm"), "mlm", "runlocal", 300, splits, batch_size=32
    )
    return losses, probe(splits)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    config, losses, probe = _learn(
        tmp_path_factory.mktemp("frames"), "frames", "runlocal", 200, batch_size=32
    )
    datasets = {"digit": config.dataset, "direction": config.evals.direction.dataset}
    probes = {k: probe(experiment.load_splits(v, config)) for k, v in datasets.items()}
    return losses, probes


def test_masked_words_learn_the_position_of_letters(words):
    losses, _ = words
    # Below ln 8, the loss of any guess blind to context (8 letters equally
    # often): the model reads at least where in a word a masked letter sits.
    assert losses[-1] < 0.6 * np.log(258) and losses[-1] < np.log(8) - 0.3, losses


def test_missing_frames_learn_the_digit(frames):
    losses, probes = frames
    assert losses[-1] < 0.5 * losses[0], losses
    pretrained, random_init = probes["digit"]
    assert pretrained > random_init + 0.01, probes


# Known gaps at this tiny size (see README, "Beyond images"): strict, so a
# change that closes one shows up as a pass to be turned into a plain test.
@pytest.mark.xfail(strict=True, reason="MLM features probe worse than random init at tiny size")
def test_masked_words_probe_beats_random_init(words):
    _, (pretrained, random_init) = words
    assert pretrained > random_init


@pytest.mark.xfail(strict=True, reason="200 steps lose the direction a random encoder keeps")
def test_missing_frames_direction_probe_beats_random_init(frames):
    _, probes = frames
    pretrained, random_init = probes["direction"]
    assert pretrained > random_init
