"""The shared training loop: one compiled step for every pretext task.

The loop builds the task named by the config, shards each global batch over
the `data` axis of a device mesh, runs a jit-compiled update with donated
buffers, checkpoints, resumes and logs. It knows nothing about images,
rotations or views: a batch is a dict of arrays and the task's `loss` does the
rest.
No line of it names a modality: the data source hands it batches under the
keys its dataset declares (`image`, `tokens`, `video`, `label`).

Reproducibility: the step's randomness is `fold_in(key(seed), step)` and the
data order a function of (seed, step) (see `data/pipeline.py`), so a run
resumed from a checkpoint computes exactly what an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import checkpoint, optim, perf, preemption
from ssl_jax import workdir as workdir_lib
from ssl_jax.checkpoint import Checkpointer, NonFiniteStateError
from ssl_jax.data import pipeline
from ssl_jax.evaluate import collapse
from ssl_jax.metrics import MetricWriter
from ssl_jax.models import precision
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.base import implements

log = logging.getLogger(__name__)

# Separate streams for parameter init and training randomness.
_INIT_STREAM, _TRAIN_STREAM = 0, 1


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the steps."""


@dataclasses.dataclass
class TrainedModel:
    """A task's module split into its static graph and its arrays."""

    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State  # everything that is not a parameter: batch-norm statistics, ...

    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.model_state)


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


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    seed: int,
    *,
    total_steps: int,
    skip_nonfinite: bool = False,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """`(state, batch) -> (new_state, metrics)`, compiled once, state donated.

    After the optimizer update the task's `after_update` hook (if it has one)
    updates the model state that gradients do not train (a momentum teacher).

    `metrics["nonfinite"]` is 1.0 when the loss, a gradient or the new state
    holds NaN/Inf. With
    `skip_nonfinite`, such a step leaves the state as it was (only the step
    counter advances, so the data moves on) and zeroes its other metrics.
    """
    train_key = jax.random.fold_in(jax.random.key(seed), _TRAIN_STREAM)

    def split_state(task):
        _, params, model_state = nnx.split(task, task.trainable, ...)
        return nnx.as_pure(params), nnx.as_pure(model_state)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        step = state["step"]
        rng = jax.random.fold_in(train_key, step)

        def loss_fn(params):
            task = nnx.merge(graphdef, params, state["model_state"])
            loss, metrics = task.loss(batch, rng, train=True)
            return loss, (metrics, split_state(task)[1])

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        task = nnx.merge(graphdef, params, model_state)
        if implements(task, "after_update"):
            task.after_update(step + 1, total_steps)
            model_state = split_state(task)[1]
        new_state = {
            "step": step + 1,
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
        }
        # Finite loss and gradients can still give a non-finite state (an
        # overflowing learning rate, say): such a step counts as bad too.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_state)
        metrics = {
            **metrics,
            "loss": loss,
            "learning_rate": schedule(step),
            "grad_norm": grad_norm,
        }
        if "skipped" in batch:  # streamed data: unreadable records replaced in this batch
            metrics["skipped_examples"] = jnp.sum(batch["skipped"]).astype(jnp.float32)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)
            new_state = {**jax.tree.map(keep, new_state, state), "step": step + 1}
            metrics = jax.tree.map(lambda m: jnp.where(finite, m, 0.0), metrics)
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def state_fingerprint(state: dict) -> str:
    """A hex digest of every array of the state (parameters, batch-norm
    statistics, optimizer state, step), in tree order: two runs that end in
    the same state, bit for bit, have the same fingerprint. Checkpoints carry
    it, so a restore can tell a corrupt one."""
    return checkpoint.fingerprint(checkpoint.host_leaves(state))


def init_state(trained: TrainedModel, tx: optax.GradientTransformation) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": trained.params,
        "model_state": trained.model_state,
        "opt_state": tx.init(trained.params),
    }


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
    trained: TrainedModel, mesh: jax.sharding.Mesh, method: str = "features"
) -> Callable[[np.ndarray], np.ndarray]:
    """A batch of a dataset's inputs (whatever they are: images, token ids,
    clips) -> frozen features (or another per-example `method` of the task,
    e.g. the supervised task's `logits`), for evaluators.

    Every process passes the same global batch; each feeds its own rows and
    gets the whole (replicated) result back.
    """
    apply = _jitted_method(trained.graphdef, method, mesh)

    def features_fn(inputs: np.ndarray) -> np.ndarray:
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

    directory = os.path.join(workdir, "visuals")

    def save(state: dict, step: int) -> None:
        image = np.asarray(
            jax.device_get(picture(state["params"], state["model_state"]).addressable_data(0))
        )
        if jax.process_index() == 0:
            from PIL import Image

            os.makedirs(directory, exist_ok=True)
            # Whole-pixel upscaling, so 16 px digits stay visible and sharp.
            zoom = max(1, _PICTURE_SIDE // min(image.shape[:2]))
            image = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
            Image.fromarray(image).save(os.path.join(directory, f"step_{step:07d}.png"))
            if writer is not None:
                writer.image(step, "visuals", image)

    return save


Evaluator = Callable[[TrainedModel], Mapping[str, float]]
_PICTURE_SIDE = 384  # saved pictures are upscaled until their shorter side reaches this


def train(
    config: ConfigDict,
    workdir: str,
    data,
    mesh: jax.sharding.Mesh | None = None,
    evaluator: Evaluator | None = None,
    *,
    allow_config_change: bool = False,
    init_encoder: nnx.State | None = None,
) -> tuple[TrainedModel, dict]:
    """Trains `config.task` on `data` (`pipeline.InMemory`,
    `streaming.StreamingSource`, or a dict of equally long numpy arrays) for
    `config.train_steps` steps, resuming from `workdir` if a checkpoint is
    there. Returns the trained model and a summary dict.

    The workdir is locked for the run (one writer at a time). A resume whose
    config changes what the run computes is refused unless
    `allow_config_change` (see `workdir.config_changes`).

    `evaluator`, if given, runs every `config.eval_every` steps (and at the
    end) on the current model; its figures join that step's metrics line.
    `init_encoder` (the variables of an encoder of the same model) replaces
    the task's initial encoder: fine-tuning starts from pretrained weights.
    """
    mesh = pipeline.make_mesh() if mesh is None else mesh
    pipeline.check_batch_size(config.batch_size, mesh)
    with workdir_lib.run_lock(workdir):
        return _train(config, workdir, data, mesh, evaluator, allow_config_change, init_encoder)


def _train(config, workdir, data, mesh, evaluator, allow_config_change, init_encoder):
    data = pipeline.InMemory(data) if isinstance(data, Mapping) else data
    task = build_task(config)
    if init_encoder is not None:
        # Copies: the loop donates its state, which must not delete the caller's arrays.
        nnx.update(task.feature_encoder(), jax.tree.map(jnp.copy, init_encoder))
    trained = split_task(task)
    tx, schedule = optim.make_optimizer(
        config.optimizer, batch_size=config.batch_size, total_steps=config.train_steps
    )
    state = jax.device_put(init_state(trained, tx), pipeline.replicated(mesh))
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        # The config is checked before the restore (a refused change must not
        # look like a corrupt checkpoint) and written only after it.
        changes = workdir_lib.config_changes(
            workdir,
            config,
            resuming=checkpointer.latest_step() is not None,
            allow_change=allow_config_change,
        )
        restored = checkpointer.restore_latest(like=state)
    except BaseException:
        checkpointer.close()
        raise
    start_step, counters = 0, {}
    if restored:
        start_step, state, counters = restored
        log.info("Resumed from the checkpoint of step %d in %s", start_step, workdir)
    if jax.process_index() == 0:
        workdir_lib.save_config(workdir, config, changes=changes, from_step=start_step)

    train_step = make_train_step(
        trained.graphdef,
        tx,
        schedule,
        config.seed,
        total_steps=config.train_steps,
        skip_nonfinite=config.nonfinite == "skip",
    )
    writer = MetricWriter(workdir, total_steps=config.train_steps, start_step=start_step)
    visualize = make_visualizer(trained, data, workdir, writer=writer)
    evaluate = None
    if evaluator is not None and config.eval_every:
        evaluate = lambda state: evaluator(
            dataclasses.replace(trained, params=state["params"], model_state=state["model_state"])
        )
    if visualize and start_step == 0:
        visualize(state, 0)
    # A generator: its prefetch thread starts with the first batch taken.
    batches = pipeline.device_batches(
        data, batch_size=config.batch_size, seed=config.seed, mesh=mesh, start_step=start_step
    )
    summary = {
        "train_steps": config.train_steps,
        "resumed_from_step": start_step,
        "skipped_steps": counters.get("skipped_steps", 0),
    }
    try:
        if start_step < config.train_steps:
            perf.CompileCounter.install()
            compiles_before = perf.CompileCounter.count("jit(train_step)")
            first_batch = next(batches)
            compiled_step, step_perf = compile_step(train_step, state, first_batch, config, mesh)
            summary["step_perf"] = step_perf
            batch_stream = itertools.chain([first_batch], batches)
            del first_batch  # the chain holds it until step 1 only
            state, summary["final_loss"], summary["skipped_steps"] = _loop(
                config,
                state,
                compiled_step,
                batch_stream,
                checkpointer,
                writer,
                start_step,
                hooks=(visualize, evaluate),
                images_per_sec_to_mfu=_mfu_scale(step_perf, mesh),
                skipped_before=summary["skipped_steps"],
            )
            # Compiled ahead of time, the step cannot recompile (another shape
            # is an error), so this is 1; it records that nothing else in the
            # run compiled a second copy of the step.
            step_perf["compilations"] = (
                perf.CompileCounter.count("jit(train_step)") - compiles_before
            )
        checkpointer.wait()
        summary["state_fingerprint"] = state_fingerprint(state)
    finally:
        batches.close()
        # Close everything even if one close fails (a full disk), then report the first failure.
        with contextlib.ExitStack() as closing:
            closing.callback(checkpointer.close)
            closing.callback(writer.close)
    return dataclasses.replace(
        trained, params=state["params"], model_state=state["model_state"]
    ), summary


def compile_step(train_step, state: dict, batch: dict, config: ConfigDict, mesh):
    """Compiles the step ahead of time for these exact shapes and shardings and
    reports what XLA says about it. An AOT-compiled step cannot silently
    recompile: a batch of another shape would be an error, not a slow step.

    FLOPs per image are XLA's per-device count times the devices of the mesh,
    over the global batch; the optimizer update, which every device repeats
    in full, is thereby counted once per device (negligible at real batch
    sizes: +0.2% for the rotation digits run, +19% for MAE at batch 16)."""
    started = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    flops = perf.compiled_flops(compiled)
    devices = mesh.devices.size
    peak = config.peak_tflops * 1e12 or perf.known_peak_flops(
        jax.devices()[0], config.compute_dtype
    )
    step_perf = {
        "compile_seconds": round(time.perf_counter() - started, 3),
        # Per source image of the global batch (SPMD analysis is per device).
        "flops_per_image": flops * devices / config.batch_size if flops else None,
        "step_memory_mb": _megabytes(perf.compiled_memory_bytes(compiled)),
        "peak_flops_per_device": peak,
    }
    log.info(
        "Train step compiled in %.1f s; %s GFLOP per image; %s MB per device.",
        step_perf["compile_seconds"],
        f"{flops * devices / config.batch_size / 1e9:.3f}" if flops else "?",
        step_perf["step_memory_mb"],
    )
    return compiled, step_perf


def _megabytes(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def _mfu_scale(step_perf: dict, mesh) -> float | None:
    """images/s -> model FLOPs utilisation, when both FLOPs and the peak are known."""
    flops, peak = step_perf["flops_per_image"], step_perf["peak_flops_per_device"]
    if not flops or not peak:
        return None
    return flops / (peak * mesh.devices.size)


def _loop(
    config,
    state,
    train_step,
    batches,
    checkpointer,
    writer,
    start_step,
    hooks,
    images_per_sec_to_mfu=None,
    skipped_before=0,
):
    """The hot loop; returns the final state, the last logged loss and the
    number of skipped (non-finite) steps of the whole run.

    Metrics are summed on the device and fetched only every `log_every`
    steps, so the host does not wait for the device at each step. Non-finite
    steps are found at the next log line or checkpoint, whichever is first,
    and a state that one has touched is never saved. A SIGTERM/SIGINT stops
    the loop at the next step boundary (several processes: the next log
    step), after a log line and a checkpoint of that step.
    """
    visualize, evaluate = hooks
    collapse_watch = collapse.CollapseWatch(**config.collapse_warning, warn=log.warning)
    stop_on_nonfinite = config.nonfinite == "stop"
    totals, count = None, 0  # metric sums since the last log line, on the device
    first_bad_step = _NO_STEP  # on the device: the first non-finite step since the checkpoint
    skipped_total = skipped_before
    last_checkpoint, last_loss = start_step, math.nan
    timer_start, timed_steps = None, 0
    first_step_started = time.perf_counter()
    with preemption.deferred():
        for step in range(start_step + 1, config.train_steps + 1):
            state, metrics = train_step(state, next(batches))
            totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
            if stop_on_nonfinite:
                first_bad_step = jnp.minimum(
                    first_bad_step, jnp.where(metrics["nonfinite"] > 0, step, _NO_STEP)
                )
            count += 1
            timed_steps += 1
            if timer_start is None:
                # The first step pays one-off costs even though the step is compiled
                # (first dispatch, the eager ops around it): time from after it.
                jax.block_until_ready(metrics)
                timer_start, timed_steps = time.perf_counter(), 0
            writer.advance()
            is_last = step == config.train_steps
            is_log = step % config.log_every == 0 or is_last
            stop = preemption.should_stop(sync_point=is_log)
            is_log = is_log or stop
            is_checkpoint = step % config.checkpoint_every == 0 or is_last or stop
            if stop_on_nonfinite and (is_checkpoint or is_log):
                _stop_if_nonfinite(int(first_bad_step), last_checkpoint, checkpointer)
            if is_log:
                sums = {k: float(v) for k, v in jax.device_get(totals).items()}
                skipped = sums.pop("nonfinite")
                skipped_examples = sums.pop("skipped_examples", None)
                skipped_total += int(skipped)
                _stop_if_too_many_skipped(
                    skipped_total, step, config, last_checkpoint, checkpointer
                )
                good = count - skipped
                means = {k: v / good for k, v in sums.items()} if good else {}
                means["skipped_steps"] = skipped
                if skipped_examples is not None:  # a count over the interval, not a mean
                    means["skipped_examples"] = skipped_examples
                if timed_steps:
                    elapsed = time.perf_counter() - timer_start
                else:  # only the first step so far: report it, one-off costs included
                    timed_steps, elapsed = 1, timer_start - first_step_started
                means["images_per_sec"] = timed_steps * config.batch_size / max(elapsed, 1e-9)
                if images_per_sec_to_mfu:
                    means["mfu"] = means["images_per_sec"] * images_per_sec_to_mfu
                means["learning_rate"] = float(metrics["learning_rate"])  # at this step
                if evaluate and (step % config.eval_every == 0 or is_last):
                    means.update(evaluate(state))
                writer.write(step, means)
                collapse_watch.observe(step, means)
                last_loss = means.get("loss", last_loss)
                totals, count = None, 0
                timer_start, timed_steps = time.perf_counter(), 0
            if is_checkpoint:
                _save(checkpointer, step, state, skipped_total, last_checkpoint)
                last_checkpoint, first_bad_step = step, _NO_STEP
                if visualize:
                    visualize(state, step)
            if stop:
                checkpointer.wait()  # the checkpoint is on disk before we say so
                signum = preemption.requested() or signal.SIGTERM
                raise preemption.Interrupted(
                    signum,
                    f"stopped by {preemption.signal_name(signum)} at step {step}; its checkpoint "
                    f"is saved in {checkpointer.path(step)}. Rerun the same command to resume.",
                )
    return state, last_loss, skipped_total


_NO_STEP = np.iinfo(np.int32).max


def _last_good(last_checkpoint: int, checkpointer) -> str:
    if last_checkpoint == 0:
        return "no checkpoint was saved yet"
    return f"the last good checkpoint is step {last_checkpoint} in {checkpointer.directory}"


def _save(checkpointer, step: int, state, skipped_total: int, last_checkpoint: int) -> None:
    try:
        checkpointer.save(step, state, counters={"skipped_steps": skipped_total})
    except NonFiniteStateError as error:
        raise NonFiniteLossError(
            f"Not saving a checkpoint: {error}; {_last_good(last_checkpoint, checkpointer)}. "
            "Lower the learning rate or check the data, then rerun to resume from it."
        ) from None


def _stop_if_nonfinite(first_bad_step: int, last_checkpoint: int, checkpointer) -> None:
    if first_bad_step != _NO_STEP:
        raise NonFiniteLossError(
            f"The loss, a gradient or the state became NaN/Inf at step {first_bad_step}; "
            f"{_last_good(last_checkpoint, checkpointer)}. Lower the learning rate or check "
            "the data, then rerun to resume from it (or set --config.nonfinite=skip to skip "
            "such steps)."
        )


def _stop_if_too_many_skipped(
    skipped_total: int, step: int, config, last_checkpoint: int, checkpointer
) -> None:
    """With `nonfinite=skip`, a run that skips more than
    `max_skipped_fraction` of its steps (or every step) has failed."""
    limit = config.max_skipped_fraction * config.train_steps
    if skipped_total > limit or (skipped_total and skipped_total == step):
        raise NonFiniteLossError(
            f"{skipped_total} of the first {step} steps were skipped as NaN/Inf (the limit is "
            f"config.max_skipped_fraction={config.max_skipped_fraction} of "
            f"{config.train_steps} steps): the run failed; "
            f"{_last_good(last_checkpoint, checkpointer)}. Lower the learning rate or check "
            "the data."
        )
