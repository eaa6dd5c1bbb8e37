"""python -m ssl_jax.main --config=configs/simsiam.py --workdir=runs/simsiam

SimSiam (Chen & He, CVPR 2021): a siamese network with a predictor and a
stop-gradient, without negatives or momentum encoder. On the embedded
`digits` default (a small ConvNet at 16 px, 2 CPU cores) it takes a few
minutes and the probe of the pretrained encoder should beat the same encoder
at random initialisation (see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/simsiam.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/simsiam.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px, solo-learn's recipe
  configs/simsiam.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's recipe
  configs/simsiam.py:supervised                also train the supervised baseline
  configs/simsiam.py:encoder=vit               the ViT of the other configs' encoder=vit
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/simsiam.yaml):
# SGD at 0.5 x B/256, momentum 0.9, weight decay 1e-5, a warm-up of 10% of the
# run (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), the
# predictor at a fixed learning rate, projector
# 2048 -> 2048, predictor bottleneck 512, its symmetric_weak views (crop
# 8-100%, jitter 0.4/0.4/0.4/0.1, grayscale 0.2, blur 0.5), batch 256.
# The paper's own CIFAR setting (appendix D: SGD 0.03 x B/256, weight decay
# 5e-4, batch 512, no warm-up) collapsed on the photos (effective rank
# 44 -> 7.7 in 500 steps, 7 points below its random init).
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        "views": recipes.simsiam_views(crop_scale=(0.08, 1.0)),
        "projection_dim": 2048,
    },
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.5,
        "warmup_fraction": config_lib.SMALL_WARMUP,
        "weight_decay": 1e-5,
    },
}

RECIPES = {
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "views": (recipes.DIGITS_VIEW, recipes.DIGITS_VIEW),
            "projection_dim": 256,
            "prediction_hidden_dim": 64,
        },
        "baselines": {"supervised_task_kwargs": {"flip": False}},
        "batch_size": 256,
        "train_steps": 300,
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.05,
            "warmup_fraction": 0,
            "weight_decay": 5e-4,
        },
    },
    "small": _SMALL,
    "medium": _SMALL,
    # The paper's ImageNet recipe (section 4): ResNet-50, SGD at 0.05 x B/256,
    # momentum 0.9, weight decay 1e-4, batch 512, 100 epochs, projector 2048,
    # predictor bottleneck 512.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {"views": recipes.simsiam_views(), "projection_dim": 2048},
        "batch_size": 512,
        "train_steps": 250_000,
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.05,
            "warmup_fraction": 0,
            "weight_decay": 1e-4,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "simsiam",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {"prediction_hidden_dim": 512},
            # The reference's --fix-pred-lr (the paper's section 4.4).
            "optimizer": {"lr_scaling": "linear", "fixed_lr_modules": ("predictor",)},
        },
        # The tiny runlocal network barely moves at the recipe's learning rate.
        runlocal={
            "task_kwargs": {"projection_dim": 32, "prediction_hidden_dim": 16},
            "optimizer": {"learning_rate": 2.0},
        },
    )
