"""iBOT's pieces against float64 numpy references written from the reference
code (bytedance/ibot: loader.py's block mask loop, main_ibot.py's iBOTLoss;
DINOv2's KoLeo and Sinkhorn centring): the blockwise masks and their
statistics, the masked patch loss (only hidden patches count), KoLeo, the
Sinkhorn targets over the global batch, the running centres, the shared or
separate head, the mask token, the teacher's features, configs, training."""

import pathlib
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax import config_lib, inference, losses, optim, train
from ssl_jax.models.vit import patchify, sincos_2d
from ssl_jax.tasks import ibot
from tests import sharded
from tests.tasks.test_swav import _numpy_sinkhorn

ROOT = pathlib.Path(__file__).parents[2]


def _config(**task_overrides):
    config = config_lib.get_config("ibot", "runlocal")
    config.task_kwargs.update(task_overrides)
    return config


def _batch(n=8, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8)}


# ----------------------------------------------------------------------------- losses
def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_patch_loss(student, targets, hidden, tau):
    """iBOTLoss's patch term: for each global crop q (v == q), the
    cross-entropy per patch, summed over the masked ones / their count
    (clamped at 1), the batch mean; then the mean over crops."""
    student, targets = np.asarray(student, np.float64), np.asarray(targets, np.float64)
    total = 0.0
    for q in range(student.shape[0]):
        ce = np.sum(-targets[q] * _np_log_softmax(student[q] / tau), axis=-1)
        mask = hidden[q].astype(np.float64)
        total += np.mean(np.sum(ce * mask, axis=-1) / np.maximum(mask.sum(axis=-1), 1.0))
    return total / student.shape[0]


def _patch_inputs(seed=0, g=2, b=5, n=9, k=7):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(g, b, n, k)).astype(np.float32)
    targets = rng.dirichlet(np.ones(k), size=(g, b, n)).astype(np.float32)
    hidden = rng.random((g, b, n)) < 0.4
    hidden[0, 0] = False  # an unmasked crop counts 0
    hidden[1, 2] = True  # a fully masked one
    return student, targets, hidden


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_patch_loss_matches_numpy(tau):
    student, targets, hidden = _patch_inputs()
    got = ibot.masked_patch_loss(
        jnp.asarray(student), jnp.asarray(targets), jnp.asarray(hidden), tau
    )
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), _np_patch_loss(student, targets, hidden, tau), rtol=1e-5)


def test_patch_loss_is_taken_on_hidden_patches_only():
    student, targets, hidden = _patch_inputs(1)
    loss = lambda s: float(ibot.masked_patch_loss(jnp.asarray(s), targets, hidden))  # noqa: E731
    visible = student.copy()
    visible[~hidden] += 5.0 * np.random.default_rng(2).normal(size=visible[~hidden].shape)
    assert loss(visible) == loss(student)  # the student's visible patches do not count
    masked = student.copy()
    masked[hidden] += 1.0 * np.random.default_rng(3).normal(size=masked[hidden].shape)
    assert abs(loss(masked) - loss(student)) > 1e-3  # its hidden ones do
    grad = jax.grad(ibot.masked_patch_loss)(jnp.asarray(student), targets, hidden)
    np.testing.assert_array_equal(np.asarray(grad)[~hidden], 0.0)
    assert np.abs(np.asarray(grad)[hidden]).max() > 1e-4
    # The targets are never trained through.
    grad_t = jax.grad(ibot.masked_patch_loss, argnums=1)(student, jnp.asarray(targets), hidden)
    np.testing.assert_array_equal(grad_t, 0.0)


def _np_koleo(x, eps=1e-8):
    """DINOv2's KoLeoLoss in float64: l2-normalise, nearest other row by
    inner product (the diagonal filled with -1), -mean log(||x - nn + eps|| + eps)."""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = x @ x.T
    np.fill_diagonal(dots, -1.0)
    nearest = x[np.argmax(dots, axis=1)]
    return -np.mean(np.log(np.linalg.norm(x - nearest + eps, axis=-1) + eps))


@pytest.mark.parametrize("n, d", [(16, 8), (7, 32)])
def test_koleo_matches_numpy(n, d):
    x = 3.0 * np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)
    got = ibot.koleo_loss(jnp.asarray(x))
    np.testing.assert_allclose(float(got), _np_koleo(x), rtol=1e-5)
    # Spread points score lower than points gathered around one direction.
    gathered = x * 0.05 + np.ones(d, np.float32)
    assert float(ibot.koleo_loss(jnp.asarray(gathered))) > float(got) + 1.0


def test_sinkhorn_over_valid_rows_is_sinkhorn_of_those_rows():
    scores = np.random.default_rng(4).uniform(-1, 1, size=(40, 9)).astype(np.float32)
    valid = np.random.default_rng(5).random(40) < 0.3
    codes = np.asarray(losses.sinkhorn_knopp(scores, epsilon=0.05, valid=jnp.asarray(valid)))
    np.testing.assert_allclose(
        codes[valid], _numpy_sinkhorn(scores[valid], 0.05, 3), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(codes[~valid], 0.0)
    none = losses.sinkhorn_knopp(scores, epsilon=0.05, valid=jnp.zeros(40, bool))
    np.testing.assert_array_equal(none, 0.0)  # finite zeros, not NaN
    # A traced epsilon (the scheduled teacher temperature) is accepted.
    jitted = jax.jit(lambda s, e: losses.sinkhorn_knopp(s, epsilon=e))(scores, 0.05)
    np.testing.assert_allclose(jitted, _numpy_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- task
_PATCH_TEMPERATURE = {"warmup_teacher_patch_temperature": 0.06, "teacher_patch_temperature": 0.06}


def _teacher_outputs(seed=6, n=4, patches=16, k=32):
    rng = np.random.default_rng(seed)
    cls = jnp.asarray(rng.uniform(-1, 1, size=(2, n, k)).astype(np.float32))
    patch = jnp.asarray(rng.uniform(-1, 1, size=(2, n, patches, k)).astype(np.float32))
    hidden = jnp.asarray(rng.random((2, n, patches)) < 0.3)
    return cls, patch, hidden


def test_sinkhorn_targets_cover_both_crops_of_the_batch_and_the_hidden_patches():
    # A patch temperature of its own (0.06, the [CLS] one 0.04), so a swap shows.
    task = inference.build_task(_config(centering="sinkhorn", **_PATCH_TEMPERATURE))
    cls, patch, hidden = _teacher_outputs()
    cls_t, patch_t = map(np.asarray, task.targets(cls, patch, hidden))
    temperature = float(task.teacher_temperature())
    patch_temperature = float(task.teacher_patch_temperature())
    expected = _numpy_sinkhorn(np.asarray(cls).reshape(8, -1), temperature, 3).reshape(2, 4, -1)
    np.testing.assert_allclose(cls_t, expected, rtol=1e-4, atol=1e-6)
    # Not per crop: each crop alone would give other codes.
    alone = _numpy_sinkhorn(np.asarray(cls)[0], temperature, 3)
    assert np.abs(alone - expected[0]).max() > 1e-3
    rows = np.asarray(patch).reshape(-1, 32)
    valid = np.asarray(hidden).reshape(-1)
    expected = np.zeros_like(rows)
    expected[valid] = _numpy_sinkhorn(rows[valid], patch_temperature, 3)
    np.testing.assert_allclose(patch_t.reshape(-1, 32), expected, rtol=1e-4, atol=1e-6)


def test_running_centres_sharpen_the_targets_and_follow_the_teacher():
    config = _config(**_PATCH_TEMPERATURE)
    task = inference.build_task(config)
    cls, patch, hidden = _teacher_outputs()
    task.center[...] = jnp.full((1, 32), 0.3)
    task.patch_center[...] = jnp.linspace(-0.5, 0.5, 32)[None]
    cls_t, patch_t = task.targets(cls, patch, hidden)
    t, tp = float(task.teacher_temperature()), float(task.teacher_patch_temperature())
    softmax = lambda x: np.exp(_np_log_softmax(np.asarray(x, np.float64)))  # noqa: E731
    np.testing.assert_allclose(cls_t, softmax((np.asarray(cls) - 0.3) / t), rtol=1e-5, atol=1e-7)
    center = np.linspace(-0.5, 0.5, 32)
    np.testing.assert_allclose(
        patch_t, softmax((np.asarray(patch) - center) / tp), rtol=1e-5, atol=1e-7
    )
    # The loss moves both centres towards the teacher's mean outputs: every
    # patch of both crops (not the hidden ones only) for the patch centre.
    fresh = inference.build_task(config)
    reference = nnx.clone(fresh)
    batch, rng = _batch(), jax.random.key(7)
    fresh.loss(batch, rng, train=True)
    views = reference.augment(batch, jax.random.split(rng)[0])
    x = views["image"]
    tokens = reference.teacher.encoder.encode_tokens(
        patchify(x, 4), None, reference.encoder.grid(x)
    )
    teacher_cls, teacher_patch = map(np.asarray, reference.teacher.head.tokens(tokens, train=True))
    np.testing.assert_allclose(
        fresh.center[...][0], 0.1 * teacher_cls.mean(0), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        fresh.patch_center[...][0], 0.1 * teacher_patch.mean((0, 1)), rtol=1e-4, atol=1e-7
    )


def test_the_student_does_not_see_hidden_patches_and_the_mask_token_replaces_them():
    task = inference.build_task(_config())
    task.mask_token[...] = jnp.linspace(-1, 1, task.encoder.embed_dim)[None]
    x = jax.random.normal(jax.random.key(8), (3, 16, 16, 3))
    patches = patchify(x, 4)
    hidden = np.zeros((3, 16), bool)
    hidden[:, [1, 5, 6]] = True
    hidden[2] = False  # an unmasked crop is the plain encoder
    encode = lambda p: task.encoder.encode_tokens(  # noqa: E731
        p, None, (4, 4), hidden=jnp.asarray(hidden), mask_token=task.mask_token[...]
    )
    tokens = encode(patches)
    changed = np.asarray(patches).copy()
    changed[hidden] += 9.0
    np.testing.assert_allclose(encode(jnp.asarray(changed)), tokens, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        tokens[2], task.encoder.encode_tokens(patches, None, (4, 4))[2], rtol=1e-6, atol=1e-6
    )
    visible = np.asarray(patches).copy()
    visible[0, 0] += 1.0
    assert not np.allclose(encode(jnp.asarray(visible))[0], tokens[0], atol=1e-4)
    # Replaced before the positions are added (a hidden patch keeps its place).
    x0 = task.encoder.patch_embed(patches)
    x0 = jnp.where(jnp.asarray(hidden)[..., None], task.mask_token[...][0], x0)
    x0 = x0 + jnp.asarray(sincos_2d(task.encoder.embed_dim, (4, 4)))
    cls_token = jnp.broadcast_to(task.encoder.cls_token[...], (3, 1, task.encoder.embed_dim))
    x0 = jnp.concatenate([cls_token, x0], axis=1)
    for block in task.encoder.blocks:
        x0 = block(x0)
    np.testing.assert_allclose(tokens, task.encoder.norm(x0), rtol=1e-5, atol=1e-5)
    # The token, not zeros: another token gives other outputs at the crop.
    task.mask_token[...] = -task.mask_token[...]
    assert not np.allclose(encode(patches)[0], tokens[0], atol=1e-4)
    # The task's masks: one per global crop, view-major as the views, each
    # crop's from its own key.
    hidden = np.asarray(task.hidden_patches(jax.random.key(9), 64, (4, 4)))
    assert hidden.shape == (128, 16)
    masking = task.masking
    for v in (0, 1):
        own = masking.sample(jax.random.fold_in(jax.random.key(9), v), 64, (4, 4))
        np.testing.assert_array_equal(hidden[64 * v : 64 * (v + 1)], own)


@pytest.mark.parametrize("shared", [True, False])
def test_shared_or_separate_patch_prototypes_and_their_teacher(shared):
    overrides = {"shared_head": shared, "patch_out_dim": None if shared else 24}
    trained = inference.split_task(inference.build_task(_config(**overrides)))
    task = trained.module()
    head = task.head
    tokens = jax.random.normal(jax.random.key(10), (3, 17, task.encoder.embed_dim))
    cls, patch = head.tokens(tokens, train=True)
    assert cls.shape == (3, 32) and patch.shape == (3, 16, 32 if shared else 24)
    z = np.asarray(head.embed(tokens, train=True))
    layer = head.prototypes if shared else head.patch_prototypes
    kernel = np.asarray(layer.kernel[...], np.float64)
    expected = z[:, 1:] @ (kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(patch, expected, rtol=1e-5, atol=1e-6)
    assert (head.patch_prototypes is None) == shared
    # The teacher's head follows the student's, its patch prototypes too.
    tx = optax.sgd(0.5)
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(0.5), seed=0, total_steps=100
    )
    name = "prototypes" if shared else "patch_prototypes"
    before = np.array(trained.params["head"][name]["kernel"])  # a copy: the step donates
    state, _ = step(train.init_state(trained, tx), _batch())
    student = np.asarray(state["params"]["head"][name]["kernel"])
    teacher = np.asarray(state["model_state"]["teacher"]["head"][name]["kernel"])
    m = 1 - (1 - 0.99) * (np.cos(np.pi / 100) + 1) / 2
    assert np.abs(student - before).max() > 1e-6
    np.testing.assert_allclose(teacher, m * before + (1 - m) * student, rtol=1e-5, atol=1e-7)


def test_a_step_reads_the_teacher_and_keeps_the_mask_token_out_of_it():
    config = _config(koleo_weight=0.1)
    trained = inference.split_task(inference.build_task(config))
    assert "mask_token" in trained.params and "patch_center" in trained.model_state
    assert "mask_token" not in trained.model_state["teacher"]
    tx = optax.adamw(1e-2)
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(1e-2), seed=0, total_steps=100
    )
    state, metrics = step(train.init_state(trained, tx), _batch())
    assert np.isfinite(metrics["loss"]) and metrics["nonfinite"] == 0
    np.testing.assert_allclose(
        metrics["loss"],
        metrics["cls_loss"] + metrics["patch_loss"] + 0.1 * metrics["koleo_loss"],
        rtol=1e-5,
    )
    assert 0 < metrics["masked_fraction"] < 0.5
    task = nnx.merge(trained.graphdef, state["params"], state["model_state"])
    images = _batch()["image"]
    x = (images / 255.0 - 0.5) / 0.5
    teacher = task.teacher.encoder(x, train=False)
    np.testing.assert_allclose(task.features(images), teacher, rtol=1e-5, atol=1e-6)
    assert not np.allclose(task.encoder(x, train=False), teacher)


def test_the_total_is_cls_plus_weighted_patch_and_koleo_of_each_masked_crop():
    """The loss's terms recomputed from a copy of the task: the student's
    [CLS] of each masked global crop, KoLeo summed over the two crops (DINOv2),
    the patch loss weighted by patch_loss_weight."""
    task = inference.build_task(_config(koleo_weight=0.3, patch_loss_weight=0.5))
    reference = nnx.clone(task)
    batch, rng = _batch(8), jax.random.key(11)
    loss, metrics = task.loss(batch, rng, train=False)
    view_rng, mask_rng = jax.random.split(rng)
    x = reference.augment(batch, view_rng)["image"]
    hidden = reference.hidden_patches(mask_rng, 8, (4, 4))
    tokens = reference.encoder.encode_tokens(
        patchify(x, 4), None, (4, 4), hidden=hidden, mask_token=reference.mask_token[...]
    )
    embeddings = np.asarray(tokens[:, 0])
    koleo = _np_koleo(embeddings[:8]) + _np_koleo(embeddings[8:])
    np.testing.assert_allclose(metrics["koleo_loss"], koleo, rtol=1e-4)
    np.testing.assert_allclose(metrics["masked_fraction"], np.mean(hidden), rtol=1e-6)
    expected = metrics["cls_loss"] + 0.5 * metrics["patch_loss"] + 0.3 * koleo
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_gradients_reach_the_mask_token_and_both_prototypes_through_the_masked_crops():
    """With the local crops off, every gradient comes through the masked
    global crops: the mask token and the [CLS] and patch prototypes get one,
    and the patch loss alone reaches the patch prototypes."""
    for weight in (1.0, 0.0):
        config = _config(num_local=0, shared_head=False, patch_out_dim=24)
        config.task_kwargs.patch_loss_weight = weight
        trained = inference.split_task(inference.build_task(config))

        def loss(params, trained=trained):
            task = nnx.merge(trained.graphdef, params, trained.model_state)
            return task.loss(_batch(), jax.random.key(12), train=False)[0]

        grads = jax.grad(loss)(trained.params)
        largest = lambda tree: float(max(jnp.abs(x).max() for x in jax.tree.leaves(tree)))  # noqa: E731
        assert largest(grads["mask_token"]) > 1e-6
        assert largest(grads["head"]["prototypes"]) > 1e-6
        assert (largest(grads["head"]["patch_prototypes"]) > 1e-6) == (weight > 0)


def test_bad_settings_are_errors():
    for bad, message in [
        ({"shared_head": True, "patch_out_dim": 16}, "patch_out_dim"),
        ({"centering": "mean"}, "centering"),
        ({"teacher_patch_temperature": 0.0}, "patch temperatures"),
        ({"koleo_weight": -1.0}, "koleo_weight"),
        ({"mask_ratio": (0.6, 0.2)}, "Block masks"),
    ]:
        with pytest.raises(ValueError, match=message):
            inference.build_task(_config(**bad))
    config = _config()
    config.model_kwargs.pool = "gap"  # no class token to distil
    with pytest.raises(ValueError, match="class token"):
        inference.build_task(config)


# ----------------------------------------------------------------------------- configs
def test_configs_refuse_a_convolutional_encoder_and_follow_the_run():
    with pytest.raises(ValueError, match="must be a ViT"):
        config_lib.get_config("ibot", "encoder=resnet18")
    for dataset in ("digits", "tfds:cifar10", "tfds:stl10", "tfds:imagenet2012"):
        config = config_lib.get_config("ibot", f"dataset={dataset}")
        assert config.model.startswith("vit") and config.model_kwargs.pool == "cls"
        assert config.optimizer.warmup_steps == 0
        assert optim.warmup_steps(config.optimizer, 500) < 250
        kwargs = config.task_kwargs
        assert 0 <= kwargs.teacher_temperature_warmup <= 0.5
        assert all(fraction < 0.05 for _, fraction in config.optimizer.freeze)
        assert kwargs.mask_ratio == (0.1, 0.5) and kwargs.mask_probability == 0.5


def test_the_large_recipe_is_the_reference_readmes_vit_s16_command():
    config = config_lib.get_config("ibot", "dataset=tfds:imagenet2012")
    kwargs = config.task_kwargs
    assert (config.model, config.model_kwargs.patch_size, config.image_size) == (
        "vit_small",
        16,
        224,
    )
    assert config.batch_size == 1024 and config.train_steps == 1_000_800  # 800 epochs
    assert (kwargs.out_dim, kwargs.shared_head, kwargs.num_local) == (8192, True, 10)
    assert kwargs.global_views[0]["crop_scale"] == (0.25, 1.0)
    assert (kwargs.local_view["size"], kwargs.local_view["crop_scale"]) == (96, (0.05, 0.25))
    assert (kwargs.teacher_temperature, kwargs.teacher_temperature_warmup) == (0.07, 30 / 800)
    assert (kwargs.warmup_teacher_patch_temperature, kwargs.teacher_patch_temperature) == (
        0.04,
        0.07,
    )
    assert kwargs.patch_loss_weight == 1.0 and kwargs.base_momentum == 0.996
    assert config.optimizer.learning_rate == 5e-4 and config.optimizer.weight_decay == 0.04
    assert config.optimizer.warmup_fraction == 10 / 800 and config.optimizer.grad_clip_norm == 3.0


# ----------------------------------------------------------------------------- training
def test_the_loss_falls_on_a_fixed_batch():
    """The runlocal task on 64 digits for 30 steps: the loss (and the patch
    loss with it) ends below where it started."""
    from ssl_jax.data.digits import load_digits

    with tempfile.TemporaryDirectory() as cache:
        images = jnp.asarray(load_digits("", "train", 16, None, cache).images[:64])
    trained = inference.split_task(inference.build_task(_config()))
    tx = optax.adamw(2e-3)
    step = train.make_train_step(
        trained.graphdef, tx, optax.constant_schedule(2e-3), seed=0, total_steps=30
    )
    state, history = train.init_state(trained, tx), []
    for _ in range(30):
        state, metrics = step(state, {"image": images})
        history.append(jax.device_get(metrics))
    loss = [m["loss"] for m in history]
    patch = [m["patch_loss"] for m in history]
    assert np.mean(loss[-5:]) < loss[0] - 1.0, loss
    assert np.mean(patch[-5:]) < np.mean(patch[:5]), patch
    assert all(m["nonfinite"] == 0 for m in history)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ssl_jax import config_lib, inference

    assert len(jax.devices()) == 8
    mesh = Mesh(jax.devices(), ("data",))
    config = config_lib.get_config("ibot", "runlocal")
    config.task_kwargs.update(centering="sinkhorn", koleo_weight=0.1)
    graphdef, params, rest = nnx.split(inference.build_task(config), nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    images = jax.random.randint(jax.random.key(1), (16, 16, 16, 3), 0, 256, jnp.int32)
    batch = {"image": images.astype(jnp.uint8)}

    @jax.jit
    def loss(params, batch):
        return nnx.merge(graphdef, params, rest).loss(batch, jax.random.key(3), train=True)

    one = loss(params, jax.device_put(batch, jax.devices()[0]))
    eight = loss(
        jax.device_put(params, NamedSharding(mesh, P())),
        jax.device_put(batch, NamedSharding(mesh, P("data"))),
    )
    keys = ("cls_loss", "patch_loss", "koleo_loss")
    print(json.dumps({
        "one": [float(one[0])] + [float(one[1][k]) for k in keys],
        "eight": [float(eight[0])] + [float(eight[1][k]) for k in keys],
    }))
    """
)


@pytest.mark.slow  # a fresh 8-device JAX in a subprocess
def test_sinkhorn_and_koleo_losses_are_the_same_on_one_and_eight_devices():
    """The Sinkhorn codes and KoLeo's nearest neighbours are taken over the
    GLOBAL batch: sharded over 8 devices (2 images each) every term equals
    the one-device value (tests/tasks/test_swav.py shows a per-device
    Sinkhorn would not)."""
    out = sharded.run_script(_SHARDED_SCRIPT)
    np.testing.assert_allclose(out["eight"], out["one"], rtol=1e-5, atol=1e-6)
