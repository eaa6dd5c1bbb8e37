"""The PyTorch peers (experiments/peers): each trains a few steps and writes
the project's result keys, and the pieces that make a peer the project's
twin (encoder, heads, optimizer, schedules) agree with ssl_jax's."""

import collections
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightly")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from experiments.peers import compare, methods, models, optim, train  # noqa: E402
from ssl_jax import experiment, inference  # noqa: E402
from ssl_jax import optim as jax_optim  # noqa: E402
from ssl_jax.data.datasets import load_dataset  # noqa: E402
from ssl_jax.registry import MODELS  # noqa: E402
from ssl_jax.tasks import teacher  # noqa: E402

METHODS = list(train.METHODS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("peers") / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for c, name in enumerate(("cat", "dog", "owl")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3)) // 2 + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_JAX_CACHE_DIR", str(tmp_path / "cache"))


def _config(method, folder, *overrides, arg=""):
    spec = f"runlocal,dataset=imagefolder:{folder}{arg}"
    return train.load_config(f"configs/{method}.py", spec, overrides)


@pytest.mark.parametrize("method", METHODS)
def test_peer_trains_and_writes_the_projects_keys(method, folder, tmp_path):
    config = _config(method, folder, "train_steps=2")
    results = train.train_peer(config, str(tmp_path / "peer"))
    on_disk = json.loads((tmp_path / "peer" / "results.json").read_text())
    assert on_disk["final_loss"] == results["final_loss"]
    assert np.isfinite(results["final_loss"])
    assert [r["step"] for r in results["loss_curve"]] == [1, 2]
    for probe in (results["linear_probe"], results["random_init"]["linear_probe"]):
        assert 0.0 <= probe["top1"] <= 1.0 and 0.0 <= probe["knn_top1"] <= 1.0
        assert probe["few_labels"][0]["per_class"] == 10
    assert results["wall_seconds"] > 0 and results["images_per_sec"] > 0


def _shapes(named_shapes):
    """Multiset of shapes, axes sorted (Flax kernels are PyTorch's transposed)."""
    return collections.Counter(tuple(sorted(shape)) for shape in named_shapes)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameters_have_the_projects_shapes(method, folder):
    config = _config(method, folder)
    config = experiment.fill_from_dataset(
        config, load_dataset(config.dataset, "train", image_size=config.image_size)
    )
    task = nnx.eval_shape(lambda: inference.build_task(config))
    params = nnx.as_pure(nnx.split(task, task.trainable, ...)[1])
    peer = train.build_method(config)
    trainable = [p.shape for p in peer.parameters() if p.requires_grad]
    assert _shapes(x.shape for x in jax.tree.leaves(params)) == _shapes(trainable)
    # The teacher (if any) mirrors the student and gets no gradient.
    teacher_params = list(getattr(peer, "teacher", torch.nn.Module()).parameters())
    assert all(not p.requires_grad for p in teacher_params)


@pytest.mark.parametrize("kwargs", [{}, {"widths": (8, 16, 24), "depth": 2, "stem_stride": 2}])
def test_convnet_computes_what_ssl_jaxs_computes(kwargs):
    """ssl_jax's ConvNet weights copied into the peer's: the same features in
    training (batch statistics) and inference mode (running averages)."""
    flax_net = MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0), **kwargs)
    net = models.build_encoder("convnet_tiny", kwargs)
    convs = [m for m in net.layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.layers if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(flax_net.layers)
    with torch.no_grad():
        for layer, conv, bn in zip(flax_net.layers, convs, norms, strict=True):
            conv.weight.copy_(
                torch.from_numpy(np.array(layer.conv.kernel[...])).permute(3, 2, 0, 1)
            )
            bn.weight.copy_(torch.from_numpy(np.array(layer.bn.scale[...])))
            bn.bias.copy_(torch.from_numpy(np.array(layer.bn.bias[...]) + 0.1))
            layer.bn.bias[...] = layer.bn.bias[...] + 0.1
    images = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    for train_mode in (False, True):  # inference first: torch's running variance is unbiased
        net.train(train_mode)
        expected = np.asarray(flax_net(jnp.asarray(images), train=train_mode))
        np.testing.assert_allclose(net(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    # The running means moved by the same momentum.
    for layer, bn in zip(flax_net.layers, norms, strict=True):
        np.testing.assert_allclose(bn.running_mean.numpy(), layer.bn.mean[...], atol=1e-5)
    assert net.feature_dim == flax_net.feature_dim


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_vit_computes_what_ssl_jaxs_computes(pool):
    """ssl_jax's ViT weights copied into the MAE peer's: the same features,
    so the two share the architecture (blocks, sin-cos positions, pooling)."""
    flax_net = MODELS.get("vit_test")(rngs=nnx.Rngs(0), pool=pool)
    net = models.build_encoder("vit_test", {"patch_size": 4, "pool": pool})

    def linear(layer, kernel, bias):
        layer.weight.copy_(torch.from_numpy(np.array(kernel[...])).T)
        layer.bias.copy_(torch.from_numpy(np.array(bias[...])))

    def norm(layer, flax_norm):
        # Moved off their init (ones, zeros), so a swapped pair would show.
        layer.weight.copy_(torch.from_numpy(np.array(flax_norm.scale[...]) + 0.1))
        layer.bias.copy_(torch.from_numpy(np.array(flax_norm.bias[...]) + 0.2))
        flax_norm.scale[...] = flax_norm.scale[...] + 0.1
        flax_norm.bias[...] = flax_norm.bias[...] + 0.2

    with torch.no_grad():
        linear(net.patch_embed, flax_net.patch_embed.kernel, flax_net.patch_embed.bias)
        if pool == "cls":
            net.cls_token.copy_(torch.from_numpy(np.array(flax_net.cls_token[...])))
        for block, flax_block in zip(net.blocks, flax_net.blocks, strict=True):
            norm(block.norm1, flax_block.norm1)
            norm(block.norm2, flax_block.norm2)
            attn = block.self_attn
            attn.in_proj_weight.copy_(torch.from_numpy(np.array(flax_block.attn.qkv.kernel[...])).T)
            attn.in_proj_bias.copy_(torch.from_numpy(np.array(flax_block.attn.qkv.bias[...])))
            linear(attn.out_proj, flax_block.attn.proj.kernel, flax_block.attn.proj.bias)
            linear(block.linear1, flax_block.fc1.kernel, flax_block.fc1.bias)
            linear(block.linear2, flax_block.fc2.kernel, flax_block.fc2.bias)
        norm(net.norm, flax_net.norm)
    images = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype(np.float32)  # 2 x 2 patches
    expected = np.asarray(flax_net(jnp.asarray(images), train=False))
    got = net.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.75, 0.9, 0.6])
def test_mae_peer_hides_as_many_patches_as_ssl_jax(ratio, folder):
    from ssl_jax.tasks.mae import num_visible

    config = _config("mae", folder, f"task_kwargs.mask_ratio={ratio}")
    peer = train.build_method(config)
    images = torch.zeros(2, 3, config.image_size, config.image_size, dtype=torch.uint8)
    _, metrics = peer.loss(images, None, 0)
    patches = (config.image_size // config.model_kwargs.patch_size) ** 2
    assert metrics["visible_fraction"] == num_visible(patches, ratio) / patches


def test_learning_rates_are_the_projects_schedule(folder):
    config = _config(
        "simsiam", folder, "train_steps=10", "optimizer.fixed_lr_modules=('predictor',)"
    )
    config.optimizer.unlock()
    config.optimizer.update(warmup_fraction=0.3, bias_lr_scale=0.5)
    peer = train.build_method(config)
    opt = optim.Optimizer(config.optimizer, peer, batch_size=config.batch_size, total_steps=10)
    schedule = jax_optim.make_schedule(
        config.optimizer, batch_size=config.batch_size, total_steps=10
    )
    peak = jax_optim.scaled_learning_rate(config.optimizer, config.batch_size)
    for step in (0, 3, 9):
        opt.set_step(step)
        for group in opt.torch.param_groups:
            base = peak if group["fixed"] else float(schedule(step))
            assert group["lr"] == base * (1.0 if group["weight_decay"] else 0.5)
    fixed = {id(p) for g in opt.torch.param_groups if g["fixed"] for p in g["params"]}
    assert fixed == {id(p) for p in peer.predictor.parameters()}


OPTIMIZERS = {
    "sgd": {"name": "sgd", "nesterov": True},
    "adamw": {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.05},
    "lars": {"name": "lars", "trust_coefficient": 0.02, "grad_clip_norm": 1.0},
    "lars_clip": {"name": "lars", "lars_clip": True, "trust_coefficient": 0.02},
    "fixed_biases": {"fixed_lr_modules": ("predictor",), "bias_lr_scale": 0.3},
    "per_tensor_clip": {"name": "adamw", "grad_clip_norm": 0.5, "grad_clip": "per_tensor"},
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_are_optaxs(name):
    """Three steps of the peer's optimizer move the parameters as ssl_jax's
    optax chain does, on the same gradients."""
    fields = {"warmup_fraction": 0.34, "weight_decay": 1e-3, **OPTIMIZERS[name]}
    opt = jax_optim.default_config(**fields)
    module = torch.nn.Module()
    module.head = torch.nn.Linear(5, 4)
    module.predictor = torch.nn.Linear(4, 3)
    params = {
        n: {k: jnp.asarray(v.detach().numpy()) for k, v in m.named_parameters()}
        for n, m in module.named_children()
    }
    tx, _ = jax_optim.make_optimizer(opt, batch_size=256, total_steps=3)
    state = tx.init(params)
    peer = optim.Optimizer(opt, module, batch_size=256, total_steps=3)
    rng = np.random.default_rng(0)
    for step in range(3):
        grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        peer.zero_grad()
        for n, m in module.named_children():
            for k, p in m.named_parameters():
                p.grad = torch.from_numpy(grads[n][k].copy())
        peer.step(step)
    for n, m in module.named_children():
        for k, p in m.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), params[n][k], rtol=2e-5, atol=2e-6)


def test_ema_momentum_is_the_projects():
    for step in (1, 2, 50, 99, 100):
        expected = float(teacher.momentum_schedule(0.99, jnp.asarray(step), 100))
        assert methods.momentum(0.99, step, 100) == pytest.approx(expected, abs=1e-7)


def test_dino_schedules_inside_the_loss_are_the_projects(folder):
    """Teacher temperature warm-up and frozen prototypes, over the run's progress."""
    overrides = (
        "train_steps=10",
        "task_kwargs.teacher_temperature_warmup=0.45",
        "task_kwargs.warmup_teacher_temperature=0.02",
        "task_kwargs.teacher_temperature=0.07",
        "optimizer.freeze=(('head/prototypes', 0.3),)",
    )
    config = _config("dino", folder, *overrides)
    task = inference.build_task(config)
    peer = train.build_method(config)
    for step in range(11):
        task.after_update(step, config.train_steps)  # the progress after `step` steps
        expected = float(task.teacher_temperature())
        assert peer.teacher_temperature(step) == pytest.approx(expected, rel=1e-6)
        for p in peer.head.last_layer.parameters():
            p.grad = torch.ones_like(p)
        peer.before_step(step)
        # The peer's float32 progress rule freezes the steps ssl_jax's optimizer holds.
        frozen = step < jax_optim.frozen_steps(0.3, config.train_steps)
        assert (peer.head.last_layer.weight_v.grad is None) == frozen


def test_summary_states_each_gain_and_the_distance_to_the_peer(tmp_path):
    """The evidence table's arithmetic: gains over each side's own random
    init, the project minus its peer, and the 10-per-class probe against
    supervised training from scratch."""

    def write(path, top1, few, rand, rand_few, key="linear_probe"):
        path.mkdir(parents=True)
        probe = lambda a, b: {"top1": a, "few_labels": [{"per_class": 10, "top1": b}]}
        results = {key: probe(top1, few), "random_init": {key: probe(rand, rand_few)}}
        (path / "results.json").write_text(json.dumps({**results, "wall_seconds": 120.0}))

    write(tmp_path / "byol" / "ssl_jax", 0.42, 0.30, 0.35, 0.22)
    write(tmp_path / "byol" / "peer", 0.43, 0.29, 0.33, 0.20)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    points = [{"per_class": 10, "top1": 0.25}, {"per_class": 100, "top1": 0.4}]
    (scratch / "results.json").write_text(json.dumps({"supervised_from_scratch": points}))
    text = compare.report([("byol", str(tmp_path / "byol"))], str(scratch))
    row = next(line for line in text.splitlines() if line.startswith("| byol"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "+7.0 / +8.0" and cells[6] == "+10.0 / +9.0"
    assert cells[7] == "-1.0" and cells[8] == "+5.0" and cells[9] == "2.0, 2.0"
    assert "from scratch at 10 labels per class: 0.250" in text


def test_swav_peer_freezes_normalises_and_queues_its_prototypes(folder):
    config = _config(
        "swav",
        folder,
        "train_steps=8",
        "batch_size=4",
        "task_kwargs.queue_length=8",
        "optimizer.freeze=(('prototypes', 0.25),)",
        "task_kwargs.queue_start_fraction=0.25",
    )
    config = experiment.fill_from_dataset(
        config, load_dataset(config.dataset, "train", image_size=config.image_size)
    )
    peer = train.build_method(config)
    opt = optim.Optimizer(config.optimizer, peer, batch_size=4, total_steps=8)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(4) % 3
    start = peer.prototypes.weight.detach().clone()
    in_use = []
    for step in range(8):
        loss, metrics = peer.loss(images, labels, step)
        opt.zero_grad()
        loss.backward()
        peer.before_step(step)
        opt.step(step)
        peer.after_update(step + 1, 8)
        weight = peer.prototypes.weight.detach()
        if step < 2:  # progress 0 and 1/8 < 0.25: frozen, held at the start
            assert torch.equal(weight, start)
        else:
            assert not torch.equal(weight, start)
        np.testing.assert_allclose(weight.norm(dim=1).numpy(), 1.0, rtol=1e-5)
        in_use.append(metrics["queue_in_use"])
    # Filled from step 2 (progress 0.25), two batches of 4: in use from step 4.
    assert in_use == [0.0] * 4 + [1.0] * 4
