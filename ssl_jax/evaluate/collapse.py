"""Collapse monitors: two numbers that say whether an encoder's embeddings
still span their space, cheap enough to log every few steps.

Pure, jit-able functions of one batch of embeddings z: [N, D], returning
float32 scalars whatever the input dtype, so a task can put them into its
training metrics. A non-contrastive method (BYOL, SimSiam, DINO, ...) can
collapse to a constant output while its loss looks fine; these catch it:

- `normalized_std` sees the complete collapse that SimSiam's paper shows
  without its stop-gradient (every output the same vector);
- `effective_rank` also sees dimensional collapse (the embeddings fill only
  a subspace), which the loss and the std can both miss.

Like the rest of `evaluate/`, this module imports nothing from the package.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# RankMe's epsilon (Garrido et al. 2023, eq. 1), added to each normalised
# singular value so that log(0) never occurs.
RANKME_EPS = 1e-7


def normalized_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the per-dimension standard deviation (over the
    batch) of the l2-normalised embeddings (Chen & He 2021, SimSiam, section
    4.1 and Figure 2, middle).

    What to expect: about 1 / sqrt(D) for healthy embeddings spread over the
    sphere (a unit vector with i.i.d. Gaussian directions has coordinates of
    variance 1 / D); 0 when every output is the same vector, i.e. complete
    collapse. The population std (divisor N) is used. It measures spread in
    direction only: embeddings on one line through the origin but with both
    signs (+v and -v) still have a non-zero std here, and a dimensional
    collapse to a few directions can keep it well above 0; `effective_rank`
    sees those.
    """
    z = jnp.asarray(z).astype(jnp.float32)
    # Floor the norm so an all-zero embedding stays finite (and counts as 0).
    norm = jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.std(z / norm, axis=0))


def effective_rank(z: jax.Array, eps: float = RANKME_EPS) -> jax.Array:
    """RankMe (Garrido et al. 2023, eq. 1): exp of the entropy of the
    normalised singular values of the embedding matrix,
    p_k = sigma_k / ||sigma||_1 + eps, RankMe = exp(-sum_k p_k log p_k).

    In [1, min(N, D)] (up to the eps): about 1 when every embedding lies on
    one line (collapse, whether or not they are all equal), about r when they
    fill an r-dimensional subspace evenly, close to min(N, D) for i.i.d.
    Gaussian embeddings. As in the paper the matrix is not centred, so a
    constant embedding has rank 1, not 0. The singular values need N and D
    large enough for the number to mean something: RankMe uses a few
    thousand embeddings, and an estimate from N < D embeddings can never
    exceed N.
    """
    z = jnp.asarray(z).astype(jnp.float32)
    # The singular values from the eigenvalues of the smaller Gram matrix: an
    # SVD of a 512 x 2048 batch cost half a second per step on a CPU.
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    eigenvalues = jnp.linalg.eigvalsh(gram.astype(jnp.float32))
    # Squaring the matrix squares its condition: eigenvalues below float32's
    # rounding of the largest are noise (numpy's matrix_rank tolerance), not
    # directions the embeddings use.
    tolerance = eigenvalues[-1] * max(z.shape) * jnp.finfo(jnp.float32).eps
    singular_values = jnp.sqrt(jnp.where(eigenvalues > tolerance, eigenvalues, 0.0))
    # Floored like the norm above: an all-zero batch gives p_k = eps, not NaN.
    p = singular_values / jnp.maximum(jnp.sum(singular_values), 1e-12) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


class CollapseWatch:
    """Warns once when a run's embeddings have stayed dimensionally collapsed:
    `effective_rank_fraction` (logged by every task) below `min_rank_fraction`
    for `patience` log lines in a row. A loss can look healthy while the
    representation fills a few directions (SimSiam's CIFAR run fell from
    effective rank 44 to 7.7 of 128 with a falling loss); this says so while
    the run is still going. `min_rank_fraction = 0` turns it off."""

    def __init__(self, min_rank_fraction: float = 0.1, patience: int = 2, warn=None):
        if not 0 <= min_rank_fraction < 1 or patience < 1:
            raise ValueError(
                "config.collapse_warning needs min_rank_fraction in [0, 1) and patience >= 1, "
                f"got {min_rank_fraction} and {patience}."
            )
        self.min_rank_fraction = min_rank_fraction
        self.patience = patience
        self.below = 0
        self.warned_at = None
        self._warn = warn

    def observe(self, step: int, metrics: dict) -> str | None:
        """Checks one log line's metrics; returns (and logs) the warning the
        first time the collapse has lasted `patience` lines."""
        fraction = metrics.get("effective_rank_fraction")
        if fraction is None or self.warned_at is not None:
            return None
        self.below = self.below + 1 if fraction < self.min_rank_fraction else 0
        if self.below < self.patience:
            return None
        self.warned_at = step
        message = (
            f"Collapse: the embeddings' effective rank has been below "
            f"{self.min_rank_fraction:.0%} of its maximum for {self.patience} log lines "
            f"(effective rank {metrics.get('effective_rank', float('nan')):.1f}, "
            f"{fraction:.1%} at step {step}). The representation is collapsing: check the "
            "recipe (learning rate, predictor, momentum) before spending more steps."
        )
        if self._warn is not None:
            self._warn(message)
        return message
