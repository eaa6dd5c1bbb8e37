"""python -m ssl_jax.main --config=configs/rotation.py --workdir=runs/rotation

Rotation prediction (RotNet; Gidaris, Singh & Komodakis, ICLR 2018)
pretraining, then a linear probe. On the embedded `digits` default (a small
ConvNet at 16 px, 2 CPU cores) it takes a few minutes and the probe of the
pretrained encoder should beat the same encoder at random initialisation (see
README for the figures).

Variants, picked by the argument after the colon (comma-separated):
  configs/rotation.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/rotation.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/rotation.py:dataset=imagefolder:/data the recipe of the images' size: 32 px photos
                                                get CIFAR's, 64-160 px ones 64 px, larger 224 px
  configs/rotation.py:supervised                also train the supervised baseline
  configs/rotation.py:encoder=vit               the ViT of the MAE config (AdamW), for
                                                same-encoder comparisons; or convnet, resnet18
"""

from ssl_jax import config_lib, sweeps

_NATURAL = {  # photos: ResNets, flips preserve the label
    "encoder": "resnet18",
    "task_kwargs": {"flip": True, "crop_padding": 4},
    "baselines": {"supervised_task_kwargs": {"flip": True}},
    "batch_size": 256,
    "train_steps": 20_000,
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.1,
        "warmup_fraction": config_lib.SMALL_WARMUP,
        "weight_decay": 5e-4,
    },
}

# Photos of 32-160 px. On the ConvNet (encoder=convnet) the convolutions start
# at PyTorch's default init, not He's: on the CIFAR-10 photos (1,000 steps x
# 128) the probe gained 18.3 points over random init against 13.2 with He,
# and its PyTorch peer 19.1 (docs/results.md, "Every method"): a smaller init
# takes larger effective steps under batch norm.
_SMALL_PHOTOS = {**_NATURAL, "family_kwargs": {"convnet": {"conv_init": "torch"}}}

# What differs per data profile (config_lib.PROFILES).
RECIPES = {
    # 8x8 grey digits at 16 px: digits are not mirror-symmetric, no flips.
    "tiny": {
        "encoder": "convnet",
        "task_kwargs": {"flip": False, "crop_padding": 2},
        "baselines": {"supervised_task_kwargs": {"flip": False}},
        "batch_size": 128,
        "train_steps": 600,
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.1,
            "warmup_fraction": 50 / 600,
            "weight_decay": 5e-4,
        },
    },
    "small": _SMALL_PHOTOS,
    "medium": _SMALL_PHOTOS,
    # ImageNet: a ResNet-50 for about 30 epochs of 1.28 M images (RotNet trained ~35).
    "large": {
        **_NATURAL,
        "encoder": "resnet50",
        "task_kwargs": {"flip": True, "crop_padding": 16},
        "batch_size": 512,
        "train_steps": 75_000,
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.1,
            "warmup_fraction": 10 / 300,
            "weight_decay": 1e-4,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "rotation",
        config_lib.options(arg),
        RECIPES,
        common={"task_kwargs": {"head_hidden_dims": (256,)}},
        runlocal={"task_kwargs": {"head_hidden_dims": ()}},
    )


def sweep(arg: str | None = None):
    """The learning rate, over seeds: `python experiments/sweep.py
    --config=configs/rotation.py --workdir=runs/rotation_lr`."""
    options = config_lib.options(arg)
    if options.runlocal:
        return sweeps.grid(**{"optimizer.learning_rate": [0.05, 0.2]})
    return sweeps.product(
        sweeps.grid(**{"optimizer.learning_rate": [0.03, 0.1, 0.3]}), sweeps.grid(seed=[0, 1])
    )
