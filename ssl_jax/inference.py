"""Inference, apart from training: a config's task, its frozen features and
its pictures, for every modality.

One place computes features: `make_features_fn` calls the task's own
`features` (images, token ids or clips: whatever its `feature_input` says) in
one jitted program per (model structure, mesh). The evaluators, the loop's
online evaluation, `ssl_jax.load_encoder` and the exported encoders all go
through it, so an exported encoder computes what the run's evaluators
measured, bit for bit, and its header describes the input it really takes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import storage
from ssl_jax.data import pipeline
from ssl_jax.metrics import MetricWriter
from ssl_jax.models import precision
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.base import implements

# The random stream of parameter init; the training step draws from stream 1
# (train.py), so init and training never share a key.
_INIT_STREAM = 0
_PICTURE_SIDE = 384  # saved pictures are upscaled until their shorter side reaches this


@dataclasses.dataclass
class TrainedModel:
    """A task's module split into its static graph and its arrays."""

    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State  # everything that is not a parameter: batch-norm statistics, ...

    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.model_state)


# What the loop's online evaluation (and every baseline) is: a trained model in, figures out.
PeriodicEval = Callable[[TrainedModel], Mapping[str, float]]


def build_task(config: ConfigDict) -> nnx.Module:
    """The encoder named by `config.model` inside the task named by `config.task`,
    initialised from `config.seed` alone (so the random-init baseline is the
    exact starting point of pretraining)."""
    init_key = jax.random.fold_in(jax.random.key(config.seed), _INIT_STREAM)
    rngs = nnx.Rngs(params=init_key)
    encoder = MODELS.get(config.model)(rngs=rngs, **config.model_kwargs)
    task = TASKS.get(config.task)(encoder, rngs=rngs, **config.task_kwargs)
    return precision.set_compute_dtype(task, config.compute_dtype)


def split_task(task: nnx.Module) -> TrainedModel:
    """Trained parameters (the task's `trainable` filter) apart from the rest."""
    graphdef, params, model_state = nnx.split(task, task.trainable, ...)
    return TrainedModel(graphdef, nnx.as_pure(params), nnx.as_pure(model_state))


@functools.lru_cache(maxsize=32)
def _jitted_method(graphdef: nnx.GraphDef, method: str, mesh: jax.sharding.Mesh) -> Callable:
    """One jitted `task.<method>(inputs)` per (model structure, method, mesh):
    evaluators that run every few thousand steps reuse its compilation.
    Parameters are arguments, not closed over, so they are not baked into the
    program as constants."""

    def apply_task_method(params, model_state, inputs):
        return getattr(nnx.merge(graphdef, params, model_state), method)(inputs)

    return jax.jit(apply_task_method, out_shardings=pipeline.replicated(mesh))


def make_features_fn(
    trained: TrainedModel,
    mesh: jax.sharding.Mesh,
    method: str = "features",
    *,
    local_rows: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """A batch of a dataset's inputs (whatever they are: images, token ids,
    clips) -> frozen features (or another per-example `method` of the task,
    e.g. the supervised task's `logits`), for evaluators.

    Every process passes the same global batch; each feeds its own rows and
    gets the whole (replicated) result back. With `local_rows`, each process
    passes only its own rows (`pipeline.local_slice` of the global batch: a
    streamed split read in shares) and still gets the whole batch's result.
    """
    apply = _jitted_method(trained.graphdef, method, mesh)

    def features_fn(inputs: np.ndarray) -> np.ndarray:
        if local_rows:
            pipeline.check_batch_size(len(inputs) * jax.process_count(), mesh)
            local = inputs
        else:
            pipeline.check_batch_size(len(inputs), mesh)
            local = inputs[pipeline.local_slice(len(inputs))]
        batch = pipeline.to_global({"inputs": local}, mesh)["inputs"]
        out = apply(trained.params, trained.model_state, batch)
        return np.asarray(out.addressable_data(0))

    return features_fn


def make_visualizer(
    trained: TrainedModel, data, workdir: str, *, writer: MetricWriter | None = None, examples=8
) -> Callable[[dict, int], None] | None:
    """For tasks with the `visualize` hook (MAE's reconstructions, say): a
    function that saves that picture of the same fixed examples, with the same
    randomness, as `visuals/step_<N>.png`. None for tasks without pictures."""
    if not implements(trained.module(), "visualize"):
        return None
    batch = data.examples(examples)
    rng = jax.random.key(0)  # the same masks/views at every step: only the model changes

    @jax.jit
    def picture(params, model_state):
        return nnx.merge(trained.graphdef, params, model_state).visualize(batch, rng)

    directory = storage.join(workdir, "visuals")

    def save(state: dict, step: int) -> None:
        image = np.asarray(
            jax.device_get(picture(state["params"], state["model_state"]).addressable_data(0))
        )
        if jax.process_index() == 0:
            from PIL import Image

            storage.makedirs(directory)
            # Whole-pixel upscaling, so 16 px digits stay visible and sharp.
            zoom = max(1, _PICTURE_SIDE // min(image.shape[:2]))
            image = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
            with storage.staged(storage.join(directory, f"step_{step:07d}.png")) as path:
                Image.fromarray(image).save(path)
            if writer is not None:
                writer.image(step, "visuals", image)

    return save
