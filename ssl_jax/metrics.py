"""Where a run reports: `metrics.jsonl`, TensorBoard event files and a progress bar.

TensorBoard files are written with tensorboardX, which needs no TensorFlow.
Only process 0 writes, so multi-host runs do not race on the same files.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

import jax
from tqdm import tqdm


def _is_writer() -> bool:
    return jax.process_index() == 0


class MetricWriter:
    def __init__(self, workdir: str, *, total_steps: int, start_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tensorboard = None
        self._bar = None
        if not _is_writer():
            return
        os.makedirs(workdir, exist_ok=True)
        self._drop_entries_after(start_step)
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )

    def _drop_entries_after(self, step: int) -> None:
        """A resumed run repeats the steps after its last checkpoint; drop
        their old lines so `metrics.jsonl` holds each step once."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not _is_writer():
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, float(value), int(step))
        postfix = {"loss": f"{record.get('loss', float('nan')):.4f}"}
        if "images_per_sec" in record:
            postfix["img/s"] = f"{record['images_per_sec']:.0f}"
        if "mfu" in record:
            postfix["mfu"] = f"{record['mfu']:.1%}"
        self._bar.set_postfix(postfix, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
