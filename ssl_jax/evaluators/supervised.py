"""Training the encoder on labels with the shared loop: the supervised
config and the runs on label budgets that fine-tuning and the supervised
baselines share. Registers no evaluator."""

from __future__ import annotations

import os
from typing import Any

from ml_collections import ConfigDict

from ssl_jax import metrics, train
from ssl_jax.evaluate.linear_probe import balanced_subset
from ssl_jax.evaluators.probes import classifier_top1


def supervised_config(config: ConfigDict, num_classes: int) -> ConfigDict:
    """The same encoder, data and optimizer, trained on the labels for
    `baselines.supervised_steps` (default: the pretraining budget)."""
    supervised = config.copy_and_resolve_references()
    with supervised.unlocked():
        supervised.task = config.baselines.supervised_task
        supervised.train_steps = config.baselines.supervised_steps or config.train_steps
        supervised.task_kwargs = ConfigDict(
            {**config.baselines.supervised_task_kwargs.to_dict(), "num_classes": num_classes}
        )
        # Settings that name the pretext task's modules (SimSiam's predictor)
        # mean nothing to the supervised task's encoder and head.
        supervised.optimizer.fixed_lr_modules = ()
        supervised.optimizer.module_lr_scales = ()
        if "in_channels" in supervised.model_kwargs:
            # A pretext task may feed its encoder another input than the image
            # (a lightness channel); the supervised task reads the RGB images.
            del supervised.model_kwargs["in_channels"]
        if supervised.model_kwargs.get("frozen_patch_embed"):
            # MoCo v3 freezes a ViT's patch projection to stabilise pretraining;
            # supervised training and fine-tuning train it (DeiT's recipe), from
            # the pretrained values when there are some.
            supervised.model_kwargs.frozen_patch_embed = False
    return supervised


def train_on_labels(
    config: ConfigDict,
    workdir: str,
    splits,
    mesh,
    budgets,
    *,
    prefix: str = "",
    init_encoder=None,
    allow_config_change: bool = False,
) -> list[dict[str, Any]]:
    """A supervised config (`config` is one already) trained on one seeded
    balanced draw of each label budget, in `workdir/<prefix><k>_per_class`, starting
    from `init_encoder` (the encoder's variables, e.g. pretrained ones) or
    from the random initialisation; each scored by its own classifier."""
    train_split, test_split = splits
    points = []
    for per_class, extra in budgets:
        indices = balanced_subset(train_split.labels, per_class, seed=config.seed)
        subset = train_split.subset(indices)
        arrays = {subset.input_key: subset.inputs, "label": subset.labels}
        run_dir = os.path.join(workdir, f"{prefix}{per_class}_per_class")
        trained, summary = train.train(
            config,
            run_dir,
            arrays,
            mesh,
            allow_config_change=allow_config_change,
            init_encoder=init_encoder,
        )
        points.append(
            {
                "per_class": per_class,
                "train_size": len(subset.labels),
                "top1": classifier_top1(trained, config, test_split, mesh),
                "final_loss": summary.get("final_loss", metrics.last_logged(run_dir, "loss")),
                **extra,
            }
        )
    return points
