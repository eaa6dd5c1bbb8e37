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

Beside it: building the task and its features (`inference.py`), the step's
figures and throughput (`perf.py`), what to do about NaN/Inf
(`nonfinite.py`), checkpoints (`checkpoint.py`), signals (`preemption.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import signal
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from ssl_jax import nonfinite, optim, perf, preemption, storage
from ssl_jax import workdir as workdir_lib
from ssl_jax.checkpoint import Checkpointer, CheckpointError, state_fingerprint
from ssl_jax.data import pipeline
from ssl_jax.evaluate import collapse
from ssl_jax.inference import PeriodicEval, TrainedModel, build_task, make_visualizer, split_task
from ssl_jax.metrics import MetricWriter, OpenInterval, interval_means
from ssl_jax.tasks.base import implements

log = logging.getLogger(__name__)

# The random stream of the training step; parameter init draws from stream 0
# (`inference.build_task`), so init and training never share a key.
_TRAIN_STREAM = 1


@dataclasses.dataclass(frozen=True)
class _Start:
    """Where the loop starts: step 0, or the step and counters of a checkpoint."""

    step: int = 0
    skipped_steps: int = 0
    skipped_examples: int = 0
    interval: OpenInterval | None = None  # the log interval the checkpoint fell inside


@dataclasses.dataclass(frozen=True)
class _Outputs:
    """Where the loop's results go, besides its final state."""

    checkpointer: Checkpointer
    writer: MetricWriter
    visualize: Callable[[dict, int], None] | None = None  # a picture at every checkpoint
    evaluate: Callable[[dict], Mapping[str, float]] | None = None  # every eval_every steps


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
    updates the model state that gradients do not train (a momentum teacher)
    and may rewrite parameters (a projection onto unit norm).

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
            # Parameters too: a hook may project them back onto a constraint
            # (unit-norm rows, say) once the optimizer has moved them.
            params, model_state = split_state(task)
        new_state = {
            "step": step + 1,
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
        }
        # Finite loss and gradients can still give a non-finite state (an
        # overflowing learning rate, say): such a step counts as bad too.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & nonfinite.all_finite(new_state)
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
            # A skipped step's figures are zeros the log leaves out; the
            # learning rate is the schedule's and the records its batch
            # replaced were replaced, whatever the step did.
            kept = ("learning_rate", "skipped_examples")
            metrics = {k: v if k in kept else jnp.where(finite, v, 0.0) for k, v in metrics.items()}
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def init_state(trained: TrainedModel, tx: optax.GradientTransformation) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": trained.params,
        "model_state": trained.model_state,
        "opt_state": tx.init(trained.params),
    }


def train(
    config: ConfigDict,
    workdir: str,
    data,
    mesh: jax.sharding.Mesh | None = None,
    evaluator: PeriodicEval | None = None,
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
    storage.makedirs(workdir)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        state, start = _resume(config, workdir, checkpointer, state, allow_config_change)
    except BaseException:
        checkpointer.close()
        raise

    train_step = make_train_step(
        trained.graphdef,
        tx,
        schedule,
        config.seed,
        total_steps=config.train_steps,
        skip_nonfinite=config.nonfinite == "skip",
    )
    writer = MetricWriter(workdir, total_steps=config.train_steps, start_step=start.step)
    evaluate = None
    if evaluator is not None and config.eval_every:
        evaluate = lambda state: evaluator(_with_state(trained, state))
    visualize = make_visualizer(trained, data, workdir, writer=writer)
    outputs = _Outputs(checkpointer, writer, visualize, evaluate)
    if outputs.visualize and start.step == 0:
        outputs.visualize(state, 0)
    # A generator: its prefetch thread starts with the first batch taken.
    batches = pipeline.device_batches(
        data, batch_size=config.batch_size, seed=config.seed, mesh=mesh, start_step=start.step
    )
    summary = {
        "train_steps": config.train_steps,
        "resumed_from_step": start.step,
        "skipped_steps": start.skipped_steps,
        "skipped_examples": start.skipped_examples,
    }
    try:
        if start.step < config.train_steps:
            perf.CompileCounter.install()
            compiles_before = perf.CompileCounter.count("jit(train_step)")
            first_batch = next(batches)
            compiled_step, step_perf = perf.compile_step(
                train_step, state, first_batch, config, mesh
            )
            summary["step_perf"] = step_perf
            batch_stream = itertools.chain([first_batch], batches)
            del first_batch  # the chain holds it until step 1 only
            throughput = perf.Throughput(
                config.batch_size, perf.mfu_scale(step_perf, mesh.devices.size)
            )
            state, summary["final_loss"], skips = _loop(
                config, state, compiled_step, batch_stream, start, outputs, throughput
            )
            summary.update(skips)
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
    return _with_state(trained, state), summary


def _with_state(trained: TrainedModel, state: dict) -> TrainedModel:
    return dataclasses.replace(trained, params=state["params"], model_state=state["model_state"])


def _resume(config, workdir, checkpointer, state, allow_config_change) -> tuple[dict, _Start]:
    """The state to start from (the newest usable checkpoint's, or `state`)
    and where; records the config the run goes on with."""
    # The config is checked before the restore (a refused change must not
    # look like a corrupt checkpoint) and written only after it.
    changes = workdir_lib.config_changes(
        workdir,
        config,
        resuming=checkpointer.latest_step() is not None,
        allow_change=allow_config_change,
    )
    try:
        restored = checkpointer.restore_latest(like=state)
    except CheckpointError as error:
        if not changes or "tree structure" not in str(error):
            raise
        # Not a corrupt checkpoint: an accepted change (an optimizer, a freeze,
        # a weight-decay schedule) that lays the state out differently.
        raise CheckpointError(
            f"The checkpoints in {checkpointer.directory} do not fit this config's state: the "
            f"change of {', '.join(changes)} lays it out differently. Revert the change, or "
            "start this config in a new --workdir; nothing was changed."
        ) from None
    start = _Start()
    if restored:
        step, state, counters = restored
        start = _Start(
            step,
            counters.get("skipped_steps", 0),
            counters.get("skipped_examples", 0),
            OpenInterval.from_json(counters.get("open_interval")),
        )
        log.info("Resumed from the checkpoint of step %d in %s", step, workdir)
    if jax.process_index() == 0:
        workdir_lib.save_config(workdir, config, changes=changes, from_step=start.step)
    return state, start


def _loop(
    config,
    state: dict,
    train_step,
    batches: Iterator[dict],
    start: _Start,
    outputs: _Outputs,
    throughput: perf.Throughput,
):
    """The hot loop; returns the final state, the last logged loss and the
    whole run's skip counts: steps skipped as non-finite (`skipped_steps`)
    and unreadable records replaced (`skipped_examples`).

    Metrics are summed on the device and fetched only every `log_every`
    steps, so the host does not wait for the device at each step. Non-finite
    steps are found at the next log line or checkpoint, whichever is first,
    and a state that one has touched is never saved. A SIGTERM/SIGINT stops
    the loop at the next step boundary (several processes: the next log
    step), after a checkpoint of that step. Log lines stay on the
    `log_every` grid: a checkpoint between two of them carries the open
    interval's sums (`OpenInterval`), so the resumed run's `metrics.jsonl`
    is row for row the uninterrupted run's.
    """
    collapse_watch = collapse.CollapseWatch(**config.collapse_warning, warn=log.warning)
    guard = nonfinite.Guard(
        config,
        outputs.checkpointer,
        start_step=start.step,
        skipped_steps=start.skipped_steps,
        skipped_examples=start.skipped_examples,
    )
    # Metric sums since the last log line, on the device; a resumed run
    # starts with those its checkpoint carried, if its step reports the same
    # metrics (`OpenInterval.carried_into`).
    totals, count = None, 0
    carried = start.interval
    last_loss = math.nan
    with preemption.deferred():
        for step in range(start.step + 1, config.train_steps + 1):
            state, metrics = train_step(state, next(batches))
            if carried is not None:
                totals, count = carried.carried_into(metrics)
                carried = None
            totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
            guard.observe(step, metrics)
            count += 1
            throughput.stepped(metrics)
            outputs.writer.advance()
            is_last = step == config.train_steps
            is_log = step % config.log_every == 0 or is_last
            stop = preemption.should_stop(sync_point=is_log)
            is_checkpoint = step % config.checkpoint_every == 0 or is_last or stop
            if is_checkpoint or is_log:
                guard.check()
            if is_log:
                means, skipped = interval_means(totals, count)
                guard.count_skipped(skipped, step)
                guard.count_replaced(int(means.get("skipped_examples", 0)), step - count + 1, step)
                means.update(throughput.report())
                means["learning_rate"] = float(metrics["learning_rate"])  # at this step
                if outputs.evaluate and (step % config.eval_every == 0 or is_last):
                    means.update(outputs.evaluate(state))
                outputs.writer.write(step, means)
                collapse_watch.observe(step, means)
                last_loss = means.get("loss", last_loss)
                totals, count = None, 0
                throughput.restart()
            if is_checkpoint:
                guard.save(step, state, open_interval=OpenInterval.of(totals, count))
                if outputs.visualize:
                    outputs.visualize(state, step)
            if stop:
                _stop(outputs.checkpointer, step)
    skips = {"skipped_steps": guard.skipped_steps, "skipped_examples": guard.skipped_examples}
    return state, last_loss, skips


def _stop(checkpointer: Checkpointer, step: int) -> None:
    """After a signal: the step's checkpoint is on disk, then the run stops."""
    checkpointer.wait()  # the checkpoint is on disk before we say so
    signum = preemption.requested() or signal.SIGTERM
    raise preemption.Interrupted(
        signum,
        f"stopped by {preemption.signal_name(signum)} at step {step}; its checkpoint "
        f"is saved in {checkpointer.path(step)}. Rerun the same command to resume.",
    )
