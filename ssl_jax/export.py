"""Getting a trained encoder out: into your own code, or into a portable file.

    import ssl_jax
    encoder = ssl_jax.load_encoder("runs/simclr")        # a workdir: its newest good checkpoint
    features = encoder(images)                           # uint8 [N, H, W, 3] -> float32 [N, D]
    ssl_jax.export_encoder("runs/simclr", "simclr.safetensors")
    encoder = ssl_jax.load_encoder("simclr.safetensors")  # the same features, bit for bit

The exported file is safetensors: one tensor per variable of the encoder the
task's features come from (`Task.feature_encoder`: the encoder, or DINO's
teacher), named by its path in the module (`layers.0.conv.kernel`), and in
the header's metadata under "ssl_jax" a JSON object with what rebuilds it:
the registered model name and its keyword arguments, the compute dtype, the
image size it was trained at, the feature dimension, the task, the step, and
the input convention (uint8 RGB, scaled to [0, 1], then (x - 0.5) / 0.5).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax.data import augment

_FORMAT = "ssl_jax.encoder/1"


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's "Given directory is read only" warning, which opening a
    workdir's checkpoints for reading (as `load_encoder` must, beside a
    possibly live run) logs every time; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


@dataclasses.dataclass
class Encoder:
    """A frozen encoder: `encoder(images)` gives float32 features of uint8
    RGB images [N, H, W, 3], computed in batches of `batch_size`."""

    module: nnx.Module
    info: dict[str, Any]  # model, model_kwargs, compute_dtype, image_size, feature_dim, ...

    def __post_init__(self):
        graphdef, state = nnx.split(self.module)

        @jax.jit
        def apply(state, images):
            module = nnx.merge(graphdef, state)
            out = module(augment.normalize(augment.to_float(images)), train=False)
            return out.astype(jnp.float32)

        self._state, self._apply = state, apply

    @property
    def feature_dim(self) -> int:
        return self.module.feature_dim

    def __call__(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"Encoder takes uint8 images [N, H, W, C], got {images.dtype} {images.shape}."
            )
        parts = [
            np.asarray(self._apply(self._state, images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.feature_dim), np.float32)


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[name] = np.asarray(value)
    return flat


def _load_workdir(workdir: str) -> Encoder:
    from ssl_jax import optim, train
    from ssl_jax.checkpoint import Checkpointer, CheckpointError

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no config.json: not an ssl_jax workdir.")
    with open(path) as f:
        config = ConfigDict(json.load(f))
    trained = train.split_task(train.build_task(config))
    tx, _ = optim.make_optimizer(
        config.optimizer, batch_size=config.batch_size, total_steps=config.train_steps
    )
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"{workdir} holds no checkpoint yet: train first.")
    absl_logger, notice = logging.getLogger("absl"), _ReadOnlyNotice()  # orbax logs through absl
    absl_logger.addFilter(notice)
    try:
        checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, read_only=True)
    finally:
        absl_logger.removeFilter(notice)
    try:
        restored = checkpointer.restore_latest(like=train.init_state(trained, tx), set_aside=False)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"{workdir} holds no checkpoint yet: train first.")
    step, state, _ = restored
    task = nnx.merge(trained.graphdef, state["params"], state["model_state"])
    info = {
        "format": _FORMAT,
        "model": config.model,
        "model_kwargs": config.model_kwargs.to_dict(),
        "compute_dtype": config.compute_dtype,
        "image_size": config.image_size,
        "task": config.task,
        "dataset": config.dataset,
        "step": step,
        "input": "uint8 RGB [N, H, W, 3] -> x / 255 -> (x - 0.5) / 0.5",
    }
    module = task.feature_encoder()
    info["feature_dim"] = module.feature_dim
    return Encoder(module, info)


def _load_file(path: str) -> Encoder:
    from safetensors import safe_open

    from ssl_jax.models import precision
    from ssl_jax.registry import MODELS

    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    info = json.loads(metadata.get("ssl_jax", "{}"))
    if info.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an encoder exported by ssl_jax (no '{_FORMAT}' header).")
    module = MODELS.get(info["model"])(rngs=nnx.Rngs(0), **info["model_kwargs"])
    precision.set_compute_dtype(module, info["compute_dtype"])
    state = nnx.state(module)
    expected = _flat(state)
    if expected.keys() != tensors.keys() or any(
        expected[k].shape != tensors[k].shape for k in expected
    ):
        raise ValueError(f"{path} does not match the variables of a {info['model']} encoder.")
    treedef = jax.tree.structure(nnx.to_pure_dict(state))
    names = list(expected)  # the same order: both flatten the same pure dict
    pure = jax.tree.unflatten(treedef, [jnp.asarray(tensors[n]) for n in names])
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return Encoder(module, info)


def load_encoder(path: str) -> Encoder:
    """The encoder of a workdir (its newest good checkpoint; the task's
    `feature_encoder`) or of a file written by `export_encoder`."""
    if os.path.isdir(path):
        return _load_workdir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No workdir or exported encoder at {path}.")
    return _load_file(path)


def export_encoder(source: str | Encoder, path: str) -> dict[str, Any]:
    """Writes the encoder of a workdir (or a loaded `Encoder`) to `path` as
    safetensors with its rebuild information; returns that information."""
    from safetensors.numpy import save_file

    encoder = load_encoder(source) if isinstance(source, str) else source
    tensors = {
        name: np.ascontiguousarray(value)
        for name, value in _flat(nnx.state(encoder.module)).items()
    }
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"ssl_jax": json.dumps(encoder.info, sort_keys=True)})
    os.replace(tmp, path)
    return encoder.info
