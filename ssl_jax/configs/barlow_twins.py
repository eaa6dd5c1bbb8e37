"""python -m ssl_jax.main --config=configs/barlow_twins.py --workdir=runs/barlow_twins

Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of two views'
embeddings is pushed to the identity. On the embedded `digits` default (a
small ConvNet at 16 px, 2 CPU cores) it takes a few minutes and the probe of
the pretrained encoder should beat the same encoder at random initialisation
(see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/barlow_twins.py:runlocal                  tiny model, a handful of steps
  configs/barlow_twins.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/barlow_twins.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's recipe
  configs/barlow_twins.py:supervised                also train the supervised baseline
  configs/barlow_twins.py:encoder=vit               the ViT of the other configs' encoder=vit
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/barlow.yaml):
# LARS 0.3 x B/256 with trust coefficient 0.02 and LARC clipping, weight decay
# 1e-4, projector 3 x 2048, lambda 0.0051, loss scaled by 0.1, its asymmetric
# views without blur, a warm-up of 10% of the run
# (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), batch 256.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        "views": recipes.cifar_views(),
        "projection_dims": (2048, 2048, 2048),
        "loss_scale": 0.1,
    },
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": config_lib.solo_learn_lars(0.3, weight_decay=1e-4),
}

RECIPES = {
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "views": (recipes.DIGITS_VIEW, recipes.DIGITS_VIEW),
            "projection_dims": (512, 512, 512),
        },
        "baselines": {"supervised_task_kwargs": {"flip": False}},
        "batch_size": 256,
        "train_steps": 300,
        "optimizer": {
            "name": "lars",
            "learning_rate": 0.3,
            "warmup_fraction": 0.1,
            "weight_decay": 1e-6,
        },
    },
    "small": _SMALL,
    "medium": _SMALL,
    # The paper's ImageNet recipe (section 2, appendix): ResNet-50, projector
    # 3 x 8192, batch 2048, LARS at 0.2 x B/256 for the weights and 0.0048 x
    # B/256 for biases and batch norm (bias_lr_scale 0.024; they are excluded
    # from LARS and decay), weight decay 1.5e-6, 10 warm-up epochs, 1000
    # epochs, lambda 0.0051.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {"views": recipes.byol_views(), "projection_dims": (8192, 8192, 8192)},
        "batch_size": 2048,
        "train_steps": 625_000,
        "optimizer": {
            "name": "lars",
            "learning_rate": 0.2,
            "warmup_fraction": 0.01,
            "weight_decay": 1.5e-6,
            "bias_lr_scale": 0.024,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "barlow_twins",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {"lambd": 0.0051, "loss_scale": 1.0},
            "optimizer": {"lr_scaling": "linear"},
        },
        runlocal={"task_kwargs": {"projection_dims": (32, 32)}},
    )
