"""python -m ssl_jax.main --config=configs/simclr.py --workdir=runs/simclr

SimCLR (Chen et al., ICML 2020: contrastive views, NT-Xent over the global
batch) pretraining, then a linear probe. On the embedded `digits` default (a
small ConvNet at 16 px, 2 CPU cores) it takes a few minutes and the probe of
the pretrained encoder should beat the same encoder at random initialisation
(see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/simclr.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/simclr.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px, paper's CIFAR recipe
  configs/simclr.py:dataset=imagefolder:/data the recipe of the images' size (32 px photos: CIFAR's)
  configs/simclr.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's ImageNet recipe
  configs/simclr.py:supervised                also train the supervised baseline
  configs/simclr.py:encoder=vit               the ViT of the MAE config (AdamW), for
                                              same-encoder comparisons; or convnet, resnet18

Where the recipes depart from the paper (each recipe's comment says more):
the digits' views crop 30-100% without flips or grayscale; the CIFAR-size
recipe warms up for 10% of the run (not 10 of 1000 epochs) and the medium
profile reuses it; the ImageNet recipe has SimCLR v2's 3-layer projection
head. The views are `recipes.simclr_views` (the paper's appendix A).
"""

from ssl_jax import config_lib
from ssl_jax.data.augment import recipes

# CIFAR-10 (and other small natural images): the recipe of the paper's
# appendix B.9 and of the reference implementation's CIFAR command
# (google-research/simclr README): ResNet with a 3x3 stride-1 stem, batch 512,
# LARS at 1.0 x batch / 256, weight decay 1e-4 (the README's; the paper lists
# 1e-6), temperature 0.5, the views of `recipes.simclr_views` at colour
# strength 0.5 without blur (32 px images are blurry already), 1000 epochs.
# Departs: a warm-up of 10% of the run (config_lib.SMALL_WARMUP), not the
# reference's 10 of 1000 epochs; the "medium" profile (up to 160 px, run at
# 64 px) keeps this recipe, where the paper has none.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        "projection_hidden_dims": (512,),
        "projection_dim": 128,
        "temperature": 0.5,
        "views": recipes.simclr_views(strength=0.5, blur_probability=0.0),
    },
    "batch_size": 512,
    "train_steps": 97_600,  # 1000 epochs of 50 000 images
    "optimizer": {
        "name": "lars",
        "learning_rate": 1.0,
        "warmup_fraction": config_lib.SMALL_WARMUP,
        "weight_decay": 1e-4,
    },
}

RECIPES = {
    # Grey 8x8 digits upsampled to 16 px (departs from the paper's views):
    # crops keep 30-100% of the digit (an 8% crop of a digit is a stroke), no
    # flips (digits are not mirror-symmetric), no grayscale, the jitter of
    # colour strength 0.5 (`recipes.DIGITS_VIEW`).
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "projection_hidden_dims": (256,),
            "projection_dim": 64,
            "temperature": 0.5,
            "views": (recipes.DIGITS_VIEW, recipes.DIGITS_VIEW),
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
    # The paper's ImageNet recipe (section 2.3, appendices A and B): batch
    # 4096, LARS at 0.3 x batch / 256, weight decay 1e-6, temperature 0.1,
    # `recipes.simclr_views()` (colour strength 1, blur on half the views),
    # 100 epochs with 10 of warm-up. Departs: SimCLR v2's 3-layer projection
    # head, not v1's 2 layers.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {
            "projection_hidden_dims": (2048, 2048),
            "projection_dim": 128,
            "temperature": 0.1,
            "views": recipes.simclr_views(),
        },
        "batch_size": 4096,
        "train_steps": 31_200,  # 100 epochs of 1.28 M images
        "optimizer": {
            "name": "lars",
            "learning_rate": 0.3,
            "warmup_fraction": 0.1,
            "weight_decay": 1e-6,
        },
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "simclr",
        config_lib.options(arg),
        RECIPES,
        # The online linear probe's classes: None = the dataset's (set by
        # experiment.run); 0 turns the probe off.
        common={"task_kwargs": {"num_classes": None}, "optimizer": {"lr_scaling": "linear"}},
        runlocal={"task_kwargs": {"projection_hidden_dims": (32,), "projection_dim": 16}},
    )
