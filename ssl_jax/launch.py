"""Launching many runs of `python -m ssl_jax.main` as separate processes.

Shared by the experiment scripts (`experiments/sweep.py`,
`experiments/compare.py`). A run whose workdir holds `results.json` is
finished and skipped; any other is (re)started, and `main` resumes it from
its last checkpoint, so relaunching a whole study repeats no work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ssl_jax import sweeps


def main_command(
    config: str, workdir: str, overrides: Mapping[str, Any] = {}, common: Sequence[str] = ()
) -> list[str]:
    """The command line of one run; `common` items are `field=value` strings."""
    return [
        sys.executable,
        "-m",
        "ssl_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *[f"--config.{item}" for item in common],
        *[f"--config.{k}={sweeps.format_value(v)}" for k, v in overrides.items()],
    ]


def run_pending(runs: Sequence[tuple[str, list[str]]], parallel: int = 1) -> dict[str, str]:
    """Runs the unfinished `(workdir, command)` pairs, `parallel` at a time, each
    logging to `workdir/launch_log.txt`. Returns a status per workdir."""
    status: dict[str, str] = {}
    pending = []
    for workdir, command in runs:
        if os.path.exists(os.path.join(workdir, "results.json")):
            status[workdir] = "done before"
            print(f"skip (finished): {workdir}", flush=True)
        else:
            pending.append((workdir, command))
    active: list[tuple[str, subprocess.Popen, Any, float]] = []
    while pending or active:
        while pending and len(active) < max(parallel, 1):
            workdir, command = pending.pop(0)
            os.makedirs(workdir, exist_ok=True)
            log = open(os.path.join(workdir, "launch_log.txt"), "a")  # noqa: SIM115
            print(f"start: {workdir}", flush=True)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            active.append((workdir, process, log, time.time()))
        time.sleep(0.2)
        for entry in list(active):
            workdir, process, log, started = entry
            if process.poll() is None:
                continue
            log.close()
            active.remove(entry)
            ok = process.returncode == 0
            status[workdir] = (
                "ran" if ok else f"failed (exit {process.returncode}, see launch_log.txt)"
            )
            print(
                f"{'done' if ok else 'FAILED'} in {time.time() - started:.0f}s: {workdir}",
                flush=True,
            )
    return status


def lookup(results: Mapping[str, Any], dotted: str) -> Any:
    """`results["a"]["b"]` for `"a.b"`; None where a key is missing."""
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
