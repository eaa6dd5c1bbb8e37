"""python -m ssl_jax.main --config=configs/vicreg.py --workdir=runs/vicreg

VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and
covariance terms on two views' embeddings (weights 25 / 25 / 1). On the
embedded `digits` default (a small ConvNet at 16 px, 2 CPU cores) it takes a
few minutes and the probe of the pretrained encoder should beat the same
encoder at random initialisation (see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/vicreg.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/vicreg.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/vicreg.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's recipe
  configs/vicreg.py:supervised                also train the supervised baseline
  configs/vicreg.py:encoder=vit               the ViT of the other configs' encoder=vit
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/vicreg.yaml):
# LARS 0.3 x B/256 with trust coefficient 0.02 and LARC clipping, weight decay
# 1e-4, expander 3 x 2048, weights 25 / 25 / 1 (its variance term sums the two
# views' terms where this project averages them, as the paper's code does:
# weight 50 here), its own views (crop 20-100%, jitter 0.4/0.4/0.2/0.1,
# grayscale 0.2, solarisation 0.1 on both views, no blur), a warm-up of 10%
# of the run (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), batch 256.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        "views": recipes.byol_views(
            crop_scale=(0.2, 1.0), blur_probability=0.0, solarize_probability=0.1
        ),
        "expander_dims": (2048, 2048, 2048),
        "variance_weight": 50.0,
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
            "expander_dims": (512, 512, 512),
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
    # The paper's ImageNet recipe (section 4.1, appendix C): ResNet-50,
    # expander 3 x 8192, batch 2048, LARS at 0.2 x B/256, weight decay 1e-6,
    # 10 warm-up epochs, 1000 epochs.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {"views": recipes.byol_views(), "expander_dims": (8192, 8192, 8192)},
        "batch_size": 2048,
        "train_steps": 625_000,
        "optimizer": {
            "name": "lars",
            "learning_rate": 0.2,
            "warmup_fraction": 0.01,
            "weight_decay": 1e-6,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "vicreg",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {
                "invariance_weight": 25.0,
                "variance_weight": 25.0,
                "covariance_weight": 1.0,
            },
            "optimizer": {"lr_scaling": "linear"},
        },
        runlocal={"task_kwargs": {"expander_dims": (32, 32)}},
    )
