"""Blockwise masks of patches for masked image modelling: BEiT's generator
(Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022,
Algorithm 1) with iBOT's settings (Zhou et al., ICLR 2022, section 3.3 and
the reference's `loader.py`, `ImageFolderMask`).

Per image (one crop), from its own key:
- with probability `probability` (0.5: the reference's `--pred_ratio 0 0.3`,
  one of the two picked at random) the image is masked at all, else nothing
  is hidden;
- a masked image draws its target ratio r uniformly from `ratio` (0.1-0.5:
  `--pred_ratio_var 0 0.2` around 0.3) and hides blocks until about r * N of
  its N patches are hidden;
- each block: an area uniform between the smallest block (`min_patches`)
  and the patches still to hide, an aspect ratio log-uniform in `aspect`
  (0.3 to 1/0.3), h = round(sqrt(area * aspect)) rows and w =
  round(sqrt(area / aspect)) columns, strictly smaller than the grid, at a
  uniform position where it fits. It is accepted if it hides at least one
  new patch and no more than are still to hide (so the count never passes
  r * N); after `_MAX_FAILURES` (10) rejected draws in a row the image is
  done, short of its target by less than about one block.

This is the reference's loop run as a `lax.scan` over a fixed number of block
draws (`attempts`), one example per `vmap` lane, so it jits and needs no
host. Where it departs from the reference's loop:
- the reference tries blocks until done; here at most `attempts` draws are
  made per image, so an image still short of its target (and not yet 10
  rejections in a row) after them stays short. `DEFAULT_ATTEMPTS` = 64 cut
  fewer than 1 in 10,000 masks at 14 x 14 (`sample_with_blocks` reports it;
  tests/tasks/test_ibot.py checks it);
- the draws come from the image's key (`augment.example_keys`: seed, step,
  example), not Python's global `random`, so masks survive a resume and do
  not depend on the batch or the device count; each draw consumes its four
  uniforms whether or not its block fits (the reference draws no position
  for a block that does not fit), which changes no distribution;
- `min_patches` None is the reference's smallest block, (min(gh, gw) // 3)^2
  patches (16 at 14 x 14, as BEiT's pretraining passes; BEiT's generator
  defaults to 4); a number sets it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ssl_jax.data import augment

DEFAULT_ATTEMPTS = 64
# Rejected block draws in a row after which an image is done (the reference's
# `for attempt in range(10)`).
_MAX_FAILURES = 10


def min_block(grid: tuple[int, int], min_patches: int | None) -> int:
    """The smallest block area: the reference's (min(gh, gw) // 3)^2 unless set."""
    return (min(grid) // 3) ** 2 if min_patches is None else int(min_patches)


def block_mask(
    rng: jax.Array,
    grid: tuple[int, int],
    *,
    ratio: tuple[float, float],
    probability: float,
    aspect: tuple[float, float],
    min_patches: int | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
):
    """One image's mask bool [gh * gw] (row-major, True = hidden) and what
    made it: the target count r * N (0 when unmasked), whether the process
    ended before its draws ran out, and each draw's block rows, columns and
    acceptance ([attempts] each)."""
    gh, gw = grid
    low = float(min_block(grid, min_patches))
    apply_key, ratio_key, draw_key = jax.random.split(rng, 3)
    masked = jax.random.uniform(apply_key) < probability
    r = jax.random.uniform(ratio_key, minval=ratio[0], maxval=ratio[1])
    target = jnp.where(masked, r * gh * gw, 0.0)
    u = jax.random.uniform(draw_key, (attempts, 4))
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    rows = jnp.arange(gh, dtype=jnp.float32)[:, None]
    cols = jnp.arange(gw, dtype=jnp.float32)[None, :]

    def draw(carry, u):
        mask, count, failures = carry
        remaining = target - count
        # random.uniform(low, remaining), also when remaining < low.
        area = low + u[0] * (remaining - low)
        ratio_hw = jnp.exp(log_lo + u[1] * (log_hi - log_lo))
        h = jnp.round(jnp.sqrt(area * ratio_hw))
        w = jnp.round(jnp.sqrt(area / ratio_hw))
        fits = (h < gh) & (w < gw)
        # randint(0, gh - h); min(): u * n may round up to n in float32.
        top = jnp.minimum(jnp.floor(u[2] * (gh - h + 1)), gh - h)
        left = jnp.minimum(jnp.floor(u[3] * (gw - w + 1)), gw - w)
        block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        new = jnp.sum(block & ~mask)
        live = (count < target) & (failures < _MAX_FAILURES)
        accept = live & fits & (new > 0) & (new <= remaining)
        mask = mask | (block & accept)
        count = count + jnp.where(accept, new, 0)
        failures = jnp.where(accept, 0, failures + live)
        return (mask, count, failures), (h, w, accept)

    start = (jnp.zeros((gh, gw), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    (mask, count, failures), (h, w, accepted) = jax.lax.scan(draw, start, u)
    finished = (count >= target) | (failures >= _MAX_FAILURES)
    return mask.reshape(-1), target, finished, (h, w, accepted)


@dataclasses.dataclass(frozen=True)
class BlockMasking:
    """A task's mask settings (frozen: a static, hashable part of the model)."""

    ratio: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    min_patches: int | None = None
    attempts: int = DEFAULT_ATTEMPTS

    def __post_init__(self):
        lo, hi = self.ratio
        if not (0.0 <= lo <= hi < 1.0 and 0.0 <= self.probability <= 1.0):
            raise ValueError(
                f"Block masks need 0 <= ratio lo <= hi < 1 and a probability in [0, 1], "
                f"got ratio {self.ratio} and probability {self.probability}."
            )
        if not 0.0 < self.aspect[0] <= self.aspect[1] or self.attempts < 1:
            raise ValueError(
                f"Block masks need 0 < aspect lo <= hi and attempts >= 1, got {self.aspect}, "
                f"{self.attempts}."
            )
        if self.min_patches is not None and self.min_patches < 1:
            raise ValueError(f"Block masks need min_patches >= 1, got {self.min_patches}.")

    def sample_with_blocks(self, rng: jax.Array, batch_size: int, grid: tuple[int, int]):
        """`block_mask` of every example from its own key (`example_keys`):
        example i's mask depends on (rng, i) alone."""
        keys = augment.example_keys(rng, batch_size)
        settings = dataclasses.asdict(self)
        return jax.vmap(lambda key: block_mask(key, grid, **settings))(keys)

    def sample(self, rng: jax.Array, batch_size: int, grid: tuple[int, int]) -> jax.Array:
        """bool [B, gh * gw]: True where a patch is hidden."""
        return self.sample_with_blocks(rng, batch_size, grid)[0]
