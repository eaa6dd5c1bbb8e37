"""Run a sweep defined in a config file, then summarise and plot it.

    python experiments/sweep.py --config=configs/rotation.py --workdir=runs/rot_sweep
    python experiments/sweep.py --config=configs/rotation.py:runlocal \\
        --workdir=/tmp/sweep --parallel=2 --set=train_steps=20
    python experiments/sweep.py ... --dry_run        # print the commands only

The config file's `sweep(arg)` (or `--sweep_file`'s) returns a list of
override dicts (see `ssl_jax/sweeps.py`). Each becomes one
`python -m ssl_jax.main` run in `WORKDIR/<overrides>`, as its own process.
Finished runs (a `results.json`) are skipped and interrupted ones resume, so
rerunning the same command does no repeated work. Then `summary.csv`,
`summary.md` and `sweep_<metric>.png` are written to WORKDIR.

On a SLURM cluster, `--slurm` submits the runs as one job array instead (one
run per array task, `--parallel` tasks at a time), with the `--slurm_*`
options as #SBATCH lines; the script is kept in WORKDIR/slurm/array.sh, its
logs beside it. When the array has finished, the same command with `--gather`
writes the summary and the plot from the finished runs, launching nothing:

    python experiments/sweep.py --config=configs/rotation.py --workdir=runs/rot_sweep \\
        --slurm --parallel=4 --slurm_partition=gpu --slurm_gpus=1 --slurm_time=2:00:00
    python experiments/sweep.py ... --slurm --dry_run    # print the batch script only
    python experiments/sweep.py ... --gather             # after the array: summarise
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from typing import Any

from absl import app, flags

from ssl_jax import launch, sweeps

_CONFIG = flags.DEFINE_string(
    "config", None, "Config file and argument, e.g. configs/rotation.py:runlocal."
)
_SWEEP_FILE = flags.DEFINE_string(
    "sweep_file", None, "File with sweep(arg); default: the config file."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
_SET = flags.DEFINE_multi_string(
    "set", [], "field=value applied to every run, e.g. train_steps=50."
)
_METRIC = flags.DEFINE_string("metric", "linear_probe.top1", "results.json field to plot.")
launch.define_flags()  # --parallel, --dry_run, --slurm, --slurm_*, --gather
flags.adopt_module_key_flags(launch)  # ... listed by --help, not only --helpfull
flags.mark_flags_as_required(["config", "workdir"])


def load_sweep(path: str, arg: str | None) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("sweep_module", path)
    if spec is None or not os.path.exists(path):
        raise SystemExit(f"sweep: no such file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "sweep"):
        raise SystemExit(
            f"sweep: {path} defines no sweep(arg) function; add one or pass --sweep_file."
        )
    return module.sweep(arg)


def summarise(workdir: str, table: list[dict[str, Any]], fields: list[str], metric: str) -> None:
    columns = [
        "run",
        *fields,
        "status",
        "final_loss",
        "linear_probe.top1",
        "knn_top1",
        metric,
        "wall_seconds",
    ]
    columns = list(dict.fromkeys(columns))  # the metric may already be listed
    with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    text = launch.markdown_table(table, columns)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def plot(workdir: str, table: list[dict[str, Any]], fields: list[str], metric: str) -> str | None:
    """The metric against the first swept field that is not the seed; one line
    per value of the other fields, mean and spread over seeds."""
    axes = [f for f in fields if f != "seed" and len({str(r[f]) for r in table}) > 1]
    rows = [r for r in table if isinstance(r.get(metric), (int, float))]
    if not axes or not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x_field, others = axes[0], axes[1:]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row[f]) for f in others), []).append(row)
    for key, members in sorted(groups.items()):
        xs = sorted({m[x_field] for m in members}, key=lambda v: (str(type(v)), v))
        values = [[m[metric] for m in members if m[x_field] == x] for x in xs]
        means, spreads = [np.mean(v) for v in values], [np.std(v) for v in values]
        label = ", ".join(f"{f}={k}" for f, k in zip(others, key, strict=True)) or None
        positions = xs if all(isinstance(x, (int, float)) for x in xs) else range(len(xs))
        axis.errorbar(positions, means, yerr=spreads, marker="o", capsize=3, label=label)
        if positions is not xs:
            axis.set_xticks(list(positions), [str(x) for x in xs])
    axis.set_xlabel(x_field)
    axis.set_ylabel(metric)
    if len(groups) > 1:
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = os.path.join(workdir, f"sweep_{metric.replace('.', '_')}.png")
    figure.savefig(path)
    plt.close(figure)
    return path


def main(argv: list[str]) -> None:
    del argv
    config_path, _, arg = _CONFIG.value.partition(":")
    overrides = load_sweep(_SWEEP_FILE.value or config_path, arg or None)
    fields = list(dict.fromkeys(k for o in overrides for k in o))
    runs = [(os.path.join(_WORKDIR.value, sweeps.run_name(o)), o) for o in overrides]
    if len({run_dir for run_dir, _ in runs}) != len(runs):
        raise SystemExit("sweep: two runs have the same overrides; make every entry distinct.")
    commands = [
        (run_dir, launch.main_command(_CONFIG.value, run_dir, o, _SET.value)) for run_dir, o in runs
    ]
    status = launch.start(commands, _WORKDIR.value)
    if status is None:  # a dry run, or an array submitted to SLURM
        return

    table = []
    for run_dir, o in runs:
        path = os.path.join(run_dir, "results.json")
        results = json.load(open(path)) if os.path.exists(path) else {}
        table.append(
            {
                "run": os.path.basename(run_dir),
                **o,
                "status": status[run_dir],
                "final_loss": results.get("final_loss"),
                "linear_probe.top1": launch.lookup(results, "linear_probe.top1"),
                "knn_top1": launch.lookup(results, "linear_probe.knn_top1"),
                _METRIC.value: launch.lookup(results, _METRIC.value),
                "wall_seconds": results.get("wall_seconds"),
            }
        )
    summarise(_WORKDIR.value, table, fields, _METRIC.value)
    figure = plot(_WORKDIR.value, table, fields, _METRIC.value)
    if figure:
        print(f"plot: {figure}")
    if any(s.startswith("failed") for s in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
