"""python -m ssl_jax.main --config=configs/colorization.py --workdir=runs/colorization

Colorization (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016)
pretraining, then a linear probe: the encoder sees the L channel and predicts
the ab channels as a distribution over the quantised gamut, with class
rebalancing. The embedded `digits` default is grey, so there is no colour to
predict (every target is a = b = 0): it runs in about 3 minutes on 2 CPU
cores, training included, and shows that the pipeline works, not that colour
teaches anything: the probe ends near the random-init one there (0.969
against 0.967 top-1, 300 steps; the collapse monitor warns), so use photos
(`dataset=tfds:cifar10`, an image folder) to see the method learn.
`WORKDIR/visuals/` shows the colourised images.

Variants, picked by the argument after the colon (comma-separated):
  configs/colorization.py:runlocal              tiny model, a handful of steps (smoke runs)
  configs/colorization.py:dataset=tfds:cifar10  ResNet-18 (CIFAR stem), 32 px, 8 x 8 targets
  configs/colorization.py:dataset=imagefolder:/data
                                                the recipe of the images' size (32 px photos get
                                                CIFAR's, 64-160 px ones 64 px, larger 224 px)
  configs/colorization.py:loss=regression       the paper's L2 regression baseline on ab
  configs/colorization.py:supervised            also train the supervised baseline (on RGB:
                                                the supervised task reads all three channels)
  configs/colorization.py:encoder=vit           the ViT of the MAE config (AdamW), on L; or
                                                convnet, resnet18

Sources: the paper (section 2.1, 3.1) and its reference code
(richzhang/colorization: resources/caffe_traininglayers.py for the soft
encoding, rebalancing and grey mask; train/solver.prototxt: Adam, lr 3e-5,
betas (0.9, 0.99), weight decay 1e-3, batch 40, 500k iterations with a 10x
drop at 225k). Departures, for every profile: the project's encoders (a
ConvNet or ResNet, not the paper's dilated VGG) with a small upsampling head;
AdamW with a warm-up and a cosine decay (fractions of the run) instead of a
step drop; the learning rate scaled for the batch (lr per 256 images).
"""

from ssl_jax import config_lib

# Every encoder family sees one channel, L (family_kwargs: whichever family
# the run ends up with, `encoder=` and `runlocal` included).
_ONE_CHANNEL = {family: {"in_channels": 1} for family in ("convnet", "resnet", "vit")}

# AdamW with the reference's betas (0.9, 0.99); its weight decay of 1e-3 was
# coupled L2 in Caffe's Adam; here it is decoupled.
_ADAMW = {"name": "adamw", "lr_scaling": "linear", "b1": 0.9, "b2": 0.99, "weight_decay": 1e-3}

# Photos of 32-160 px: a ResNet-18, flips (a mirrored scene has the same
# colours). 1e-3 per 256 images: the paper's 3e-5 at batch 40 (1.9e-4 per
# 256) is for 500k steps; a run of 20k needs larger steps (departure).
_PHOTOS = {
    "encoder": "resnet18",
    "family_kwargs": _ONE_CHANNEL,
    "task_kwargs": {"flip": True, "crop_padding": 4, "skip_grey": True},
    "batch_size": 256,
    "train_steps": 20_000,
    "optimizer": {**_ADAMW, "learning_rate": 1e-3, "warmup_fraction": config_lib.SMALL_WARMUP},
}

# What differs per data profile (config_lib.PROFILES).
RECIPES = {
    # The grey 8x8 digits at 16 px: the ConvNet with stride 1 gives a 4 x 4
    # map, the 1/4-resolution target itself. Every image is grey, so the
    # reference's grey mask would leave no loss at all: skip_grey is off.
    # No flips (digits are not mirror-symmetric).
    "tiny": {
        "encoder": "convnet",
        "family_kwargs": _ONE_CHANNEL,
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {"flip": False, "crop_padding": 2, "skip_grey": False, "head_dim": 64},
        "batch_size": 128,
        "train_steps": 300,
        "optimizer": {**_ADAMW, "learning_rate": 1e-3, "warmup_fraction": 0.05},
    },
    "small": _PHOTOS,
    # 64 px: the ResNet's ImageNet stem leaves a 2 x 2 map, upsampled to the
    # 16 x 16 target (coarse: the paper's dilated network keeps 1/4 resolution).
    "medium": {**_PHOTOS, "task_kwargs": {**_PHOTOS["task_kwargs"], "crop_padding": 8}},
    # ImageNet: a ResNet-50, 7 x 7 map -> 56 x 56 target (the paper's 1/4 of
    # 224). The reference's 40 x 500k images are 16 epochs; at batch 256 that
    # is 78k steps, at its learning rate per 256 (3e-5 x 256 / 40).
    "large": {
        "encoder": "resnet50",
        "family_kwargs": _ONE_CHANNEL,
        "task_kwargs": {"flip": True, "crop_padding": 16, "skip_grey": True, "head_dim": 256},
        "batch_size": 256,
        "train_steps": 78_000,
        "optimizer": {**_ADAMW, "learning_rate": 1.9e-4, "warmup_fraction": 0.01},
    },
}


def get_config(arg: str | None = None):
    options = config_lib.options(arg, loss="classification")
    if options.finetune:
        raise ValueError(
            "Colorization's encoder takes one channel (L) and fine-tuning trains the RGB "
            "supervised task from it: leave finetune out (the linear probe and kNN still run)."
        )
    return config_lib.from_recipes(
        "colorization",
        options,
        RECIPES,
        common={
            "task_kwargs": {
                "loss": options.loss,
                # The paper's constants (section 2.1): 10 x 10 bins, 5
                # neighbours at sigma 5, lambda 0.5; targets at 1/4 resolution.
                "target_stride": 4,
                "bin_size": 10,
                "neighbours": 5,
                "sigma": 5.0,
                "rebalance": 0.5,
                "head_dim": 128,
            }
        },
        runlocal={"task_kwargs": {"head_dim": 16}},
    )
