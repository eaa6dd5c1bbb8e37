"""python -m ssl_jax.main --config=configs/moco_v3.py --workdir=runs/moco_v3

MoCo v3 (Chen, Xie & He, ICCV 2021): queries contrasted with a momentum
encoder's keys of the global batch. On the embedded `digits` default (a small
ConvNet at 16 px, 2 CPU cores) it takes a few minutes and the probe of the
pretrained encoder should beat the same encoder at random initialisation
(see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/moco_v3.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/moco_v3.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/moco_v3.py:dataset=tfds:imagenet2012 ViT-S/16, 224 px, the paper's recipe
  configs/moco_v3.py:supervised                also train the supervised baseline
  configs/moco_v3.py:encoder=vit               a ViT (with its patch projection frozen)
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/mocov3.yaml):
# LARS 0.3 x B/256 with trust coefficient 0.02 and LARC clipping, weight decay
# 1e-6, tau 0.2, base momentum 0.99, projector 4096 -> 256, predictor 4096,
# its asymmetric views without blur, a warm-up of 10% of the run
# (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), batch 256.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {"views": recipes.cifar_views(), "projection_hidden_dims": (4096,)},
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": config_lib.solo_learn_lars(0.3, weight_decay=1e-6),
}

RECIPES = {
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "views": (recipes.DIGITS_VIEW, recipes.DIGITS_VIEW),
            "projection_hidden_dims": (256,),
            "projection_dim": 64,
            "prediction_hidden_dim": 256,
        },
        "baselines": {"supervised_task_kwargs": {"flip": False}},
        "batch_size": 256,
        "train_steps": 300,
        "optimizer": {
            "name": "lars",
            "learning_rate": 1.0,
            "warmup_fraction": 0.1,
            "weight_decay": 1e-6,
        },
    },
    "small": _SMALL,
    "medium": _SMALL,
    # The paper's ViT-S recipe (table 1, appendix A): ViT-S/16 with a frozen
    # random patch projection, batch 4096, AdamW at 1.5e-4 x B/256, weight
    # decay 0.1, 300 epochs with 40 warm-up, tau 0.2, momentum 0.99 -> 1,
    # projector 3 layers (4096 -> 256), predictor 2 layers.
    "large": {
        "encoder": "vit_small",
        "task_kwargs": {"views": recipes.byol_views()},
        "batch_size": 4096,
        "train_steps": 93_750,
        "optimizer": {
            "name": "adamw",
            "learning_rate": 1.5e-4,
            "b1": 0.9,
            "b2": 0.999,
            "warmup_fraction": 40 / 300,
            "weight_decay": 0.1,
        },
    },
}


def get_config(arg: str | None = None):
    config = config_lib.from_recipes(
        "moco_v3",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {
                "projection_hidden_dims": (4096, 4096),
                "projection_dim": 256,
                "prediction_hidden_dim": 4096,
                "temperature": 0.2,
                "base_momentum": 0.99,
                "predictor_last_norm": False,
            },
            "optimizer": {"lr_scaling": "linear"},
        },
        runlocal={
            "task_kwargs": {
                "projection_hidden_dims": (32,),
                "projection_dim": 16,
                "prediction_hidden_dim": 32,
            }
        },
    )
    if "patch_size" in config.model_kwargs:
        # A ViT: MoCo v3's frozen patch projection, a 3-layer projector and a
        # predictor ending in batch norm (the reference's MoCo_ViT).
        config.model_kwargs.frozen_patch_embed = True
        config.task_kwargs.predictor_last_norm = True
        if len(config.task_kwargs.projection_hidden_dims) == 1:
            config.task_kwargs.projection_hidden_dims *= 2
    return config
