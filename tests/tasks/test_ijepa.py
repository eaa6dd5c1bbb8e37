"""I-JEPA: multi-block masks against a float64 numpy reference and the
paper's statistics, the loss against numpy, padding that changes nothing, no
path from hidden pixels to the predictions, the linear EMA, the target
encoder's features, 1 vs 8 devices, end to end."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import inference, losses
from ssl_jax.models.vit import patchify, unpatchify
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks import ijepa
from tests import sharded
from tests.test_main import run_main

ROOT = pathlib.Path(__file__).parents[2]
PAPER = {
    "num_targets": 4,
    "target_scale": (0.15, 0.2),
    "target_aspect": (0.75, 1.5),
    "context_scale": (0.85, 1.0),
    "min_keep": 10,
}
TASK_KWARGS = {"predictor_dim": 16, "predictor_depth": 1, "predictor_heads": 2, "min_keep": 1}


def _task(pool="gap", **overrides):
    encoder = MODELS.get("vit_test")(rngs=nnx.Rngs(0), pool=pool)
    return TASKS.get("ijepa")(encoder, rngs=nnx.Rngs(1), **{**TASK_KWARGS, **overrides})


def _images(n=4, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return images.astype(jnp.uint8)


# ----------------------------------------------------------------------------- numpy references
def _np_block(u, grid, scale, aspect):
    """One block from 4 uniforms, in float64, written from the formula alone."""
    gh, gw = grid
    s = scale[0] + float(u[0]) * (scale[1] - scale[0])
    ratio = aspect[0] + float(u[1]) * (aspect[1] - aspect[0])
    k = np.floor(gh * gw * s)
    h = int(min(max(np.round(np.sqrt(k * ratio)), 1), gh))
    w = int(min(max(np.round(np.sqrt(k / ratio)), 1), gw))
    top = min(int(np.floor(float(u[2]) * (gh - h + 1))), gh - h)
    left = min(int(np.floor(float(u[3]) * (gw - w + 1))), gw - w)
    mask = np.zeros((gh, gw), bool)
    mask[top : top + h, left : left + w] = True
    return mask.ravel()


def _np_example(key, grid, *, num_targets, target_scale, target_aspect, context_scale, min_keep):
    """multiblock_masks in numpy from the same uniform draws."""
    target_key, context_key = jax.random.split(key)
    u_t = np.asarray(jax.random.uniform(target_key, (num_targets, 4)), np.float64)
    u_c = np.asarray(jax.random.uniform(context_key, (ijepa._TRIES, 4)), np.float64)
    targets = np.stack([_np_block(u, grid, target_scale, target_aspect) for u in u_t])
    union = targets.any(axis=0)
    best = None
    for u in u_c:
        block = _np_block([u_c[0, 0], u_c[0, 1], u[2], u[3]], grid, context_scale, (1.0, 1.0))
        context = block & ~union
        if context.sum() > min_keep:
            return context, targets, block
        if best is None or context.sum() > best[0].sum():
            best = (context, block)
    return best[0], targets, best[1]


def _np_loss(pred, target, valid, distance):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    mu = target.mean(-1, keepdims=True)
    target = (target - mu) / np.sqrt(target.var(-1, keepdims=True) + 1e-5)
    d = pred - target
    if distance == "l2":
        e = d**2
    else:
        e = np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5)
    blocks = []
    for b in range(pred.shape[0]):
        for m in range(pred.shape[1]):
            rows = np.flatnonzero(valid[b, m])
            blocks.append(e[b, m, rows].mean())  # mean over the block's patches and D
    return np.mean(blocks)


def _rectangle(mask, grid):
    """(rows, columns) of a mask that is a filled rectangle, else None."""
    rows, cols = np.nonzero(mask.reshape(grid))
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    return (h, w) if h * w == mask.sum() else None


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (4, 4), (6, 10)])
def test_blocks_match_the_numpy_reference(grid):
    u = np.asarray(jax.random.uniform(jax.random.key(0), (500, 4)))
    for scale, aspect in [((0.15, 0.2), (0.75, 1.5)), ((0.85, 1.0), (1.0, 1.0))]:
        got = np.asarray(ijepa.block_masks(jnp.asarray(u), grid, scale, aspect))
        expected = np.stack([_np_block(row, grid, scale, aspect) for row in u])
        np.testing.assert_array_equal(got, expected)


# (8, 8) with min_keep 30: the first context positions often keep too few
# patches, so the choice among the tries is exercised.
@pytest.mark.parametrize("grid,min_keep", [((14, 14), 10), ((4, 4), 10), ((8, 8), 30)])
def test_sampled_masks_match_the_numpy_reference(grid, min_keep):
    rng = jax.random.key(7)
    settings = {**PAPER, "min_keep": min_keep}
    context, targets, blocks = ijepa.sample_masks(rng, 64, grid, **settings)
    for i in range(64):
        expected = _np_example(jax.random.fold_in(rng, i), grid, **settings)
        np.testing.assert_array_equal(context[i], expected[0])
        np.testing.assert_array_equal(targets[i], expected[1])
        np.testing.assert_array_equal(blocks[i], expected[2])


def test_mask_statistics_follow_the_paper():
    grid, n = (14, 14), 196
    context, targets, blocks = map(
        np.asarray, ijepa.sample_masks(jax.random.key(1), 1000, grid, **PAPER)
    )
    assert targets.shape == (1000, 4, n)
    # Rounding h and w to whole patches moves h * w from k = floor(N * scale)
    # by at most (sqrt(k a) + sqrt(k / a)) / 2 + 1/4 patches.
    k_lo, k_hi = np.floor(n * 0.15), np.floor(n * 0.2)
    slack = (np.sqrt(k_hi * 1.5) + np.sqrt(k_hi / 0.75)) / 2 + 0.25
    sizes = np.array([_rectangle(t, grid) for t in targets.reshape(-1, n)])
    areas = sizes.prod(axis=1)
    assert np.all((areas >= k_lo - slack) & (areas <= k_hi + slack)), (areas.min(), areas.max())
    assert abs(areas.mean() / n - 0.175) < 0.01, areas.mean() / n
    aspects = sizes[:, 0] / sizes[:, 1]
    # h / w from k a and k / a rounded: the most rounding can stretch it.
    lo = (np.sqrt(k_lo * 0.75) - 0.5) / (np.sqrt(k_lo / 0.75) + 0.5)
    hi = (np.sqrt(k_lo * 1.5) + 0.5) / (np.sqrt(k_lo / 1.5) - 0.5)
    assert np.all((aspects >= lo) & (aspects <= hi))
    assert abs(np.median(aspects) - 1.1) < 0.15  # the middle of 0.75-1.5 (1.125)
    assert np.mean(aspects < 1) > 0.15 and np.mean(aspects > 1) > 0.4  # both ways
    # The context block: a square of 0.85-1.0 of the grid before removal.
    block_sizes = np.array([_rectangle(b, grid) for b in blocks])
    assert np.all(block_sizes[:, 0] == block_sizes[:, 1])
    assert set(block_sizes[:, 0].tolist()) <= {13, 14}  # round(sqrt(166..196))
    # ... from which every target patch is removed, and nothing else.
    union = targets.any(axis=1)
    assert not np.any(context & union)
    np.testing.assert_array_equal(context, blocks & ~union)
    assert np.all(context.sum(axis=1) > PAPER["min_keep"])
    # Fresh masks per example.
    assert len({row.tobytes() for row in targets}) == 1000


def test_masks_are_per_example_and_deterministic():
    grid = (8, 8)
    a = ijepa.sample_masks(jax.random.key(0), 16, grid, **PAPER)
    b = ijepa.sample_masks(jax.random.key(0), 16, grid, **PAPER)
    c = ijepa.sample_masks(jax.random.key(1), 16, grid, **PAPER)
    small = ijepa.sample_masks(jax.random.key(0), 3, grid, **PAPER)
    for x, y, s in zip(a, b, small, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(s, x[:3])  # example i's masks do not depend on the batch
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (4, 4), (6, 10)])
def test_padded_lengths_hold_every_block(grid):
    """The static lengths bound every block a draw can give, and not by much."""
    u = np.asarray(jax.random.uniform(jax.random.key(2), (20000, 4)), np.float64)
    # The paper's targets and context, and the reference code's default
    # aspect range (0.3-3), whose largest blocks are at its extremes.
    settings = [((0.15, 0.2), (0.75, 1.5)), ((0.85, 1.0), (1.0, 1.0)), ((0.15, 0.2), (0.3, 3.0))]
    for scale, aspect in settings:
        bound = ijepa.max_block_area(grid, scale, aspect)
        largest = max(_np_block(row, grid, scale, aspect).sum() for row in u)
        assert largest <= bound <= largest + max(2, grid[0] // 2), (largest, bound)


def test_first_indices_put_the_mask_first_in_grid_order():
    mask = np.asarray(jax.random.bernoulli(jax.random.key(3), 0.4, (6, 3, 20)))
    index, valid = map(np.asarray, ijepa.first_indices(jnp.asarray(mask), 12))
    rows = zip(mask.reshape(-1, 20), index.reshape(-1, 12), valid.reshape(-1, 12), strict=True)
    for row, idx, ok in rows:
        count = min(row.sum(), 12)
        np.testing.assert_array_equal(idx[ok], np.flatnonzero(row)[:count])
        assert ok.sum() == count and np.all(ok[:count])
        assert not np.any(row[idx[~ok]])  # padding points at patches outside the mask


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("distance", ["l2", "smooth_l1"])
def test_loss_matches_numpy(distance):
    keys = jax.random.split(jax.random.key(4), 3)
    pred = 2.0 * jax.random.normal(keys[0], (3, 4, 6, 8))
    target = 3.0 + 5.0 * jax.random.normal(keys[1], (3, 4, 6, 8))
    valid = np.asarray(jnp.arange(6) < jax.random.randint(keys[2], (3, 4, 1), 1, 7))
    got = losses.ijepa_loss(pred, target, jnp.asarray(valid), distance=distance)
    np.testing.assert_allclose(float(got), _np_loss(pred, target, valid, distance), rtol=1e-5)
    # Padding slots change nothing, and the target is never trained through.
    noise = jnp.where(jnp.asarray(valid)[..., None], 0.0, 1e3)
    again = losses.ijepa_loss(pred + noise, target - noise, jnp.asarray(valid), distance=distance)
    np.testing.assert_allclose(float(again), float(got), rtol=1e-6)
    grad = jax.grad(lambda t: losses.ijepa_loss(pred, t, jnp.asarray(valid)))(target)
    assert not np.any(np.asarray(grad))


# ----------------------------------------------------------------------------- task
def _masks_of(task, images, rng):
    grid = task.encoder.grid(images)
    return task.masking.sample(rng, images.shape[0], grid)


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_no_pixel_outside_the_context_reaches_the_predictions(pool):
    task = _task(pool=pool, min_keep=3)
    x = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))
    rng = jax.random.key(6)
    context = np.asarray(_masks_of(task, x, rng)[0])
    assert context.any(axis=1).all() and not context.all(axis=1).any()
    patches = np.asarray(patchify(x, 4))
    changed = unpatchify(jnp.asarray(np.where(context[..., None], patches, 9.0)), 4, (4, 4))
    pred = jax.jit(task.predict)
    a, b = pred(x, rng), pred(changed, rng)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)  # predictions unchanged
    assert not np.allclose(a[1], b[1])  # while the targets did change
    # A context patch does reach them.
    one = patches.copy()
    one[0, np.flatnonzero(context[0])[0]] += 3.0
    c = pred(unpatchify(jnp.asarray(one), 4, (4, 4)), rng)
    assert not np.allclose(a[0][0], c[0][0], atol=1e-4)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_padding_changes_nothing():
    """The padded context encoder and predictor give, at the real slots, what
    they give on exactly the real slots of one example."""
    task = _task(pool="cls")
    x = jax.random.normal(jax.random.key(8), (2, 16, 16, 3))
    rng = jax.random.key(9)
    pred = task.predict(x, rng)[0][0]  # example 0: [M, Kt, E]
    context, targets, _ = map(np.asarray, _masks_of(task, x, rng))
    grid, patches = (4, 4), patchify(x, 4)[:1]
    ctx = np.flatnonzero(context[0])[None]
    tokens = task.encoder.encode_tokens(patches[:, ctx[0]], jnp.asarray(ctx), grid)[:, 1:]
    for m in range(targets.shape[1]):
        tgt = np.flatnonzero(targets[0, m])
        alone = task.predictor(
            tokens,
            jnp.asarray(ctx),
            jnp.ones(ctx.shape, bool),
            jnp.asarray(tgt)[None, None],
            jnp.ones((1, 1, len(tgt)), bool),
            grid,
        )
        np.testing.assert_allclose(pred[m, : len(tgt)], alone[0, 0], rtol=1e-4, atol=1e-5)


def test_a_step_trains_the_context_encoder_and_moves_the_target_by_the_linear_ema():
    from ssl_jax.tasks import teacher

    task = _task()
    graphdef, params, rest = nnx.split(task, task.trainable, ...)
    assert not any("teacher" in str(path) for path, _ in nnx.to_flat_state(params))
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    batch = {"image": _images(n=8)}

    def loss_fn(p):
        return nnx.merge(graphdef, p, rest).loss(batch, jax.random.key(0), train=True)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    assert np.isfinite(float(loss))
    # A 4 x 4 grid: target blocks of 1-4 patches, the context what they leave.
    assert 1 / 16 <= float(metrics["target_fraction"]) <= 4 / 16
    assert 0 < float(metrics["context_fraction"]) < 1
    assert {"effective_rank", "embedding_std"} <= set(metrics)
    for part in ("encoder", "predictor"):
        assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[part])), part
    # after_update: t <- m t + (1 - m) s with m rising linearly 0.996 -> 1.
    student = jax.tree.map(lambda p: p + 0.1, nnx.state(task.encoder, nnx.Param))
    nnx.update(task.encoder, student)
    before = jax.tree.map(np.asarray, nnx.state(task.teacher.encoder, nnx.Param))
    task.after_update(jnp.asarray(25), 100)
    m = 0.996 + 0.004 * 0.25
    after = nnx.state(task.teacher.encoder, nnx.Param)
    leaves = map(jax.tree.leaves, (before, student, after))
    for t0, s, t1 in zip(*leaves, strict=True):
        np.testing.assert_allclose(t1, m * t0 + (1 - m) * np.asarray(s), rtol=1e-6, atol=1e-7)
    assert teacher.TRAINABLE is task.trainable


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_features_are_the_target_encoders_mean_patch_token(pool):
    task = _task(pool=pool)
    nnx.update(task.encoder, jax.tree.map(lambda p: p * 1.5, nnx.state(task.encoder, nnx.Param)))
    images = _images()
    features = np.asarray(task.features(images))
    x = (images.astype(jnp.float32) / 255 - 0.5) / 0.5
    tokens = task.teacher.encoder.encode_tokens(patchify(x, 4), None, (4, 4))
    expected = np.asarray(tokens)[:, 1 if pool == "cls" else 0 :].mean(axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    student = np.asarray(task.encoder.encode_tokens(patchify(x, 4), None, (4, 4)))
    assert not np.allclose(features, student[:, 1 if pool == "cls" else 0 :].mean(axis=1))
    task.feature_source = "context"  # the trained encoder's instead
    np.testing.assert_allclose(
        task.features(images), student[:, 1 if pool == "cls" else 0 :].mean(axis=1), rtol=1e-5
    )


def test_i_jepa_needs_a_vit_and_valid_settings():
    encoder = nnx.eval_shape(lambda: MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="needs a ViT"):
        TASKS.get("ijepa")(encoder, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="predictor_dim"):
        nnx.eval_shape(lambda: _task(predictor_dim=18))
    with pytest.raises(ValueError, match="target_scale"):
        nnx.eval_shape(lambda: _task(target_scale=(0.3, 0.2)))
    with pytest.raises(ValueError, match="feature_source"):
        nnx.eval_shape(lambda: _task(feature_source="online"))


def test_target_spread_matches_numpy():
    """The collapse diagnostics against float64 numpy: layer-norm each token,
    then its variance over images and positions per feature and the share of
    it in the per-position means; all tokens alike -> spread 0, tokens that
    depend on the position only -> share 1."""
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(6, 5, 8)) + rng.normal(size=(1, 5, 8))  # a position part
    z = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-5)
    c = z - z.mean(axis=(0, 1))
    total = np.mean(np.sum(c**2, -1))
    got = ijepa.target_spread(jnp.asarray(tokens, jnp.float32))
    np.testing.assert_allclose(got["target_spread"], total / 8, rtol=1e-5)
    share = np.mean(np.sum(c.mean(0) ** 2, -1)) / total
    np.testing.assert_allclose(got["target_position_share"], share, rtol=1e-5)
    position_only = jnp.broadcast_to(jnp.asarray(tokens[:1]), (6, 5, 8))
    np.testing.assert_allclose(
        ijepa.target_spread(position_only)["target_position_share"], 1.0, rtol=1e-5
    )
    alike = jnp.broadcast_to(jnp.asarray(tokens[:1, :1]), (6, 5, 8))
    np.testing.assert_allclose(ijepa.target_spread(alike)["target_spread"], 0.0, atol=1e-6)


def test_same_loss_on_one_and_eight_devices():
    values = sharded.losses_on_one_and_eight_devices(
        config=str(ROOT / "configs" / "ijepa.py"), arg="runlocal", image_size=16
    )
    np.testing.assert_allclose(values["one"], values["eight"], rtol=1e-5)


def test_config_recipes_keep_the_papers_masks():
    spec = importlib.util.spec_from_file_location("ijepa_config", ROOT / "configs" / "ijepa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in ("", "dataset=tfds:cifar10", "dataset=tfds:imagenet2012"):
        config = module.get_config(arg)
        kwargs = config.task_kwargs
        assert (kwargs.num_targets, kwargs.target_scale, kwargs.target_aspect) == (
            4,
            (0.15, 0.2),
            (0.75, 1.5),
        )
        assert kwargs.context_scale == (0.85, 1.0)
        # The reference's schedules: weight decay 0.04 -> 0.4 (cosine), EMA 0.996 -> 1.
        assert (config.optimizer.weight_decay, config.optimizer.weight_decay_end) == (0.04, 0.4)
        assert kwargs.base_momentum == 0.996
    large = module.get_config("dataset=tfds:imagenet2012")
    assert large.model_kwargs.pool == "gap" and large.model_kwargs.patch_size == 16
    with pytest.raises(ValueError, match="must be a ViT"):
        module.get_config("encoder=resnet18")


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_main_runs_ijepa_end_to_end(tmp_path):
    workdir = tmp_path / "ijepa"
    run_main(workdir, config="configs/ijepa.py:runlocal")
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "ijepa" and results["model"] == "vit_test"
    assert np.isfinite(results["final_loss"])
    assert 0.0 <= results["linear_probe"]["top1"] <= 1.0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and "context_fraction" in r for r in records)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_build_from_the_runlocal_config():
    spec = importlib.util.spec_from_file_location("ijepa_config", ROOT / "configs" / "ijepa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = inference.build_task(module.get_config("runlocal"))
    loss, _ = task.loss({"image": _images(n=4)}, jax.random.key(0), train=True)
    assert np.isfinite(float(loss))
