"""python -m ssl_jax.main --config=configs/byol.py --workdir=runs/byol

BYOL (Grill et al., NeurIPS 2020): an online network predicts a momentum
target's projection of another view, without negatives. On the embedded
`digits` default (a small ConvNet at 16 px, 2 CPU cores) it takes a few
minutes and the probe of the pretrained encoder should beat the same encoder
at random initialisation (see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/byol.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/byol.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/byol.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's recipe
  configs/byol.py:supervised                also train the supervised baseline
  configs/byol.py:encoder=vit               the ViT of the other configs' encoder=vit
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml):
# LARS 1.0 x B/256 with trust coefficient 0.02 and each step clipped to plain
# SGD's (LARC), weight decay 1e-5, base momentum 0.99, its asymmetric views
# without blur, a warm-up of 10% of the run
# (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), batch 256.
# Departs: heads initialised as BYOL's reference (Haiku) does, not PyTorch.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {"views": recipes.cifar_views(), "base_momentum": 0.99},
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": config_lib.solo_learn_lars(1.0, weight_decay=1e-5),
}

RECIPES = {
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "views": (recipes.DIGITS_VIEW, recipes.DIGITS_VIEW),
            "projection_hidden_dim": 256,
            "projection_dim": 64,
            "prediction_hidden_dim": 256,
            "base_momentum": 0.99,
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
    # The paper's ImageNet recipe (section 3.3, appendix C): ResNet-50, batch
    # 4096, LARS at 0.2 x B/256, weight decay 1.5e-6, 10 warm-up epochs,
    # 1000 epochs, base momentum 0.996, projector 4096 -> 256, predictor 4096.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {"views": recipes.byol_views(), "base_momentum": 0.996},
        "batch_size": 4096,
        "train_steps": 312_500,
        "optimizer": {
            "name": "lars",
            "learning_rate": 0.2,
            "warmup_fraction": 0.01,
            "weight_decay": 1.5e-6,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "byol",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {
                "projection_hidden_dim": 4096,
                "projection_dim": 256,
                "prediction_hidden_dim": 4096,
            },
            "optimizer": {"lr_scaling": "linear"},
        },
        runlocal={
            "task_kwargs": {
                "projection_hidden_dim": 32,
                "projection_dim": 16,
                "prediction_hidden_dim": 32,
            }
        },
    )
