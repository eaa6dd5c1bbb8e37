"""python -m ssl_jax.main --config=configs/rotation.py --workdir=runs/rotation

Rotation prediction (RotNet) pretraining, then a linear probe. On the
embedded `digits` default (a small ConvNet at 16 px, 2 CPU cores) it takes a
few minutes and the probe of the pretrained encoder should clearly beat the
same encoder at random initialisation (see README for the figures).

Variants, picked by the argument after the colon (comma-separated):
  configs/rotation.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/rotation.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px
  configs/rotation.py:dataset=imagefolder:/data ResNet-18 (ImageNet stem), image_size=64
  configs/rotation.py:supervised                also train the supervised baseline
  configs/rotation.py:encoder=vit               the ViT of the MAE config (AdamW), for
                                                same-encoder comparisons; or convnet, resnet18
"""

from ml_collections import ConfigDict

from ssl_jax import config_lib, sweeps


def get_config(arg: str | None = None):
    options = config_lib.parse_arg(
        arg, dataset="digits", runlocal=False, supervised=False, encoder=""
    )
    config = config_lib.base_config()
    config.task = "rotation"
    config.task_kwargs.head_hidden_dims = (256,)
    config.task_kwargs.crop_padding = 2
    config.task_kwargs.flip = False  # digits are not mirror-symmetric
    config.dataset = options.dataset
    config.baselines.supervised = options.supervised
    config.baselines.supervised_task_kwargs.flip = False

    if options.dataset == "digits":
        config.model = "convnet"
        config.image_size = 16
        config.batch_size = 128
        config.train_steps = 600
        config.optimizer.update(name="sgd", learning_rate=0.1, warmup_steps=50, weight_decay=5e-4)
        config.checkpoint_every = 200
        config.eval_every = 100
        config.probe.labels_per_class = (1, 5, 10, 20)
    else:
        # Natural images: ResNet-18, flips are label-preserving again.
        config.model = "resnet18"
        is_small = options.dataset.startswith("tfds:cifar")
        config.model_kwargs.stem = "cifar" if is_small else "imagenet"
        config.image_size = 32 if is_small else 64
        config.task_kwargs.flip = True
        config.baselines.supervised_task_kwargs.flip = True
        config.task_kwargs.crop_padding = 4
        config.batch_size = 256
        config.train_steps = 20_000
        config.optimizer.update(name="sgd", learning_rate=0.1, warmup_steps=500, weight_decay=5e-4)
        config.checkpoint_every = 2_000
        config.log_every = 100
        config.eval_every = 2_000
        config.probe.label_fractions = (0.01, 0.1)

    config.compute_dtype = config_lib.compute_dtype_for(options)
    if options.runlocal:
        config.model = "convnet_tiny" if options.dataset == "digits" else "resnet_tiny"
        config.model_kwargs = ConfigDict()
        config.task_kwargs.head_hidden_dims = ()
        config_lib.apply_runlocal(config)
    if options.encoder:
        config_lib.set_encoder(config, options.encoder, runlocal=options.runlocal)
    return config


def sweep(arg: str | None = None):
    """The learning rate, over seeds: `python experiments/sweep.py
    --config=configs/rotation.py --workdir=runs/rotation_lr`."""
    options = config_lib.parse_arg(
        arg, dataset="digits", runlocal=False, supervised=False, encoder=""
    )
    if options.runlocal:
        return sweeps.grid(**{"optimizer.learning_rate": [0.05, 0.2]})
    return sweeps.product(
        sweeps.grid(**{"optimizer.learning_rate": [0.03, 0.1, 0.3]}), sweeps.grid(seed=[0, 1])
    )
