import importlib.util
import pathlib

import pytest

from ssl_jax import config_lib
from ssl_jax.registry import MODELS, TASKS, UnknownNameError

CONFIGS = sorted(pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Configs of other modalities (text, video) declare it; image encoders and
# image datasets do not apply to them.
IMAGE_CONFIGS = [p for p in CONFIGS if getattr(_load(p), "MODALITY", "image") == "image"]
OTHER_CONFIGS = [p for p in CONFIGS if p not in IMAGE_CONFIGS]


def test_parse_arg_types_and_flags():
    options = config_lib.parse_arg(
        "dataset=tfds:cifar10,runlocal,steps=5", dataset="digits", runlocal=False, steps=1
    )
    assert options.dataset == "tfds:cifar10"
    assert options.runlocal is True
    assert options.steps == 5


def test_parse_arg_rejects_unknown_options():
    with pytest.raises(ValueError, match="Unknown config option 'runlcal'"):
        config_lib.parse_arg("runlcal", runlocal=False)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("arg", ["", "runlocal", "dataset=tfds:cifar10", "dataset=synthetic"])
def test_every_config_variant_is_valid_and_names_registered_parts(path, arg):
    config = _load(path).get_config(arg)
    config_lib.validate(config)
    TASKS.get(config.task)
    MODELS.get(config.model)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_docstring_starts_with_its_command(path):
    doc = _load(path).__doc__
    assert doc.startswith(f"python -m ssl_jax.main --config=configs/{path.name}")


def test_validate_names_the_field():
    config = config_lib.base_config()
    config.batch_size = 0
    with pytest.raises(ValueError, match="config.batch_size"):
        config_lib.validate(config)
    config = config_lib.base_config()
    config.probe.holdout_fraction = 1.5
    with pytest.raises(ValueError, match="holdout_fraction"):
        config_lib.validate(config)


def test_registry_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'rotation'"):
        TASKS.get("rotatoin")


def test_one_registry_mechanism_for_every_named_part():
    """Tasks, models, encoder families, datasets and evaluators are all
    `registry.Registry`s, each filling itself from its home module(s) on
    first use; no module keeps a name -> constructor dict of its own."""
    import pathlib
    import re

    from ssl_jax import registry

    found = {k: v for k, v in vars(registry).items() if isinstance(v, registry.Registry)}
    assert set(found) == {"TASKS", "MODELS", "ENCODERS", "DATASETS", "EVALUATORS"}
    assert {"digits", "imagefolder", "tfds", "pydoc"} <= set(registry.DATASETS.names())
    assert {"linear_probe", "fine_tune", "bag_of_tokens"} <= set(registry.EVALUATORS.names())
    # The error message's list of dataset forms names every registered source.
    from ssl_jax.data.datasets import dataset_names

    forms = {name.partition(":")[0].partition("[")[0] for name in dataset_names()}
    assert forms == set(registry.DATASETS.names())
    source = pathlib.Path(registry.__file__).parent
    lookup = re.compile(r"^_?[A-Z_]*(LOADERS|EVALUATORS|REGISTRY)\b.*=\s*\{", re.M)
    offenders = [p.name for p in source.rglob("*.py") if lookup.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("runlocal", [False, True])
def test_encoder_vit_gives_every_task_the_same_encoder(path, runlocal):
    arg = "encoder=vit" + (",runlocal" if runlocal else "")
    config = _load(path).get_config(arg)
    config_lib.validate(config)
    mae = _load(path.with_name("mae.py")).get_config(arg)
    # The same architecture; MoCo v3 only keeps its patch projection untrained,
    # colorization feeds it one channel (L).
    kwargs = {
        k: v
        for k, v in config.model_kwargs.items()
        if k not in ("frozen_patch_embed", "in_channels")
    }
    assert (config.model, kwargs) == (mae.model, mae.model_kwargs.to_dict())
    assert config.optimizer.name == "adamw"  # the ConvNet recipes' SGD/LARS do not carry over


def test_other_modalities_exist_and_refuse_image_only_options():
    assert {p.name for p in OTHER_CONFIGS} >= {"mlm.py", "frames.py"}
    for path in OTHER_CONFIGS:
        module = _load(path)
        for arg in ("encoder=vit", "supervised", "finetune"):
            with pytest.raises(ValueError, match="encoder=|classifier task"):
                module.get_config(arg)


def test_frames_probes_the_digit_and_its_direction():
    config = _load(CONFIGS[0].with_name("frames.py")).get_config("dataset=moving_digits:frames=6")
    assert config.dataset == "moving_digits:frames=6"
    assert config.evals.direction.dataset == "moving_digits:frames=6,label=direction"
    assert (
        "direction"
        not in _load(CONFIGS[0].with_name("frames.py")).get_config("dataset=tfds:ucf101").evals
    )


def test_mae_refuses_a_convolutional_encoder():
    with pytest.raises(ValueError, match="must be a ViT"):
        _load(CONFIGS[0].with_name("mae.py")).get_config("encoder=resnet18")


def test_set_encoder_sizes_by_image_size_and_rejects_unknown_names():
    config = config_lib.base_config()
    config.image_size = 64
    config_lib.set_encoder(config, "resnet18")
    assert config.model == "resnet18" and config.model_kwargs.stem == "imagenet"
    config_lib.set_encoder(config, "vit")
    assert config.model == "vit_small" and config.model_kwargs.patch_size == 8
    with pytest.raises(ValueError, match="Unknown encoder 'vgg'"):
        config_lib.set_encoder(config, "vgg")


def _photo_folder(root, size):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (size, size + 4 * i), (40 * i, 90, 30)).save(
                    root / split / c / f"{i}.jpg"
                )
    return root


@pytest.mark.parametrize(
    "size, profile, image_size, stem", [(32, "small", 32, "cifar"), (96, "medium", 64, "imagenet")]
)
def test_recipes_follow_the_image_size_not_the_dataset_name(
    tmp_path, size, profile, image_size, stem
):
    # An image folder of 32 px photos gets CIFAR's recipe (32 px, CIFAR stem),
    # not an upscaled ImageNet one, although its name says nothing of CIFAR.
    root = _photo_folder(tmp_path / "photos", size)
    assert config_lib.data_profile(f"imagefolder:{root}") == profile
    # A path relative to data_dir too (the run's warning checks it so).
    assert config_lib.data_profile("imagefolder:photos", str(tmp_path)) == profile
    for name in ("rotation.py", "simclr.py"):
        config = _load(CONFIGS[0].with_name(name)).get_config(f"dataset=imagefolder:{root}")
        assert (config.image_size, config.model_kwargs.stem) == (image_size, stem)


def test_profiles_of_the_known_datasets():
    assert config_lib.data_profile("digits") == "tiny"
    assert config_lib.data_profile("tfds:cifar10") == "small"
    assert config_lib.data_profile("tfds:stl10") == "medium"
    assert config_lib.data_profile("tfds:imagenet2012") == "large"
    assert config_lib.data_profile("synthetic") == "small"


def test_every_encoder_family_names_registered_models_at_every_size():
    from ssl_jax.registry import ENCODERS

    for family in ENCODERS.names():
        for size in (16, 32, 64, 224):
            for test in (False, True):
                preset = ENCODERS.get(family)(size, test=test)
                MODELS.get(preset.model)
        # The tiny test variant is the family's own (a ViT stays a ViT).
        assert family[:3] in ENCODERS.get(family)(32, test=True).model
