"""Getting a trained encoder out: into your own code, or into a portable file.

    import ssl_jax
    encoder = ssl_jax.load_encoder("runs/simclr")        # a workdir: its newest good checkpoint
    features = encoder(images)                           # uint8 [N, H, W, 3] -> float32 [N, D]
    ssl_jax.export_encoder("runs/simclr", "simclr.safetensors")
    encoder = ssl_jax.load_encoder("simclr.safetensors")  # the same features, bit for bit

An encoder takes what its task's `features` takes (`Task.feature_input`):
uint8 images, int token ids (masked words) or uint8 clips (missing frames),
and computes its features through `inference.make_features_fn`, as the run's
evaluators did; other input is refused with a one-line error naming the
expected one (`encoder.input`).

The exported file is safetensors: one tensor per variable of the encoder the
task's features come from (`Task.feature_encoder`: the encoder, or DINO's
teacher), named by its path in the module (`layers.0.conv.kernel`), and in
the header's metadata under "ssl_jax" a JSON object with what rebuilds it:
the task and its keyword arguments (loading rebuilds the task around the
encoder, so `features` is the task's own), the registered model name and its
keyword arguments, the compute dtype, the feature dimension, the dataset, the
step, the image size (inputs with image axes), and `input`: the batch key
(image / tokens / video), dtype, axes and value convention (for images and
clips: RGB 0-255, scaled to x / 255, then (x - 0.5) / 0.5).

Workdirs and files may be URLs (`gs://bucket/simclr.safetensors`, see
`ssl_jax.storage`): a file is written on the local disk and uploaded in one
piece, and read back through a local copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import inference, storage
from ssl_jax.data import pipeline
from ssl_jax.tasks.base import FeatureInput

_FORMAT = "ssl_jax.encoder/2"
# What rebuilds the task around the exported encoder (with seed 0: the
# variables `features` reads come from the file, the rest is never read).
_TASK_FIELDS = ("task", "task_kwargs", "model", "model_kwargs", "compute_dtype")


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's "Given directory is read only" warning, which opening a
    workdir's checkpoints for reading (as `load_encoder` must, beside a
    possibly live run) logs every time; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


@dataclasses.dataclass
class Encoder:
    """A frozen encoder: `encoder(inputs)` gives float32 features [N, D] of
    what `encoder.input` describes, computed in batches of `batch_size` by the
    task's own `features`, as the evaluators compute them."""

    trained: inference.TrainedModel  # the whole task: `features` may need its code, not its heads
    info: dict[str, Any]  # task, model, model_kwargs, compute_dtype, feature_dim, input, ...

    def __post_init__(self):
        fields = self.info["input"]
        self.input = FeatureInput(**{**fields, "axes": tuple(fields["axes"])})
        self._mesh = pipeline.make_mesh()
        self._features = inference.make_features_fn(self.trained, self._mesh)

    @property
    def module(self) -> nnx.Module:
        """The encoder the features come from (`Task.feature_encoder`)."""
        return self.trained.module().feature_encoder()

    @property
    def feature_dim(self) -> int:
        return self.info["feature_dim"]

    def __call__(self, inputs: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        inputs = self.input.check(inputs)
        parts = [
            self._padded_features(inputs[i : i + batch_size])
            for i in range(0, len(inputs), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.feature_dim), np.float32)

    def _padded_features(self, batch: np.ndarray) -> np.ndarray:
        """Features of `batch`, padded with zero rows to a multiple of the
        device count (features are per example: the padding changes no row)."""
        pad = -len(batch) % self._mesh.devices.size
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        return self._features(batch)[: len(batch) - pad]


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    flat = {}
    for path, value in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[name] = np.asarray(value)
    return flat


def _info(config: ConfigDict, task: nnx.Module, step: int) -> dict[str, Any]:
    """The header of an export of `task`, trained by `config` for `step` steps."""
    spec = task.feature_input
    info = {
        "format": _FORMAT,
        "task": config.task,
        "task_kwargs": config.task_kwargs.to_dict(),
        "model": config.model,
        "model_kwargs": config.model_kwargs.to_dict(),
        "compute_dtype": config.compute_dtype,
        "dataset": config.dataset,
        "step": step,
        "feature_dim": task.feature_encoder().feature_dim,
        "input": dataclasses.asdict(spec),
    }
    if "H" in spec.axes:  # the size it was trained at; other sizes may work, or may not
        info["image_size"] = config.image_size
    return info


def _load_workdir(workdir: str) -> Encoder:
    # The checkpoint holds the training state: restoring it needs its layout.
    from ssl_jax import optim, train
    from ssl_jax.checkpoint import Checkpointer, CheckpointError

    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{workdir} holds no config.json: not an ssl_jax workdir.")
    with storage.open_file(path) as f:
        config = ConfigDict(json.load(f))
    trained = inference.split_task(inference.build_task(config))
    tx, _ = optim.make_optimizer(
        config.optimizer, batch_size=config.batch_size, total_steps=config.train_steps
    )
    if not storage.isdir(storage.join(workdir, "checkpoints")):
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
    trained = dataclasses.replace(trained, params=state["params"], model_state=state["model_state"])
    return Encoder(trained, _info(config, trained.module(), step))


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """`path` itself, or for a URL a temporary local copy of it."""
    if not storage.is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ssl_jax_encoder_") as directory:
        local = os.path.join(directory, "encoder.safetensors")
        with open(local, "wb") as f:
            f.write(storage.read_bytes(path))
        yield local


def _read_safetensors(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(ssl_jax header, tensors) of an exported file, or one ValueError that
    names the file: safetensors' own error names none, and a truncated or
    foreign file is the usual cause."""
    from safetensors import SafetensorError, safe_open

    try:
        with _local_copy(path) as local, safe_open(local, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return json.loads(metadata.get("ssl_jax", "{}")), tensors
    except OSError as error:  # the file is there but cannot be opened or read
        raise ValueError(
            f"Cannot read the encoder file {path}: {error.strerror or error}."
        ) from None
    except (SafetensorError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())[:160]
        raise ValueError(
            f"{path} is not a readable encoder file ({type(error).__name__}: {reason}); "
            "it may be truncated or not from ssl_jax.export_encoder: export it again "
            "from its workdir."
        ) from error


def _load_file(path: str) -> Encoder:
    info, tensors = _read_safetensors(path)
    if info.get("format") == "ssl_jax.encoder/1":  # its header said only "images", whatever it took
        raise ValueError(
            f"{path} was exported by an older ssl_jax: export it again from its workdir."
        )
    if info.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an encoder exported by ssl_jax (no '{_FORMAT}' header).")
    config = ConfigDict({"seed": 0, **{field: info[field] for field in _TASK_FIELDS}})
    task = inference.build_task(config)
    module = task.feature_encoder()
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
    return Encoder(inference.split_task(task), info)


def load_encoder(path: str) -> Encoder:
    """The encoder of a workdir (its newest good checkpoint; the task's
    `feature_encoder`) or of a file written by `export_encoder`."""
    storage.check(path, "load_encoder path")
    if storage.isdir(path):
        return _load_workdir(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"No workdir or exported encoder at {path}.")
    return _load_file(path)


def export_encoder(source: str | Encoder, path: str) -> dict[str, Any]:
    """Writes the encoder of a workdir (or a loaded `Encoder`) to `path` as
    safetensors with its rebuild information; returns that information."""
    from safetensors.numpy import save

    encoder = load_encoder(source) if isinstance(source, str) else source
    tensors = {
        name: np.ascontiguousarray(value)
        for name, value in _flat(nnx.state(encoder.module)).items()
    }
    storage.check(path, "export path")
    metadata = {"ssl_jax": json.dumps(encoder.info, sort_keys=True)}
    # The whole file in memory, as a URL's one upload needs anyway: the
    # encoder's weights are already in memory, so this at most doubles them.
    storage.write_bytes(path, save(tensors, metadata=metadata))
    return encoder.info
