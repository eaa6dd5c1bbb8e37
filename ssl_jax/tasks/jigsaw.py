"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016).

Each image is cut into a 3x3 grid of tiles, the tiles are shuffled by one of
N fixed permutations, and a network that sees the shuffled tiles classifies
which permutation it was. To put the tiles back, the encoder has to recognise
what part of an object each tile shows.

Details that matter:
- Gaps between tiles (the paper: a 225 px crop of a 256 px image, 75 px
  cells, a random 64 px tile inside each cell). Edges of adjacent tiles then
  do not touch, so the network cannot solve the puzzle by matching low-level
  edge continuations instead of parts. `crop_fraction` (225/256) and
  `tile_fraction` (64/75) keep these proportions at any image size.
- Per-tile normalisation: each tile is standardised by its own mean and
  standard deviation, so tiles cannot be matched by brightness or contrast;
  optionally some images are made grey and each colour channel of a tile is
  shifted by a few pixels (`channel_jitter`), the paper's two remedies
  against chromatic aberration, which tells where in the lens a tile was.
- The permutation set: N permutations of the 9 tiles chosen greedily for a
  large Hamming distance between them (`permutation_set`), deterministic in
  its seed, computed once in numpy and cached.
- A shared tile encoder: the config's encoder runs on all 9B tiles as one
  batch (so batch norm sees every tile of the global batch); the 9 tile
  features of an image are concatenated in their shuffled order and an MLP
  classifies the permutation (the paper's fc6 per tile, fc7 and fc8 after the
  concatenation; here the head's first layer acts on the concatenation).
  Tile sizes are rounded down to a multiple of the encoder's `patch_size`
  when it has one (ViTs); ConvNets and ResNets take any size.
- `features` for evaluation: the encoder on the whole, un-tiled image, as the
  paper transfers its network (encoders here are fully convolutional or
  patch-based with global pooling, so whole images work), standardised per
  image as the tiles were per tile, so batch norm's statistics from the tiles
  fit the input.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.models.heads import MLPHead
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import (
    FeatureInput,
    Task,
    classification_loss,
    collapse_metrics,
    spatial_features,
)

GRID = 3  # 3x3 tiles: 9! = 362,880 candidate permutations, enumerable in numpy
NUM_TILES = GRID * GRID
SELECTIONS = ("maximin", "mean")
# Added to a tile's variance before the square root: a flat tile (the digits'
# background) becomes zeros instead of 0 / 0.
_EPS = 1e-4

IMAGES_STANDARDISED = FeatureInput(
    "image",
    "uint8",
    ("N", "H", "W", 3),
    "RGB 0-255, scaled to x / 255, then standardised by the image's own mean and std",
)


@functools.lru_cache(maxsize=8)
def _permutation_set(num_permutations: int, seed: int, selection: str) -> np.ndarray:
    candidates = np.array(list(itertools.permutations(range(NUM_TILES))), np.int8)
    first = int(np.random.default_rng(seed).integers(len(candidates)))
    chosen = [first]
    # Per candidate: its minimum (maximin) or summed (mean) Hamming distance
    # to the permutations chosen so far, updated as each one is added.
    score = (candidates != candidates[first]).sum(axis=1).astype(np.int64)
    taken = np.zeros(len(candidates), bool)
    taken[first] = True
    for _ in range(num_permutations - 1):
        # argmax takes the first of equal scores: the set is a function of
        # (num_permutations, seed, selection) alone.
        best = int(np.argmax(np.where(taken, -1, score)))
        chosen.append(best)
        taken[best] = True
        distance = (candidates != candidates[best]).sum(axis=1)
        score = np.minimum(score, distance) if selection == "maximin" else score + distance
    result = candidates[chosen].astype(np.int32)
    result.flags.writeable = False  # cached: shared by every caller
    return result


def permutation_set(num_permutations: int, *, seed: int = 0, selection: str = "maximin"):
    """[N, 9] int32: N permutations of the 9 tiles, chosen greedily.

    The paper's algorithm: start from one permutation drawn with `seed`, then
    repeatedly add the candidate (of all 9!) farthest from those chosen so
    far: "maximin" by its minimum Hamming distance to them (so the closest
    pair of the set is as far apart as the greedy order allows), "mean" by
    its average one (the paper's Algorithm 1 and its PyTorch port,
    bbrattoli/JigsawPuzzlePytorch select_permutations.py). Ties go to the
    first candidate in lexicographic order, so the set is deterministic.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown permutation selection {selection!r}; known: {SELECTIONS}.")
    if not 2 <= num_permutations <= 1000:
        # Beyond ~1000 the greedy loop takes minutes and the paper saw no gain.
        raise ValueError(f"num_permutations must be in [2, 1000], got {num_permutations}.")
    return _permutation_set(int(num_permutations), int(seed), selection)


def tile_geometry(image_size: int, crop_fraction: float, tile_fraction: float, multiple: int = 1):
    """(crop, cell, tile) in pixels: a square crop of 3 cells, each holding a
    tile of `tile_fraction` of it, rounded down to a multiple of `multiple`
    (at least one multiple: a ViT's tile may then fill its cell)."""
    cell = int(image_size * crop_fraction) // GRID
    tile = max(multiple, round(cell * tile_fraction) // multiple * multiple)
    if cell < 1 or not 1 <= tile <= cell:
        raise ValueError(
            f"A {GRID}x{GRID} grid of {image_size} px images with crop_fraction={crop_fraction} "
            f"and tile_fraction={tile_fraction} gives {cell} px cells and {tile} px tiles "
            f"(a multiple of {multiple}); tiles must be 1 px to a cell."
        )
    return GRID * cell, cell, tile


def tile_offsets(
    rng: jax.Array,
    image_size: int,
    geometry: tuple[int, int, int],
    channels: int,
    *,
    train: bool,
    channel_jitter: int = 0,
) -> jax.Array:
    """int32 [9, C, 2]: the top-left corner (row, column) in the image of
    each tile and colour channel, tiles in row-major grid order.

    Training: a random crop position, a random tile position in each cell,
    and each channel shifted by up to `channel_jitter` px, kept inside its
    cell (so channels stay aligned within the gaps). Otherwise everything
    centred and channels aligned."""
    crop, cell, tile = geometry
    grid = jnp.arange(GRID) * cell
    corners = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(NUM_TILES, 1, 2)
    if not train:
        origin = (image_size - crop) // 2 + (cell - tile) // 2
        return jnp.broadcast_to(corners + origin, (NUM_TILES, channels, 2)).astype(jnp.int32)
    crop_key, tile_key, jitter_key = jax.random.split(rng, 3)
    origin = jax.random.randint(crop_key, (1, 1, 2), 0, image_size - crop + 1)
    inside = jax.random.randint(tile_key, (NUM_TILES, 1, 2), 0, cell - tile + 1)
    shift = jax.random.randint(
        jitter_key, (NUM_TILES, channels, 2), -channel_jitter, channel_jitter + 1
    )
    inside = jnp.clip(inside + shift, 0, cell - tile)
    return (origin + corners + inside).astype(jnp.int32)


def extract_tiles(image: jax.Array, offsets: jax.Array, tile: int) -> jax.Array:
    """[H, W, C] and int [9, C, 2] corners -> the tiles [9, tile, tile, C];
    channel c of tile k starts at offsets[k, c]."""
    planes = jnp.moveaxis(image, -1, 0)  # [C, H, W]

    def one_plane(plane, corner):
        return jax.lax.dynamic_slice(plane, (corner[0], corner[1]), (tile, tile))

    tiles = jax.vmap(jax.vmap(one_plane), in_axes=(None, 0))(planes, offsets)  # [9, C, t, t]
    return jnp.moveaxis(tiles, 1, -1)


def shuffle_tiles(tiles: jax.Array, permutation: jax.Array) -> jax.Array:
    """[..., 9, ...] tiles in grid order -> position p holds tile permutation[p]."""
    return jnp.take(tiles, permutation, axis=0)


def inverse_permutation(permutation: jax.Array) -> jax.Array:
    """The permutation that undoes `permutation`: shuffling by it puts
    shuffled tiles back into grid order."""
    return jnp.argsort(permutation)


def standardise(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """x minus its mean, over its std (with `_EPS`), over `axes`."""
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(x.var(axis=axes, keepdims=True) + _EPS)


class JigsawTask(Task):
    feature_input = IMAGES_STANDARDISED

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        num_permutations: int = 100,
        permutation_seed: int = 0,
        permutation_selection: str = "maximin",
        crop_fraction: float = 225 / 256,
        tile_fraction: float = 64 / 75,
        channel_jitter: int = 0,
        grayscale_probability: float = 0.0,
        head_hidden_dims: Sequence[int] = (1024,),
    ):
        if not 0.0 <= grayscale_probability <= 1.0 or channel_jitter < 0:
            raise ValueError(
                f"Need 0 <= grayscale_probability <= 1 and channel_jitter >= 0, got "
                f"{grayscale_probability} and {channel_jitter}."
            )
        self.encoder = encoder
        self.crop_fraction = crop_fraction
        self.tile_fraction = tile_fraction
        # Tuples: a static constant of the graph (hashable), never trained or checkpointed.
        chosen = permutation_set(
            num_permutations, seed=permutation_seed, selection=permutation_selection
        )
        self.permutations = tuple(map(tuple, chosen.tolist()))
        self.channel_jitter = channel_jitter
        self.grayscale_probability = grayscale_probability
        self.head = MLPHead(
            NUM_TILES * encoder.feature_dim, tuple(head_hidden_dims), num_permutations, rngs=rngs
        )

    def geometry(self, image_size: int) -> tuple[int, int, int]:
        """(crop, cell, tile) in pixels for square images of `image_size`."""
        multiple = int(getattr(self.encoder, "patch_size", 1))
        return tile_geometry(image_size, self.crop_fraction, self.tile_fraction, multiple)

    def _puzzle(self, key, image, *, train):
        """One float image [H, W, C] -> its 9 shuffled, standardised tiles
        and the index of the permutation that shuffled them."""
        size = image.shape[0]
        geometry = self.geometry(size)
        label_key, grey_key, tile_key = jax.random.split(key, 3)
        if train and self.grayscale_probability > 0:
            image = augment.random_grayscale(grey_key, image, self.grayscale_probability)
        offsets = tile_offsets(
            tile_key,
            size,
            geometry,
            image.shape[-1],
            train=train,
            channel_jitter=self.channel_jitter if train else 0,
        )
        tiles = standardise(extract_tiles(image, offsets, geometry[2]), axes=(1, 2, 3))
        permutations = jnp.asarray(self.permutations, jnp.int32)
        label = jax.random.randint(label_key, (), 0, len(permutations))
        return shuffle_tiles(tiles, permutations[label]), label

    def augment(self, batch, rng, *, train=True):
        """uint8 images -> the shuffled tiles [B, 9, t, t, C] and their
        permutation labels [B]. The permutations are random even when not
        training (they are the task); crops and tiles are then centred."""
        images = batch["image"]
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"Jigsaw puzzles need square images, got {images.shape[1:3]}.")
        keys = augment.example_keys(rng, images.shape[0])
        puzzle = functools.partial(self._puzzle, train=train)
        tiles, labels = jax.vmap(puzzle)(keys, augment.to_float(images))
        return {"tiles": tiles, "label": labels}

    def loss(self, batch, rng, *, train):
        inputs = self.augment(batch, rng, train=train)
        tiles = inputs["tiles"]
        b = tiles.shape[0]
        # One encoder call over every tile of the batch: shared weights, and
        # batch-norm statistics over all 9B tiles.
        features = self.encoder(tiles.reshape(b * NUM_TILES, *tiles.shape[2:]), train=train)
        logits = self.head(features.reshape(b, -1), train=train)
        loss, metrics = classification_loss(logits, inputs["label"])
        return loss, {"jigsaw_accuracy": metrics["accuracy"], **collapse_metrics(features)}

    def visualize(self, batch, rng) -> jax.Array:
        """uint8 [2 (3t + 3), n (3t + 3), 3]: one column per example of
        `batch["image"]`; rows: the puzzle as the network sees it (centred
        tiles, shuffled; 1 px grey gaps) and the tiles put back by the inverse
        of the permutation the network predicts (the image, when it is right)."""
        images = batch["image"].astype(jnp.uint8)
        geometry = self.geometry(images.shape[1])
        inputs = self.augment({"image": images}, rng, train=False)
        tiles = inputs["tiles"]
        features = self.encoder(tiles.reshape(-1, *tiles.shape[2:]), train=False)
        predicted = jnp.argmax(self.head(features.reshape(len(tiles), -1), train=False), -1)
        offsets = tile_offsets(rng, images.shape[1], geometry, images.shape[-1], train=False)
        grid = jax.vmap(extract_tiles, in_axes=(0, None, None))(images, offsets, geometry[2])
        permutations = jnp.asarray(self.permutations, jnp.int32)
        shuffled = jax.vmap(shuffle_tiles)(grid, permutations[inputs["label"]])
        solved = jax.vmap(shuffle_tiles)(
            shuffled, jax.vmap(inverse_permutation)(permutations[predicted])
        )

        def boards(tiles):  # [n, 9, t, t, C] -> [3t + 3, n (3t + 3), C]
            n, _, t, _, c = tiles.shape
            padded = jnp.pad(tiles, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=128)
            rows = padded.reshape(n, GRID, GRID, t + 1, t + 1, c).transpose(1, 3, 0, 2, 4, 5)
            return rows.reshape(GRID * (t + 1), n * GRID * (t + 1), c)

        picture = jnp.concatenate([boards(shuffled), boards(solved)], axis=0)
        return jnp.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture

    def features(self, images):
        """The encoder on whole images, standardised per image (see above)."""
        x = standardise(augment.to_float(images), axes=(1, 2, 3))
        return self.encoder(x, train=False).astype(jnp.float32)

    def feature_maps(self, images):
        """The encoder's spatial map of whole images, standardised as in `features`."""
        return spatial_features(self.encoder, standardise(augment.to_float(images), axes=(1, 2, 3)))


@TASKS.register("jigsaw")
def jigsaw(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> JigsawTask:
    return JigsawTask(encoder, rngs=rngs, **kwargs)
