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
"""

from ssl_jax import config_lib


def augment_kwargs(**overrides) -> dict:
    """Keyword arguments of `ssl_jax.data.augment.simclr_view`: the paper's
    appendix A recipe unless overridden."""
    return {
        "crop_scale": (0.08, 1.0),
        "crop_ratio": (3 / 4, 4 / 3),
        "flip": True,
        "color_strength": 1.0,
        "color_probability": 0.8,
        "grayscale_probability": 0.2,
        "blur_probability": 0.0,
        "blur_sigma": (0.1, 2.0),
        "solarize_probability": 0.0,
        **overrides,
    }


# CIFAR-10 (and other small natural images): the recipe of the paper's
# appendix B.9 and of the reference implementation's CIFAR command
# (google-research/simclr README): ResNet with a 3x3 stride-1 stem, batch 512,
# LARS at 1.0 x batch / 256, weight decay 1e-4 (the README's; the paper lists
# 1e-6), temperature 0.5, colour strength 0.5, no blur (32 px images are
# blurry already), 1000 epochs. Departs: a warm-up of 10% of the run
# (config_lib.SMALL_WARMUP), not the reference's 10 of 1000 epochs.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        "projection_hidden_dims": (512,),
        "projection_dim": 128,
        "temperature": 0.5,
        "augment_kwargs": augment_kwargs(color_strength=0.5),
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
    # Grey 8x8 digits upsampled to 16 px: crops must keep most of the digit (a
    # 8% crop of a digit is a stroke), colour jitter is mild since there is no
    # colour to learn invariance to, and no flips (digits are not
    # mirror-symmetric).
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            "projection_hidden_dims": (256,),
            "projection_dim": 64,
            "temperature": 0.5,
            "augment_kwargs": augment_kwargs(
                crop_scale=(0.3, 1.0), flip=False, color_strength=0.5, grayscale_probability=0.0
            ),
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
    # The paper's ImageNet recipe (section 2.3, appendix B): batch 4096, LARS
    # at 0.3 x batch / 256, weight decay 1e-6, temperature 0.1, blur on half
    # the views; SimCLR v2's 3-layer projection head.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {
            "projection_hidden_dims": (2048, 2048),
            "projection_dim": 128,
            "temperature": 0.1,
            "augment_kwargs": augment_kwargs(blur_probability=0.5),
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
        runlocal={
            "task_kwargs": {
                "projection_hidden_dims": (32,),
                "projection_dim": 16,
                "augment_kwargs": {"blur_probability": 0.0},
            }
        },
    )
