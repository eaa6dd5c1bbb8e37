"""One experiment: pretrain a task, probe its encoder, compare with baselines.

`run(config, workdir)` is what `python -m ssl_jax.main` does:
1. pretrain `config.task` with the shared loop (resuming if interrupted);
2. run every evaluator entry on the trained encoder (`ssl_jax/evaluators/`):
   those of `config.evals` (linear probe with few labels and kNN, transfer
   probes on other datasets, fine-tuning at label budgets), then the
   baselines `config.baselines` switches on (the probes at the random
   initialisation, the encoder trained with labels by the same loop, and
   trained from scratch on each label budget of the probe);
3. write `results.json` and print a table.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import config_lib, evaluators, inference, metrics, storage, train
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline, record_transforms, streaming
from ssl_jax.data.datasets import ImageDataset, load_dataset
from ssl_jax.evaluate import label_efficiency
from ssl_jax.evaluators.probes import knn_evaluator


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
            "max_bad_record_fraction": config.input.max_bad_record_fraction,
        }
        return tuple(streaming.StreamSplit(name, split, **kwargs) for split in ("train", "test"))
    kwargs = {"image_size": config.image_size, "data_dir": data_dir}
    return load_dataset(name, "train", **kwargs), load_dataset(name, "test", **kwargs)


def training_data(config: ConfigDict, train_split):
    """What the loop trains on: the in-memory arrays, or the streamed records
    cropped on the host as the task asks (`Task.host_crops`)."""
    if not isinstance(train_split, streaming.StreamSplit):
        # The dataset names its inputs' batch key: image, tokens, video.
        return pipeline.InMemory(
            {train_split.input_key: train_split.inputs, "label": train_split.labels}
        )
    crops = nnx.eval_shape(lambda: inference.build_task(config)).host_crops(config.image_size)
    if crops:
        transform = record_transforms.view_transform(crops)
    else:
        transform = record_transforms.center_transform(config.image_size)
    return streaming.StreamingSource(
        train_split.dataset,
        transform,
        image_size=config.image_size,
        num_workers=train_split.num_workers,
        on_bad_record=train_split.on_bad_record,
    )


def fill_from_dataset(config: ConfigDict, train_split: ImageDataset) -> ConfigDict:
    """Task settings the dataset decides: `task_kwargs.num_classes = None`
    (e.g. SimCLR's online probe) becomes the dataset's class count."""
    if "num_classes" not in config.task_kwargs or config.task_kwargs.num_classes is not None:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.task_kwargs.num_classes = train_split.num_classes
    return config


def run(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict[str, Any]:
    """The whole experiment, holding the workdir's lock throughout (see
    `train.train` for `allow_config_change`)."""
    config_lib.validate(config)
    check_paths(config, workdir)
    with workdir_lib.run_lock(workdir):
        return _run(config, workdir, allow_config_change)


# Datasets named by a path whose readers open local files only.
_LOCAL_ONLY_DATASETS = ("imagefolder", "arrayrecord", "audiofolder", "audiorecords")


def check_paths(config: ConfigDict, workdir: str) -> None:
    """One line, before anything runs, for a URL this machine cannot use: a
    missing filesystem package, a workdir orbax cannot checkpoint into, data
    whose reader opens local files only."""
    from ssl_jax.checkpoint import CheckpointError, orbax_directory

    workdir_lib.check_path(workdir, "--workdir")
    try:
        orbax_directory(workdir)
    except CheckpointError as error:
        raise workdir_lib.WorkdirError(str(error)) from None
    workdir_lib.check_path(config.data_dir, "--config.data_dir")
    kind, _, path = config.dataset.partition(":")
    # An absolute local path ignores data_dir; a relative one lies under it.
    relative = path and not os.path.isabs(path)
    where = path if storage.is_url(path) else config.data_dir if relative else ""
    if kind in _LOCAL_ONLY_DATASETS and storage.is_url(where):
        raise workdir_lib.WorkdirError(
            f"--config.dataset={config.dataset} (data_dir {config.data_dir or 'unset'}): "
            f"{kind} data is read from local files only; mount the bucket (e.g. gcsfuse) and "
            "pass its local path."
        )


def _warn_if_another_profile(config: ConfigDict) -> None:
    """A config's recipe follows the data it was made for (`:dataset=` picks
    it); `--config.dataset=` afterwards keeps that recipe: say so."""
    if not config.data_profile:
        return
    from ssl_jax.data.datasets import native_size

    kind = config.dataset.partition(":")[0]
    if (
        kind not in ("synthetic", "tfds")
        and native_size(config.dataset, config.data_dir or None) is None
    ):
        # No image to measure (an empty or missing folder): loading the data
        # says what is wrong; a guessed profile here would only mislead.
        return
    profile = config_lib.data_profile(config.dataset, config.data_dir)
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
    chosen = evaluators.check(config, num_devices=mesh.size)
    pipeline.check_batch_size(config.batch_size, mesh)
    pipeline.check_batch_size(config.probe.batch_size, mesh, field="probe.batch_size")
    started = time.time()

    loaded = {config.dataset: load_splits(config.dataset, config)}

    def splits(name: str):
        """A dataset's (train, test) splits, loaded once."""
        if name not in loaded:
            loaded[name] = load_splits(name, config)
        return loaded[name]

    train_split = splits(config.dataset)[0]
    probe_splits = splits(config.probe.dataset or config.dataset)
    config = fill_from_dataset(config, train_split)
    evaluators.check_data(config, splits)
    data = training_data(config, train_split)

    trained, summary = train.train(
        config,
        workdir,
        data,
        mesh,
        knn_evaluator(config, probe_splits, mesh),
        allow_config_change=allow_config_change,
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
        # Unreadable records replaced by others (input.on_bad_record=skip).
        "skipped_examples": summary["skipped_examples"],
        # Compile time, FLOPs and memory of the train step (absent if the run
        # had finished before: nothing was compiled).
        "step_perf": summary.get("step_perf"),
    }
    context = evaluators.Context(
        config, workdir, mesh, trained, splits, allow_config_change, training_data
    )
    for evaluator in chosen:
        results[evaluator.name] = evaluator.run(context)
    results["wall_seconds"] = round(time.time() - started, 1)
    if jax.process_index() == 0:
        rows = label_efficiency.curve_rows(results)
        with storage.staged(storage.join(workdir, "label_efficiency.csv")) as path:
            label_efficiency.save_csv(rows, path)
        if config.save_plots:
            with storage.staged(storage.join(workdir, "label_efficiency.png")) as path:
                label_efficiency.save_plot(
                    rows,
                    path,
                    title=f"Label efficiency on {results['probe_dataset']} ({config.model})",
                )
        workdir_lib.write_json(storage.join(workdir, "results.json"), results)
        pictures = {
            name: storage.join(workdir, f"{name}.png")
            for name in ("embedding_pca", "embedding_pca_random_init", "label_efficiency")
            # Without save_plots, PNGs left by an earlier evaluation of this
            # workdir are not this one's pictures.
            if config.save_plots
        }
        if config.save_plots:
            for evaluator in chosen:
                pictures.update(evaluator.pictures(workdir))
        # TensorBoard: the run's facts under run/ (not train/: the loop's
        # per-interval rows are there, and skipped_steps would mean two
        # things), each evaluator's under its own prefix (eval/<name>/).
        names = {evaluator.name for evaluator in chosen}
        sections = {"run": {k: v for k, v in results.items() if k not in names}}
        sections.update({evaluator.log_prefix: results[evaluator.name] for evaluator in chosen})
        metrics.record_results(
            workdir,
            step=config.train_steps,
            config=config.to_dict(),
            sections=sections,
            pictures=pictures,
        )
        print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = []
    if "linear_probe" in results:  # config.evals may leave it out
        rows.append((f"{results['task']} (pretrained)", results["linear_probe"]))
    if "random_init" in results:
        rows.append(("random init", results["random_init"]["linear_probe"]))
    if "supervised" in results:
        rows.append(("supervised", results["supervised"]["linear_probe"]))
    for name, entry in results.items():
        if isinstance(entry, dict) and entry.get("baseline") == "bag_of_tokens":
            rows.append((f"{name} (no network)", entry))
    few = [
        f"{f['fraction']:.0%}" if "fraction" in f else f"{f['per_class']}/class"
        for f in (rows[0][1]["few_labels"] if rows else ())
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
    for name, entry in results.items():
        if isinstance(entry, dict) and "top1" in entry and "few_labels" in entry:
            if name != "linear_probe" and "baseline" not in entry:  # a transfer
                line = f"{name} ({entry.get('dataset', '')}): top-1 {entry['top1']:.3f}"
                baseline = results.get("random_init", {}).get(name)
                if baseline:
                    line += f" (random init {baseline['top1']:.3f})"
                lines.append(line)
    for name, entry in results.items():
        if isinstance(entry, dict) and "miou" in entry:  # a segmentation probe
            line = (
                f"{name} ({entry['dataset']}): mIoU {entry['miou']:.3f}, "
                f"pixel accuracy {entry['pixel_accuracy']:.3f}"
            )
            baseline = results.get("random_init", {}).get(name)
            if baseline:
                line += f" (random init {baseline['miou']:.3f} / {baseline['pixel_accuracy']:.3f})"
            lines.append(line)
    if "fine_tune" in results:
        lines.append(_format_fine_tune(results["fine_tune"]))
    return "\n".join(lines)


def _format_fine_tune(fine_tune: dict[str, Any]) -> str:
    points = fine_tune["points"]
    labels = [
        f"{p['fraction']:.0%}" if "fraction" in p else f"{p['per_class']}/class" for p in points
    ]
    lines = [
        f"Fine-tuned on {fine_tune['dataset']} ({fine_tune['steps']} steps); top-1",
        f"{'encoder':<24}" + "".join(f"{c:>12}" for c in labels),
        f"{'pretrained':<24}" + "".join(f"{p['top1']:>12.3f}" for p in points),
    ]
    if all("from_scratch_top1" in p for p in points):
        lines.append(
            f"{'from scratch':<24}" + "".join(f"{p['from_scratch_top1']:>12.3f}" for p in points)
        )
    return "\n".join(lines)
