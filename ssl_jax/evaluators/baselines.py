"""The baselines a pretrained encoder is measured against, as evaluators:

- `random_init`: every linear probe of the run (`linear_probe` entries) on
  the encoder at its random initialisation;
- `supervised`: the same encoder, data and loop trained with labels
  (`baselines.supervised_task`) for `baselines.supervised_steps`, in
  `WORKDIR/<name>`, probed like the pretrained one and scored by its own
  classifier;
- `supervised_from_scratch`: the encoder trained with labels only, from its
  random init, on each label budget of the probe, in
  `WORKDIR/supervised_<k>_per_class`: the curve a pretext task has to beat
  for self-supervision to pay off.

The switches `config.baselines.{random_init,supervised,supervised_few_labels}`
add these entries (`entries`); `config.evals` may also name them directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ml_collections import ConfigDict

from ssl_jax import inference, metrics, optim, train
from ssl_jax.evaluators.base import Context, Evaluator, build, evaluated_dataset, register
from ssl_jax.evaluators.probes import classifier_top1, knn_evaluator, label_budgets, probe
from ssl_jax.evaluators.supervised import supervised_config, train_on_labels

# `config.baselines` switch -> the evaluator type (and results.json key) it adds.
SWITCHES = {
    "random_init": "random_init",
    "supervised": "supervised",
    "supervised_few_labels": "supervised_from_scratch",
}


def entries(config: ConfigDict) -> dict[str, Any]:
    """Every evaluator entry of a run: `config.evals`, then one entry per
    baseline switched on in `config.baselines`, named as its type (its
    results.json key). An entry of that name already in `config.evals` is
    kept when it has that type, and refused when it has another (its results
    would overwrite each other)."""
    out = dict(config.evals.items())
    for switch, kind in SWITCHES.items():
        if not config.baselines[switch]:
            continue
        if kind not in out:
            out[kind] = ConfigDict({"type": kind})
        elif out[kind].get("type") != kind:
            raise ValueError(
                f"config.evals.{kind} has type {out[kind].get('type')!r}, but "
                f"baselines.{switch} writes its results under that name: rename the entry."
            )
    return out


def _probe_splits(context: Context):
    """The splits the probes judge by default: `probe.dataset`, else the
    pretraining data."""
    return context.splits(evaluated_dataset(context.config))


def _check_supervised_warmup(config: ConfigDict) -> None:
    """The supervised runs train with the pretraining optimizer for their own
    steps: its warm-up must fit in them."""
    optim.warmup_steps(config.optimizer, config.baselines.supervised_steps or config.train_steps)


@register("random_init")
@dataclasses.dataclass(kw_only=True)
class RandomInit(Evaluator):
    """The probes on the encoder at its random initialisation: the default
    probe under `linear_probe`, every other `linear_probe` entry (a
    transfer, another label of the same data) under its own name, and every
    other entry with a `baseline` (the segmentation probe) under its name."""

    def run(self, context: Context) -> dict[str, Any]:
        config, workdir = context.config, context.workdir
        initial = inference.split_task(inference.build_task(config))
        results = {
            "linear_probe": probe(
                initial,
                config,
                _probe_splits(context),
                context.mesh,
                map_path=os.path.join(workdir, "embedding_pca_random_init.png"),
                title=f"random init ({config.model})",
            )
        }
        for name, args in config.evals.items():
            if args.type == "linear_probe" and name != "linear_probe":
                dataset = evaluated_dataset(config, args.get("dataset", ""))
                results[name] = probe(
                    initial,
                    config,
                    context.splits(dataset),
                    context.mesh,
                    map_path=os.path.join(workdir, f"embedding_pca_random_init_{name}.png"),
                    title=f"random init ({config.model}) on {dataset}",
                )
            elif args.type != "linear_probe":  # e.g. the segmentation probe
                figures = build(name, args).baseline(context, initial)
                if figures is not None:
                    results[name] = figures
        return results


@register("supervised")
@dataclasses.dataclass(kw_only=True)
class Supervised(Evaluator):
    """The encoder trained with labels on the pretraining data by the same
    loop, probed as the pretrained one is."""

    def check(self, config: ConfigDict, num_devices: int) -> None:
        _check_supervised_warmup(config)

    def run(self, context: Context) -> dict[str, Any]:
        config, mesh = context.config, context.mesh
        train_split, test_split = context.splits(config.dataset)
        probe_splits = _probe_splits(context)
        sup_config = supervised_config(config, train_split.num_classes)
        sup_workdir = os.path.join(context.workdir, self.name)
        supervised, summary = train.train(
            sup_config,
            sup_workdir,
            context.training_data(sup_config, train_split),
            mesh,
            knn_evaluator(config, probe_splits, mesh),
            allow_config_change=context.allow_config_change,
        )
        return {
            "final_loss": summary.get("final_loss", metrics.last_logged(sup_workdir, "loss")),
            "state_fingerprint": summary["state_fingerprint"],
            "top1": classifier_top1(supervised, config, test_split, mesh),
            "linear_probe": probe(
                supervised,
                config,
                probe_splits,
                mesh,
                map_path=os.path.join(sup_workdir, "embedding_pca.png"),
                title=f"supervised ({config.model})",
            ),
        }


@register("supervised_from_scratch")
@dataclasses.dataclass(kw_only=True)
class SupervisedFromScratch(Evaluator):
    """The supervised config trained from the random init on each label
    budget of the probe; its entry is the list of points (per_class,
    train_size, top1, final_loss, fraction)."""

    def check(self, config: ConfigDict, num_devices: int) -> None:
        _check_supervised_warmup(config)

    def run(self, context: Context) -> list[dict[str, Any]]:
        splits = _probe_splits(context)
        return train_on_labels(
            supervised_config(context.config, splits[0].num_classes),
            context.workdir,
            splits,
            context.mesh,
            label_budgets(context.config, splits[0]),
            prefix="supervised_",
            allow_config_change=context.allow_config_change,
        )
