"""Evaluators of a trained encoder, chosen by the config (as big_vision's
`config.evals`): each entry of `config.evals` names a `type` registered in
this package and its own arguments, and its figures land in `results.json`
under the entry's name (and in TensorBoard under `eval/<name>/`).

    config.evals.linear_probe = {"type": "linear_probe"}            # probe, few labels, kNN
    config.evals.transfer = {"type": "linear_probe", "dataset": "tfds:stl10"}
    config.evals.fine_tune = {"type": "fine_tune", "label_fractions": (0.01, 0.1, 1.0), ...}
    config.evals.bag_of_bytes = {"type": "bag_of_tokens"}            # text: the no-network baseline

One module per kind: `probes` (linear_probe, bag_of_tokens), `fine_tune`,
`baselines` (random_init, supervised, supervised_from_scratch, which the
`config.baselines` switches add), on the contract of `base`.

Registering a new type: a dataclass subclass of `Evaluator` in a new module
of this package, decorated with `@register("name")`; its fields are the
entry's arguments, `run(context)` returns its results.json entry. Nothing
else changes: the experiment runs every entry through `check`,
`check_data` and `Evaluator.run`.
"""

from __future__ import annotations

from collections.abc import Callable

from ml_collections import ConfigDict

from ssl_jax.evaluators.base import Context, Evaluator, build, register
from ssl_jax.evaluators.baselines import entries

__all__ = ["Context", "Evaluator", "build", "check", "check_data", "entries", "register"]


def check(config: ConfigDict, num_devices: int = 1) -> list[Evaluator]:
    """The evaluators of every entry (`entries`: config.evals and the
    switched-on baselines), each with its arguments checked: one-line errors
    before pretraining, not after."""
    chosen = [build(name, args) for name, args in entries(config).items()]
    for evaluator in chosen:
        evaluator.check(config, num_devices)
    return chosen


def check_data(config: ConfigDict, splits: Callable[[str], tuple]) -> None:
    """What each evaluator needs of its data (a token dataset, label budgets
    that fit in memory), before pretraining."""
    for name, args in entries(config).items():
        build(name, args).check_data(config, splits)
