"""Sweeps as data: lists of config overrides, built by small combinators.

A config file may define `sweep(arg)` next to `get_config(arg)`, returning a
list of override dicts; `experiments/sweep.py` runs one experiment per dict.

    def sweep(arg=None):
        return sweeps.product(
            sweeps.grid(**{"optimizer.learning_rate": [0.05, 0.1, 0.2]}),
            sweeps.grid(seed=[0, 1, 2]),
        )

`grid` varies its axes together as a Cartesian product, `zipped` varies them
in lockstep, `product` crosses sweeps and `chain` concatenates them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

Overrides = dict[str, Any]


def grid(**axes: Sequence[Any]) -> list[Overrides]:
    """Every combination of the axes' values."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def zipped(**axes: Sequence[Any]) -> list[Overrides]:
    """The i-th value of every axis together; all axes must be equally long."""
    lengths = {len(values) for values in axes.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"zipped sweep axes differ in length: { {k: len(v) for k, v in axes.items()} }"
        )
    return [dict(zip(axes, values, strict=True)) for values in zip(*axes.values(), strict=True)]


def product(*sweeps: list[Overrides]) -> list[Overrides]:
    """Every combination of one entry from each sweep."""
    combined = []
    for parts in itertools.product(*sweeps):
        merged: Overrides = {}
        for part in parts:
            clash = merged.keys() & part.keys()
            if clash:
                raise ValueError(f"sweeps set the same field twice: {sorted(clash)}")
            merged.update(part)
        combined.append(merged)
    return combined


def chain(*sweeps: list[Overrides]) -> list[Overrides]:
    return [overrides for sweep in sweeps for overrides in sweep]


def format_value(value: Any) -> str:
    """A value as `--config.field=` accepts it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return (
            "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        )
    return str(value)


def run_name(overrides: Overrides) -> str:
    """A readable directory name for one run, e.g. `optimizer.learning_rate=0.1,seed=2`."""
    if not overrides:
        return "base"
    text = ",".join(f"{k}={format_value(v)}" for k, v in sorted(overrides.items()))
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
