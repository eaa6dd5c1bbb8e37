"""One experiment: pretrain a task, probe its encoder, compare with baselines.

`run(config, workdir)` is what `python -m ssl_jax.main` does:
1. pretrain `config.task` with the shared loop (resuming if interrupted);
2. linear-probe the frozen encoder on `config.probe.dataset`;
3. probe the same encoder at its random initialisation (`baselines.random_init`)
   and, if asked, one trained with labels by the same loop
   (`baselines.supervised`, in `WORKDIR/supervised`), and the same encoder
   trained from scratch on each label budget of the probe
   (`baselines.supervised_few_labels`, in `WORKDIR/supervised_<N>_per_class`);
4. write `results.json` and print a table.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import config_lib, metrics, train
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline, streaming
from ssl_jax.data.datasets import ImageDataset, load_dataset
from ssl_jax.evaluate import label_efficiency
from ssl_jax.evaluate.embedding_map import save_map
from ssl_jax.evaluate.knn import knn_top1
from ssl_jax.evaluate.linear_probe import (
    balanced_subset,
    few_label_probe,
    fit_linear_probe,
)


def load_splits(name: str, config: ConfigDict):
    """The train and test splits of `name`: in memory (`ImageDataset`), or
    streamed from records (`streaming.StreamSplit`) when `data.streams` says so."""
    data_dir = config.data_dir or None
    if streaming.streams(name, config.input, image_size=config.image_size, data_dir=data_dir):
        kwargs = {
            "image_size": config.image_size,
            "data_dir": data_dir,
            "num_workers": streaming.num_workers(config.input.workers),
            "on_bad_record": config.input.on_bad_record,
        }
        return tuple(streaming.StreamSplit(name, split, **kwargs) for split in ("train", "test"))
    kwargs = {"image_size": config.image_size, "data_dir": data_dir}
    return load_dataset(name, "train", **kwargs), load_dataset(name, "test", **kwargs)


def training_data(config: ConfigDict, train_split):
    """What the loop trains on: the in-memory arrays, or the streamed records
    cropped on the host as the task asks (`Task.host_crops`)."""
    if not isinstance(train_split, streaming.StreamSplit):
        return pipeline.InMemory({"image": train_split.images, "label": train_split.labels})
    crops = nnx.eval_shape(lambda: train.build_task(config)).host_crops(config.image_size)
    transform = (
        streaming.view_transform(crops) if crops else streaming.center_transform(config.image_size)
    )
    return streaming.StreamingSource(
        train_split.dataset,
        transform,
        image_size=config.image_size,
        num_workers=train_split.num_workers,
        on_bad_record=train_split.on_bad_record,
    )


def _features(trained: train.TrainedModel, config: ConfigDict, splits, mesh):
    """((train features, labels), (test features, labels)) of the frozen encoder."""
    features_fn = train.make_features_fn(trained, mesh)
    out = []
    for split in splits:
        parts = [(features_fn(x), m, y) for x, m, y in split.batches(config.probe.batch_size)]
        x = np.concatenate([np.asarray(f, np.float32)[m] for f, m, _ in parts])
        y = np.concatenate([y[m] for _, m, y in parts]).astype(np.int32)
        if not np.isfinite(x).all():
            # Finite weights can still be huge enough to overflow (a learning
            # rate far too high, with nonfinite=skip): no evaluator can use that.
            raise train.NonFiniteLossError(
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


def knn_evaluator(config: ConfigDict, splits, mesh) -> train.Evaluator:
    """kNN top-1 of the current encoder, for `train`'s periodic evaluation."""
    num_classes = splits[0].num_classes
    return lambda trained: {
        "knn_top1": _knn(config, num_classes, *_features(trained, config, splits, mesh))
    }


def _label_budgets(config: ConfigDict, train_split) -> list[tuple[int, dict]]:
    """(labels per class, extra fields) of every few-label probe: the explicit
    per-class counts, then the fractions of the train split, balanced."""
    budgets = [(k, {}) for k in config.probe.labels_per_class]
    for fraction in config.probe.label_fractions:
        per_class = max(1, round(fraction * len(train_split) / train_split.num_classes))
        budgets.append((per_class, {"fraction": fraction}))
    return budgets


def probe(
    trained: train.TrainedModel, config: ConfigDict, splits, mesh, *, map_path: str, title: str
) -> dict[str, Any]:
    """Linear probe on all labels and on `config.probe.labels_per_class` per
    class, and the kNN classifier, all on the same frozen features; and the
    2-D PCA map of the test features as a PNG at `map_path`."""
    train_split, test_split = splits
    (train_x, train_y), (test_x, test_y) = _features(trained, config, splits, mesh)
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
        for k, extra in _label_budgets(config, train_split)
    ]
    result["knn_top1"] = _knn(config, train_split.num_classes, (train_x, train_y), (test_x, test_y))
    return result


def fill_from_dataset(config: ConfigDict, train_split: ImageDataset) -> ConfigDict:
    """Task settings the dataset decides: `task_kwargs.num_classes = None`
    (e.g. SimCLR's online probe) becomes the dataset's class count."""
    if "num_classes" not in config.task_kwargs or config.task_kwargs.num_classes is not None:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.task_kwargs.num_classes = train_split.num_classes
    return config


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
    return supervised


def classifier_top1(trained: train.TrainedModel, config: ConfigDict, split, mesh) -> float:
    """Test top-1 of a supervised task's own classifier (no probe on top)."""
    logits_fn = train.make_features_fn(trained, mesh, method="logits")
    correct = [
        (np.argmax(np.asarray(logits_fn(x)), axis=1) == y)[m]
        for x, m, y in split.batches(config.probe.batch_size)
    ]
    return float(np.mean(np.concatenate(correct)))


def supervised_from_scratch(
    config: ConfigDict, workdir: str, splits, mesh, *, allow_config_change: bool = False
) -> list[dict[str, Any]]:
    """The encoder trained with labels only, from its random init, on each label
    budget of the probe (one seeded balanced draw per budget, the same loop,
    steps and batch size as pretraining), scored by its own classifier: the
    curve a pretext task has to beat for self-supervision to pay off."""
    train_split, test_split = splits
    sup_config = supervised_config(config, train_split.num_classes)
    points = []
    for per_class, extra in _label_budgets(config, train_split):
        subset = train_split.subset(
            balanced_subset(train_split.labels, per_class, seed=config.seed)
        )
        arrays = {"image": subset.images, "label": subset.labels}
        run_dir = os.path.join(workdir, f"supervised_{per_class}_per_class")
        trained, summary = train.train(
            sup_config, run_dir, arrays, mesh, allow_config_change=allow_config_change
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


def run(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict[str, Any]:
    """The whole experiment, holding the workdir's lock throughout (see
    `train.train` for `allow_config_change`)."""
    config_lib.validate(config)
    workdir_lib.check_local(workdir, "--workdir")
    workdir_lib.check_local(config.data_dir, "config.data_dir")
    workdir_lib.check_local(config.dataset.partition(":")[2], "config.dataset")
    with workdir_lib.run_lock(workdir):
        return _run(config, workdir, allow_config_change)


def _warn_if_another_profile(config: ConfigDict) -> None:
    """A config's recipe follows the data it was made for (`:dataset=` picks
    it); `--config.dataset=` afterwards keeps that recipe: say so."""
    if not config.data_profile:
        return
    profile = config_lib.data_profile(config.dataset)
    if profile != config.data_profile:
        logging.getLogger(__name__).warning(
            "config.dataset %s is %s data, but the config's recipe (image size, encoder, "
            "optimizer) is its %s one; pass the dataset as the config option "
            "(--config=FILE:dataset=%s) to get its own recipe.",
            config.dataset,
            profile,
            config.data_profile,
            config.dataset,
        )


def _run(config: ConfigDict, workdir: str, allow_config_change: bool) -> dict[str, Any]:
    _warn_if_another_profile(config)
    mesh = pipeline.make_mesh()
    pipeline.check_batch_size(config.batch_size, mesh)
    pipeline.check_batch_size(config.probe.batch_size, mesh, field="probe.batch_size")
    started = time.time()

    train_split, test_split = load_splits(config.dataset, config)
    probe_splits = (
        load_splits(config.probe.dataset, config)
        if config.probe.dataset and config.probe.dataset != config.dataset
        else (train_split, test_split)
    )
    config = fill_from_dataset(config, train_split)
    data = training_data(config, train_split)

    evaluator = knn_evaluator(config, probe_splits, mesh)
    trained, summary = train.train(
        config, workdir, data, mesh, evaluator, allow_config_change=allow_config_change
    )
    results: dict[str, Any] = {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "probe_dataset": config.probe.dataset or config.dataset,
        "train_steps": config.train_steps,
        "num_classes": probe_splits[0].num_classes,
        "probe_train_size": len(probe_splits[0]),
        "final_loss": summary.get("final_loss", metrics.last_logged(workdir, "loss")),
        "state_fingerprint": summary["state_fingerprint"],
        "skipped_steps": summary["skipped_steps"],
        # Compile time, FLOPs and memory of the train step (absent if the run
        # had finished before: nothing was compiled).
        "step_perf": summary.get("step_perf"),
        "linear_probe": probe(
            trained,
            config,
            probe_splits,
            mesh,
            map_path=os.path.join(workdir, "embedding_pca.png"),
            title=f"{config.task} ({config.model}), {config.train_steps} steps",
        ),
    }
    if config.baselines.random_init:
        initial = train.split_task(train.build_task(config))
        results["random_init"] = {
            "linear_probe": probe(
                initial,
                config,
                probe_splits,
                mesh,
                map_path=os.path.join(workdir, "embedding_pca_random_init.png"),
                title=f"random init ({config.model})",
            )
        }
    if config.baselines.supervised:
        sup_config = supervised_config(config, train_split.num_classes)
        sup_workdir = os.path.join(workdir, "supervised")
        supervised, sup_summary = train.train(
            sup_config,
            sup_workdir,
            training_data(sup_config, train_split),
            mesh,
            evaluator,
            allow_config_change=allow_config_change,
        )
        results["supervised"] = {
            "final_loss": sup_summary.get("final_loss", metrics.last_logged(sup_workdir, "loss")),
            "state_fingerprint": sup_summary["state_fingerprint"],
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
    if config.baselines.supervised_few_labels:
        results["supervised_from_scratch"] = supervised_from_scratch(
            config, workdir, probe_splits, mesh, allow_config_change=allow_config_change
        )
    results["wall_seconds"] = round(time.time() - started, 1)
    if jax.process_index() == 0:
        rows = label_efficiency.curve_rows(results)
        label_efficiency.save_csv(rows, os.path.join(workdir, "label_efficiency.csv"))
        label_efficiency.save_plot(
            rows,
            os.path.join(workdir, "label_efficiency.png"),
            title=f"Label efficiency on {results['probe_dataset']} ({config.model})",
        )
        workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
        pictures = {
            name: os.path.join(workdir, f"{name}.png")
            for name in ("embedding_pca", "embedding_pca_random_init", "label_efficiency")
        }
        metrics.record_results(
            workdir,
            step=config.train_steps,
            config=config.to_dict(),
            results=results,
            pictures=pictures,
        )
        print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = [(f"{results['task']} (pretrained)", results["linear_probe"])]
    if "random_init" in results:
        rows.append(("random init", results["random_init"]["linear_probe"]))
    if "supervised" in results:
        rows.append(("supervised", results["supervised"]["linear_probe"]))
    few = [
        f"{f['fraction']:.0%}" if "fraction" in f else f"{f['per_class']}/class"
        for f in rows[0][1]["few_labels"]
    ]
    header = (
        f"Linear probe on {results['probe_dataset']} "
        f"({results['model']}, {results['train_steps']} steps); top-1"
    )
    columns = (
        f"{'encoder':<24}{'all labels':>12}{'top-5':>8}"
        + "".join(f"{c:>12}" for c in few)
        + f"{'kNN':>8}"
    )
    lines = [header, columns, "-" * len(columns)]
    for name, p in rows:
        cells = "".join(f"{f['top1']:>12.3f}" for f in p["few_labels"])
        lines.append(f"{name:<24}{p['top1']:>12.3f}{p['top5']:>8.3f}{cells}{p['knn_top1']:>8.3f}")
    if "supervised_from_scratch" in results:
        # A classifier trained on that many labels, not a probe: no top-5/kNN.
        all_labels = label_efficiency.from_scratch_all_labels_top1(results)
        cells = "".join(f"{f['top1']:>12.3f}" for f in results["supervised_from_scratch"])
        first = f"{all_labels:>12.3f}" if all_labels is not None else f"{'-':>12}"
        lines.append(f"{'supervised from scratch':<24}{first}{'-':>8}{cells}{'-':>8}")
    return "\n".join(lines)
