"""ssl_jax against an independent PyTorch peer, config by config.

    python experiments/peers/compare.py --workdir=runs/peers \
        --configs=configs/byol.py,configs/simsiam.py \
        --arg=dataset=imagefolder:$DATA/cifar10_dev,encoder=convnet \
        --set=train_steps=500 --set=batch_size=128

For each config (name: its file's stem) this
(a) runs the project, `python -m ssl_jax.main --config=CONFIG:ARG
    --workdir=WORKDIR/<name>/ssl_jax --config.X=...` (one `--config.X` per
    `--set`), unless WORKDIR/<name>/ssl_jax/results.json exists;
(b) trains the peer (`experiments/peers/train.py`: lightly + PyTorch, the same
    recipe read from the same config, probed by ssl_jax's own probe) into
    WORKDIR/<name>/peer, unless its results.json exists;
(c) prints and writes WORKDIR/peers.md: per method, the project's and the
    peer's probe top-1 with all labels and with 10 labels per class (or the
    config's first few-label budget), the same for the encoder at its random
    initialisation, kNN, final loss, wall time and images/s.
Runs are subprocesses, one after another (never in parallel), each logging to
its workdir's launch_log.txt. `--only=project` or `--only=peer` runs one side
(the table shows what exists); `--bn=joint` makes the peers' two-view
methods normalise both views together instead of per view. A project side
that disagrees with its peer beyond the seed-to-seed spread points at
ssl_jax; both failing the same way points at the recipe or the budget.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import json
from typing import Any

import numpy as np
from absl import app, flags

from ssl_jax import launch, metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs and the report.")
_CONFIGS = flags.DEFINE_list(
    "configs", None, "Config files, e.g. configs/byol.py,configs/vicreg.py."
)
_ARG = flags.DEFINE_string("arg", "", "The get_config argument of every config.")
_SET = flags.DEFINE_multi_string("set", [], "field=value applied to both sides of every run.")
_ONLY = flags.DEFINE_enum("only", None, ["peer", "project"], "Run one side only.")
_BN = flags.DEFINE_enum(
    "bn", "per_view", ["per_view", "joint"], "The peers' batch norm over the two views."
)
_SCRATCH = flags.DEFINE_string(
    "scratch",
    "",
    "A run directory whose results.json holds supervised_from_scratch (baselines."
    "supervised_few_labels): its 10-per-class top-1 joins the summary.",
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write the report of existing runs only.")
flags.mark_flags_as_required(["workdir", "configs"])

_TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def peer_command(config: str, workdir: str) -> list[str]:
    return [
        sys.executable,
        _TRAIN,
        f"--config={config}",
        f"--arg={_ARG.value}",
        f"--workdir={workdir}",
        f"--bn={_BN.value}",
        *[f"--set={item}" for item in _SET.value],
    ]


def _read(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _few(probe: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """(labels per class, top-1) of the 10-per-class probe, else the first one."""
    few = (probe or {}).get("few_labels") or []
    chosen = next((f for f in few if f.get("per_class") == 10), few[0] if few else None)
    return (chosen["per_class"], chosen["top1"]) if chosen else (None, None)


def row(side: str, results: dict[str, Any] | None, images_per_sec: float | None) -> dict:
    if results is None:
        return {"side": side, "status": "not run"}
    probe = results.get("linear_probe", {})
    random_probe = results.get("random_init", {}).get("linear_probe")
    per_class, few = _few(probe)
    _, random_few = _few(random_probe)
    return {
        "side": side,
        "top1": probe.get("top1"),
        "few-label top1": few,
        "labels/class": per_class,
        "kNN": probe.get("knn_top1"),
        "random init top1": (random_probe or {}).get("top1"),
        "random init few-label": random_few,
        "final loss": results.get("final_loss"),
        "wall s": results.get("wall_seconds"),
        "images/s": images_per_sec,
        "status": "done",
    }


def project_images_per_sec(run_dir: str) -> float | None:
    """The median of the project's logged images/s (metrics.jsonl)."""
    records = metrics.read_records(os.path.join(run_dir, metrics.METRICS_FILE))
    values = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    return float(np.median(values)) if values else None


COLUMNS = [
    "side",
    "top1",
    "few-label top1",
    "labels/class",
    "kNN",
    "random init top1",
    "random init few-label",
    "final loss",
    "wall s",
    "images/s",
    "status",
]


def _scratch_top1(run_dir: str, per_class: int = 10) -> float | None:
    results = _read(os.path.join(run_dir, "results.json")) if run_dir else None
    points = (results or {}).get("supervised_from_scratch") or []
    return next((p["top1"] for p in points if p.get("per_class") == per_class), None)


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def summary(names_and_dirs: list[tuple[str, str]], scratch: float | None) -> str:
    """One row per method: the project and its peer with all labels and 10
    per class, each next to its own random init, and the verdicts the
    evidence asks for (gain over random init; distance to the peer; above
    supervised training from scratch at 10 labels per class)."""
    rows = []
    for name, method_dir in names_and_dirs:
        sides = {}
        for side in ("ssl_jax", "peer"):
            results = _read(os.path.join(method_dir, side, "results.json"))
            if results is None:
                continue
            probe = results["linear_probe"]
            random_probe = results.get("random_init", {}).get("linear_probe", {})
            sides[side] = (
                probe["top1"],
                _few(probe)[1],
                random_probe.get("top1"),
                _few(random_probe)[1],
                results.get("wall_seconds"),
            )
        if "ssl_jax" not in sides:
            rows.append({"method": name, "ssl_jax all / 10": "not run"})
            continue
        top1, few, rand, rand_few, wall = sides["ssl_jax"]
        peer = sides.get("peer")
        fmt = lambda a, b: f"{a:.3f} / {b:.3f}" if a is not None and b is not None else "-"
        rows.append(
            {
                "method": name,
                "ssl_jax all / 10": fmt(top1, few),
                "random init": fmt(rand, rand_few),
                "gain (points)": f"{_points(top1 - rand)} / {_points(few - rand_few)}",
                "peer all / 10": fmt(*peer[:2]) if peer else "-",
                "peer random init": fmt(*peer[2:4]) if peer else "-",
                "peer gain": f"{_points(peer[0] - peer[2])} / {_points(peer[1] - peer[3])}"
                if peer
                else "-",
                "ssl_jax - peer": _points(top1 - peer[0]) if peer else "-",
                "10/class vs scratch": _points(few - scratch) if scratch is not None else "-",
                "wall min (ssl_jax, peer)": f"{wall / 60:.1f}, {peer[4] / 60:.1f}"
                if peer
                else f"{wall / 60:.1f}",
            }
        )
    head = (
        f"Supervised from scratch at 10 labels per class: {scratch:.3f}\n\n"
        if scratch is not None
        else ""
    )
    return "## Summary\n\n" + head + launch.markdown_table(rows, list(rows[0])) + "\n"


def report(names_and_dirs: list[tuple[str, str]], scratch_dir: str = "") -> str:
    sections = [summary(names_and_dirs, _scratch_top1(scratch_dir))]
    for name, method_dir in names_and_dirs:
        project_dir, peer_dir = (os.path.join(method_dir, s) for s in ("ssl_jax", "peer"))
        project = _read(os.path.join(project_dir, "results.json"))
        peer = _read(os.path.join(peer_dir, "results.json"))
        rows = [
            row("ssl_jax", project, project_images_per_sec(project_dir)),
            row("peer (torch + lightly)", peer, (peer or {}).get("images_per_sec")),
        ]
        sections.append(f"## {name}\n\n" + launch.markdown_table(rows, COLUMNS))
    return "\n".join(sections)


def main(argv: list[str]) -> None:
    del argv
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    status: dict[str, str] = {}
    names_and_dirs = []
    for config in _CONFIGS.value:
        name = os.path.splitext(os.path.basename(config))[0]
        method_dir = os.path.join(workdir, name)
        names_and_dirs.append((name, method_dir))
        spec = f"{config}:{_ARG.value}" if _ARG.value else config
        if _REPORT_ONLY.value:
            continue
        runs = []
        if _ONLY.value != "peer":
            project_dir = os.path.join(method_dir, "ssl_jax")
            runs.append((project_dir, launch.main_command(spec, project_dir, {}, _SET.value)))
        if _ONLY.value != "project":
            peer_dir = os.path.join(method_dir, "peer")
            runs.append((peer_dir, peer_command(config, peer_dir)))
        status.update(launch.run_pending(runs, parallel=1))
    text = report(names_and_dirs, _SCRATCH.value)
    with open(os.path.join(workdir, "peers.md"), "w") as f:
        f.write(text)
    print(text)
    if any(s.startswith("failed") for s in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
