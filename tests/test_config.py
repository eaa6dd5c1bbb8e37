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


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("runlocal", [False, True])
def test_encoder_vit_gives_every_task_the_same_encoder(path, runlocal):
    arg = "encoder=vit" + (",runlocal" if runlocal else "")
    config = _load(path).get_config(arg)
    config_lib.validate(config)
    mae = _load(path.with_name("mae.py")).get_config(arg)
    assert (config.model, config.model_kwargs.to_dict()) == (mae.model, mae.model_kwargs.to_dict())
    assert config.optimizer.name == "adamw"  # the ConvNet recipes' SGD/LARS do not carry over


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
