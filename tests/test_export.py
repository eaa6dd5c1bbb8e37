"""The Python API and encoder export: a trained encoder leaves its workdir
with the same features, bit for bit."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import ssl_jax
from ssl_jax import inference
from ssl_jax.data.datasets import load_dataset
from tests import forkserver
from tests.test_main import ROOT, run_main

QUICK = ("--config.baselines.random_init=false", "--config.probe.steps=20")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """A finished SimCLR run and a finished DINO run (whose features come from its teacher)."""
    root = tmp_path_factory.mktemp("runs")
    run_main(root / "simclr", *QUICK, config="configs/simclr.py:runlocal")
    run_main(root / "dino", *QUICK, config="configs/dino.py:runlocal")
    return root


def _evaluator_features(workdir, images):
    """The features the run's own evaluators computed: the task's `features`
    through the loop's jitted feature function, on the restored state."""
    from ml_collections import ConfigDict

    from ssl_jax.data import pipeline
    from ssl_jax.export import _load_workdir

    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    encoder = _load_workdir(str(workdir))
    task = inference.build_task(config)
    # Put the restored encoder's variables in place of the fresh ones.
    nnx.update(task.feature_encoder(), nnx.state(encoder.module))
    trained = inference.split_task(task)
    return inference.make_features_fn(trained, pipeline.make_mesh())(images)


@pytest.mark.parametrize("run", ["simclr", "dino"])
def test_loaded_and_exported_encoders_give_the_evaluators_features(workdirs, tmp_path, run):
    images = load_dataset("digits", "test", image_size=16).images[:64]
    encoder = ssl_jax.load_encoder(str(workdirs / run))
    features = encoder(images, batch_size=32)
    assert features.dtype == np.float32 and features.shape == (64, encoder.feature_dim)
    np.testing.assert_array_equal(features, _evaluator_features(workdirs / run, images))

    path = tmp_path / f"{run}.safetensors"
    info = ssl_jax.export_encoder(str(workdirs / run), str(path))
    assert info["task"] == run and info["step"] == 6 and info["model"] == encoder.info["model"]
    exported = ssl_jax.load_encoder(str(path))
    np.testing.assert_array_equal(exported(images), features)


def test_load_encoder_prints_no_read_only_warning(workdirs, caplog):
    """orbax logs "Given directory is read only" whenever a reader opens a
    workdir's checkpoints; load_encoder drops that record, and no other."""
    import logging

    from absl import logging as absl_logging

    with caplog.at_level(logging.WARNING, logger="absl"):
        encoder = ssl_jax.load_encoder(str(workdirs / "simclr"))
        absl_logging.warning("a warning after load_encoder")
    assert encoder.info["step"] == 6
    assert "read only" not in caplog.text
    assert "a warning after load_encoder" in caplog.text  # absl's logger still speaks


def test_dino_exports_its_teacher(workdirs):
    from ml_collections import ConfigDict

    from ssl_jax.export import _load_workdir

    encoder = _load_workdir(str(workdirs / "dino"))
    config = ConfigDict(json.loads((workdirs / "dino" / "config.json").read_text()))
    task = inference.build_task(config)
    student = nnx.state(task.encoder, nnx.Param)
    exported = nnx.state(encoder.module, nnx.Param)
    # After training, the teacher (exported) is not the student.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(student), jax.tree.leaves(exported), strict=True)
    )


def test_not_an_encoder_file_or_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="No workdir or exported encoder"):
        ssl_jax.load_encoder(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not an ssl_jax workdir"):
        ssl_jax.load_encoder(str(tmp_path))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an encoder exported by ssl_jax"):
        ssl_jax.load_encoder(str(tmp_path / "other.safetensors"))


@pytest.mark.parametrize("kind", ["random bytes", "text", "truncated"])
def test_an_unreadable_encoder_file_is_one_error_naming_it(tmp_path, kind):
    from safetensors.numpy import save_file

    path = tmp_path / "encoder.safetensors"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    elif kind == "text":
        path.write_text("an encoder, honest\n")
    else:
        save_file({"w": np.zeros(1000, np.float32)}, str(path), metadata={"ssl_jax": "{}"})
        path.write_bytes(path.read_bytes()[:-100])
    for call in (ssl_jax.load_encoder, lambda p: ssl_jax.export_encoder(p, str(tmp_path / "o"))):
        with pytest.raises(ValueError) as raised:
            call(str(path))
        message = str(raised.value)
        assert message.startswith(f"{path} is not a readable encoder file (")
        assert "\n" not in message
        assert message.endswith("export it again from its workdir.")
    assert not (tmp_path / "o").exists()


def test_the_api_names_and_packaged_configs():
    assert {"get_config", "run", "load_encoder", "linear_probe", "pretrain"} <= set(dir(ssl_jax))
    config = ssl_jax.get_config("simclr", "runlocal")
    assert config.task == "simclr" and config.train_steps == 6
    assert ssl_jax.get_config("configs/mae.py").task == "mae"  # a file path works too
    with pytest.raises(ValueError, match="No packaged config 'simclrr'; known: .*simclr"):
        ssl_jax.get_config("simclrr")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    assert ssl_jax.linear_probe(x, y, x, y, num_classes=2, steps=100).top1 > 0.9
    assert ssl_jax.knn_top1(x, y, x, y, num_classes=2, k=1) == 1.0


def test_a_packaged_config_runs_by_name_from_any_directory(tmp_path):
    result = forkserver.run(
        [
            sys.executable,
            "-m",
            "ssl_jax.main",
            "--config=rotation:runlocal",
            "--workdir=run",
            *QUICK,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        # A bare environment, but for the suite's JAX settings (its compilation
        # cache, fewer optimisations): what is tested is where the config is found.
        env={
            **{k: v for k, v in os.environ.items() if k.startswith("JAX_")},
            "JAX_PLATFORMS": "cpu",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").exists()
