"""Shared pieces of the config files in `configs/`.

A config file defines `get_config(arg)`; `arg` is the text after the colon in
`--config=configs/rotation.py:dataset=tfds:cifar10,runlocal`. It is a
comma-separated list of `key=value` options and bare flags.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

from ssl_jax import optim


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
    """`"dataset=tfds:cifar10,runlocal"` -> {dataset: "tfds:cifar10", runlocal: True}.

    Only keys present in `defaults` are accepted, so a misspelt option fails
    instead of being silently ignored. Values keep the type of their default.
    """
    options = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"Unknown config option {key!r} in {arg!r}; known options: {sorted(defaults)}."
            )
        default = defaults[key]
        if not sep:
            options[key] = True
        elif isinstance(default, bool):
            options[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            options[key] = int(value)
        elif isinstance(default, float):
            options[key] = float(value)
        else:
            options[key] = value
    return ConfigDict(options)


def base_config() -> ConfigDict:
    """Every field the shared loop, the evaluator and `main` read.

    Config files start from this and change what they need; the result is
    locked by `main`, so `--config.typo=1` is an error.
    """
    config = ConfigDict()
    config.task = "rotation"
    config.task_kwargs = ConfigDict()
    config.model = "convnet"
    config.model_kwargs = ConfigDict()

    config.dataset = "digits"
    config.data_dir = ""  # tfds data_dir; "" = tfds' default (~/tensorflow_datasets)
    config.image_size = 32
    config.seed = 0

    # "bfloat16": layers compute in bfloat16, parameters and optimizer state
    # stay float32 (models/precision.py); for GPUs and TPUs.
    config.compute_dtype = "float32"
    config.batch_size = 256  # global, over all devices and processes
    config.train_steps = 1000
    config.optimizer = optim.default_config()

    # Per-device peak TFLOP/s for the `mfu` figure in metrics.jsonl; 0 = the
    # data sheet's for known GPUs/TPUs in bfloat16 (perf.py), else no mfu.
    config.peak_tflops = 0.0
    config.nonfinite = "stop"  # NaN/Inf loss or gradient: "stop" the run, or "skip" the step
    # With "skip": the run fails once more than this fraction of train_steps was skipped.
    config.max_skipped_fraction = 0.1
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 3

    # Periodic kNN accuracy of the frozen features during pretraining (0 = off);
    # its figure goes into metrics.jsonl, the final one into results.json.
    config.eval_every = 0
    config.knn = ConfigDict({"k": 20, "temperature": 0.07})

    config.probe = ConfigDict()
    config.probe.dataset = ""  # "" = the pretraining dataset
    config.probe.batch_size = 256
    config.probe.l2_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    config.probe.holdout_fraction = 0.2
    config.probe.steps = 500
    # Extra probes on a few labels per class (mean over seeded draws): where
    # pretrained features should matter most.
    config.probe.labels_per_class = (10,)
    config.probe.label_fractions = ()  # e.g. (0.01, 0.1): 1% and 10% of the labels, balanced
    config.probe.few_label_draws = 3

    config.baselines = ConfigDict()
    config.baselines.random_init = True
    config.baselines.supervised = False
    config.baselines.supervised_task_kwargs = ConfigDict({"crop_padding": 2, "flip": True})
    # Also train the encoder from scratch with labels only, on each label budget
    # of the probe (labels_per_class, label_fractions): the label-efficiency
    # curve's "supervised from scratch" line.
    config.baselines.supervised_few_labels = False
    config.baselines.supervised_steps = 0  # training steps of the supervised runs; 0 = train_steps
    return config


def apply_runlocal(config: ConfigDict) -> None:
    """The shared part of every config's `runlocal` variant: a few seconds on a
    laptop CPU, for tests and smoke runs. Configs pick their tiny model."""
    config.image_size = 16
    config.batch_size = 16
    config.train_steps = 6
    config.log_every = 1
    config.checkpoint_every = 3
    config.eval_every = 3
    config.optimizer.warmup_steps = 2
    config.probe.steps = 50
    config.probe.batch_size = 64
    config.probe.labels_per_class = (10,)


def compute_dtype_for(options: ConfigDict) -> str:
    """bfloat16 compute for the accelerator-sized datasets; float32 for the
    embedded digits and for runlocal smoke runs, which run on CPUs, where
    bfloat16 is slow."""
    return "float32" if options.dataset == "digits" or options.runlocal else "bfloat16"


ENCODERS = ("convnet", "resnet18", "resnet50", "vit")


def set_encoder(config: ConfigDict, name: str, *, runlocal: bool = False) -> None:
    """The configs' `encoder=` option: one encoder family for every pretext
    task, sized by `config.image_size`, so a comparison differs in the task
    alone. ViTs are trained with AdamW: the SGD and LARS recipes of the
    ConvNet configs do not transfer to them (the config's lr warm-up is kept).
    `runlocal` picks the tiny variant for tests."""
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {list(ENCODERS)}.")
    size = config.image_size
    if name == "convnet":
        model, kwargs = ("convnet_tiny", {}) if runlocal else ("convnet", {})
    elif name.startswith("resnet"):
        stem = "cifar" if size <= 32 else "imagenet"
        model, kwargs = ("resnet_tiny", {}) if runlocal else (name, {"stem": stem})
    elif runlocal:
        model, kwargs = "vit_test", {"patch_size": 4}
    elif size <= 16:
        # The width of the MAE digits default: 16 patches of 4 px.
        model = "vit"
        kwargs = {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4, "pool": "cls"}
    else:
        model = "vit_tiny" if size <= 32 else "vit_small"
        kwargs = {"patch_size": 4 if size <= 32 else 8 if size <= 64 else 16, "pool": "cls"}
    config.model = model
    config.model_kwargs = ConfigDict(kwargs)
    if name == "vit" and config.optimizer.name != "adamw":
        # Per 256 images, scaled linearly: 1e-3 for the small digits ViT (the
        # measured comparison), MAE's and MoCo v3's 1.5e-4 for larger ViTs,
        # whose batches of thousands would make 1e-3 diverge.
        config.optimizer.update(
            name="adamw",
            learning_rate=1e-3 if size <= 16 else 1.5e-4,
            lr_scaling="linear",
            b1=0.9,
            b2=0.95,
            weight_decay=0.05,
        )


def _float_fields(tree, prefix: str = ""):
    """(dotted name, value) of every float in the config, in tuples too."""
    items = tree.items() if hasattr(tree, "items") else enumerate(tree)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, float):
            yield name, value
        elif hasattr(value, "items") or isinstance(value, list | tuple):
            yield from _float_fields(value, name)


def validate(config: ConfigDict) -> None:
    """Checks of the common fields; each message says which field to fix."""
    for name, value in _float_fields(config):
        if not math.isfinite(value):
            raise ValueError(f"config.{name} must be a finite number, got {value}.")
    positive = ("image_size", "batch_size", "train_steps", "log_every", "checkpoint_every")
    for field in positive:
        if config[field] <= 0:
            raise ValueError(f"config.{field} must be > 0, got {config[field]}.")
    if config.checkpoint_every % config.log_every:
        # A resumed run then restarts at a log boundary and averages its
        # metrics over the same steps as an uninterrupted one.
        raise ValueError(
            f"config.checkpoint_every ({config.checkpoint_every}) must be a multiple of "
            f"config.log_every ({config.log_every})."
        )
    if config.eval_every < 0 or config.eval_every % config.log_every:
        raise ValueError(
            f"config.eval_every ({config.eval_every}) must be 0 (off) or a multiple of "
            f"config.log_every ({config.log_every})."
        )
    if config.knn.k < 1 or config.knn.temperature <= 0:
        raise ValueError("config.knn.k must be >= 1 and config.knn.temperature > 0.")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(
            f"config.compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}."
        )
    if config.nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}.")
    if not 0 <= config.max_skipped_fraction <= 1:
        raise ValueError(
            f"config.max_skipped_fraction must be in [0, 1], got {config.max_skipped_fraction}."
        )
    if config.keep_checkpoints < 1:
        raise ValueError(f"config.keep_checkpoints must be >= 1, got {config.keep_checkpoints}.")
    if config.probe.batch_size <= 0 or config.probe.steps <= 0:
        raise ValueError("config.probe.batch_size and config.probe.steps must be > 0.")
    if any(k < 1 for k in config.probe.labels_per_class) or config.probe.few_label_draws < 1:
        raise ValueError("config.probe.labels_per_class and few_label_draws must be >= 1.")
    if any(not 0 < f <= 1 for f in config.probe.label_fractions):
        raise ValueError(
            f"config.probe.label_fractions must be in (0, 1], got {config.probe.label_fractions}."
        )
    if not 0 < config.probe.holdout_fraction < 1:
        raise ValueError(
            f"config.probe.holdout_fraction must be in (0, 1), got {config.probe.holdout_fraction}."
        )
    if config.baselines.supervised_steps < 0:
        raise ValueError(
            f"config.baselines.supervised_steps must be >= 0 (0 = train_steps), "
            f"got {config.baselines.supervised_steps}."
        )
    optim.validate(config.optimizer)
