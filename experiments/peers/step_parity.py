"""One training step of each method in ssl_jax and in its PyTorch peer, timed
side by side on the same cores.

    python experiments/peers/step_parity.py \
        --arg=dataset=imagefolder:$DATA/cifar10_dev,encoder=convnet \
        --out=docs/benchmarks/step_parity.jsonl

For every config in `--configs` (default: the nine image methods) both sides
build the same recipe (`experiments/peers/train.py`: same encoder, heads,
views, optimizer, batch) and take batches of the same images in the same
order. After `--warmup` untimed steps each (ssl_jax's step is compiled ahead
of time first; its compile time is reported apart), the two sides
**alternate**: `--rounds` rounds of `--steps` steps of ssl_jax, then
`--steps` of the peer, so a noisy neighbour or a CPU frequency change hits
both sides alike. The figure per side is the median round's time per step.

Both sides compute in float32 by default (`--set=compute_dtype=float32`):
PyTorch's CPU convolutions have no fast bfloat16 path, and a ratio of two
precisions would measure the precision, not the framework. `ratio` is the
peer's time over ssl_jax's: above 1.0 ssl_jax's step is faster.

What a step is on each side: ssl_jax's whole compiled step (on-device
augmentation, forward, backward, optimizer, teacher update); the peer's
`Method.loss` (its views are made by torch on the same cores), backward,
optimizer step and momentum update. Host batch gathering is outside both.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import numpy as np
import torch
from absl import app, flags

from experiments.peers import optim as peer_optim
from experiments.peers import train as peer_train
from experiments.peers import views
from ssl_jax import experiment, inference, optim, perf, train
from ssl_jax.data import pipeline

IMAGE_METHODS = (
    "rotation",
    "simclr",
    "moco_v3",
    "byol",
    "simsiam",
    "barlow_twins",
    "vicreg",
    "dino",
    "mae",
)


def ssl_jax_step(config, images: np.ndarray, labels: np.ndarray) -> tuple[Callable, float]:
    """A function running step i of ssl_jax's compiled train step (device
    batches prepared beforehand), and the step's compile seconds."""
    mesh = pipeline.make_mesh()
    trained = inference.split_task(inference.build_task(config))
    tx, schedule = optim.make_optimizer(
        config.optimizer, batch_size=config.batch_size, total_steps=config.train_steps
    )
    state = jax.device_put(train.init_state(trained, tx), pipeline.replicated(mesh))
    step_fn = train.make_train_step(
        trained.graphdef, tx, schedule, config.seed, total_steps=config.train_steps
    )
    arrays = {"image": images, "label": labels}
    batches = [
        pipeline.to_global(pipeline.host_batch(arrays, config.batch_size, config.seed, i), mesh)
        for i in range(4)
    ]
    compiled, step_perf = perf.compile_step(step_fn, state, batches[0], config, mesh)

    def run(i: int):
        nonlocal state
        state, metrics = compiled(state, batches[i % len(batches)])
        return metrics

    return run, step_perf["compile_seconds"]


def peer_step(config, images: np.ndarray, labels: np.ndarray) -> Callable:
    """A function running step i of the peer: loss, backward, optimizer,
    momentum update, on the same batches as ssl_jax's."""
    torch.manual_seed(config.seed)
    method = peer_train.build_method(config)
    method.train()
    optimizer = peer_optim.Optimizer(
        config.optimizer, method, batch_size=config.batch_size, total_steps=config.train_steps
    )
    batches = []
    for i in range(4):
        index = pipeline.batch_indices(len(images), config.batch_size, config.seed, i)
        batches.append(
            (views.to_tensor(images[index]), torch.from_numpy(labels[index].astype(np.int64)))
        )

    def run(i: int):
        x, y = batches[i % len(batches)]
        loss, _ = method.loss(x, y, i)
        optimizer.zero_grad()
        loss.backward()
        method.before_step(i)
        optimizer.step(i)
        method.after_update(i + 1, config.train_steps)
        return loss

    return run


def _seconds_per_step(run: Callable, first: int, steps: int, sync: Callable) -> float:
    start = time.perf_counter()
    for i in range(first, first + steps):
        out = run(i)
    sync(out)
    return (time.perf_counter() - start) / steps


def compare(config, *, steps: int, rounds: int, warmup: int) -> dict:
    """Both sides' median seconds per step over alternating rounds."""
    train_split, _ = experiment.load_splits(config.dataset, config)
    config = experiment.fill_from_dataset(config, train_split)
    images, labels = train_split.images, train_split.labels.astype(np.int32)
    ours, compile_seconds = ssl_jax_step(config, images, labels)
    peer = peer_step(config, images, labels)
    jax_sync, torch_sync = jax.block_until_ready, (lambda loss: loss.item())
    _seconds_per_step(ours, 0, warmup, jax_sync)
    _seconds_per_step(peer, 0, warmup, torch_sync)
    timed = {"ssl_jax": [], "peer": []}
    for r in range(rounds):
        first = warmup + r * steps
        timed["ssl_jax"].append(_seconds_per_step(ours, first, steps, jax_sync))
        timed["peer"].append(_seconds_per_step(peer, first, steps, torch_sync))
    ms = {side: 1e3 * statistics.median(t) for side, t in timed.items()}
    return {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "compute_dtype": config.compute_dtype,
        "ssl_jax_step_ms": round(ms["ssl_jax"], 2),
        "peer_step_ms": round(ms["peer"], 2),
        "ratio": round(ms["peer"] / ms["ssl_jax"], 3),
        "ssl_jax_compile_seconds": round(compile_seconds, 1),
        "rounds": rounds,
        "steps_per_round": steps,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "cores": os.cpu_count(),
    }


def main(argv: list[str]) -> None:
    del argv
    values = flags.FLAGS
    for name in values.configs:
        config = peer_train.load_config(name, values.arg, values.set)
        row = compare(config, steps=values.steps, rounds=values.rounds, warmup=values.warmup)
        line = json.dumps(row)
        print(line, flush=True)
        if values.out:
            with open(values.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    # Defined here, not at import: tests import this module beside others
    # that define flags of the same names.
    flags.DEFINE_list("configs", list(IMAGE_METHODS), "Configs (packaged names).")
    flags.DEFINE_string("arg", "", "Their get_config argument, e.g. encoder=convnet.")
    flags.DEFINE_multi_string(
        "set", ["compute_dtype=float32"], "field=value, as --config.field=value of ssl_jax."
    )
    flags.DEFINE_integer("steps", 5, "Steps per side per round.")
    flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps per side before the rounds.")
    flags.DEFINE_string("out", None, "Append one JSON line per config to this file.")
    app.run(main)
