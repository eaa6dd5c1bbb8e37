"""python -m ssl_jax.main --config=configs/jigsaw.py --workdir=runs/jigsaw

Jigsaw-puzzle (Noroozi & Favaro, ECCV 2016) pretraining, then a linear probe
of the encoder on whole images. On the embedded `digits` default (a small
ConvNet on 4 px tiles of 16 px images, 300 steps x 128, 2 CPU cores) it takes
about 3.5 minutes with the probes; measured (seed 0): probe top-1 0.969
against 0.955 for the same encoder at random initialisation (kNN 0.967
against 0.958), puzzles solved 98.6% of the time at the end. The puzzle is
nearly solved, so on 8x8 digits it teaches little; 3 px tiles (2 px gaps,
`--config.task_kwargs.tile_fraction=0.6`) did worse (0.942).

Variants, picked by the argument after the colon (comma-separated):
  configs/jigsaw.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/jigsaw.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem) on 8 px tiles of 32 px images
  configs/jigsaw.py:dataset=imagefolder:/data the recipe of the images' size: 32 px photos
                                              get CIFAR's, 64-160 px ones 64 px, larger 224 px
  configs/jigsaw.py:permutations=1000         the paper's main permutation-set size (default 100)
  configs/jigsaw.py:supervised                also train the supervised baseline
  configs/jigsaw.py:encoder=vit               the ViT of the MAE config (AdamW); tiles are
                                              rounded to its patch size

The paper's settings (Sec. 3): a 225 px crop of a 256 px image, 3x3 cells of
75 px, a random 64 px tile in each (`crop_fraction` 225/256, `tile_fraction`
64/75 keep these proportions at every size), each tile standardised by its
own mean and std, grey images mixed in and colour channels shifted by 0-2 px
against chromatic aberration; AlexNet's convolutions shared by the 9 tiles,
fc6 (1024) per tile, fc7 (4096) and fc8 on their concatenation; 1000
permutations in its main results (Table 3 compares smaller sets); SGD at
0.01, batch 256, 350k iterations. Departures, common to every recipe: the
project's encoders (ConvNet, ResNets, with batch norm) instead of AlexNet,
so SGD at 0.1 (batch norm takes the larger step) with a warm-up and a cosine
decay; the head is an MLP on the concatenated tile features (no per-tile
fc6); 100 permutations by default (the issue's choice, cheaper to learn at
CPU budgets; `permutations=1000` gives the paper's); the grayscale
probability (30%) is ours; the permutations are chosen by the largest
*minimum* Hamming distance to those already chosen (`selection="maximin"`,
the issue's rule), where the paper's Algorithm 1 sums the distances
(`selection="mean"`).
"""

from ssl_jax import config_lib

_SGD = {"name": "sgd", "learning_rate": 0.1, "weight_decay": 5e-4}

# Photos of 32-160 px: a ResNet-18, the paper's tile proportions. The channel
# shift scales with the tile (2 px of 64 in the paper): under 1 px at 32 px,
# so off there, 1 px on the 15 px tiles of 64 px images.
_SMALL = {
    "encoder": "resnet18",
    "task_kwargs": {"grayscale_probability": 0.3, "channel_jitter": 0},
    "batch_size": 256,
    "train_steps": 20_000,
    "optimizer": {**_SGD, "warmup_fraction": config_lib.SMALL_WARMUP},
}

# What differs per data profile (config_lib.PROFILES).
RECIPES = {
    # 8x8 grey digits at 16 px. The digit fills the image, so no crop (the
    # crop would cut strokes off): 5 px cells and 4 px tiles (a 1 px gap,
    # the nearest the 16 px grid gets to 64/75). The ConvNet keeps full
    # resolution in its first stage (stem stride 1), or a 4 px tile would be
    # 2 px after one convolution. Grey already: no grayscale or channel shift.
    "tiny": {
        "encoder": "convnet",
        "family_kwargs": {"convnet": {"stem_stride": 1}},
        "task_kwargs": {"crop_fraction": 1.0, "tile_fraction": 0.8, "head_hidden_dims": (256,)},
        "batch_size": 128,
        "train_steps": 300,
        "optimizer": {**_SGD, "warmup_fraction": 0.1},
    },
    "small": _SMALL,
    "medium": {**_SMALL, "task_kwargs": {"grayscale_probability": 0.3, "channel_jitter": 1}},
    # ImageNet: a ResNet-50, 55 px tiles of 65 px cells at 224 px, the channel
    # shift of the paper; its 350k iterations of 256 (~70 epochs) and fc7's
    # 4096 units; 1000 permutations as in its main results.
    "large": {
        "encoder": "resnet50",
        "task_kwargs": {
            "grayscale_probability": 0.3,
            "channel_jitter": 2,
            "head_hidden_dims": (4096,),
            "num_permutations": 1000,
        },
        "batch_size": 256,
        "train_steps": 350_000,
        "optimizer": {**_SGD, "weight_decay": 1e-4, "warmup_fraction": 0.02},
    },
}


def get_config(arg: str | None = None):
    options = config_lib.options(arg, permutations=0)
    config = config_lib.from_recipes(
        "jigsaw",
        options,
        RECIPES,
        common={
            "task_kwargs": {
                "num_permutations": 100,
                "permutation_seed": 0,
                "permutation_selection": "maximin",
                "crop_fraction": 225 / 256,
                "tile_fraction": 64 / 75,
                "channel_jitter": 0,
                "grayscale_probability": 0.0,
                "head_hidden_dims": (1024,),
            }
        },
        runlocal={"task_kwargs": {"head_hidden_dims": ()}},
    )
    if options.permutations:
        config.task_kwargs.num_permutations = options.permutations
    return config
