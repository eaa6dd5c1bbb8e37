"""Name -> constructor lookups for tasks, models, encoder families,
datasets and evaluators: one mechanism for every part a config names.

Configs name their parts with strings (`config.task = "rotation"`,
`config.evals.x.type = "linear_probe"`, `config.dataset = "digits"`); the
registries turn those names into constructors. A module registers itself with a
decorator, and each registry imports its home on first use: every submodule
of a package (`ssl_jax.tasks`, `ssl_jax.models`, `ssl_jax.evaluators`), so
adding a file is enough, or the one module that defines the entries
(`ssl_jax.data.datasets`). There is no import table to maintain.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


class UnknownNameError(KeyError):
    """A config named a part that no module registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


class Registry:
    """A dict of named constructors that fills itself from one package (all
    its submodules) or one module."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            importlib.import_module(f"{self._package}.{module.name}")
        self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."
            )
        return self._entries[name]


TASKS = Registry("task", "ssl_jax.tasks")
MODELS = Registry("model", "ssl_jax.models")
# Encoder families (convnet, resnet18, vit, ...): each maps an image size to
# the family's variant for it (`ssl_jax.models.presets.EncoderPreset`), so the
# configs' `encoder=` option and recipes name a family, never a size.
ENCODERS = Registry("encoder family", "ssl_jax.models")
# Evaluator types of a trained encoder (`config.evals.<name>.type`): dataclasses
# on the contract of `ssl_jax.evaluators.base`.
EVALUATORS = Registry("evaluator", "ssl_jax.evaluators")
# Dataset sources, by the part of `config.dataset` before the first colon
# (`digits`, `tfds`, `imagefolder`, ...): loader(arg, split, image_size,
# data_dir, cache_dir).
DATASETS = Registry("dataset source", "ssl_jax.data.datasets")
