"""The evaluator contract: what every `config.evals` type is and gets.

An evaluator type is a dataclass registered under its type name: its fields
are the arguments an entry may give (a field without a default is one the
entry must give), and its methods are the hooks the experiment calls, in
this order:

1. `check(config, num_devices)`: the arguments' own checks, before any data
   is loaded;
2. `check_data(config, splits)`: what it needs of its data (memory, kind of
   inputs), before pretraining;
3. `run(context)`: after pretraining, its results.json entry (a dict; the
   from-scratch curve is a list of points);
4. optional: `baseline(context, trained)`, the entry's figures for another
   encoder (the `random_init` evaluator passes the random initialisation;
   None, the default, means the entry has no such baseline), and
   `pictures(workdir)`, the PNG files it wrote, logged to TensorBoard.

Its figures go to TensorBoard under `log_prefix` (`eval/<name>/...`, as
big_vision's evaluators do). This module imports no evaluator: each kind's
module imports it and registers itself with `@register("type")`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
from ml_collections import ConfigDict

from ssl_jax import inference
from ssl_jax.registry import EVALUATORS


@dataclasses.dataclass
class Context:
    """What every evaluator may use."""

    config: ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    trained: inference.TrainedModel  # the pretrained task
    splits: Callable[[str], tuple]  # dataset name -> (train, test) splits, loaded once
    allow_config_change: bool = False
    # (config, train split) -> what the training loop reads for that config
    # (in memory or streamed): for evaluators that train (the supervised baseline).
    training_data: Callable[[ConfigDict, Any], Any] | None = None


@dataclasses.dataclass(kw_only=True)
class Evaluator:
    """One entry of `config.evals`. Subclasses add their arguments as fields
    and override the hooks they need (see the module docstring)."""

    name: str  # the entry's name: its results.json key

    # Appended to the message about missing arguments: where a full entry
    # comes from.
    missing_hint: ClassVar[str] = ""

    @property
    def log_prefix(self) -> str:
        """Where its figures go in TensorBoard."""
        return f"eval/{self.name}"

    def check(self, config: ConfigDict, num_devices: int) -> None:
        """Refuses bad arguments with a one-line ValueError naming the entry."""

    def check_data(self, config: ConfigDict, splits: Callable[[str], tuple]) -> None:
        """Refuses, before pretraining, data the evaluator cannot use."""

    def run(self, context: Context) -> Any:
        """Evaluates `context.trained` and returns its results.json entry."""
        raise TypeError(f"{type(self).__name__} must define run(context).")

    def baseline(self, context: Context, trained: inference.TrainedModel) -> Any:
        """This entry's figures for `trained` instead of the pretrained
        encoder (the random init), or None when it has none."""
        return None

    def pictures(self, workdir: str) -> dict[str, str]:
        """{TensorBoard tag: PNG path} of the pictures `run` wrote (missing
        files are skipped)."""
        return {}


def register(type_name: str):
    """Registers an `Evaluator` subclass as `config.evals` type `type_name`
    (in `ssl_jax.registry.EVALUATORS`)."""

    def decorator(cls: type[Evaluator]) -> type[Evaluator]:
        if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
            raise TypeError(f"evaluator {type_name!r} must be an Evaluator subclass, got {cls!r}")
        return EVALUATORS.register(type_name)(cls)

    return decorator


def _arguments(cls: type[Evaluator]) -> tuple[set[str], set[str]]:
    """(every argument, the required ones) of an evaluator type."""
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name != "name"]
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return {f.name for f in fields}, required


def build(name: str, args: Mapping) -> Evaluator:
    """The evaluator of entry `config.evals.<name>`, its arguments checked
    against its type's fields (one-line errors naming the entry)."""
    kind = args.get("type") if hasattr(args, "get") else None
    if kind not in EVALUATORS:
        raise ValueError(f"config.evals.{name}.type={kind!r} is not one of {EVALUATORS.names()}.")
    cls = EVALUATORS.get(kind)
    known, required = _arguments(cls)
    given = set(args.keys()) - {"type"}
    unknown = sorted(given - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"config.evals.{name} has no argument {', '.join(unknown)} "
            f"(a {kind} entry takes: {takes})."
        )
    missing = sorted(required - given)
    if missing:
        raise ValueError(
            f"config.evals.{name} lacks {', '.join(missing)} "
            f"(a {kind} entry needs {', '.join(sorted(required))}{cls.missing_hint})."
        )
    return cls(name=name, **{key: args[key] for key in given})


def evaluated_dataset(config: ConfigDict, dataset: str = "") -> str:
    """The dataset an evaluator judges: its own `dataset`, else
    `probe.dataset`, else the pretraining data."""
    return dataset or config.probe.dataset or config.dataset


def budgets(fractions, per_class_counts, train_split) -> list[tuple[int, dict]]:
    """(labels per class, extra fields) of each label budget: explicit
    per-class counts, then fractions of the train split, balanced."""
    out = [(k, {}) for k in per_class_counts]
    for fraction in fractions:
        per_class = max(1, round(fraction * len(train_split) / train_split.num_classes))
        out.append((per_class, {"fraction": fraction}))
    return out
