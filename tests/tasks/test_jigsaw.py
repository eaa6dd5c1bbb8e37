import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks import jigsaw
from tests import sharded

ROOT = pathlib.Path(__file__).parents[2]
TASK_KWARGS = {"num_permutations": 24, "head_hidden_dims": (32,), "tile_fraction": 0.8}


def _task(**overrides):
    encoder = MODELS.get("convnet_tiny")(rngs=nnx.Rngs(0))
    return TASKS.get("jigsaw")(encoder, rngs=nnx.Rngs(1), **{**TASK_KWARGS, **overrides})


def _batch(n=8, size=16, seed=0):
    images = jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256, jnp.int32)
    return {"image": images.astype(jnp.uint8), "label": jnp.arange(n) % 3}


# ----------------------------------------------------------------------------- permutation set
_CANDIDATES = np.array(list(itertools.permutations(range(9))))


def _greedy_reference(n, seed, selection):
    """The greedy selection recomputed from scratch at every step, float64."""
    chosen = [int(np.random.default_rng(seed).integers(len(_CANDIDATES)))]
    while len(chosen) < n:
        d = (_CANDIDATES[None, :, :] != _CANDIDATES[chosen][:, None, :]).sum(-1).astype(np.float64)
        score = d.min(axis=0) if selection == "maximin" else d.mean(axis=0)
        score[chosen] = -1.0
        chosen.append(int(np.flatnonzero(score == score.max())[0]))
    return _CANDIDATES[chosen]


def _pairwise_hamming(perms):
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1).astype(np.float64)
    off_diagonal = d[~np.eye(len(perms), dtype=bool)]
    return off_diagonal.min(), off_diagonal.mean()


@pytest.mark.parametrize("selection", ["maximin", "mean"])
def test_permutation_set_is_the_greedy_selection_of_a_numpy_reference(selection):
    got = jigsaw.permutation_set(12, seed=3, selection=selection)
    np.testing.assert_array_equal(got, _greedy_reference(12, 3, selection))
    # The first 12 of a larger set: greedy, so a prefix.
    np.testing.assert_array_equal(jigsaw.permutation_set(30, seed=3, selection=selection)[:12], got)


def test_permutation_set_of_100_is_deterministic_and_far_apart():
    perms = jigsaw.permutation_set(100)
    assert perms.shape == (100, 9) and perms.dtype == np.int32
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    # A fresh computation (not the cache) gives the same set; another seed another.
    np.testing.assert_array_equal(jigsaw._permutation_set.__wrapped__(100, 0, "maximin"), perms)
    assert not np.array_equal(jigsaw.permutation_set(100, seed=1), perms)
    minimum, mean = _pairwise_hamming(perms)
    # Two random permutations of 9 differ in 8 places on average (one fixed
    # point of pi^-1 sigma expected): a far-apart set beats that on average,
    # and maximin keeps its closest pair further apart than the mean rule does.
    assert mean > 8.0
    mean_rule = jigsaw.permutation_set(100, selection="mean")
    mean_rule_minimum, mean_rule_mean = _pairwise_hamming(mean_rule)
    assert mean_rule_mean > 8.0
    assert minimum >= 6 and minimum > mean_rule_minimum
    # Greedy maximin: each added permutation is no closer to those before it
    # than the next one will be to its predecessors.
    gaps = [(perms[k] != perms[:k]).sum(-1).min() for k in range(1, 100)]
    assert all(a >= b for a, b in itertools.pairwise(gaps))
    assert min(gaps) == minimum


def test_permutation_set_rejects_bad_arguments():
    with pytest.raises(ValueError, match="selection"):
        jigsaw.permutation_set(10, selection="max")
    with pytest.raises(ValueError, match="num_permutations"):
        jigsaw.permutation_set(1)


# ----------------------------------------------------------------------------- tiles
def test_tile_geometry_keeps_the_papers_proportions():
    # The paper: 225 of 256 px, 75 px cells, 64 px tiles.
    assert jigsaw.tile_geometry(256, 225 / 256, 64 / 75) == (225, 75, 64)
    assert jigsaw.tile_geometry(32, 225 / 256, 64 / 75) == (27, 9, 8)
    assert jigsaw.tile_geometry(16, 1.0, 0.8) == (15, 5, 4)
    assert jigsaw.tile_geometry(32, 225 / 256, 64 / 75, multiple=4) == (27, 9, 8)
    assert jigsaw.tile_geometry(16, 225 / 256, 64 / 75, multiple=4) == (12, 4, 4)
    with pytest.raises(ValueError, match="tiles must be"):
        jigsaw.tile_geometry(2, 1.0, 0.8)


def _numpy_tiles(image, offsets, tile):
    out = np.zeros((9, tile, tile, image.shape[-1]), image.dtype)
    for k in range(9):
        for c in range(image.shape[-1]):
            y, x = offsets[k, c]
            out[k, :, :, c] = image[y : y + tile, x : x + tile, c]
    return out


def test_extract_tiles_matches_numpy_for_given_offsets():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 20, 3))
    offsets = rng.integers(0, 20 - 5 + 1, size=(9, 3, 2))
    got = jigsaw.extract_tiles(jnp.asarray(image, jnp.float32), jnp.asarray(offsets), 5)
    np.testing.assert_allclose(got, _numpy_tiles(image, offsets, 5), rtol=1e-6)


def test_tile_offsets_centred_in_eval_and_inside_their_cells_in_training():
    size = 64
    geometry = jigsaw.tile_geometry(size, 225 / 256, 64 / 75)  # crop 56, cell 18, tile 15
    crop, cell, tile = geometry
    centred = jigsaw.tile_offsets(jax.random.key(0), size, geometry, 3, train=False)
    start = (size - crop) // 2 + (cell - tile) // 2
    expected = np.array([[start + i * cell, start + j * cell] for i in range(3) for j in range(3)])
    np.testing.assert_array_equal(centred, np.repeat(expected[:, None], 3, axis=1))
    for seed in range(20):
        offsets = np.asarray(
            jigsaw.tile_offsets(
                jax.random.key(seed), size, geometry, 3, train=True, channel_jitter=1
            )
        )
        # Minus its cell's corner, a tile sits at the crop's origin (shared,
        # in [0, size - crop]) plus its place in the cell (in [0, cell - tile]).
        cells = np.array([[i * cell, j * cell] for i in range(3) for j in range(3)])
        relative = offsets - cells[:, None]
        assert relative.min() >= 0 and relative.max() <= (size - crop) + (cell - tile)
        assert (relative.max(axis=(0, 1)) - relative.min(axis=(0, 1)) <= cell - tile).all()
        assert (np.abs(offsets - offsets[:, :1]) <= 2).all()  # channels at most 2 x 1 px apart


def test_unshuffling_by_the_inverse_permutation_restores_the_grid():
    tiles = jax.random.normal(jax.random.key(0), (9, 3, 3, 2))
    for p in jigsaw.permutation_set(100).tolist():
        shuffled = jigsaw.shuffle_tiles(tiles, jnp.array(p))
        np.testing.assert_array_equal(shuffled, np.asarray(tiles)[p])  # position q holds tile p[q]
        restored = jigsaw.shuffle_tiles(shuffled, jigsaw.inverse_permutation(jnp.array(p)))
        np.testing.assert_array_equal(restored, tiles)


def test_eval_puzzles_are_the_numpy_tiles_standardised_and_shuffled():
    task = _task()
    batch = _batch(n=4)
    out = task.augment(batch, jax.random.key(1), train=False)
    crop, cell, tile = task.geometry(16)  # 12, 4, 3 at 16 px with 225/256 and 0.8
    assert out["tiles"].shape == (4, 9, tile, tile, 3)
    start = (16 - crop) // 2 + (cell - tile) // 2
    corners = np.array([[start + i * cell, start + j * cell] for i in range(3) for j in range(3)])
    offsets = np.repeat(corners[:, None], 3, axis=1)
    perms = np.array(task.permutations)
    labels = np.asarray(out["label"])
    assert labels.min() >= 0 and labels.max() < len(perms)
    for b in range(4):
        image = np.asarray(batch["image"][b], np.float64) / 255.0
        ref = _numpy_tiles(image, offsets, tile)
        mean = ref.mean(axis=(1, 2, 3), keepdims=True)
        ref = (ref - mean) / np.sqrt(ref.var(axis=(1, 2, 3), keepdims=True) + 1e-4)
        np.testing.assert_allclose(out["tiles"][b], ref[perms[labels[b]]], rtol=1e-4, atol=1e-4)


def test_puzzles_depend_on_the_key_and_example_not_the_batch():
    task = _task(channel_jitter=1, grayscale_probability=0.5)
    batch = _batch(n=8)
    a = task.augment(batch, jax.random.key(0))
    b = task.augment(batch, jax.random.key(1))
    assert not np.array_equal(a["label"], b["label"])
    half = task.augment({"image": batch["image"][:4]}, jax.random.key(0))
    np.testing.assert_array_equal(half["label"], a["label"][:4])
    np.testing.assert_allclose(half["tiles"], a["tiles"][:4], rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        task.augment({"image": jnp.zeros((1, 16, 12, 3), jnp.uint8)}, jax.random.key(0))


# ----------------------------------------------------------------------------- task
def test_loss_is_near_chance_at_init_and_learnable():
    task = _task()
    batch = _batch(n=16)
    loss, metrics = task.loss(batch, jax.random.key(0), train=True)
    assert abs(float(loss) - math.log(24)) < 1.0
    assert {"jigsaw_accuracy", "embedding_std", "effective_rank"} <= set(metrics)

    graphdef, params, rest = nnx.split(task, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)

    @jax.jit
    def step(params, rest):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            loss, _ = m.loss(batch, jax.random.key(0), train=True)
            return loss, nnx.as_pure(nnx.split(m, nnx.Param, ...)[2])

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), rest, loss

    losses = []
    for _ in range(30):
        params, rest, loss = step(params, rest)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]  # it can fit the puzzles of a fixed batch


def test_features_are_the_encoder_on_whole_standardised_images():
    task = _task()
    images = _batch(n=4)["image"]
    features = task.features(images)
    assert features.shape == (4, task.encoder.feature_dim)
    np.testing.assert_array_equal(features, task.features(images))
    np.testing.assert_allclose(task.features(images[:1]), features[:1], rtol=1e-5, atol=1e-6)
    x = np.asarray(images, np.float64) / 255.0
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(1, 2, 3), keepdims=True) + 1e-4
    )
    direct = task.encoder(jnp.asarray(x, jnp.float32), train=False)
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)


def test_visualize_shows_the_shuffled_tiles_and_a_reassembly():
    task = _task()
    batch = _batch(n=3)
    picture = np.asarray(task.visualize(batch, jax.random.key(2)))
    _, _, t = task.geometry(16)
    side = 3 * (t + 1)
    assert picture.shape == (2 * side, 3 * side, 3) and picture.dtype == np.uint8
    tiles = np.asarray(task.augment(batch, jax.random.key(2), train=False)["tiles"])
    for b in range(3):
        board = picture[:side, b * side : (b + 1) * side].astype(np.float64) / 255.0
        for q in range(9):
            i, j = divmod(q, 3)
            tile = board[i * (t + 1) : i * (t + 1) + t, j * (t + 1) : j * (t + 1) + t]
            # Position q of the board is position q of the network's input.
            ref = (tile - tile.mean()) / np.sqrt(tile.var() + 1e-4)
            np.testing.assert_allclose(tiles[b, q], ref, atol=1e-4)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_vit_tiles_are_a_multiple_of_its_patch():
    encoder = MODELS.get("vit_test")(rngs=nnx.Rngs(0), patch_size=4)
    task = TASKS.get("jigsaw")(encoder, rngs=nnx.Rngs(1), num_permutations=10)
    assert task.geometry(32)[2] == 8
    loss, _ = task.loss(_batch(n=2, size=32), jax.random.key(0), train=True)
    assert np.isfinite(loss)


@pytest.mark.slow  # 8-14 s; runs in CI's slow suite
def test_same_loss_on_one_and_eight_devices():
    kwargs = {**TASK_KWARGS, "channel_jitter": 1, "grayscale_probability": 0.5}
    losses = sharded.losses_on_one_and_eight_devices(
        task="jigsaw", task_kwargs=kwargs, image_size=16
    )
    np.testing.assert_allclose(losses["one"], losses["eight"], rtol=1e-5)
