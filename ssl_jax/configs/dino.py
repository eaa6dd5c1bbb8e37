"""python -m ssl_jax.main --config=configs/dino.py --workdir=runs/dino

DINO (Caron et al., ICCV 2021): a ViT student matches its momentum teacher's
centred, sharpened outputs across 2 global and several local crops. On the
embedded `digits` default (a small ConvNet, 16 px global and 8 px local
crops, 2 CPU cores) it takes about 5 minutes and the probe of the pretrained
(teacher) encoder should beat the same encoder at random initialisation (see
README). The CIFAR-size recipe trains a ResNet-18 on two 32 px crops (solo-learn's);
the 64 px and ImageNet recipes train ViTs, as the paper does.

Variants, picked by the argument after the colon (comma-separated):
  configs/dino.py:runlocal                  tiny ViT, a handful of steps (tests, smoke runs)
  configs/dino.py:dataset=tfds:cifar10      ResNet-18, two 32 px crops (solo-learn's recipe)
  configs/dino.py:dataset=tfds:imagenet2012 ViT-S/16, 2 x 224 + 8 x 96 px, the paper's recipe
  configs/dino.py:supervised                also train the supervised baseline
  configs/dino.py:encoder=vit               the ViT of the other configs' encoder=vit
"""

from ssl_jax import config_lib


def _views(global_size: int, local_size: int, *, global_scale, local_scale, **overrides):
    """DINO's multi-crop (the paper's appendix, the reference's DataAugmentationDINO):
    BYOL's photometric pair on the two global crops, blur p = 0.5 on the
    local ones."""
    first, second = config_lib.byol_views(crop_scale=global_scale, size=global_size, **overrides)
    local = {**second, "size": local_size, "crop_scale": local_scale}
    local.update(blur_probability=0.5, solarize_probability=0.0)
    return {"global_views": (first, second), "local_view": local}


# Small images: solo-learn's CIFAR recipe (scripts/pretrain/cifar/dino.yaml):
# a ResNet-18, two 32 px crops and no local ones, its asymmetric views without
# blur, head 2048 -> 256 -> 4096 prototypes, LARS 0.3 x B/256 with trust
# coefficient 0.02 and LARC clipping, weight decay 1e-6, student temperature
# 0.1, teacher 0.07, prototypes frozen at the start, a warm-up of 10% of the
# run (config_lib.SMALL_WARMUP; solo-learn: 10 of 1000 epochs), batch 256.
# Departs, for short runs: teacher momentum 0.99, not
# 0.9995 (which averages over ~2,000 steps, four times a 500-step run); the
# teacher temperature warms up from 0.04 over the first 10% of the run and
# the prototypes stay frozen for the first 1%, as the paper's reference
# (30 of 300 epochs; 1 of 100); gradients clipped per tensor at 3.0 as the
# reference (solo-learn does not clip).
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {
        **_views(32, 16, global_scale=(0.08, 1.0), local_scale=(0.05, 0.4), blur_probability=0.0),
        "num_local": 0,
        "out_dim": 4096,
        "base_momentum": 0.99,
        "teacher_temperature": 0.07,
        "teacher_temperature_warmup": 0.1,
        "freeze_prototypes": 0.01,
    },
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": config_lib.solo_learn_lars(0.3, weight_decay=1e-6),
}

# 64 px photos: the ViT recipe (a ViT-Ti/8, 2 x 64 + 6 x 32 px crops, AdamW).
_MEDIUM = {
    "encoder": "vit_tiny",
    "task_kwargs": {
        **_views(64, 32, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)),
        "num_local": 6,
        "out_dim": 4096,
        "base_momentum": 0.99,
    },
    "batch_size": 256,
    "train_steps": 195_300,
    "optimizer": {"learning_rate": 5e-4, "warmup_fraction": 0.01},
}

RECIPES = {
    # Digits at 16 px: 2 x 16 px global and 4 x 8 px local crops that keep
    # enough of the digit, no flips, no grayscale/solarisation. The ConvNet:
    # the small digits ViT, whose random features are nearly the same for
    # every image, collapsed under DINO in every setting tried (its features'
    # effective rank fell from 5 to 2.4, kNN stayed at its random init's
    # 0.64), while the ConvNet learns (probe 0.983 vs 0.958 at random init).
    "tiny": {
        "encoder": "convnet",
        "model_kwargs": {"stem_stride": 1},
        "task_kwargs": {
            **_views(
                16,
                8,
                global_scale=(0.5, 1.0),
                local_scale=(0.2, 0.5),
                flip=False,
                grayscale_probability=0.0,
                solarize_probability=0.0,
                blur_probability=0.0,
            ),
            "num_local": 4,
            "out_dim": 512,
            "hidden_dim": 256,
            "bottleneck_dim": 64,
            "base_momentum": 0.99,
            "head_init": "lecun",  # the init this recipe was tuned with (tasks/dino.py)
        },
        "baselines": {"supervised_task_kwargs": {"flip": False}},
        "batch_size": 128,
        "train_steps": 600,
        "optimizer": {"learning_rate": 1e-3, "warmup_fraction": 50 / 600},
    },
    "small": _SMALL,
    "medium": _MEDIUM,
    # The paper's ViT-S/16 recipe (section 4, appendix; the reference's
    # defaults): 2 x 224 + 8 x 96 px crops, K = 65536, AdamW at 5e-4 x B/256
    # with 10 warm-up epochs, weight decay 0.04, gradient clipping 3.0, batch
    # 1024, 300 epochs, teacher momentum 0.996 -> 1, teacher temperature
    # 0.04 -> 0.07 over 30 epochs, student 0.1, centre momentum 0.9.
    "large": {
        "encoder": "vit_small",
        "task_kwargs": {
            **_views(224, 96, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)),
            "num_local": 8,
            "out_dim": 65536,
            "teacher_temperature": 0.07,
            "teacher_temperature_warmup": 0.1,  # 30 of 300 epochs
            "base_momentum": 0.996,
            "freeze_prototypes": 1 / 300,  # the reference's first epoch
        },
        "batch_size": 1024,
        "train_steps": 375_300,
        "optimizer": {"learning_rate": 5e-4, "warmup_fraction": 10 / 300},
    },
}


def get_config(arg: str | None = None):
    return config_lib.from_recipes(
        "dino",
        config_lib.options(arg),
        RECIPES,
        common={
            "task_kwargs": {
                "hidden_dim": 2048,
                "bottleneck_dim": 256,
                "student_temperature": 0.1,
                "teacher_temperature": 0.04,
                "warmup_teacher_temperature": 0.04,
                "teacher_temperature_warmup": 0.0,
                "center_momentum": 0.9,
                "freeze_prototypes": 0.0,
            },
            "optimizer": {
                "name": "adamw",
                "lr_scaling": "linear",
                "b1": 0.9,
                "b2": 0.999,
                "weight_decay": 0.04,
                "grad_clip_norm": 3.0,
                "grad_clip": "per_tensor",  # the reference's clip_gradients
            },
        },
        runlocal={
            "task_kwargs": {
                "num_local": 2,
                "out_dim": 32,
                "hidden_dim": 16,
                "bottleneck_dim": 8,
                "head_init": "lecun",
                **_views(16, 8, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4)),
            }
        },
    )
