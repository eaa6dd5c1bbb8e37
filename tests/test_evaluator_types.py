"""Evaluators as objects: every type checks its own arguments, the
`config.baselines` switches become entries of their own types, a type
registered anywhere runs through the experiment untouched, and TensorBoard
files its figures under `train/` and `eval/<name>/`."""

import dataclasses
import json

import pytest

from ssl_jax import config_lib, evaluators, experiment
from ssl_jax.evaluators.base import evaluated_dataset
from ssl_jax.registry import EVALUATORS
from tests.test_metrics import read_events


@pytest.mark.parametrize("kind", EVALUATORS.names())
def test_an_unknown_argument_of_every_type_is_refused_naming_the_entry(kind):
    args = config_lib.ConfigDict({"type": kind, "lables_per_class": (10,)})
    with pytest.raises(ValueError) as error:
        evaluators.build("my_entry", args)
    message = str(error.value)
    assert message.startswith("config.evals.my_entry has no argument lables_per_class")
    assert "\n" not in message


def test_each_type_declares_what_it_takes():
    probe = evaluators.build("t", {"type": "linear_probe", "dataset": "synthetic"})
    assert (probe.name, probe.dataset, probe.log_prefix) == ("t", "synthetic", "eval/t")
    with pytest.raises(ValueError, match=r"a random_init entry takes: none"):
        evaluators.build("r", {"type": "random_init", "dataset": "x"})


def _config(**baselines):
    config = config_lib.base_config()
    config.baselines.update(baselines)
    return config


def test_the_baseline_switches_become_entries_of_their_own_types():
    config = _config(random_init=True, supervised=True, supervised_few_labels=True)
    entries = evaluators.entries(config)
    assert list(entries) == ["linear_probe", "random_init", "supervised", "supervised_from_scratch"]
    assert all(entries[name].type == name for name in list(entries)[1:])
    assert list(evaluators.entries(_config(random_init=False))) == ["linear_probe"]
    # An entry of a baseline's own type under its name stays as written.
    config = _config(random_init=True)
    config.evals.random_init = {"type": "random_init"}
    assert list(evaluators.entries(config)) == ["linear_probe", "random_init"]
    # Another type under that name would have its results overwritten: refused.
    config.evals.random_init = {"type": "linear_probe"}
    with pytest.raises(ValueError, match=r"config.evals.random_init has type 'linear_probe'"):
        evaluators.entries(config)


def test_the_supervised_baselines_check_their_warmup_before_pretraining():
    config = _config(random_init=False, supervised_few_labels=True, supervised_steps=10)
    config.optimizer.update(warmup_fraction=0.0, warmup_steps=50)
    config.train_steps = 100  # pretraining's warm-up fits; the supervised runs' does not
    with pytest.raises(ValueError, match="longer than the run"):
        evaluators.check(config)
    config.baselines.supervised_few_labels = False
    evaluators.check(config)


def test_fine_tuning_an_encoder_of_other_channels_is_refused_before_pretraining():
    """Colorization's encoder reads L (1 channel); the fine-tuned network is
    the supervised one, which reads RGB: its weights could not be loaded."""
    config = config_lib.get_config("colorization", "runlocal")
    with config.unlocked():
        config.evals.fine_tune = dict(config_lib.FINE_TUNE)
    with pytest.raises(ValueError, match="fine-tuning needs an encoder of RGB images"):
        evaluators.check(config)
    rgb = config_lib.get_config("rotation", "runlocal")
    with rgb.unlocked():
        rgb.evals.fine_tune = dict(config_lib.FINE_TUNE)
    evaluators.check(rgb)


@dataclasses.dataclass(kw_only=True)
class ImagesSeen(evaluators.Evaluator):
    """A type only this test knows: the size of its dataset's test split."""

    dataset: str = ""

    def check(self, config, num_devices):
        if self.dataset == "none":
            raise ValueError(f"config.evals.{self.name}.dataset must name a dataset.")

    def run(self, context):
        dataset = evaluated_dataset(context.config, self.dataset)
        test_split = context.splits(dataset)[1]
        return {"test_images": len(test_split), "num_classes": test_split.num_classes}


@pytest.fixture
def images_seen(monkeypatch):
    """`images_seen` registered for the test only."""
    EVALUATORS.names()  # the package's own types first
    monkeypatch.setattr(EVALUATORS, "_entries", dict(EVALUATORS._entries))
    evaluators.register("images_seen")(ImagesSeen)


def test_a_type_registered_elsewhere_runs_through_the_experiment(images_seen, tmp_path):
    config = config_lib.get_config("rotation", "runlocal")
    config.update(train_steps=2, log_every=1, checkpoint_every=2)
    config.baselines.random_init = False
    config.evals = {"seen": {"type": "images_seen"}, "linear_probe": {"type": "linear_probe"}}
    config.probe.update(steps=5, few_label_draws=1)
    with config.unlocked():
        config.evals.seen.dataset = "none"
    with pytest.raises(ValueError, match="config.evals.seen.dataset must name"):
        experiment.run(config, str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()  # refused before pretraining

    config.evals.seen.dataset = ""
    workdir = tmp_path / "run"
    results = experiment.run(config, str(workdir))
    assert results["seen"]["test_images"] > 0
    assert json.loads((workdir / "results.json").read_text())["seen"] == results["seen"]

    shown, images, texts = read_events(workdir)
    tags = {tag for tag, _, _ in shown}
    assert {"train/loss", "run/final_loss", "eval/seen/test_images"} <= tags
    assert {"eval/linear_probe/top1", "eval/linear_probe/few_labels/10_per_class/top1"} <= tags
    assert all(tag.startswith(("train/", "run/", "eval/")) for tag in tags), tags
    # Constants are text: sizes, class counts, budgets, names, fingerprints.
    for constant in ("num_classes", "train_steps", "per_class", "state_fingerprint"):
        assert not any(tag.endswith(f"/{constant}") for tag in tags), constant
    assert {"run/constants/text_summary", "eval/seen/constants/text_summary"} <= texts
    assert "eval/linear_probe/constants/text_summary" in texts  # its dataset
