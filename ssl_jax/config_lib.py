"""Shared pieces of the config files in `configs/`.

A config file defines `get_config(arg)`; `arg` is the text after the colon in
`--config=configs/rotation.py:dataset=tfds:cifar10,runlocal`. It is a
comma-separated list of `key=value` options and bare flags.
"""

from __future__ import annotations

import math
import os

from ml_collections import ConfigDict

from ssl_jax import optim


def config_path(name: str) -> str:
    """The file of a config: a path as given, or the name of a packaged one
    (`simclr` -> .../ssl_jax/configs/simclr.py), so an installed ssl_jax runs
    its configs from anywhere."""
    if "/" in name or name.endswith(".py"):
        return name
    import importlib.resources

    packaged = importlib.resources.files("ssl_jax") / "configs" / f"{name}.py"
    if not packaged.is_file():
        known = sorted(
            p.name[:-3]
            for p in (importlib.resources.files("ssl_jax") / "configs").iterdir()
            if p.name.endswith(".py") and not p.name.startswith("_")
        )
        raise ValueError(f"No packaged config {name!r}; known: {', '.join(known)}.")
    return str(packaged)


def get_config(name: str, arg: str | None = None) -> ConfigDict:
    """The config of `name` (a packaged config's name or a file path) with
    its `arg` options, e.g. `get_config("simclr", "dataset=tfds:cifar10")`."""
    import importlib.util

    path = config_path(name)
    spec = importlib.util.spec_from_file_location(f"ssl_jax_config_{abs(hash(path))}", path)
    if spec is None or not os.path.isfile(path):
        raise ValueError(f"Config file {path} does not exist.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


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
    config.task = ""  # set by every config file (a name in ssl_jax.registry.TASKS)
    config.task_kwargs = ConfigDict()
    config.model = ""  # set by config_lib.set_encoder from the recipe's encoder family
    config.model_kwargs = ConfigDict()

    config.dataset = "digits"
    # The data profile the config's recipe was chosen for (see data_profile);
    # set by `start`, checked against config.dataset when a run starts.
    config.data_profile = ""
    config.data_dir = ""  # tfds data_dir; "" = tfds' default (~/tensorflow_datasets)
    config.image_size = 32
    config.seed = 0
    # How the data reaches the loop (ssl_jax/data/streaming.py): "auto" streams
    # record datasets (arrayrecord:, and tfds: ones too big for host memory),
    # "always" / "never" force it. Streamed images are decoded and cropped on
    # `workers` processes (-1: the CPU cores but two, 0: in the training
    # process); an unreadable record stops the run ("stop") or is replaced and
    # counted as skipped_examples ("skip"); a run that replaces more than
    # max_bad_record_fraction of its planned draws fails.
    config.input = ConfigDict(
        {
            "streaming": "auto",
            "workers": -1,
            "on_bad_record": "stop",
            "max_bad_record_fraction": 0.01,
            "memory_limit_gb": 16.0,
        }
    )

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
    # A warning once the embeddings' effective rank (`effective_rank_fraction`
    # of its maximum) stays below min_rank_fraction for `patience` log lines.
    config.collapse_warning = ConfigDict({"min_rank_fraction": 0.1, "patience": 2})
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
    # PNG plots of the evaluation (the PCA maps of the features, the
    # label-efficiency curve) and their TensorBoard images. False skips them
    # and matplotlib (about 1 s of a tiny run; the test suite's short runs).
    config.save_plots = True

    # Evaluators of the trained encoder (ssl_jax/evaluators/), by name: each
    # a `type` and its arguments; results.json has one entry per name.
    config.evals = ConfigDict({"linear_probe": {"type": "linear_probe", "dataset": ""}})

    # Switches that add the baseline evaluators (ssl_jax/evaluators/baselines.py)
    # to config.evals' entries, and the settings their supervised runs share.
    config.baselines = ConfigDict()
    config.baselines.random_init = True
    config.baselines.supervised = False
    config.baselines.supervised_task = "supervised"  # the task the supervised baselines train
    config.baselines.supervised_task_kwargs = ConfigDict({"crop_padding": 2, "flip": True})
    # Also train the encoder from scratch with labels only, on each label budget
    # of the probe (labels_per_class, label_fractions): the label-efficiency
    # curve's "supervised from scratch" line.
    config.baselines.supervised_few_labels = False
    config.baselines.supervised_steps = 0  # training steps of the supervised runs; 0 = train_steps
    return config


# Options every config file takes after the colon (`configs/x.py:dataset=...`).
COMMON_OPTIONS = {
    "dataset": "digits",
    "runlocal": False,
    "supervised": False,
    "encoder": "",
    "finetune": False,  # add the fine-tuning evaluator (evals.fine_tune)
    "transfer": "",  # add a linear probe on this dataset (evals.transfer)
    # add the segmentation probe on the digit scenes (evals.segmentation_probe)
    "segmentation": False,
}

# The segmentation probe's entry (`:segmentation`); its other arguments keep
# the evaluator's defaults (`evaluators/segmentation.py`).
SEGMENTATION = {"type": "segmentation_probe", "dataset": "digit_scenes"}

# The fine-tuning evaluator's defaults (`:finetune`): the SimCLR paper's
# semi-supervised budgets (1% and 10% of the labels) and all labels, a
# Nesterov SGD without weight decay, and the same recipe from scratch.
# `encoder_lr_scale` scales the pretrained encoder's steps against its new
# head's (the run from scratch trains everything at the full rate: its
# random encoder has nothing to keep).
FINE_TUNE = {
    "type": "fine_tune",
    "dataset": "",
    "label_fractions": (0.01, 0.1, 1.0),
    "labels_per_class": (),
    "steps": 500,
    "batch_size": 128,
    "from_scratch": True,
    "encoder_lr_scale": 1.0,
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.05,
        "lr_scaling": "linear",
        "warmup_fraction": 0.1,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "nesterov": True,
    },
}


def options(arg: str | None, **extra) -> ConfigDict:
    """`parse_arg` with the common options and a config's own `extra` ones
    (which may change a common option's default: a text config's dataset)."""
    return parse_arg(arg, **{**COMMON_OPTIONS, **extra})


def image_only_options(options: ConfigDict, task: str, family: str) -> None:
    """A config of another modality than images refuses the options that
    need an image task or encoder (the supervised baselines and fine-tuning
    train the image `supervised` task; the segmentation probe reads an image
    encoder's spatial map) with a one-line error."""
    needs = {
        "supervised": "trains the image classifier task",
        "finetune": "trains the image classifier task",
        "segmentation": "probes an image encoder's spatial features",
    }
    for flag, need in needs.items():
        if options[flag]:
            raise ValueError(
                f"The {flag} option {need}; {task} has no "
                "counterpart yet: leave it out (the linear probe and kNN still run)."
            )
    if options.encoder and options.encoder != family:
        raise ValueError(f"{task}'s encoder must be encoder={family}, got {options.encoder!r}.")


# The warm-up of the CIFAR-size ("small") recipes, a fraction of the run.
# solo-learn warms up for 10 of its 1,000 epochs (1%); at the budgets a CPU
# runs (500-2,000 steps) 1% is 5-20 steps, and BYOL's features then collapsed
# on the CIFAR-10 photos (probe 1.3 points below its random init after 500
# steps x 128; 2.0 points above with 10%). 10% is what the papers use for
# their shorter schedules (DINO: 10 of 100 epochs; SimCLR: 10 of 100).
SMALL_WARMUP = 0.1


def solo_learn_lars(learning_rate: float, weight_decay: float) -> dict:
    """The optimizer of solo-learn's CIFAR recipes (`optimizer.kwargs` of its
    yaml files): LARS with trust coefficient 0.02 and each adapted step
    clipped to plain SGD's (`clip_lr`: LARC), biases and norms excluded; the
    short-run warm-up of `SMALL_WARMUP`."""
    return {
        "name": "lars",
        "learning_rate": learning_rate,
        "warmup_fraction": SMALL_WARMUP,
        "weight_decay": weight_decay,
        "trust_coefficient": 0.02,
        "lars_clip": True,
    }


# ----------------------------------------------------------------------------- data profiles
# Recipes follow the data's properties, not its name: the shorter side of its
# original images decides which of these a config's recipe table uses.
#   tiny:   up to 16 px (the embedded 8x8 digits): CPU-sized runs at 16 px
#   small:  up to 40 px (CIFAR, 32 px photos): 32 px, CIFAR-stem ResNets
#   medium: up to 160 px (STL-10, small photos): 64 px
#   large:  beyond, or photos of varying size (ImageNet): 224 px
PROFILES = ("tiny", "small", "medium", "large")
_PROFILE_LIMITS = ((16, "tiny"), (40, "small"), (160, "medium"))
# The shared part of every config's recipe for a profile.
PROFILE_DEFAULTS = {
    "tiny": {"image_size": 16, "log_every": 50, "probe": {"labels_per_class": (1, 5, 10, 20)}},
    "small": {"image_size": 32, "log_every": 100, "probe": {"label_fractions": (0.01, 0.1)}},
    "medium": {"image_size": 64, "log_every": 100, "probe": {"label_fractions": (0.01, 0.1)}},
    "large": {
        "image_size": 224,
        "log_every": 100,
        "probe": {"label_fractions": (0.01, 0.1), "batch_size": 1024},
    },
}


def data_profile(dataset: str, data_dir: str | None = None) -> str:
    """The profile (see `PROFILES`) of a dataset, from the size of its original
    images (`datasets.native_size`): an image folder of 32 px photos is
    "small" like CIFAR-10, whatever its name. Unknown sizes: synthetic data is
    "small", TFDS photos of varying size "large", anything else "medium"."""
    from ssl_jax.data.datasets import native_size

    size = native_size(dataset, data_dir or None)
    if size is None:
        kind = dataset.partition(":")[0]
        return {"synthetic": "small", "tfds": "large"}.get(kind, "medium")
    return next((name for limit, name in _PROFILE_LIMITS if size <= limit), "large")


def start(task: str, options: ConfigDict) -> tuple[ConfigDict, str]:
    """The base config for `task` on `options.dataset`, with its profile's
    shared defaults; returns it and the profile for the config's recipe table."""
    profile = data_profile(options.dataset)
    config = base_config()
    config.task = task
    config.dataset = options.dataset
    config.data_profile = profile
    config.baselines.supervised = options.supervised
    update(config, PROFILE_DEFAULTS[profile])
    return config, profile


def update(config: ConfigDict, overrides: dict) -> None:
    """Nested update: dicts merge into existing sub-configs (or become new ones)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and key in config and isinstance(config[key], ConfigDict):
            update(config[key], value)
        else:
            config[key] = ConfigDict(value) if isinstance(value, dict) else value


def from_recipes(
    task: str,
    options: ConfigDict,
    recipes: dict[str, dict],
    *,
    common: dict | None = None,
    runlocal: dict | None = None,
) -> ConfigDict:
    """A config file's whole `get_config`: the base config for `task`, the
    profile's defaults, the config's `common` fields, its recipe for the data's
    profile (`recipes[profile]`, whose `encoder` names the encoder family and
    whose optional `family_kwargs` are passed to `finish`), `runlocal`'s
    overrides when asked, then `finish`."""
    config, profile = start(task, options)
    update(config, common or {})
    recipe = dict(recipes[profile])
    encoder = recipe.pop("encoder")
    family_kwargs = recipe.pop("family_kwargs", None)
    update(config, recipe)
    if options.runlocal:
        update(config, runlocal or {})
    return finish(config, options, profile, encoder=encoder, family_kwargs=family_kwargs)


def finish(
    config: ConfigDict,
    options: ConfigDict,
    profile: str,
    *,
    encoder: str,
    family_kwargs: dict[str, dict] | None = None,
) -> ConfigDict:
    """The tail every config shares: the encoder (`encoder` family from the
    recipe, or the `encoder=` option, sized by image_size, the family's tiny
    variant under `runlocal`), checkpoint and evaluation cadence from the
    step count, the compute dtype, and `runlocal`'s shrinking.

    `family_kwargs` maps a model-name prefix ("vit", "convnet") to model
    kwargs that belong to the method rather than to one encoder: they apply to
    whichever encoder of that family the run ends up with, `encoder=` and
    `runlocal` included (MAE's probe reads the mean of the patch tokens on
    any ViT)."""
    if options.finetune:
        config.evals.fine_tune = ConfigDict(FINE_TUNE)
    if options.transfer:
        config.evals.transfer = ConfigDict({"type": "linear_probe", "dataset": options.transfer})
    if options.segmentation:
        config.evals.segmentation_probe = ConfigDict(SEGMENTATION)
    if options.runlocal:
        apply_runlocal(config)
    family = options.encoder or encoder
    # A recipe's model_kwargs tune its own family (a stem stride); another
    # family or the tiny test variant starts from its preset alone.
    extra = {} if options.encoder or options.runlocal else config.model_kwargs.to_dict()
    set_encoder(config, family, runlocal=options.runlocal)
    config.model_kwargs.update(extra)
    for prefix, kwargs in (family_kwargs or {}).items():
        if config.model.startswith(prefix):
            config.model_kwargs.update(kwargs)
    if not options.runlocal:
        # About four checkpoints and kNN evaluations per run, on log steps.
        quarter = config.train_steps // 4 // config.log_every * config.log_every
        config.checkpoint_every = config.eval_every = max(config.log_every, quarter)
    config.compute_dtype = "float32" if profile == "tiny" or options.runlocal else "bfloat16"
    if options.segmentation:
        # The scenes' 8 px digits at twice the run's size: the size the
        # pretraining saw the 8 px digits at (upsampled to image_size).
        config.evals.segmentation_probe.image_scale = 2
    return config


def apply_runlocal(config: ConfigDict) -> None:
    """The shared part of every config's `runlocal` variant: a few seconds on a
    laptop CPU, for tests and smoke runs (`finish` picks the tiny encoder)."""
    config.image_size = 16
    config.batch_size = 16
    config.train_steps = 6
    config.log_every = 1
    config.checkpoint_every = 3
    config.eval_every = 3
    # A third of the run: 2 of its 6 steps.
    config.optimizer.update(warmup_fraction=1 / 3, warmup_steps=0)
    config.probe.steps = 50
    config.probe.batch_size = 64
    config.probe.labels_per_class = (10,)
    config.probe.label_fractions = ()
    if "fine_tune" in config.evals:
        config.evals.fine_tune.update(steps=4, batch_size=16, label_fractions=(0.1,))
        config.evals.fine_tune.optimizer.update(warmup_fraction=0.25, warmup_steps=0)
    if "segmentation_probe" in config.evals:
        config.evals.segmentation_probe.update(
            dataset="digit_scenes:train_size=64,test_size=32", steps=20, examples=4
        )


def set_encoder(config: ConfigDict, family: str, *, runlocal: bool = False) -> None:
    """An encoder family (`ssl_jax.registry.ENCODERS`: convnet, resnet18,
    resnet50, vit, ...) sized by `config.image_size`, its tiny variant under
    `runlocal`. A family that needs another optimizer than the config's (a
    ViT after a ConvNet's SGD or LARS recipe) brings its own; the config's
    warm-up is kept."""
    from ssl_jax.registry import ENCODERS, UnknownNameError

    try:
        preset = ENCODERS.get(family)(config.image_size, test=runlocal)
    except UnknownNameError as error:
        raise ValueError(str(error).replace("encoder family", "encoder")) from None
    config.model = preset.model
    config.model_kwargs = ConfigDict(preset.kwargs)
    if preset.optimizer and config.optimizer.name != preset.optimizer["name"]:
        config.optimizer.update(preset.optimizer)


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
    patch = config.model_kwargs.get("patch_size")
    if patch and config.image_size % patch:
        # Refused here, before a dataset is decoded, not when the step traces.
        raise ValueError(
            f"Image size {config.image_size}x{config.image_size} is not divisible by the patch "
            f"size {patch}: choose config.image_size as a multiple of model_kwargs.patch_size."
        )
    if config.knn.k < 1 or config.knn.temperature <= 0:
        raise ValueError("config.knn.k must be >= 1 and config.knn.temperature > 0.")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(
            f"config.compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}."
        )
    if config.nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}.")
    if config.input.streaming not in ("auto", "always", "never"):
        raise ValueError(
            f"config.input.streaming must be auto, always or never, got {config.input.streaming!r}."
        )
    if config.input.on_bad_record not in ("stop", "skip"):
        raise ValueError(
            f"config.input.on_bad_record must be stop or skip, got {config.input.on_bad_record!r}."
        )
    if config.input.workers < -1:
        raise ValueError(f"config.input.workers must be >= -1, got {config.input.workers}.")
    if not 0 <= config.input.max_bad_record_fraction <= 1:
        raise ValueError(
            "config.input.max_bad_record_fraction must be in [0, 1], got "
            f"{config.input.max_bad_record_fraction}."
        )
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
    from ssl_jax.evaluate.collapse import CollapseWatch

    CollapseWatch(**config.collapse_warning)  # refuses a threshold outside [0, 1)
    optim.warmup_steps(config.optimizer, config.train_steps)  # refuses a warm-up past the run
