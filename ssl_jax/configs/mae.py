"""python -m ssl_jax.main --config=configs/mae.py --workdir=runs/mae

Masked-autoencoder (MAE; He et al., CVPR 2022) pretraining of a ViT, then a
linear probe. On the embedded `digits` default (a small ViT at 16 px with
4 px patches, so 16 patches of which 4 are visible, 2 CPU cores) it takes a
few minutes, the probe of the pretrained encoder should beat the same encoder
at random initialisation, and `WORKDIR/visuals/` shows the reconstructions
improving.

Variants, picked by the argument after the colon (comma-separated):
  configs/mae.py:runlocal                   tiny ViT, a handful of steps (tests, smoke runs)
  configs/mae.py:dataset=tfds:cifar10       ViT (width 192, depth 12) at 32 px, patch 4
  configs/mae.py:dataset=tfds:imagenet2012  ViT-B/16 at 224 px, the paper's recipe
  configs/mae.py:mask_ratio=0.9             any mask ratio in (0, 1)
  configs/mae.py:encoder=vit                accepted for same-encoder comparisons (MAE's
                                            encoder is always a ViT: it masks patches)
"""

from ssl_jax import config_lib

# Small natural images (CIFAR-10 and the like): ViT-Ti width, 4 px patches at
# 32 px (8 px at 64 px), the paper's normalised-pixel targets, mask ratio
# 0.75. solo-learn's CIFAR recipe (scripts/pretrain/cifar/mae.yaml: ViT-S/4,
# decoder 512 x 8, AdamW 2e-4 x B/256 with betas (0.9, 0.95), weight decay
# 0.05, 1000 epochs). Departs: a ViT-Ti encoder and a 256 x 4 decoder (a
# CPU-sized model), and 1e-3 x B/256 with a warm-up of 10% of the run
# (config_lib.SMALL_WARMUP): the small step is for 1000 epochs, and at a few
# thousand steps the digits recipe's 1e-3 is what moves the ViT; the probe
# reads the mean of the patch tokens (`pool="gap"`, on any ViT), which the
# paper finds as good as its class token: on the CIFAR-10 photos (vit_mini
# with a 128 x 2 decoder, 1,000 steps x 128; not measured on this recipe's
# ViT-Ti) the class token gained 1.9 points over random init, the mean 6.5
# (docs/runs/evidence_cifar/mae_class_token, .../mae).
_SMALL = {
    "encoder": "vit_tiny",
    "family_kwargs": {"vit": {"pool": "gap"}},
    "task_kwargs": {
        "norm_pix_loss": True,
        "decoder_dim": 256,
        "decoder_depth": 4,
        "decoder_heads": 8,
    },
    "batch_size": 512,
    "train_steps": 40_000,
    "optimizer": {"learning_rate": 1e-3, "warmup_fraction": config_lib.SMALL_WARMUP},
}

RECIPES = {
    "tiny": {
        "encoder": "vit",  # the digits ViT that the other configs' encoder=vit share
        "task_kwargs": {
            "decoder_dim": 64,
            "crop_scale": (0.5, 1.0),  # 8x8 digits: a small crop loses the digit
            "flip": False,  # digits are not mirror-symmetric
        },
        "batch_size": 128,
        "train_steps": 2000,  # ~5 min on 2 cores; 1000 steps (2.5 min) probe a little worse
        "optimizer": {"learning_rate": 1e-3, "warmup_fraction": 0.05},
    },
    "small": _SMALL,
    "medium": _SMALL,
    # The paper's ViT-B recipe (He et al. 2022, appendix A.1): 800 epochs at
    # batch 4096 is 1.25 M images / 4096 * 800 = 250k steps, 40 epochs warm-up.
    "large": {
        "encoder": "vit_base",
        "task_kwargs": {
            "norm_pix_loss": True,
            "decoder_dim": 512,
            "decoder_depth": 8,
            "decoder_heads": 16,
        },
        "batch_size": 4096,
        "train_steps": 250_000,
        "optimizer": {"learning_rate": 1.5e-4, "warmup_fraction": 0.05},
    },
}


def get_config(arg: str | None = None):
    options = config_lib.options(arg, mask_ratio=0.75)
    if options.encoder and not options.encoder.startswith("vit"):
        raise ValueError(
            f"MAE masks patches, so its encoder must be a ViT, got encoder={options.encoder!r}; "
            "use encoder=vit."
        )
    return config_lib.from_recipes(
        "mae",
        options,
        RECIPES,
        common={
            "task_kwargs": {
                "mask_ratio": options.mask_ratio,
                "norm_pix_loss": False,
                "decoder_dim": 128,
                "decoder_depth": 2,
                "decoder_heads": 4,
                "crop_scale": (0.2, 1.0),
                "flip": True,
            },
            # AdamW with MAE's betas; lr per 256 images (linear scaling), warm-up + cosine.
            "optimizer": {
                "name": "adamw",
                "lr_scaling": "linear",
                "b1": 0.9,
                "b2": 0.95,
                "weight_decay": 0.05,
            },
        },
        runlocal={"task_kwargs": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}},
    )
