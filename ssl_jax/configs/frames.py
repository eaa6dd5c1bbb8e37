"""python -m ssl_jax.main --config=configs/frames.py --workdir=runs/frames

Missing-frame prediction (one frame of each clip hidden and predicted from
the others; masked modelling over time as in VideoMAE, Tong et al. NeurIPS
2022) with a small Transformer over frame tokens, then linear probes and kNN
of the frozen, mean-pooled clip features for two labels: the digit's class
(`linear_probe`) and its direction of motion (`direction`). On the embedded
`moving_digits` default (8-frame clips of the 8x8 digits sliding across a
16x16 canvas, ssl_jax/data/video.py) it takes a few minutes on 2 CPU cores
and the probes of the pretrained encoder should beat the same encoder at
random initialisation (see README for the figures).

Variants, picked by the argument after the colon (comma-separated):
  configs/frames.py:runlocal                       tiny Transformer, a handful of steps (tests)
  configs/frames.py:dataset=moving_digits:frames=6 shorter clips
  configs/frames.py:dataset=tfds:ucf101            a prepared TFDS video dataset with labels:
                                                   8 frames per video at 64 px, class probe only
"""

from ssl_jax import config_lib

MODALITY = "video"  # batches hold `video`; the image-only tests skip this config
_FAMILY = "clip_transformer"

_CLIPS = {  # TFDS videos (UCF-101, ...): 64 px frames, larger batches
    "image_size": 64,
    "batch_size": 256,
    "train_steps": 20_000,
    "optimizer": {"learning_rate": 1.5e-4, "warmup_fraction": 0.05},
}
# What differs per data profile (config_lib.PROFILES: the frames' size).
RECIPES = {
    "tiny": {
        "encoder": _FAMILY,
        "batch_size": 64,
        "train_steps": 1000,
        "optimizer": {"warmup_fraction": 0.1},
    },
    "small": {"encoder": _FAMILY, **_CLIPS},
    "medium": {"encoder": _FAMILY, **_CLIPS},
    "large": {"encoder": _FAMILY, **_CLIPS},
}


def _with_label(dataset: str, label: str) -> str:
    """`moving_digits[:options]` with its `label=` option set to `label`."""
    kind, _, arg = dataset.partition(":")
    items = [item for item in arg.split(",") if item and not item.startswith("label=")]
    return f"{kind}:{','.join([*items, f'label={label}'])}"


def get_config(arg: str | None = None):
    options = config_lib.options(arg, dataset="moving_digits")
    config_lib.image_only_options(options, "frames", _FAMILY)
    config, profile = config_lib.start("frames", options)
    config_lib.update(
        config,
        {
            "task_kwargs": {"head_dim": 256},
            # AdamW, warm-up then cosine, lr per 256 clips (linear scaling).
            "optimizer": {
                "name": "adamw",
                "learning_rate": 1e-3,
                "b1": 0.9,
                "b2": 0.95,
                "weight_decay": 0.05,
            },
        },
    )
    recipe = dict(RECIPES[profile])
    encoder = recipe.pop("encoder")
    config_lib.update(config, recipe)
    if options.dataset.startswith("moving_digits"):
        # The same clips labelled by their direction of motion: a second probe.
        config.evals.direction = {
            "type": "linear_probe",
            "dataset": _with_label(options.dataset, "direction"),
        }
    if options.runlocal:
        config.task_kwargs.head_dim = 32
    return config_lib.finish(config, options, profile, encoder=encoder)
