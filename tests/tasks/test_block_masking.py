"""iBOT's blockwise masks (`ssl_jax/tasks/block_masking.py`): the same masks
as a float64 port of the reference's loop (bytedance/ibot, BEiT's generator)
on the same random numbers, and what 100,000 of them realise against the
paper's settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.tasks import block_masking

PAPER = {"ratio": (0.1, 0.5), "probability": 0.5, "aspect": (0.3, 1 / 0.3), "min_patches": None}


def _np_reference_mask(u, target, grid, low, aspect):
    """bytedance/ibot loader.py's loop (BEiT's generator), in float64, taking
    its random numbers in turn from u [T, 4] (area, aspect, top, left); the
    draws running out ends it, as the generator's fixed number of draws."""
    gh, gw = grid
    mask = np.zeros((gh, gw), bool)
    count, t = 0, 0
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    while count < target:
        max_mask_patches = target - count
        delta = 0
        for _ in range(10):
            if t == len(u):
                return mask.ravel()
            a, b, c, d = (float(x) for x in u[t])
            t += 1
            target_area = low + a * (max_mask_patches - low)  # random.uniform(low, max)
            aspect_ratio = math.exp(log_lo + b * (log_hi - log_lo))
            h = int(np.round(math.sqrt(target_area * aspect_ratio)))
            w = int(np.round(math.sqrt(target_area / aspect_ratio)))
            if w < gw and h < gh:
                top = min(int(c * (gh - h + 1)), gh - h)  # random.randint(0, gh - h)
                left = min(int(d * (gw - w + 1)), gw - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    mask[top : top + h, left : left + w] = True
                    delta = h * w - num_masked
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask.ravel()


@pytest.mark.parametrize("grid", [(14, 14), (4, 4), (8, 8), (6, 10)])
def test_block_masks_match_the_reference_loop(grid):
    rng, n, attempts = jax.random.key(3), 300, block_masking.DEFAULT_ATTEMPTS
    got = np.asarray(block_masking.BlockMasking(**PAPER).sample(rng, n, grid))

    def draws(key):  # each example's own random numbers, as the generator takes them
        apply_key, ratio_key, draw_key = jax.random.split(key, 3)
        return (
            jax.random.uniform(apply_key),
            jax.random.uniform(ratio_key, minval=0.1, maxval=0.5),
            jax.random.uniform(draw_key, (attempts, 4)),
        )

    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
    apply, ratio, u = map(np.asarray, jax.vmap(draws)(keys))
    low = (min(grid) // 3) ** 2
    for i in range(n):
        target = float(ratio[i]) * grid[0] * grid[1] if apply[i] < 0.5 else 0.0
        expected = _np_reference_mask(u[i].astype(np.float64), target, grid, low, PAPER["aspect"])
        np.testing.assert_array_equal(got[i], expected, err_msg=f"example {i}")
    assert 0.3 < np.mean(got.any(axis=1)) < 0.7


@pytest.mark.parametrize("grid", [(14, 14), (4, 4)])
def test_mask_statistics_on_100k_draws(grid):
    """iBOT's setting (pred_ratio 0 or 0.3 +- 0.2, block shapes of aspect
    0.3-3.3): what 100,000 masks realise."""
    n_patches = grid[0] * grid[1]
    low = (min(grid) // 3) ** 2
    sample = jax.jit(
        lambda key: block_masking.BlockMasking(**PAPER).sample_with_blocks(key, 100_000, grid)
    )
    mask, target, finished, (h, w, accepted) = jax.device_get(sample(jax.random.key(0)))
    count = mask.sum(axis=1)
    applied = target > 0
    # Half of the images are masked at all (the reference's choice of ratio 0 or 0.3 +- 0.2).
    assert abs(applied.mean() - 0.5) < 0.01
    assert np.all(count[~applied] == 0)
    # The realised ratio never passes the target, itself within 0.1-0.5 ...
    assert np.all(count <= target) and np.all(target[applied] >= 0.1 * n_patches)
    assert count.max() <= 0.5 * n_patches
    # ... and falls short of it by less than about one block: the smallest
    # block (low patches; at 4 x 4, 1) and the patch that rounding may add.
    shortfall = (target - count)[applied]
    assert np.quantile(shortfall, 0.999) < low + 1, np.quantile(shortfall, 0.999)
    assert shortfall.max() < 2 * (low + 1), shortfall.max()
    # The paper's mean ratio 0.3 of the masked images, less that shortfall.
    mean_ratio = count[applied].mean() / n_patches
    assert 0.3 - (low + 1) / n_patches < mean_ratio < 0.3, mean_ratio
    assert abs(count.mean() / n_patches - 0.15) < 0.02  # over all images, half unmasked
    # The fixed number of draws is enough: every mask ended as the loop would.
    assert finished.all()
    # Blocks: aspect ratios over the whole range 0.3-3.3, each one reachable
    # from a drawn aspect in range by rounding h and w (each within 0.5),
    # both orientations alike.
    h, w = h[accepted], w[accepted]
    assert np.all(h >= 1) and np.all(w >= 1) and np.all(h < grid[0]) and np.all(w < grid[1])
    assert np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3) and np.all((h + 0.5) / (w - 0.5) >= 0.3)
    aspect = h / w
    assert aspect.min() <= 0.34 and aspect.max() >= 1 / 0.34
    assert abs(np.mean(aspect > 1) - np.mean(aspect < 1)) < 0.02


def test_masks_are_per_example_and_deterministic():
    masking = block_masking.BlockMasking(**PAPER)
    a = masking.sample(jax.random.key(0), 32, (8, 8))
    np.testing.assert_array_equal(a, masking.sample(jax.random.key(0), 32, (8, 8)))
    np.testing.assert_array_equal(a[:5], masking.sample(jax.random.key(0), 5, (8, 8)))
    assert not np.array_equal(a, masking.sample(jax.random.key(1), 32, (8, 8)))
    # Every mask is 0 or some blocks; all-or-nothing probabilities do as said.
    never = block_masking.BlockMasking(**{**PAPER, "probability": 0.0})
    always = block_masking.BlockMasking(**{**PAPER, "probability": 1.0})
    assert not np.any(never.sample(jax.random.key(0), 64, (8, 8)))
    assert np.all(np.any(always.sample(jax.random.key(0), 64, (8, 8)), axis=1))
    for bad in ({"ratio": (0.5, 0.1)}, {"probability": 1.5}, {"aspect": (0.0, 2.0)}):
        with pytest.raises(ValueError, match="Block masks"):
            block_masking.BlockMasking(**{**PAPER, **bad})
