"""Evaluators of a trained encoder, chosen by the config (as big_vision's
`config.evals`): each entry of `config.evals` names a `type` registered here
and its own arguments, and its figures land in `results.json` under the
entry's name.

    config.evals.linear_probe = {"type": "linear_probe"}            # probe, few labels, kNN
    config.evals.transfer = {"type": "linear_probe", "dataset": "tfds:stl10"}
    config.evals.fine_tune = {"type": "fine_tune", "label_fractions": (0.01, 0.1, 1.0), ...}
    config.evals.bag_of_bytes = {"type": "bag_of_tokens"}            # text: the no-network baseline

- `linear_probe`: a linear classifier on the frozen features of the dataset's
  train split with all labels, and with few labels per class
  (`probe.labels_per_class`, `probe.label_fractions`, mean of
  `probe.few_label_draws` draws), plus the weighted kNN classifier and a PCA
  map of the test features; `dataset` (default: `probe.dataset`, else the
  pretraining data) makes it a transfer evaluation.
- `fine_tune`: the whole encoder and a linear head trained end to end on each
  label budget (a fraction of the train split, or k labels per class; one
  seeded balanced draw each) with its own optimizer, steps and batch size,
  scored by its own classifier; with `from_scratch`, the same recipe from the
  random initialisation too, which is the comparison that says whether the
  pretraining paid off.
- `bag_of_tokens`: a baseline with no network for token datasets (text):
  each sequence as the frequencies of its token ids (a bag of bytes), judged
  by the same probe, few-label probes and kNN as `linear_probe`. What a text
  encoder must beat: on the pydoc topics it probes 0.373, level with a
  random Transformer and above a 600-step MLM (docs/results.md).

Registering a new type: `@evaluator("name")` on `fn(context, name, args) ->
dict`; `context` holds the config, workdir, mesh, the trained model and the
data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from ssl_jax import config_lib, inference, metrics, nonfinite, optim, train
from ssl_jax.checkpoint import fingerprint, host_leaves
from ssl_jax.data import text
from ssl_jax.evaluate.embedding_map import save_map
from ssl_jax.evaluate.knn import knn_top1
from ssl_jax.evaluate.linear_probe import balanced_subset, few_label_probe, fit_linear_probe
from ssl_jax.registry import EVALUATORS


def _features(trained: inference.TrainedModel, config: ConfigDict, splits, mesh):
    """((train features, labels), (test features, labels)) of the frozen encoder."""
    features_fn = inference.make_features_fn(trained, mesh)
    out = []
    for split in splits:
        parts = [(features_fn(x), m, y) for x, m, y in split.batches(config.probe.batch_size)]
        x = np.concatenate([np.asarray(f, np.float32)[m] for f, m, _ in parts])
        y = np.concatenate([y[m] for _, m, y in parts]).astype(np.int32)
        if not np.isfinite(x).all():
            # Finite weights can still be huge enough to overflow (a learning
            # rate far too high, with nonfinite=skip): no evaluator can use that.
            raise nonfinite.NonFiniteLossError(
                f"The encoder's features of {split.name} hold NaN/Inf: its weights have "
                "diverged. Lower the learning rate and train again in a new --workdir."
            )
        out.append((x, y))
    return tuple(out)


def _knn(config: ConfigDict, num_classes: int, train_xy, test_xy) -> float:
    (train_x, train_y), (test_x, test_y) = train_xy, test_xy
    return knn_top1(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        k=min(config.knn.k, len(train_x)),
        temperature=config.knn.temperature,
    )


def knn_evaluator(config: ConfigDict, splits, mesh) -> inference.Evaluator:
    """kNN top-1 of the current encoder, for `train`'s periodic evaluation."""
    num_classes = splits[0].num_classes
    return lambda trained: {
        "knn_top1": _knn(config, num_classes, *_features(trained, config, splits, mesh))
    }


def label_budgets(config: ConfigDict, train_split) -> list[tuple[int, dict]]:
    """(labels per class, extra fields) of every few-label probe."""
    return _budgets(config.probe.label_fractions, config.probe.labels_per_class, train_split)


def probe(
    trained: inference.TrainedModel, config: ConfigDict, splits, mesh, *, map_path: str, title: str
) -> dict[str, Any]:
    """Linear probe on all labels and on `config.probe.labels_per_class` per
    class, and the kNN classifier, all on the same frozen features; and the
    2-D PCA map of the test features as a PNG at `map_path`."""
    features = _features(trained, config, splits, mesh)
    return probe_features(features, config, splits, map_path=map_path, title=title)


def probe_features(
    features, config: ConfigDict, splits, *, map_path: str, title: str
) -> dict[str, Any]:
    """`probe` on features already extracted, ((train x, y), (test x, y)):
    the same protocol for an encoder from anywhere (the PyTorch peers in
    experiments/peers)."""
    train_split, test_split = splits
    (train_x, train_y), (test_x, test_y) = features
    if jax.process_index() == 0:
        save_map(test_x, test_y, map_path, title=title, class_names=test_split.class_names)
    fit_kwargs = {
        "num_classes": train_split.num_classes,
        "l2_grid": tuple(config.probe.l2_grid),
        "holdout_fraction": config.probe.holdout_fraction,
        "steps": config.probe.steps,
        "seed": config.seed,
    }
    data = (train_x, train_y, test_x, test_y)
    result = fit_linear_probe(*data, **fit_kwargs).to_dict()
    result["few_labels"] = [
        {
            **few_label_probe(*data, per_class=k, draws=config.probe.few_label_draws, **fit_kwargs),
            **extra,
        }
        for k, extra in label_budgets(config, train_split)
    ]
    result["knn_top1"] = _knn(config, train_split.num_classes, (train_x, train_y), (test_x, test_y))
    return result


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
        if supervised.model_kwargs.get("frozen_patch_embed"):
            # MoCo v3 freezes a ViT's patch projection to stabilise pretraining;
            # supervised training and fine-tuning train it (DeiT's recipe), from
            # the pretrained values when there are some.
            supervised.model_kwargs.frozen_patch_embed = False
    return supervised


def classifier_top1(trained: inference.TrainedModel, config: ConfigDict, split, mesh) -> float:
    """Test top-1 of a supervised task's own classifier (no probe on top)."""
    logits_fn = inference.make_features_fn(trained, mesh, method="logits")
    correct = [
        (np.argmax(np.asarray(logits_fn(x)), axis=1) == y)[m]
        for x, m, y in split.batches(config.probe.batch_size)
    ]
    return float(np.mean(np.concatenate(correct)))


def _budgets(fractions, per_class_counts, train_split) -> list[tuple[int, dict]]:
    """(labels per class, extra fields): explicit per-class counts, then
    fractions of the train split, balanced."""
    budgets = [(k, {}) for k in per_class_counts]
    for fraction in fractions:
        per_class = max(1, round(fraction * len(train_split) / train_split.num_classes))
        budgets.append((per_class, {"fraction": fraction}))
    return budgets


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


def supervised_from_scratch(
    config: ConfigDict, workdir: str, splits, mesh, *, allow_config_change: bool = False
) -> list[dict[str, Any]]:
    """The encoder trained with labels only, from its random init, on each label
    budget of the probe (the same loop, steps and batch size as pretraining),
    in `WORKDIR/supervised_<k>_per_class`: the curve a pretext task has to
    beat for self-supervision to pay off."""
    return train_on_labels(
        supervised_config(config, splits[0].num_classes),
        workdir,
        splits,
        mesh,
        label_budgets(config, splits[0]),
        prefix="supervised_",
        allow_config_change=allow_config_change,
    )


# ----------------------------------------------------------------------------- config.evals


@dataclasses.dataclass
class Context:
    """What every evaluator may use."""

    config: ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    trained: inference.TrainedModel  # the pretrained task
    splits: Callable[[str], tuple]  # dataset name -> (train, test) splits, loaded once
    allow_config_change: bool = False


def evaluator(type_name: str):
    """Registers `fn(context, name, args) -> dict` as `config.evals` type
    `type_name` (in `ssl_jax.registry.EVALUATORS`)."""
    return EVALUATORS.register(type_name)


def check(evals: ConfigDict, num_devices: int = 1) -> None:
    """Every entry of `config.evals` names a known type and gives it the
    arguments it needs (one-line errors before pretraining, not after)."""
    for name, args in evals.items():
        kind = args.get("type") if hasattr(args, "get") else None
        if kind not in EVALUATORS:
            raise ValueError(
                f"config.evals.{name}.type={kind!r} is not one of {EVALUATORS.names()}."
            )
        if kind == "fine_tune":
            missing = sorted(set(config_lib.FINE_TUNE) - set(args.keys()))
            if missing:
                raise ValueError(
                    f"config.evals.{name} lacks {', '.join(missing)} (a fine_tune entry "
                    "needs every field of config_lib.FINE_TUNE; the :finetune option writes one)."
                )
            if args.steps < 1 or args.batch_size < 1 or args.batch_size % num_devices:
                raise ValueError(
                    f"config.evals.{name}: steps ({args.steps}) and batch_size "
                    f"({args.batch_size}) must be >= 1, the batch a multiple of the "
                    f"{num_devices} devices."
                )
            if not args.encoder_lr_scale > 0:
                raise ValueError(
                    f"config.evals.{name}.encoder_lr_scale must be > 0, "
                    f"got {args.encoder_lr_scale}."
                )
            try:
                fine_tune_opt = optim.default_config(**args.optimizer.to_dict())
                optim.validate(fine_tune_opt)
                optim.warmup_steps(fine_tune_opt, args.steps)
            except (ValueError, AttributeError, KeyError) as error:
                raise ValueError(f"config.evals.{name}.optimizer: {error}") from None


def evaluated_dataset(config: ConfigDict, args: ConfigDict) -> str:
    """The dataset an evaluator entry judges: its own `dataset`, else
    `probe.dataset`, else the pretraining data."""
    return args.get("dataset") or config.probe.dataset or config.dataset


def check_data(config: ConfigDict, splits: Callable[[str], tuple]) -> None:
    """What an evaluator needs of its data, before pretraining: a
    `bag_of_tokens` entry needs a token dataset held in memory, and a
    `fine_tune` entry's label budgets must fit in memory (`check_memory`)."""
    for name, args in config.evals.items():
        if args.type != "bag_of_tokens":
            continue
        dataset = evaluated_dataset(config, args)
        train_split = splits(dataset)[0]
        if getattr(train_split, "input_key", None) != "tokens" or not hasattr(
            train_split, "inputs"
        ):
            raise ValueError(
                f"config.evals.{name} (bag_of_tokens) needs a token dataset held in memory "
                f"(text, e.g. pydoc), not {dataset}; remove the entry for other data."
            )
    check_memory(config, splits)


def token_frequencies(tokens: np.ndarray, vocab_size: int, pad_id: int) -> np.ndarray:
    """int [N, T] -> float32 [N, vocab_size]: the share of each token id among
    a sequence's non-padding tokens (padding's own column stays 0)."""
    tokens = np.asarray(tokens)
    counts = np.zeros((len(tokens), vocab_size), np.float32)
    rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
    np.add.at(counts, (rows, tokens.reshape(-1)), 1.0)
    counts[:, pad_id] = 0.0
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def check_memory(config: ConfigDict, splits: Callable[[str], tuple]) -> None:
    """Fine-tuning decodes each label budget into host memory (a streamed
    dataset too): refuse, before pretraining, a budget larger than
    `input.memory_limit_gb` (the 100% budget of ImageNet at 224 px is 193 GB)."""
    for name, args in config.evals.items():
        if args.type != "fine_tune":
            continue
        dataset = evaluated_dataset(config, args)
        train_split = splits(dataset)[0]
        budgets = _budgets(args.label_fractions, args.labels_per_class, train_split)
        examples = max(k for k, _ in budgets) * train_split.num_classes
        decoded = examples * config.image_size**2 * 3
        if decoded > config.input.memory_limit_gb * 2**30:
            raise ValueError(
                f"config.evals.{name}: its largest label budget ({examples} images of "
                f"{dataset}) would take {decoded / 2**30:.0f} GB of host memory, more than "
                f"input.memory_limit_gb={config.input.memory_limit_gb:g}; use smaller "
                "label_fractions / labels_per_class (or raise the limit)."
            )


@evaluator("linear_probe")
def _linear_probe(context: Context, name: str, args: ConfigDict) -> dict[str, Any]:
    config = context.config
    dataset = evaluated_dataset(config, args)
    suffix = "" if name == "linear_probe" else f"_{name}"
    result = probe(
        context.trained,
        config,
        context.splits(dataset),
        context.mesh,
        map_path=os.path.join(context.workdir, f"embedding_pca{suffix}.png"),
        title=f"{config.task} ({config.model}), {config.train_steps} steps, on {dataset}",
    )
    return {**result, "dataset": dataset}


def fine_tune_config(config: ConfigDict, args: ConfigDict, num_classes: int) -> ConfigDict:
    """The supervised task on the pretrained encoder with the fine-tuning
    optimizer, steps and batch size of `args`."""
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


@evaluator("fine_tune")
def _fine_tune(context: Context, name: str, args: ConfigDict) -> dict[str, Any]:
    config = context.config
    dataset = evaluated_dataset(config, args)
    splits = context.splits(dataset)
    budgets = _budgets(args.label_fractions, args.labels_per_class, splits[0])
    tuned = fine_tune_config(config, args, splits[0].num_classes)
    with tuned.unlocked():
        tuned.dataset = dataset  # what the sub-runs train on, in their config.json
    encoder = context.trained.module().feature_encoder()
    from flax import nnx

    encoder_state = nnx.state(encoder)
    pretrained = pretrained_config(tuned, args.encoder_lr_scale)
    pretrained_dir, scratch_dir = fine_tune_dirs(
        context.workdir, name, tuned, encoder_state, pretrained=pretrained
    )
    result = {
        "dataset": dataset,
        "steps": args.steps,
        "directory": pretrained_dir,
        "points": train_on_labels(
            pretrained,
            pretrained_dir,
            splits,
            context.mesh,
            budgets,
            init_encoder=encoder_state,
            allow_config_change=context.allow_config_change,
        ),
    }
    if args.from_scratch:
        scratch = train_on_labels(
            tuned,
            scratch_dir,
            splits,
            context.mesh,
            budgets,
            allow_config_change=context.allow_config_change,
        )
        for point, base in zip(result["points"], scratch, strict=True):
            point["from_scratch_top1"] = base["top1"]
    return result


@evaluator("bag_of_tokens")
def _bag_of_tokens(context: Context, name: str, args: ConfigDict) -> dict[str, Any]:
    config = context.config
    dataset = evaluated_dataset(config, args)
    splits = context.splits(dataset)
    features = tuple(
        (token_frequencies(s.inputs, text.VOCAB_SIZE, text.PAD_ID), s.labels) for s in splits
    )
    result = probe_features(
        features,
        config,
        splits,
        map_path=os.path.join(context.workdir, f"embedding_pca_{name}.png"),
        title=f"bag of tokens on {dataset}",
    )
    return {**result, "dataset": dataset, "baseline": "bag_of_tokens"}
