"""python -m ssl_jax.main --config=configs/mae.py --workdir=runs/mae

Masked-autoencoder (MAE) pretraining of a ViT, then a linear probe. On the
embedded `digits` default (a small ViT at 16 px with 4 px patches, so 16
patches of which 4 are visible, 2 CPU cores) it takes a few minutes, the
probe of the pretrained encoder should beat the same encoder at random
initialisation, and `WORKDIR/visuals/` shows the reconstructions improving.

Variants, picked by the argument after the colon (comma-separated):
  configs/mae.py:runlocal                   tiny ViT, a handful of steps (tests, smoke runs)
  configs/mae.py:dataset=tfds:cifar10       ViT (width 192, depth 12) at 32 px, patch 4
  configs/mae.py:dataset=tfds:imagenet2012  ViT-B/16 at 224 px, the paper's recipe
  configs/mae.py:mask_ratio=0.9             any mask ratio in (0, 1)
  configs/mae.py:encoder=vit                accepted for same-encoder comparisons (MAE's
                                            encoder is always a ViT: it masks patches)
"""

from ml_collections import ConfigDict

from ssl_jax import config_lib


def get_config(arg: str | None = None):
    options = config_lib.parse_arg(
        arg, dataset="digits", runlocal=False, mask_ratio=0.75, encoder="vit"
    )
    if options.encoder != "vit":
        raise ValueError(
            f"MAE masks patches, so its encoder must be a ViT, got encoder={options.encoder!r}; "
            "use encoder=vit."
        )
    config = config_lib.base_config()
    config.task = "mae"
    config.dataset = options.dataset
    config.task_kwargs = ConfigDict(
        {
            "mask_ratio": options.mask_ratio,
            "norm_pix_loss": False,
            "decoder_dim": 128,
            "decoder_depth": 2,
            "decoder_heads": 4,
            "crop_scale": (0.2, 1.0),
            "flip": True,
        }
    )
    # AdamW with MAE's betas; lr is per 256 images (linear scaling), warm-up + cosine.
    config.optimizer.update(name="adamw", lr_scaling="linear", b1=0.9, b2=0.95, weight_decay=0.05)

    if options.dataset == "digits":
        config.image_size = 16
        config_lib.set_encoder(config, "vit")  # the digits ViT other configs' encoder=vit share
        config.task_kwargs.update(decoder_dim=64, decoder_depth=2, decoder_heads=4)
        config.task_kwargs.crop_scale = (0.5, 1.0)  # 8x8 digits: a small crop loses the digit
        config.task_kwargs.flip = False  # digits are not mirror-symmetric
        config.batch_size = 128
        config.train_steps = 2000  # ~5 min on 2 cores; 1000 steps (2.5 min) probe a little worse
        config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
        config.checkpoint_every = 500
        config.eval_every = 500
        config.probe.labels_per_class = (1, 5, 10, 20)
    elif options.dataset == "tfds:imagenet2012":
        # The paper's ViT-B recipe (He et al. 2022, appendix A.1): 800 epochs at
        # batch 4096 is 1.25 M images / 4096 * 800 = 250k steps, 40 epochs warm-up.
        config.model = "vit_base"
        config.model_kwargs = ConfigDict({"patch_size": 16, "pool": "cls"})
        config.image_size = 224
        config.task_kwargs.update(
            norm_pix_loss=True, decoder_dim=512, decoder_depth=8, decoder_heads=16
        )
        config.batch_size = 4096
        config.train_steps = 250_000
        config.optimizer.update(learning_rate=1.5e-4, warmup_steps=12_500)
        config.checkpoint_every = 5_000
        config.log_every = 100
        config.eval_every = 25_000
        config.probe.batch_size = 1024
        config.probe.label_fractions = (0.01, 0.1)
    else:
        # Small natural images (CIFAR-10 and the like): ViT-Ti width at 32 px, patch 4.
        config.model = "vit_tiny"
        config.model_kwargs = ConfigDict({"patch_size": 4, "pool": "cls"})
        config.image_size = 32
        config.task_kwargs.update(
            norm_pix_loss=True, decoder_dim=256, decoder_depth=4, decoder_heads=8
        )
        config.batch_size = 512
        config.train_steps = 40_000
        config.optimizer.update(learning_rate=1.5e-4, warmup_steps=2_000)
        config.checkpoint_every = 2_000
        config.log_every = 100
        config.eval_every = 10_000
        config.probe.label_fractions = (0.01, 0.1)

    config.compute_dtype = config_lib.compute_dtype_for(options)
    if options.runlocal:
        config.model = "vit_test"
        config.model_kwargs = ConfigDict({"patch_size": 4})  # kept overridable
        config.task_kwargs.update(decoder_dim=16, decoder_depth=1, decoder_heads=2)
        config_lib.apply_runlocal(config)
    return config
