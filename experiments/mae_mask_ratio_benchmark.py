"""Time MAE's compiled training step (forward + backward + AdamW) at several
mask ratios: the encoder only sees the visible patches, so a step should get
cheaper as the mask ratio rises (the decoder, which sees every position, is
kept light so that it does not dominate).

    python experiments/mae_mask_ratio_benchmark.py [--steps 20] [--batch 64]

The step is the shared loop's own `train.make_train_step`, on a ViT of
width 192 and depth 6 at 32 px with 4 px patches (64 patches), a decoder of
width 128 and depth 2, on random uint8 images. Each ratio is compiled and
warmed up first; the timed steps end with `block_until_ready`.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from ssl_jax import config_lib, optim, train
from ssl_jax.tasks.mae import num_visible

RATIOS = (0.25, 0.5, 0.75, 0.9)


def config_for(mask_ratio: float, batch: int) -> ConfigDict:
    config = config_lib.base_config()
    config.task = "mae"
    config.model = "vit"
    config.model_kwargs = ConfigDict(
        {"patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3}
    )
    config.task_kwargs = ConfigDict(
        {"mask_ratio": mask_ratio, "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}
    )
    config.image_size = 32
    config.batch_size = batch
    config.optimizer.update(name="adamw", learning_rate=1.5e-4, b2=0.95, weight_decay=0.05)
    return config


def time_step(mask_ratio: float, *, batch: int, steps: int, warmup: int) -> float:
    """Seconds per training step, after `warmup` untimed steps."""
    config = config_for(mask_ratio, batch)
    trained = train.split_task(train.build_task(config))
    tx, schedule = optim.make_optimizer(config.optimizer, batch_size=batch, total_steps=1000)
    step_fn = train.make_train_step(trained.graphdef, tx, schedule, config.seed)
    state = train.init_state(trained, tx)
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    batch_arrays = {"image": jax.device_put(images)}
    for _ in range(warmup):
        state, metrics = step_fn(state, batch_arrays)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch_arrays)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"MAE train step, ViT 192x6 at 32 px / patch 4, batch {args.batch}, {jax.devices()[0]}")
    print(f"{'mask ratio':>10}{'visible':>9}{'ms/step':>10}{'images/s':>10}")
    for ratio in RATIOS:
        seconds = time_step(ratio, batch=args.batch, steps=args.steps, warmup=args.warmup)
        visible = num_visible(64, ratio)
        print(f"{ratio:>10.2f}{visible:>9d}{1000 * seconds:>10.1f}{args.batch / seconds:>10.0f}")


if __name__ == "__main__":
    main()
