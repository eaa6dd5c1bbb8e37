"""Train one peer (a PyTorch implementation of an ssl_jax config) and probe it
with ssl_jax's own probe.

    python experiments/peers/train.py --config=configs/byol.py \
        --arg=dataset=imagefolder:$DATA/cifar10_dev,encoder=convnet \
        --set=train_steps=500 --workdir=runs/peers/byol/peer

The recipe is the ssl_jax config itself (`--set field=value` as
`--config.field=value` of `ssl_jax.main`): the same encoder and heads, views,
optimizer and learning-rate schedule (ssl_jax's schedule function, called
each step), batch size, steps, data order (`pipeline.batch_indices`), splits
(`experiment.load_splits`) and seed. After training, the features of the
un-augmented train and test images (encoder in eval mode, inputs normalised
as `Task.features`) go through ssl_jax's `evaluators.probes.probe`: the same
all-label probe, few-label probes and kNN as results.json's `linear_probe`;
the same for the encoder at its random initialisation. WORKDIR/results.json
has the project's keys, plus the loss curve and images/s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np
import torch
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from experiments.peers import models, views
from experiments.peers import optim as peer_optim
from experiments.peers.dino import DINO
from experiments.peers.mae import MAE
from experiments.peers.methods import (
    BYOL,
    BarlowTwins,
    Method,
    MoCoV3,
    Rotation,
    SimCLR,
    SimSiam,
    VICReg,
)
from experiments.peers.swav import SwAV
from ssl_jax import config_lib, experiment
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline
from ssl_jax.data.datasets import ImageDataset
from ssl_jax.evaluators import probes

# In the brief's order of priority.
METHODS: dict[str, type[Method]] = {
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "moco_v3": MoCoV3,
    "simclr": SimCLR,
    "rotation": Rotation,
    "dino": DINO,
    "mae": MAE,
    "swav": SwAV,
}


def load_config(config: str, arg: str = "", overrides: Sequence[str] = ()) -> ConfigDict:
    """The config `ssl_jax.main --config=CONFIG:ARG --config.X ...` runs, parsed
    by the same ml_collections flag (`overrides`: "field=value" strings)."""
    path = config_lib.config_path(config)
    spec = f"{path}:{arg}" if arg else path
    argv = ["peer", f"--config={spec}", *[f"--config.{item}" for item in overrides]]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    config = values.config
    config_lib.validate(config)
    return config


def build_method(config: ConfigDict, *, bn: str = "per_view") -> Method:
    if config.task not in METHODS:
        raise ValueError(f"No peer for task {config.task!r}; peers: {', '.join(METHODS)}.")
    encoder = models.build_encoder(config.model, config.model_kwargs.to_dict())
    return METHODS[config.task](config, encoder, bn=bn)


@torch.no_grad()
def features(encoder: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`Task.features` in torch: eval mode (running averages), normalised input."""
    was_training = encoder.training
    encoder.eval()
    out = [
        encoder(views.features_input(images[i : i + batch_size])).float().numpy()
        for i in range(0, len(images), batch_size)
    ]
    encoder.train(was_training)
    x = np.concatenate(out)
    if not np.isfinite(x).all():
        raise FloatingPointError("The peer's features hold NaN/Inf: its weights have diverged.")
    return x


def probe(config, splits, encoder, *, map_path: str, title: str) -> dict:
    """ssl_jax's `evaluators.probes.probe` on this encoder's features: the same
    probes, kNN and PCA map as the project's results.json['linear_probe']."""
    train_split, test_split = splits
    xy = tuple(
        (features(encoder, s.images, config.probe.batch_size), s.labels.astype(np.int32))
        for s in (train_split, test_split)
    )
    return probes.probe_features(xy, config, splits, map_path=map_path, title=title)


def train_peer(config: ConfigDict, workdir: str, *, bn: str = "per_view") -> dict:
    """Trains the peer of `config` and writes WORKDIR/results.json."""
    started = time.time()
    os.makedirs(workdir, exist_ok=True)
    splits = experiment.load_splits(config.dataset, config)
    if not all(isinstance(s, ImageDataset) for s in splits):
        raise ValueError("The peers need an in-memory image dataset (not streamed records).")
    train_split = splits[0]
    config = experiment.fill_from_dataset(config, train_split)
    torch.manual_seed(config.seed)
    method = build_method(config, bn=bn)
    method.train()
    dataset = config.probe.dataset or config.dataset
    if dataset != config.dataset:
        splits = experiment.load_splits(dataset, config)
    random_init = probe(
        config,
        splits,
        method.feature_encoder(),
        map_path=os.path.join(workdir, "embedding_pca_random_init.png"),
        title=f"peer random init ({config.model})",
    )
    optimizer = peer_optim.Optimizer(
        config.optimizer, method, batch_size=config.batch_size, total_steps=config.train_steps
    )
    curve, sums, count = [], {}, 0
    timer, timed, first_started = None, 0, time.perf_counter()
    for step in range(config.train_steps):
        index = pipeline.batch_indices(len(train_split), config.batch_size, config.seed, step)
        images = views.to_tensor(train_split.images[index])
        labels = torch.from_numpy(train_split.labels[index].astype(np.int64))
        loss, metrics = method.loss(images, labels, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"The peer's loss is {loss.item()} at step {step + 1}.")
        optimizer.zero_grad()
        loss.backward()
        method.before_step(step)
        optimizer.step(step)
        method.after_update(step + 1, config.train_steps)
        for key, value in {"loss": loss.item(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value
        count, timed = count + 1, timed + 1
        if timer is None:  # as the project: time from after the first step
            timer, timed = time.perf_counter(), 0
            first = timer - first_started
        done = step + 1
        if done % config.log_every == 0 or done == config.train_steps:
            elapsed = time.perf_counter() - timer if timed else first
            record = {k: v / count for k, v in sums.items()}
            record.update(
                step=done,
                learning_rate=optimizer.learning_rate(step),
                images_per_sec=max(timed, 1) * config.batch_size / max(elapsed, 1e-9),
            )
            curve.append(record)
            print(f"peer {config.task} step {done}: loss {record['loss']:.4f}", flush=True)
            sums, count, timer, timed = {}, 0, time.perf_counter(), 0
    result = probe(
        config,
        splits,
        method.feature_encoder(),
        map_path=os.path.join(workdir, "embedding_pca.png"),
        title=f"peer {config.task} ({config.model}), {config.train_steps} steps",
    )
    results = {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "probe_dataset": dataset,
        "train_steps": config.train_steps,
        "batch_size": config.batch_size,
        "num_classes": train_split.num_classes,
        "probe_train_size": len(splits[0]),
        "peer": {"torch": torch.__version__, "bn": bn, "threads": torch.get_num_threads()},
        "final_loss": curve[-1]["loss"],
        "loss_curve": curve,
        "images_per_sec": float(np.median([r["images_per_sec"] for r in curve])),
        "linear_probe": {**result, "dataset": dataset},
        "random_init": {"linear_probe": random_init},
        "wall_seconds": round(time.time() - started, 1),
    }
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
    return results


def main(argv):
    del argv
    values = flags.FLAGS
    config = load_config(values.config, values.arg, values.set)
    results = train_peer(config, values.workdir, bn=values.bn)
    top1 = results["linear_probe"]["top1"]
    print(f"peer {config.task}: top1 {top1:.4f}, final loss {results['final_loss']:.4f}")


if __name__ == "__main__":
    flags.DEFINE_string("config", None, "Config file (or packaged name), e.g. configs/byol.py.")
    flags.DEFINE_string("arg", "", "Its get_config argument, e.g. dataset=imagefolder:DIR.")
    flags.DEFINE_multi_string("set", [], "field=value, as --config.field=value of ssl_jax.")
    flags.DEFINE_string("workdir", None, "Where results.json goes.")
    flags.DEFINE_enum("bn", "per_view", ["per_view", "joint"], "Batch norm per view or joint.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
