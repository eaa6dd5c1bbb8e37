"""The pretext-task comparison: every task, one dataset, one encoder.

    python experiments/compare.py --workdir=runs/compare_vit --arg=encoder=vit

trains each config in `--configs` (default: every image config in `configs/`;
the text and video configs, which declare `MODALITY`, are left out) with the
`--arg` option (`encoder=vit`: the same ViT for every task; without it each
config uses its own default encoder, and MAE always needs a ViT) and the
`--set` overrides applied to all of them, probes each run's encoder at its
random initialisation too, trains the supervised baseline with the encoder of
the first config (or of every config, `--supervised=all`), on all labels and
from scratch on each label budget of the probe, and writes to WORKDIR:
- `comparison.csv`, `comparison.md`: probe top-1/top-5 with all labels, the
  few-label probes, kNN, final loss and wall time per encoder;
- `comparison.png`: a bar chart of the all-label and fewest-label probes;
- `label_efficiency.csv`, `label_efficiency.png`: one curve per encoder.
Finished runs are skipped and interrupted ones resume, like a sweep.

The launch flags are the sweep's: `--dry_run` prints the commands and runs
nothing; `--slurm` submits the runs as a SLURM job array (one run per task,
`--parallel` at a time, `--slurm_partition`, `--slurm_time`, `--slurm_gpus`,
`--slurm_cpus`, `--slurm_mem`, `--slurm_account`, `--slurm_extra` as #SBATCH
lines; with `--dry_run` it prints the script), and once the array has
finished the same command with `--gather` writes the report from the
finished runs without launching anything:

    python experiments/compare.py --workdir=runs/compare_vit --arg=encoder=vit \\
        --slurm --parallel=3 --slurm_gpus=1 --slurm_time=1:00:00
    python experiments/compare.py --workdir=runs/compare_vit --arg=encoder=vit --gather
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import sys
from typing import Any

from absl import app, flags

from ssl_jax import launch
from ssl_jax.evaluate import label_efficiency

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs and the report.")
_CONFIGS = flags.DEFINE_list(
    "configs", None, "Config files (default: the image configs in configs/)."
)
_ARG = flags.DEFINE_string("arg", "", "The get_config argument for every config, e.g. runlocal.")
_SET = flags.DEFINE_multi_string("set", [], "field=value applied to every run.")
_SUPERVISED = flags.DEFINE_enum(
    "supervised",
    "first",
    ["first", "all", "none"],
    "Which configs' encoders get the supervised baseline.",
)
launch.define_flags()  # --parallel, --dry_run, --slurm, --slurm_*, --gather
flags.adopt_module_key_flags(launch)  # ... listed by --help, not only --helpfull
flags.mark_flags_as_required(["workdir"])


def default_configs(directory: str = "configs") -> list[str]:
    """The image configs in `directory`. A config of another modality says so
    (`MODALITY = "text"` in mlm.py, "video" in frames.py): its encoder and
    data fit neither `--arg=encoder=vit` nor an image table."""
    configs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(f"compare_config_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if getattr(module, "MODALITY", "image") == "image":
            configs.append(path)
    return configs


def _rows(name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one run: its task, and the baselines of its encoder."""
    entries = [(name, results["linear_probe"], results)]
    for key in ("random_init", "supervised"):
        if key in results:
            label = f"{key.replace('_', ' ')} ({name}'s {results['model']})"
            entries.append((label, results[key]["linear_probe"], results[key]))
    rows = []
    for label, probe, source in entries:
        row = {
            "encoder": label,
            "top1": probe["top1"],
            "top5": probe["top5"],
            "knn_top1": probe.get("knn_top1"),
            "final_loss": source.get("final_loss"),
            "wall_seconds": source.get("wall_seconds"),
        }
        for few in probe["few_labels"]:
            row[f"top1@{few['per_class']}/class"] = few["top1"]
        rows.append(row)
    if "supervised_from_scratch" in results:
        # Its own classifier trained on that many labels, not a probe: no top-5/kNN.
        row = {
            "encoder": f"supervised from scratch ({name}'s {results['model']})",
            "top1": label_efficiency.from_scratch_all_labels_top1(results),
        }
        for point in results["supervised_from_scratch"]:
            row[f"top1@{point['per_class']}/class"] = point["top1"]
        rows.append(row)
    return rows


def _bar_chart(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    few_columns = sorted(
        (c for c in rows[0] if c.startswith("top1@")), key=lambda c: int(c[5:].split("/")[0])
    )
    columns = ["top1", *few_columns[:1]]
    names = [r["encoder"] for r in rows]
    x = np.arange(len(names))
    width = 0.8 / len(columns)
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(names), 4), dpi=120)
    for i, column in enumerate(columns):
        values = [r.get(column) or 0.0 for r in rows]
        bars = axes.bar(
            x + (i - (len(columns) - 1) / 2) * width,
            values,
            width,
            label="all labels" if column == "top1" else column[5:],
        )
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(x, names, rotation=15)
    axes.set_ylabel("linear probe top-1")
    axes.set_ylim(0, 1.05)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    configs = _CONFIGS.value or default_configs()
    workdir = _WORKDIR.value
    runs = []
    for i, config in enumerate(configs):
        name = os.path.splitext(os.path.basename(config))[0]
        supervised = _SUPERVISED.value == "all" or (_SUPERVISED.value == "first" and i == 0)
        baselines = [
            "baselines.random_init=true",
            f"baselines.supervised={str(supervised).lower()}",
            f"baselines.supervised_few_labels={str(supervised).lower()}",
        ]
        spec = f"{config}:{_ARG.value}" if _ARG.value else config
        run_dir = os.path.join(workdir, name)
        runs.append(
            (name, run_dir, launch.main_command(spec, run_dir, {}, [*_SET.value, *baselines]))
        )
    status = launch.start([(d, c) for _, d, c in runs], workdir)
    if status is None:  # a dry run, or an array submitted to SLURM
        return

    table, curves, dataset, models = [], [], "", set()
    random_inits = set()
    for name, run_dir, _ in runs:
        path = os.path.join(run_dir, "results.json")
        if not os.path.exists(path):
            print(f"{name}: {status[run_dir]}", file=sys.stderr)
            continue
        with open(path) as f:
            results = json.load(f)
        if "random_init" in results:
            # Tasks sharing an encoder and seed share its random init: one row.
            probe = json.dumps(results["random_init"], sort_keys=True)
            if probe in random_inits:
                del results["random_init"]
            random_inits.add(probe)
        table += _rows(name, results)
        dataset = results["probe_dataset"]
        models.add(results["model"])
        curves += label_efficiency.curve_rows(results, name=name)
    if not table:
        sys.exit("compare: no run finished; see the launch_log.txt files.")
    columns = list(dict.fromkeys(c for row in table for c in row))
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(launch.markdown_table(table, columns))
    with open(os.path.join(workdir, "comparison.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(table)
    title = f"{dataset}, " + (models.pop() if len(models) == 1 else "each task's own encoder")
    _bar_chart(table, os.path.join(workdir, "comparison.png"), title)
    label_efficiency.save_csv(curves, os.path.join(workdir, "label_efficiency.csv"))
    label_efficiency.save_plot(
        curves, os.path.join(workdir, "label_efficiency.png"), title=f"Label efficiency, {title}"
    )
    print(launch.markdown_table(table, columns))
    if any(s.startswith("failed") for s in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
