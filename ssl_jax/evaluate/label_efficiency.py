"""Label efficiency: probe accuracy against the number of labels per class.

The point of self-supervised pretraining is good accuracy from few labels.
Each run's few-label probes (`results.json`, `linear_probe.few_labels`) plus
its all-label probe make one curve per encoder; these helpers turn one or
several runs' results into a CSV table and a plot with one line per encoder.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

FROM_SCRATCH = "supervised from scratch"
ENCODERS = (
    ("linear_probe", "pretrained"),
    ("random_init", "random init"),
    ("supervised", "supervised (all labels)"),
)


def curve_rows(results: Mapping[str, Any], *, name: str | None = None) -> list[dict[str, Any]]:
    """One row per (encoder, label budget) of one run's results; the all-label
    probe sits at the mean number of labels per class of the probe's train split.

    `name` labels the pretrained encoder (default: the task's name), so that
    several runs can share one plot.
    """
    all_labels = round(results["probe_train_size"] / results["num_classes"], 1)
    rows = []
    for key, label in ENCODERS:
        probe = results.get(key)
        if probe is None:
            continue
        probe = probe if key == "linear_probe" else probe["linear_probe"]
        encoder = (name or results["task"]) if key == "linear_probe" else label
        if name and key != "linear_probe":
            encoder = f"{label}, {name}'s {results['model']}"
        for few in probe["few_labels"]:
            rows.append(
                {
                    "encoder": encoder,
                    "labels_per_class": few["per_class"],
                    "top1": few["top1"],
                    "top1_std": few.get("top1_std", 0.0),
                }
            )
        rows.append(
            {
                "encoder": encoder,
                "labels_per_class": all_labels,
                "top1": probe["top1"],
                "top1_std": 0.0,
            }
        )
    rows += _from_scratch_rows(results, name, all_labels)
    rows += _fine_tune_rows(results, name)
    return rows


FINE_TUNED, FINE_TUNE_SCRATCH = "fine-tuned", "same recipe from scratch"


def _fine_tune_rows(results: Mapping[str, Any], name: str | None) -> list[dict[str, Any]]:
    """The fine-tuning evaluator's curve (`results["fine_tune"]`), and its
    from-scratch twin when it ran: whole networks trained on that many labels."""
    fine_tune = results.get("fine_tune")
    if not fine_tune:
        return []
    suffix = f", {name}" if name else ""
    rows = []
    for point in fine_tune["points"]:
        for encoder, key in ((FINE_TUNED, "top1"), (FINE_TUNE_SCRATCH, "from_scratch_top1")):
            if key in point:
                rows.append(
                    {
                        "encoder": encoder + suffix,
                        "labels_per_class": point["per_class"],
                        "top1": point[key],
                        "top1_std": 0.0,
                    }
                )
    return rows


def from_scratch_all_labels_top1(results: Mapping[str, Any]) -> float | None:
    """The supervised-from-scratch curve's all-label point: the all-label
    supervised run's own classifier. That run trains and tests on the
    pretraining dataset, so it is the point only when the probe uses that too."""
    same_data = results.get("probe_dataset", results.get("dataset")) == results.get("dataset")
    return results.get("supervised", {}).get("top1") if same_data else None


def _from_scratch_rows(results: Mapping[str, Any], name: str | None, all_labels: float):
    """The encoder trained with labels only: its own classifier's top-1 at each
    budget, and with every label when the supervised baseline ran."""
    points = list(results.get("supervised_from_scratch", ()))
    if not points:
        return []
    all_labels_top1 = from_scratch_all_labels_top1(results)
    if all_labels_top1 is not None:
        points.append({"per_class": all_labels, "top1": all_labels_top1})
    encoder = FROM_SCRATCH + (f", {name}'s {results['model']}" if name else "")
    return [
        {"encoder": encoder, "labels_per_class": p["per_class"], "top1": p["top1"], "top1_std": 0.0}
        for p in points
    ]


def save_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["encoder", "labels_per_class", "top1", "top1_std"])
        writer.writeheader()
        writer.writerows(rows)


def save_plot(rows: list[dict[str, Any]], path: str, *, title: str) -> None:
    """Top-1 against labels per class (log scale), one line per encoder; the
    supervised-on-all-labels encoder is dashed: it saw every label while
    training, so it is a reference, not a few-label result. The supervised
    from-scratch line is dotted: a classifier trained end to end on that many
    labels, not a probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    # More than ten lines (a comparison of every method) would repeat the
    # default colours; random inits are grey and dotted, so no two lines look alike.
    colours = plt.get_cmap("tab20" if len(encoders) > 10 else "tab10").colors
    figure, axes = plt.subplots(figsize=(7, 4.5) if len(encoders) > 10 else (6, 4), dpi=120)
    for index, encoder in enumerate(encoders):
        points = sorted(
            (r["labels_per_class"], r["top1"], r["top1_std"])
            for r in rows
            if r["encoder"] == encoder
        )
        xs, ys, errors = zip(*points, strict=True)
        style = (
            ":"
            if encoder.startswith((FROM_SCRATCH, FINE_TUNE_SCRATCH))
            else "--"
            if encoder.startswith("supervised")
            else "-."
            if encoder.startswith(FINE_TUNED)
            else "-"
        )
        random_init = encoder.startswith("random init")
        colour = "0.45" if random_init and len(encoders) > 10 else colours[index % len(colours)]
        axes.errorbar(
            xs,
            ys,
            yerr=errors,
            marker="o",
            linestyle=":" if random_init and len(encoders) > 10 else style,
            color=colour,
            capsize=3,
            label=encoder,
        )
    axes.set_xscale("log")
    axes.set_xlabel("labelled examples per class")
    axes.set_ylabel("test top-1")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7 if len(encoders) > 10 else 8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
