"""bfloat16 compute with float32 parameters (`config.compute_dtype`)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, inference, optim, train
from ssl_jax.data.datasets import load_dataset

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _config(name, compute_dtype):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.compute_dtype = compute_dtype
    if "num_classes" in config.task_kwargs:
        config.task_kwargs.num_classes = 10
    return config


def _batch(size=16):
    split = load_dataset("digits", "train", image_size=16)
    return {"image": jnp.asarray(split.images[:size]), "label": jnp.asarray(split.labels[:size])}


def _floating_dtypes(tree):
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize(
    "name", ["rotation", "simclr", pytest.param("mae", marks=pytest.mark.slow)]
)
def test_bfloat16_compute_keeps_float32_state_and_a_close_float32_loss(name):
    batch = _batch()
    first_losses = {}
    for dtype in ("float32", "bfloat16"):
        config = _config(name, dtype)
        trained = inference.split_task(inference.build_task(config))
        tx, schedule = optim.make_optimizer(config.optimizer, batch_size=16, total_steps=4)
        state = train.init_state(trained, tx)
        step = train.make_train_step(trained.graphdef, tx, schedule, seed=0, total_steps=4)
        features = jax.eval_shape(trained.module().features, batch["image"])
        assert features.dtype == jnp.float32
        for i in range(2):
            state, metrics = step(state, batch)
            assert metrics["loss"].dtype == jnp.float32
            assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0.0
            if i == 0:  # the loss of the initial parameters, the same in both dtypes
                first_losses[dtype] = float(metrics["loss"])
        # Parameters, batch-norm statistics and optimizer state stay float32.
        assert _floating_dtypes(state) == {jnp.dtype(jnp.float32)}
    assert first_losses["bfloat16"] == pytest.approx(first_losses["float32"], rel=0.03)


def test_bfloat16_really_computes_in_bfloat16():
    config = _config("rotation", "bfloat16")
    task = inference.build_task(config)
    jaxpr = str(
        jax.make_jaxpr(lambda images: task.encoder(images, train=False))(jnp.zeros((2, 16, 16, 3)))
    )
    assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr


def test_unknown_compute_dtype_is_a_config_error():
    config = config_lib.base_config()
    config.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype"):
        config_lib.validate(config)
