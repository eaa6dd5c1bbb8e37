"""The fine-tuning evaluator: the whole encoder and a linear head trained
end to end on each label budget (a fraction of the train split, or k labels
per class; one seeded balanced draw each) with its own optimizer, steps and
batch size, scored by its own classifier; with `from_scratch`, the same
recipe from the random initialisation too, which is the comparison that says
whether the pretraining paid off.

    config.evals.fine_tune = {"type": "fine_tune", "label_fractions": (0.01, 0.1, 1.0), ...}

Every argument is required: `config_lib.FINE_TUNE` holds the defaults (the
`:finetune` config option writes them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, ClassVar

from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import optim
from ssl_jax.checkpoint import fingerprint, host_leaves
from ssl_jax.evaluators.base import Context, Evaluator, budgets, evaluated_dataset, register
from ssl_jax.evaluators.supervised import supervised_config, train_on_labels


def fine_tune_config(config: ConfigDict, args, num_classes: int) -> ConfigDict:
    """The supervised task on the pretrained encoder with the fine-tuning
    optimizer, steps and batch size of `args` (an entry or a `FineTune`)."""
    tuned = supervised_config(config, num_classes)
    with tuned.unlocked():
        tuned.train_steps = args.steps
        tuned.batch_size = args.batch_size
        # Its own optimizer from the defaults: nothing of pretraining's (LARS
        # trust, a bias learning-rate scale, gradient clipping) leaks in.
        tuned.optimizer = optim.default_config(**args.optimizer.to_dict())
        tuned.checkpoint_every = tuned.log_every = max(1, args.steps // 4)
        tuned.eval_every = 0
    return tuned


def pretrained_config(tuned: ConfigDict, encoder_lr_scale: float) -> ConfigDict:
    """The fine-tune config of the pretrained encoder: `tuned`, with the
    encoder's steps scaled by `encoder_lr_scale` when it is not 1."""
    if encoder_lr_scale == 1.0:
        return tuned
    pretrained = tuned.copy_and_resolve_references()
    with pretrained.unlocked():
        pretrained.optimizer.module_lr_scales = (("encoder", float(encoder_lr_scale)),)
    return pretrained


def fine_tune_dirs(
    workdir: str, name: str, tuned: ConfigDict, encoder_state, *, pretrained=None
) -> tuple[str, str]:
    """The directories of the fine-tuned and the from-scratch sub-runs, under a
    key of everything they start from: the fine-tune config (dataset
    included) and, for the pretrained ones, the encoder's weights. Continued
    pretraining or other fine-tune arguments then start fresh runs instead of
    resuming (or reporting) runs that began from other weights or data."""
    setup = json.dumps(tuned.to_dict(), sort_keys=True, default=str)
    tuned_setup = json.dumps((pretrained or tuned).to_dict(), sort_keys=True, default=str)
    weights = fingerprint(host_leaves(encoder_state))

    def key(*parts: str) -> str:
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]

    return (
        os.path.join(workdir, name, key(tuned_setup, weights)),
        os.path.join(workdir, f"{name}_from_scratch", key(setup)),
    )


@register("fine_tune")
@dataclasses.dataclass(kw_only=True)
class FineTune(Evaluator):
    """Fine-tuning on label budgets, beside the same recipe from scratch."""

    dataset: str
    label_fractions: tuple
    labels_per_class: tuple
    steps: int
    batch_size: int
    from_scratch: bool
    # The pretrained encoder's steps against its new head's (the run from
    # scratch trains everything at the full rate: its random encoder has
    # nothing to keep).
    encoder_lr_scale: float
    optimizer: ConfigDict

    missing_hint: ClassVar[str] = (
        "; config_lib.FINE_TUNE has every field, and the :finetune option writes one"
    )

    def check(self, config: ConfigDict, num_devices: int) -> None:
        # The fine-tuned network is the supervised one, which reads RGB: an
        # encoder pretrained on other channels (colorization's L) cannot be
        # loaded into it.
        channels = config.model_kwargs.get("in_channels", 3)
        if channels != 3:
            raise ValueError(
                f"config.evals.{self.name}: fine-tuning needs an encoder of RGB images; "
                f"this one takes {channels} channel(s) (model_kwargs.in_channels). "
                f"Remove the fine_tune entry."
            )
        if self.steps < 1 or self.batch_size < 1 or self.batch_size % num_devices:
            raise ValueError(
                f"config.evals.{self.name}: steps ({self.steps}) and batch_size "
                f"({self.batch_size}) must be >= 1, the batch a multiple of the "
                f"{num_devices} devices."
            )
        if not self.encoder_lr_scale > 0:
            raise ValueError(
                f"config.evals.{self.name}.encoder_lr_scale must be > 0, "
                f"got {self.encoder_lr_scale}."
            )
        try:
            fine_tune_opt = optim.default_config(**self.optimizer.to_dict())
            optim.validate(fine_tune_opt)
            optim.warmup_steps(fine_tune_opt, self.steps)
        except (ValueError, AttributeError, KeyError) as error:
            raise ValueError(f"config.evals.{self.name}.optimizer: {error}") from None

    def check_data(self, config: ConfigDict, splits) -> None:
        """Fine-tuning decodes each label budget into host memory (a streamed
        dataset too): refuse, before pretraining, a budget larger than
        `input.memory_limit_gb` (the 100% budget of ImageNet at 224 px is 193 GB)."""
        dataset = evaluated_dataset(config, self.dataset)
        train_split = splits(dataset)[0]
        label_budgets = budgets(self.label_fractions, self.labels_per_class, train_split)
        examples = max(k for k, _ in label_budgets) * train_split.num_classes
        decoded = examples * config.image_size**2 * 3
        if decoded > config.input.memory_limit_gb * 2**30:
            raise ValueError(
                f"config.evals.{self.name}: its largest label budget ({examples} images of "
                f"{dataset}) would take {decoded / 2**30:.0f} GB of host memory, more than "
                f"input.memory_limit_gb={config.input.memory_limit_gb:g}; use smaller "
                "label_fractions / labels_per_class (or raise the limit)."
            )

    def run(self, context: Context) -> dict[str, Any]:
        config = context.config
        dataset = evaluated_dataset(config, self.dataset)
        splits = context.splits(dataset)
        label_budgets = budgets(self.label_fractions, self.labels_per_class, splits[0])
        tuned = fine_tune_config(config, self, splits[0].num_classes)
        with tuned.unlocked():
            tuned.dataset = dataset  # what the sub-runs train on, in their config.json
        encoder_state = nnx.state(context.trained.module().feature_encoder())
        pretrained = pretrained_config(tuned, self.encoder_lr_scale)
        pretrained_dir, scratch_dir = fine_tune_dirs(
            context.workdir, self.name, tuned, encoder_state, pretrained=pretrained
        )
        train_kwargs = {"allow_config_change": context.allow_config_change}
        result = {
            "dataset": dataset,
            "steps": self.steps,
            "directory": pretrained_dir,
            "points": train_on_labels(
                pretrained,
                pretrained_dir,
                splits,
                context.mesh,
                label_budgets,
                init_encoder=encoder_state,
                **train_kwargs,
            ),
        }
        if self.from_scratch:
            scratch = train_on_labels(
                tuned, scratch_dir, splits, context.mesh, label_budgets, **train_kwargs
            )
            for point, base in zip(result["points"], scratch, strict=True):
                point["from_scratch_top1"] = base["top1"]
        return result
