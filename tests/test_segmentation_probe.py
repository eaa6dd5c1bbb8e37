"""The segmentation probe: spatial features of every encoder family through
the task contract, its checks, and one run from a config."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from ssl_jax import config_lib, evaluators
from ssl_jax.evaluate import segmentation as seg
from ssl_jax.registry import MODELS, TASKS
from tests.test_main import QUICK, run_main
from tests.test_metrics import read_events


def _task(task, model, **model_kwargs):
    rngs = nnx.Rngs(params=0)
    encoder = MODELS.get(model)(rngs=rngs, **model_kwargs)
    kwargs = {"num_permutations": 4} if task == "jigsaw" else {}
    return TASKS.get(task)(encoder, rngs=rngs, **kwargs)


def _images(n=2, size=16):
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "model, kwargs, grid",
    [
        ("convnet_tiny", {}, 8),  # two stages, the second at stride 2
        ("resnet_tiny", {}, 8),
        ("vit_test", {"patch_size": 4}, 4),  # 16 px / 4 px patches
    ],
)
def test_every_encoder_family_gives_maps_and_full_size_class_scores(model, kwargs, grid):
    # Shapes only: built and traced abstractly, nothing is run.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _task("rotation", model, **kwargs)))
    d = nnx.merge(graphdef, state).encoder.feature_dim
    head = {"w": np.ones((d, 11), np.float32), "b": np.zeros(11, np.float32)}

    def scores(state, images):
        maps = nnx.merge(graphdef, state).feature_maps(images)
        return maps, seg.upsampled_logits(head, maps, (16, 16))

    maps, logits = jax.eval_shape(scores, state, _images())
    assert maps.shape == (2, grid, grid, d) and maps.dtype == np.float32
    assert logits.shape == (2, 16, 16, 11)


@pytest.mark.parametrize(
    "task, kwargs",
    [("rotation", {}), ("colorization", {"in_channels": 1}), ("jigsaw", {})],
)
def test_maps_come_from_the_input_features_reads(task, kwargs):
    """The map is what `features` pools (ConvNets average it): the same
    encoder and the same input, lightness for colorization and standardised
    images for jigsaw included."""
    task = _task(task, "convnet_tiny", **kwargs)
    pooled, features = jax.jit(
        lambda x: (task.feature_maps(x).mean(axis=(1, 2)), task.features(x))
    )(_images())
    np.testing.assert_allclose(pooled, features, atol=1e-5)


def test_a_text_encoder_is_refused_before_pretraining():
    config = config_lib.base_config()
    config.task, config.model, config.dataset = "mlm", "token_transformer_test", "pydoc"
    config.evals.segmentation_probe = {"type": "segmentation_probe"}
    with pytest.raises(ValueError, match=r"config.evals.segmentation_probe needs an image encoder"):
        evaluators.check(config)
    with pytest.raises(ValueError, match="The segmentation option probes an image encoder's"):
        config_lib.image_only_options(config_lib.options("segmentation"), "mlm", "token")


def test_the_option_scores_scenes_at_twice_the_image_size_the_run_ends_with():
    from ssl_jax.evaluators import base

    config = config_lib.get_config("rotation", "runlocal,segmentation")
    probe = base.build("segmentation_probe", config.evals.segmentation_probe)
    assert probe.size(config) == 2 * config.image_size
    config.image_size = 24  # a later --config.image_size moves the scenes too
    assert probe.size(config) == 48


@pytest.mark.slow
def test_segmentation_probe_runs_from_a_config_with_its_random_init_and_pictures(tmp_path):
    workdir = tmp_path / "run"
    run_main(
        workdir,
        *QUICK,
        "--config.baselines.random_init=true",
        "--config.save_plots=true",
        config="configs/rotation.py:runlocal,segmentation",
    )
    results = json.loads((workdir / "results.json").read_text())
    for entry in (results["segmentation_probe"], results["random_init"]["segmentation_probe"]):
        assert 0 <= entry["miou"] <= 1 and 0 <= entry["pixel_accuracy"] <= 1
        # Scenes at twice the run's 16 px (the :segmentation option), convnet_tiny at stride 2.
        assert entry["image_size"] == 32 and entry["feature_grid"] == [16, 16]
        assert len(entry["class_iou"]) == 11
    assert (workdir / "segmentation_segmentation_probe.png").exists()
    assert (workdir / "segmentation_segmentation_probe_random_init.png").exists()
    scalars, images, _ = read_events(workdir)
    tags = {tag for tag, _, _ in scalars}
    assert {"eval/segmentation_probe/miou", "eval/random_init/segmentation_probe/miou"} <= tags
    assert "eval/segmentation_probe/masks" in images
