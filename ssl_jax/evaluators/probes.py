"""Evaluators on frozen features: the linear probe (all labels, few labels,
kNN, a PCA map) and the bag-of-tokens baseline judged by the same probes;
and the feature and kNN helpers the loop's periodic evaluation shares.

    config.evals.linear_probe = {"type": "linear_probe"}            # probe, few labels, kNN
    config.evals.transfer = {"type": "linear_probe", "dataset": "tfds:stl10"}
    config.evals.bag_of_bytes = {"type": "bag_of_tokens"}            # text: the no-network baseline
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from ssl_jax import inference, nonfinite, storage
from ssl_jax.data import streaming, text
from ssl_jax.evaluate.embedding_map import save_map
from ssl_jax.evaluate.knn import knn_top1
from ssl_jax.evaluate.linear_probe import few_label_probe, fit_linear_probe
from ssl_jax.evaluators.base import Context, Evaluator, budgets, evaluated_dataset, register


def features(trained: inference.TrainedModel, config: ConfigDict, splits, mesh):
    """((train features, labels), (test features, labels)) of the frozen encoder."""
    out = []
    for split in splits:
        x, y = outputs(trained, mesh, split, config.probe.batch_size)
        if not np.isfinite(x).all():
            # Finite weights can still be huge enough to overflow (a learning
            # rate far too high, with nonfinite=skip): no evaluator can use that.
            raise nonfinite.NonFiniteLossError(
                f"The encoder's features of {split.name} hold NaN/Inf: its weights have "
                "diverged. Lower the learning rate and train again in a new --workdir."
            )
        out.append((x, y))
    return tuple(out)


def outputs(trained: inference.TrainedModel, mesh, split, batch_size: int, method="features"):
    """(float32 outputs of the task's `method`, int32 labels) of every example
    of `split`, in order. A streamed split is read in shares: each process
    decodes only its rows of each batch; the features come back whole from
    the compiled program, and the rows' masks and labels are gathered."""
    if isinstance(split, streaming.StreamSplit):
        apply = inference.make_features_fn(trained, mesh, method, local_rows=True)
        share = (jax.process_index(), jax.process_count())
        parts = [(apply(x), m, y) for x, m, y in split.process_batches(batch_size, *share)]
        mask = gather_rows(np.stack([m for _, m, _ in parts]))
        labels = gather_rows(np.stack([y for _, _, y in parts]))
        x = np.concatenate([np.asarray(f, np.float32) for f, _, _ in parts])
        return x[mask], labels[mask].astype(np.int32)
    apply = inference.make_features_fn(trained, mesh, method)
    parts = [(apply(x), m, y) for x, m, y in split.batches(batch_size)]
    x = np.concatenate([np.asarray(f, np.float32)[m] for f, m, _ in parts])
    y = np.concatenate([y[m] for _, m, y in parts]).astype(np.int32)
    return x, y


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's `[batches, rows of its share, ...]` -> the split's rows in
    order, `[batches * batch size, ...]`."""
    if jax.process_count() == 1:
        return merge_process_rows(local[None])
    from jax.experimental import multihost_utils

    return merge_process_rows(np.asarray(multihost_utils.process_allgather(local)))


def merge_process_rows(gathered: np.ndarray) -> np.ndarray:
    """`[processes, batches, rows per process, ...]` -> `[batches * batch size,
    ...]`: batch by batch, process 0's rows first (`pipeline.local_slice`)."""
    return np.swapaxes(gathered, 0, 1).reshape(-1, *gathered.shape[3:])


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


def knn_evaluator(config: ConfigDict, splits, mesh) -> inference.PeriodicEval:
    """kNN top-1 of the current encoder, for `train`'s periodic evaluation."""
    num_classes = splits[0].num_classes
    return lambda trained: {
        "knn_top1": _knn(config, num_classes, *features(trained, config, splits, mesh))
    }


def label_budgets(config: ConfigDict, train_split) -> list[tuple[int, dict]]:
    """(labels per class, extra fields) of every few-label probe."""
    return budgets(config.probe.label_fractions, config.probe.labels_per_class, train_split)


def probe(
    trained: inference.TrainedModel, config: ConfigDict, splits, mesh, *, map_path: str, title: str
) -> dict[str, Any]:
    """Linear probe on all labels and on `config.probe.labels_per_class` per
    class, and the kNN classifier, all on the same frozen features; and the
    2-D PCA map of the test features as a PNG at `map_path`."""
    xy = features(trained, config, splits, mesh)
    return probe_features(xy, config, splits, map_path=map_path, title=title)


def probe_features(xy, config: ConfigDict, splits, *, map_path: str, title: str) -> dict[str, Any]:
    """`probe` on features already extracted, ((train x, y), (test x, y)):
    the same protocol for an encoder from anywhere (the PyTorch peers in
    experiments/peers)."""
    train_split, test_split = splits
    (train_x, train_y), (test_x, test_y) = xy
    if jax.process_index() == 0 and config.save_plots:
        with storage.staged(map_path) as local:  # a URL workdir: written here, uploaded
            save_map(test_x, test_y, local, title=title, class_names=test_split.class_names)
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


def classifier_top1(trained: inference.TrainedModel, config: ConfigDict, split, mesh) -> float:
    """Test top-1 of a supervised task's own classifier (no probe on top)."""
    logits, labels = outputs(trained, mesh, split, config.probe.batch_size, method="logits")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def token_frequencies(tokens: np.ndarray, vocab_size: int, pad_id: int) -> np.ndarray:
    """int [N, T] -> float32 [N, vocab_size]: the share of each token id among
    a sequence's non-padding tokens (padding's own column stays 0)."""
    tokens = np.asarray(tokens)
    counts = np.zeros((len(tokens), vocab_size), np.float32)
    rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
    np.add.at(counts, (rows, tokens.reshape(-1)), 1.0)
    counts[:, pad_id] = 0.0
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


@register("linear_probe")
@dataclasses.dataclass(kw_only=True)
class LinearProbe(Evaluator):
    """A linear classifier on the frozen features of the dataset's train
    split with all labels, and with few labels per class
    (`probe.labels_per_class`, `probe.label_fractions`, mean of
    `probe.few_label_draws` draws), plus the weighted kNN classifier and a
    PCA map of the test features. `dataset` (default: `probe.dataset`, else
    the pretraining data) makes it a transfer evaluation."""

    dataset: str = ""

    def run(self, context: Context) -> dict[str, Any]:
        config = context.config
        dataset = evaluated_dataset(config, self.dataset)
        suffix = "" if self.name == "linear_probe" else f"_{self.name}"
        result = probe(
            context.trained,
            config,
            context.splits(dataset),
            context.mesh,
            map_path=os.path.join(context.workdir, f"embedding_pca{suffix}.png"),
            title=f"{config.task} ({config.model}), {config.train_steps} steps, on {dataset}",
        )
        return {**result, "dataset": dataset}


@register("bag_of_tokens")
@dataclasses.dataclass(kw_only=True)
class BagOfTokens(Evaluator):
    """A baseline with no network for token datasets (text): each sequence as
    the frequencies of its token ids (a bag of bytes), judged by the same
    probe, few-label probes and kNN as `linear_probe`. What a text encoder
    must beat: on the pydoc topics it probes 0.373, level with a random
    Transformer and above a 600-step MLM (docs/results.md)."""

    dataset: str = ""

    def check_data(self, config: ConfigDict, splits) -> None:
        dataset = evaluated_dataset(config, self.dataset)
        train_split = splits(dataset)[0]
        if getattr(train_split, "input_key", None) != "tokens" or not hasattr(
            train_split, "inputs"
        ):
            raise ValueError(
                f"config.evals.{self.name} (bag_of_tokens) needs a token dataset held in memory "
                f"(text, e.g. pydoc), not {dataset}; remove the entry for other data."
            )

    def run(self, context: Context) -> dict[str, Any]:
        config = context.config
        dataset = evaluated_dataset(config, self.dataset)
        splits = context.splits(dataset)
        xy = tuple(
            (token_frequencies(s.inputs, text.VOCAB_SIZE, text.PAD_ID), s.labels) for s in splits
        )
        result = probe_features(
            xy,
            config,
            splits,
            map_path=os.path.join(context.workdir, f"embedding_pca_{self.name}.png"),
            title=f"bag of tokens on {dataset}",
        )
        return {**result, "dataset": dataset, "baseline": "bag_of_tokens"}
