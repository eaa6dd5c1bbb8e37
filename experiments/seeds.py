"""How much of a probe result is the seed? Runs one config for several seeds
and prints the mean and spread of every probe figure.

    python experiments/seeds.py --config=configs/rotation.py --workdir=runs/seeds --seeds=0,1,2

Each seed runs in `WORKDIR/seed_<n>` (resumable like any run); the summary is
printed and written to `WORKDIR/seeds.json`.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ssl_jax import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the per-seed runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
flags.mark_flags_as_required(["config", "workdir"])


def probe_figures(results: dict) -> dict[str, float]:
    """Flat {row/metric: value} of one run's probes."""
    rows = {"pretrained": results["linear_probe"]}
    rows.update(
        {k: results[k]["linear_probe"] for k in ("random_init", "supervised") if k in results}
    )
    figures = {}
    for row, probe in rows.items():
        figures[f"{row}/top1"] = probe["top1"]
        for few in probe["few_labels"]:
            figures[f"{row}/top1@{few['per_class']}per_class"] = few["top1"]
    return figures


def main(argv):
    del argv
    runs = []
    for seed in map(int, _SEEDS.value):
        config = _CONFIG.value.copy_and_resolve_references()
        config.seed = seed
        runs.append(
            probe_figures(experiment.run(config, os.path.join(_WORKDIR.value, f"seed_{seed}")))
        )
    summary = {
        name: {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
        for name in runs[0]
        for values in [[run[name] for run in runs]]
    }
    with open(os.path.join(_WORKDIR.value, "seeds.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n{len(runs)} seeds: {', '.join(_SEEDS.value)}")
    for name, s in summary.items():
        print(f"{name:<40} {s['mean']:.3f} ± {s['std']:.3f}")


if __name__ == "__main__":
    app.run(main)
