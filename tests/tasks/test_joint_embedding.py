"""The joint-embedding base (`tasks/base.JointEmbeddingTask`) that SimCLR,
BYOL, SimSiam, MoCo v3, Barlow Twins and VICReg share: views from host crops,
networks over one view or all views at once (batch-norm statistics as each
reference computes them), the online probe, and heads initialised as each
method's reference initialises them."""

import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import inference
from ssl_jax.data import augment, decode
from ssl_jax.models import heads
from ssl_jax.tasks.base import JointEmbeddingTask
from tests import forkserver
from tests.tasks.test_methods import METHODS, _batch, _config

# The methods whose reference normalises both views together (one encoder
# call on the 2B rows): SimCLR's concatenates them.
JOINT = {"simclr"}


@pytest.mark.parametrize("method", [*METHODS, *sorted(JOINT)])
def test_every_network_sees_the_views_its_reference_normalises_together(method):
    """Each encoder call (online and teacher) gets one view's B rows, never
    the 2B rows of both views, whose batch statistics would mix the views;
    SimCLR's gets all 2B rows at once, so its statistics cover both views."""
    task = inference.build_task(_config(method))
    assert isinstance(task, JointEmbeddingTask)
    seen = []
    encoders = [task.encoder] + ([task.teacher.encoder] if hasattr(task, "teacher") else [])
    for encoder in encoders:

        class Recording(type(encoder)):
            def __call__(self, x, *, train):
                seen.append(x.shape[0])
                return super().__call__(x, train=train)

        encoder.__class__ = Recording
    task.loss(_batch(n=8), jax.random.key(0), train=True)
    rows = 2 * 8 if method in JOINT else 8
    assert seen and set(seen) == {rows}, seen


@pytest.mark.parametrize("method", ["simsiam", "simclr"])
def test_forward_views_normalises_each_view_or_all_views(method):
    """Two views with different statistics: per view, each half of a batch
    norm's output has mean 0 and variance 1; over both views at once
    (`joint_views`, SimCLR), only the whole has, and the halves are apart."""
    task = inference.build_task(_config(method))
    assert task.joint_views == (method in JOINT)
    norm = nnx.BatchNorm(4, use_running_average=False, rngs=nnx.Rngs(0))
    x = jnp.concatenate([jnp.ones((8, 4)) * 5.0, jnp.zeros((8, 4))])
    x = x + jax.random.normal(jax.random.key(1), x.shape)
    out = task.forward_views(lambda v: norm(v), x)
    parts = [out] if task.joint_views else [out[:8], out[8:]]
    for part in parts:
        np.testing.assert_allclose(part.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(part.var(0), 1.0, rtol=1e-3)
    if task.joint_views:
        assert float(jnp.abs(out[:8].mean(0)).min()) > 0.5
    else:
        assert float(jnp.abs(norm(x)[:8].mean(0)).min()) > 0.5


# Views that change nothing but the crop: the host's crops must come through.
_CROP_ONLY = {"crop_scale": (0.3, 0.9), "flip": False, "color_probability": 0.0}


@pytest.mark.parametrize("method", [*METHODS, *sorted(JOINT)])
def test_views_come_from_the_host_crops_when_the_data_has_them(method):
    """Streamed data delivers each view's crop of the original image
    ([B, 2, S, S, C], as `host_crops` asks): the views are those crops, not
    cropped again."""
    config = _config(method)
    config.task_kwargs.views = (_CROP_ONLY, _CROP_ONLY)
    task = inference.build_task(config)
    assert task.host_crops(16) == {"image": (decode.CropSpec(16, (0.3, 0.9)),) * 2}
    crops = jax.random.randint(jax.random.key(0), (4, 2, 16, 16, 3), 0, 256).astype(jnp.uint8)
    views = jax.jit(lambda crops: task.augment({"image": crops}, jax.random.key(1))["image"])(crops)
    expected = augment.normalize(augment.to_float(jnp.concatenate([crops[:, 0], crops[:, 1]])))
    np.testing.assert_allclose(views, expected, atol=1e-6)


_SHARDED_VIEWS = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ssl_jax.data import augment
from ssl_jax.tasks.base import augmented_views, view_recipes

augment.views._CPU_CHUNK_BYTES = 4 * 3 * 12 * 12  # one 12 px image per device per step
# One view: joining several views view-major moves rows between devices
# whatever the chunks; one view shows the chunks alone.
recipes = view_recipes(augment.recipes.simclr_views()[:1])
sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
views = jax.jit(lambda rng, x: augmented_views(rng, x, recipes), out_shardings=sharding)
rng = jax.random.key(1)
for shape in [(32, 12, 12, 3), (32, 1, 12, 12, 3)]:  # images, or the host's crops
    images = jax.random.randint(jax.random.key(0), shape, 0, 256).astype(jnp.uint8)
    compiled = views.lower(rng, jax.device_put(images, sharding)).compile()
    assert "all-gather" not in compiled.as_text(), shape  # each device makes its own views
    alone = jax.jit(lambda rng, x: augmented_views(rng, x, recipes))(rng, images)
    np.testing.assert_allclose(compiled(rng, jax.device_put(images, sharding)), alone, atol=1e-5)
print("ok")
"""


def test_views_of_a_batch_sharded_over_8_devices_are_made_where_they_lie():
    """The loop shards the batch over every device; `augmented_views` says
    so to the augmentation, whose CPU loop then cuts the batch along the
    shards: no device gathers the others' images, and the views are those
    of the unsharded batch."""
    root = pathlib.Path(__file__).parents[2]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = forkserver.run(
        [sys.executable, "-c", _SHARDED_VIEWS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("method", METHODS)
def test_the_online_probe_trains_on_frozen_features(method):
    config = _config(method)
    config.task_kwargs.num_classes = 4
    task = inference.build_task(config)
    loss, metrics = task.loss(_batch(n=8), jax.random.key(0), train=True)
    assert {"online_probe_loss", "online_probe_accuracy"} <= set(metrics)
    assert np.isfinite(float(loss))

    trained = inference.split_task(task)

    def probe_loss(params):
        module = nnx.merge(trained.graphdef, params, trained.model_state)
        return module.loss(_batch(n=8), jax.random.key(0), train=True)[1]["online_probe_loss"]

    grads = jax.grad(probe_loss)(trained.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(grads["online_probe"]))


def _linear_layers(module):
    return [m for _, m in nnx.iter_graph(module) if isinstance(m, nnx.Linear)]


@pytest.mark.parametrize(
    "method, attribute, init",
    [
        ("vicreg", "expander", "torch"),
        ("barlow_twins", "projector", "torch"),
        ("simsiam", "predictor", "torch"),
        ("moco_v3", "projector", "torch"),
        ("byol", "projector", "haiku"),
    ],
)
def test_heads_start_as_their_reference_initialises_them(method, attribute, init):
    """PyTorch's nn.Linear default (the SimSiam, MoCo v3, Barlow Twins and
    VICReg references): weights and biases U(+-1/sqrt(fan_in)), so weight std
    1/sqrt(3 fan_in); Haiku's (BYOL's reference): truncated normal, std about
    0.88/sqrt(fan_in) after truncation at 2 std, zero bias. Flax's default
    would give VICReg three times PyTorch's weight variance."""
    config = _config(method)
    dims = {"vicreg": "expander_dims", "barlow_twins": "projection_dims"}
    if method in dims:
        config.task_kwargs[dims[method]] = (256, 256, 256)
    task = inference.build_task(config)
    for layer in _linear_layers(getattr(task, attribute)):
        w = np.asarray(layer.kernel[...])
        fan_in = w.shape[0]
        bound = 1 / math.sqrt(fan_in)
        if init == "torch":
            assert np.abs(w).max() <= bound
            np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1)
            if layer.bias is not None:
                b = np.asarray(layer.bias[...])
                assert np.abs(b).max() <= bound and np.abs(b).max() > bound / 4
        else:
            # Haiku's cut at 2 std without rescaling: std 0.8796 / sqrt(fan_in).
            assert np.abs(w).max() <= 2 * bound
            np.testing.assert_allclose(w.std(), 0.8796 * bound, rtol=0.05)


def test_torch_init_matches_pytorch_itself():
    """The same statistics as a real nn.Linear, where PyTorch is installed
    (the peers' extra)."""
    torch = pytest.importorskip("torch")
    linear = torch.nn.Linear(512, 256)
    ours = heads.linear_init("torch", 512)
    w = np.asarray(ours["kernel_init"](jax.random.key(0), (512, 256)))
    b = np.asarray(ours["bias_init"](jax.random.key(1), (256,)))
    reference_w = linear.weight.detach().numpy()
    reference_b = linear.bias.detach().numpy()
    np.testing.assert_allclose(w.std(), reference_w.std(), rtol=0.03)
    np.testing.assert_allclose(np.abs(w).max(), np.abs(reference_w).max(), rtol=0.01)
    np.testing.assert_allclose(np.abs(b).max(), np.abs(reference_b).max(), rtol=0.05)
