"""python -m ssl_jax.main --config=configs/simclr.py --workdir=runs/simclr

SimCLR (contrastive views, NT-Xent over the global batch) pretraining, then a
linear probe. On the embedded `digits` default (a small ConvNet at 16 px,
2 CPU cores) it takes a few minutes and the probe of the pretrained encoder
should beat the same encoder at random initialisation (see README).

Variants, picked by the argument after the colon (comma-separated):
  configs/simclr.py:runlocal                  tiny model, a handful of steps (tests, smoke runs)
  configs/simclr.py:dataset=tfds:cifar10      ResNet-18 (CIFAR stem), 32 px, paper's CIFAR recipe
  configs/simclr.py:dataset=tfds:imagenet2012 ResNet-50, 224 px, the paper's ImageNet recipe
  configs/simclr.py:supervised                also train the supervised baseline
  configs/simclr.py:encoder=vit               the ViT of the MAE config (AdamW), for
                                              same-encoder comparisons; or convnet, resnet18
"""

from ml_collections import ConfigDict

from ssl_jax import config_lib


def _augment(**overrides) -> ConfigDict:
    """Keyword arguments of `ssl_jax.data.augment.simclr_view`."""
    kwargs = ConfigDict(
        {
            "crop_scale": (0.08, 1.0),
            "crop_ratio": (3 / 4, 4 / 3),
            "flip": True,
            "color_strength": 1.0,
            "color_probability": 0.8,
            "grayscale_probability": 0.2,
            "blur_probability": 0.0,
            "blur_sigma": (0.1, 2.0),
            "solarize_probability": 0.0,
        }
    )
    kwargs.update(overrides)
    return kwargs


def get_config(arg: str | None = None):
    options = config_lib.parse_arg(
        arg, dataset="digits", runlocal=False, supervised=False, encoder=""
    )
    config = config_lib.base_config()
    config.task = "simclr"
    config.dataset = options.dataset
    config.baselines.supervised = options.supervised
    # The online linear probe's classes: None = the dataset's (set by
    # experiment.run); 0 turns the probe off.
    config.task_kwargs.num_classes = None

    if options.dataset == "digits":
        # Grey 8x8 digits upsampled to 16 px: crops must keep most of the digit
        # (a 8% crop of a digit is a stroke), colour jitter is mild since there
        # is no colour to learn invariance to, and no flips (digits are not
        # mirror-symmetric).
        config.model = "convnet"
        config.model_kwargs.stem_stride = 1
        config.image_size = 16
        config.task_kwargs.projection_hidden_dims = (256,)
        config.task_kwargs.projection_dim = 64
        config.task_kwargs.temperature = 0.5
        config.task_kwargs.augment_kwargs = _augment(
            crop_scale=(0.3, 1.0), flip=False, color_strength=0.5, grayscale_probability=0.0
        )
        config.batch_size = 256
        config.train_steps = 300
        config.optimizer.update(
            name="lars", learning_rate=1.0, lr_scaling="linear", warmup_steps=30, weight_decay=1e-6
        )
        config.checkpoint_every = 100
        config.eval_every = 100
        config.probe.labels_per_class = (1, 5, 10, 20)
        config.baselines.supervised_task_kwargs.flip = False
    elif options.dataset == "tfds:imagenet2012":
        # The paper's ImageNet recipe (section 2.3, appendix B): batch 4096,
        # LARS at 0.3 x batch / 256, weight decay 1e-6, temperature 0.1, blur
        # on half the views; SimCLR v2's 3-layer projection head.
        config.model = "resnet50"
        config.model_kwargs.stem = "imagenet"
        config.image_size = 224
        config.task_kwargs.projection_hidden_dims = (2048, 2048)
        config.task_kwargs.projection_dim = 128
        config.task_kwargs.temperature = 0.1
        config.task_kwargs.augment_kwargs = _augment(color_strength=1.0, blur_probability=0.5)
        config.batch_size = 4096
        config.train_steps = 31_200  # 100 epochs of 1.28 M images
        config.optimizer.update(
            name="lars",
            learning_rate=0.3,
            lr_scaling="linear",
            warmup_steps=3_120,
            weight_decay=1e-6,
        )
        config.checkpoint_every = 1_000
        config.log_every = 100
        config.eval_every = 5_000
        config.probe.label_fractions = (0.01, 0.1)
    else:
        # CIFAR-10 (and other small natural images): the recipe of the
        # paper's appendix B.9 and of the reference implementation's CIFAR
        # command (google-research/simclr README): ResNet with a 3x3 stride-1
        # stem, batch 512, LARS at 1.0 x batch / 256, weight decay 1e-4 (the
        # README's; the paper lists 1e-6), temperature 0.5, colour strength
        # 0.5, no blur (32 px images are blurry already), 1000 epochs.
        config.model = "resnet18"
        is_small = options.dataset.startswith("tfds:cifar") or options.dataset.startswith(
            "synthetic"
        )
        config.model_kwargs.stem = "cifar" if is_small else "imagenet"
        config.image_size = 32 if is_small else 64
        config.task_kwargs.projection_hidden_dims = (512,)
        config.task_kwargs.projection_dim = 128
        config.task_kwargs.temperature = 0.5
        config.task_kwargs.augment_kwargs = _augment(color_strength=0.5)
        config.batch_size = 512
        config.train_steps = 97_600  # 1000 epochs of 50 000 images
        config.optimizer.update(
            name="lars", learning_rate=1.0, lr_scaling="linear", warmup_steps=980, weight_decay=1e-4
        )
        config.checkpoint_every = 2_000
        config.log_every = 100
        config.eval_every = 10_000
        config.probe.label_fractions = (0.01, 0.1)

    config.compute_dtype = config_lib.compute_dtype_for(options)
    if options.runlocal:
        config.model = "convnet_tiny" if options.dataset == "digits" else "resnet_tiny"
        config.model_kwargs = ConfigDict()
        config.task_kwargs.projection_hidden_dims = (32,)
        config.task_kwargs.projection_dim = 16
        config.task_kwargs.augment_kwargs.blur_probability = 0.0
        config_lib.apply_runlocal(config)
    if options.encoder:
        config_lib.set_encoder(config, options.encoder, runlocal=options.runlocal)
    return config
