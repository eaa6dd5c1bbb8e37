"""Pure loss functions of the pretext tasks, testable on their own."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x||, with the norm floored at `eps` so a zero vector stays finite."""
    norm_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))


def contrastive_logits(
    z1: jax.Array, z2: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """The 2N x 2N cosine similarities / temperature of the stacked views
    [z1; z2], with each anchor's similarity to itself masked to -inf, and the
    index of each anchor's positive (row i of z1 pairs with row i of z2)."""
    n = z1.shape[0]
    z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return logits, positives


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, eq. 1).

    z1, z2: [N, D] projections of two views of the same N images. Each of the
    2N projections is an anchor; its positive is the other view of its image
    and its negatives are the other 2N - 2 projections. Returns the mean over
    the 2N anchors of -log softmax(positive).
    """
    logits, positives = contrastive_logits(z1, z2, temperature)
    positive_logits = jnp.take_along_axis(logits, positives[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive_logits)


def contrastive_accuracy(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """Fraction of the 2N anchors whose most similar other projection is their positive."""
    logits, positives = contrastive_logits(z1, z2, 1.0)
    return jnp.mean(jnp.argmax(logits, axis=1) == positives)


def mae_loss(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    norm_pix_loss: bool = False,
    eps: float = 1e-6,
) -> jax.Array:
    """MAE's reconstruction loss (He et al. 2022): mean squared error per patch,
    averaged over the masked patches only.

    pred, target: [B, N, P] pixels of every patch (P = p * p * C); mask: [B, N],
    1 where the patch was hidden from the encoder, 0 where it was visible.
    Visible patches contribute nothing, not even a gradient. With
    `norm_pix_loss`, each target patch is standardised by its own mean and
    (population) variance over its P values, eps added to the variance.
    """
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if norm_pix_loss:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True)
        target = (target - mean) * jax.lax.rsqrt(var + eps)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def masked_token_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """BERT's masked-language-model loss (Devlin et al. 2019): softmax
    cross-entropy of the original token, averaged over the chosen positions
    of the whole batch only; and the accuracy on those positions.

    logits: [B, T, V]; targets: int [B, T] (the uncorrupted tokens); weights:
    [B, T], 1 at the positions the masking rule chose, 0 elsewhere (the other
    positions contribute nothing, not even a gradient).
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(nll * weights) / count, jnp.sum(correct * weights) / count


# ---------------------------------------------------------------------------
# Non-contrastive and momentum-encoder methods.
#
# Conventions shared by everything below:
# - Inputs are the embeddings of the GLOBAL batch (the step runs under jit on
#   arrays sharded over the `data` mesh axis), so every mean over the batch
#   axis is a global mean and no collective is written here.
# - Whatever the input dtype (bfloat16 under mixed precision), the maths runs
#   in float32 and the result is a float32 scalar.
# - Matrix products use Precision.HIGHEST: on TPUs a float32 matmul at the
#   default precision is a single bfloat16 pass (TF32 on recent GPUs), which
#   would quietly undo the float32 promise for the sums below.
# - Targets that the method does not train through (BYOL's and MoCo's
#   momentum encoder, SimSiam's stop-gradient branch, DINO's teacher and
#   centre) are wrapped in stop_gradient here, so a caller cannot forget it.
# - Two-view methods take (online view 1, online view 2, target view 1,
#   target view 2) and apply their own paper's symmetrisation (the constant
#   differs: BYOL and MoCo v3 sum the two directions, SimSiam averages
#   them), since that factor belongs with the formula; the one-direction term
#   is public too, for callers that pair crops differently.
# ---------------------------------------------------------------------------

_HIGHEST = jax.lax.Precision.HIGHEST


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _off_diagonal_sum_of_squares(m: jax.Array) -> jax.Array:
    # A mask rather than sum(m**2) - sum(diag**2): the difference of two
    # large sums would lose the small off-diagonal mass to cancellation.
    off = ~jnp.eye(m.shape[0], dtype=bool)
    return jnp.sum(jnp.where(off, jnp.square(m), 0.0))


def byol_regression(p: jax.Array, z: jax.Array) -> jax.Array:
    """One direction of BYOL's loss: mean over the batch of
    ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z), gradient stopped at z.

    p: [N, D] online predictions of one view; z: [N, D] target projections of
    the other view. In [0, 4]; 0 when every p points along its z.
    """
    p = l2_normalize(_f32(p))
    z = l2_normalize(jax.lax.stop_gradient(_f32(z)))
    return jnp.mean(2.0 - 2.0 * jnp.sum(p * z, axis=-1))


def byol_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
    """BYOL (Grill et al. 2020, eq. 2 and the symmetrised L + L~ of section 3.1).

    p1, p2: [N, D] online predictions q_theta(z_theta) of views 1 and 2;
    z1, z2: [N, D] target projections z'_xi of the same views (no gradient).
    Returns byol_regression(p1, z2) + byol_regression(p2, z1): the two
    directions are SUMMED, as in the paper's L_total and in the reference code
    (deepmind-research/byol, byol_experiment.py: regression_loss of
    prediction_view1 vs projection_view2 plus the swapped pair, then a mean
    over the batch). In [0, 8]; 0 when p1 || z2 and p2 || z1 row by row.
    """
    return byol_regression(p1, z2) + byol_regression(p2, z1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """SimSiam's D(p, stopgrad(z)) (Chen & He 2021, eq. 1 and 3): minus the
    cosine similarity of p and z, averaged over the batch. In [-1, 1]."""
    p = l2_normalize(_f32(p))
    z = l2_normalize(jax.lax.stop_gradient(_f32(z)))
    return -jnp.mean(jnp.sum(p * z, axis=-1))


def simsiam_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
    """SimSiam (Chen & He 2021, eq. 2 with the stop-gradient of eq. 3):
    0.5 D(p1, stopgrad(z2)) + 0.5 D(p2, stopgrad(z1)).

    p1, p2: [N, D] predictor outputs of views 1 and 2; z1, z2: [N, D]
    projector outputs of the same views. The two directions are AVERAGED (the
    paper's 1/2 factors; reference facebookresearch/simsiam main_simsiam.py:
    -(cos(p1, z2).mean() + cos(p2, z1).mean()) * 0.5). Minimum -1, reached
    when p1 || z2 and p2 || z1 row by row.
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def moco_v3_contrastive(q: jax.Array, k: jax.Array, temperature: float = 0.2) -> jax.Array:
    """One direction of MoCo v3's loss (Chen, Xie & He 2021, eq. 1): InfoNCE
    of each query against every key of the global batch, its positive on the
    diagonal, times 2 tau.

    q: [N, D] predictor outputs of one view; k: [N, D] momentum-encoder
    outputs of the other view (no gradient). Both are l2-normalised; logits
    are q k^T / tau, the loss is the mean cross-entropy with labels 0..N-1,
    multiplied by 2 tau as the reference's `ctr` does
    (facebookresearch/moco-v3 moco/builder.py: `criterion(logits, labels) *
    (2 * self.T)`), which keeps the gradient scale roughly independent of tau.

    tau = 0.2 is the ViT setting (CONFIG.md passes --moco-t=.2); note that
    the reference's ResNet-50 recipes keep main_moco.py's default
    --moco-t=1.0, so a ResNet config should pass temperature=1.0 to match it.
    """
    q = l2_normalize(_f32(q))
    k = l2_normalize(jax.lax.stop_gradient(_f32(k)))
    logits = jnp.matmul(q, k.T, precision=_HIGHEST) / temperature
    cross_entropy = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
    return jnp.mean(cross_entropy) * (2.0 * temperature)


def moco_v3_loss(
    q1: jax.Array, q2: jax.Array, k1: jax.Array, k2: jax.Array, temperature: float = 0.2
) -> jax.Array:
    """MoCo v3's symmetrised loss: ctr(q1, k2) + ctr(q2, k1), the two
    directions SUMMED as in the reference's forward (`l1 + l2`).

    q1, q2: [N, D] query-encoder (with predictor) outputs of views 1 and 2;
    k1, k2: [N, D] momentum-encoder outputs of the same views. See
    `moco_v3_contrastive` for tau (0.2 for ViTs, 1.0 for the ResNet-50 recipe).
    """
    return moco_v3_contrastive(q1, k2, temperature) + moco_v3_contrastive(q2, k1, temperature)


def dino_loss(
    student: jax.Array,
    teacher: jax.Array,
    center: jax.Array,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> jax.Array:
    """DINO's self-distillation loss (Caron et al. 2021, eq. 2 and Algorithm 1).

    student: [V, N, K] student head outputs (logits) of every crop, the global
    crops first, in the teacher's order, then the local crops; teacher:
    [G, N, K] teacher outputs of the G global crops (G = 2 in the paper);
    center: [K] (or [1, K]) running mean of the teacher outputs. Lists of
    [N, K] arrays are accepted and stacked.

    The teacher is centred and sharpened, P_t = softmax((t - center) /
    tau_t), the student is log_softmax(s / tau_s), and the loss is
    -sum_k P_t log P_s averaged over the batch and over every pair (teacher
    crop g, student crop v) with v != g: a crop is never its own target.
    That is G * V - G pairs (2 global + 10 local crops: 22).

    Defaults are the reference's (facebookresearch/dino main_dino.py):
    --student_temp 0.1, --teacher_temp 0.04 with --warmup_teacher_temp 0.04;
    its longer ViT recipes pass --teacher_temp 0.07
    --warmup_teacher_temp_epochs 30 (a linear warm-up 0.04 -> 0.07), which a
    config does by passing a scheduled `teacher_temperature` (it may be a
    traced scalar). No gradient reaches the teacher or the centre. Update
    the centre with `dino_update_center` after each step.
    """
    teacher = jax.lax.stop_gradient(_f32(teacher))
    center = jax.lax.stop_gradient(_f32(center))
    targets = jax.nn.softmax((teacher - center) / teacher_temperature, axis=-1)
    return dino_cross_entropy(student, targets, student_temperature)


def dino_cross_entropy(
    student: jax.Array, targets: jax.Array, student_temperature: float = 0.1
) -> jax.Array:
    """`dino_loss` from the teacher's target distributions [G, N, K] (centred
    and sharpened, or DINOv2's Sinkhorn codes) instead of its outputs."""
    student = _f32(student)
    targets = jax.lax.stop_gradient(_f32(targets))
    num_global, num_crops, batch = targets.shape[0], student.shape[0], student.shape[1]
    log_probs = jax.nn.log_softmax(student / student_temperature, axis=-1)
    # cross_entropy[g, v]: batch mean of -sum_k P_t(g) log P_s(v), every pair
    # at once through one contraction over (batch, classes).
    cross_entropy = -jnp.einsum("gnk,vnk->gv", targets, log_probs, precision=_HIGHEST) / batch
    different = jnp.arange(num_global)[:, None] != jnp.arange(num_crops)[None, :]
    return jnp.sum(jnp.where(different, cross_entropy, 0.0)) / jnp.sum(different)


def dino_update_center(center: jax.Array, teacher: jax.Array, momentum: float = 0.9) -> jax.Array:
    """DINO's centre update (Caron et al. 2021, eq. 4): center <- m center +
    (1 - m) mean(teacher outputs), the mean over every global crop and every
    example of the global batch (the reference all-reduces the sum and divides
    by G * N * world size). teacher: [G, N, K] (or a list of [N, K]);
    center: [K] or [1, K], returned in float32 with its shape. m = 0.9 is the
    reference's --center_momentum default."""
    batch_center = jnp.mean(_f32(teacher), axis=(0, 1))
    return momentum * _f32(center) + (1.0 - momentum) * batch_center


def barlow_twins_cross_correlation(z1: jax.Array, z2: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Barlow Twins' [D, D] cross-correlation C = bn(z1)^T bn(z2) / N.

    bn standardises each dimension over the batch with the BIASED variance
    and eps inside the square root, (z - mean) / sqrt(var + eps): the
    reference's BatchNorm1d(affine=False) in training mode (eps 1e-5),
    synchronised over all GPUs, i.e. global batch statistics, as here.
    """

    def standardise(z):
        z = _f32(z)
        mean = jnp.mean(z, axis=0)
        var = jnp.mean(jnp.square(z - mean), axis=0)
        return (z - mean) * jax.lax.rsqrt(var + eps)

    n = z1.shape[0]
    return jnp.matmul(standardise(z1).T, standardise(z2), precision=_HIGHEST) / n


def barlow_twins_terms(z1: jax.Array, z2: jax.Array, eps: float = 1e-5) -> dict[str, jax.Array]:
    """The two sums of Barlow Twins' loss, for logging:
    `invariance` = sum_i (1 - C_ii)^2 and `redundancy` = sum_{i != j} C_ij^2."""
    c = barlow_twins_cross_correlation(z1, z2, eps)
    return {
        "invariance": jnp.sum(jnp.square(1.0 - jnp.diagonal(c))),
        "redundancy": _off_diagonal_sum_of_squares(c),
    }


def barlow_twins_loss(
    z1: jax.Array, z2: jax.Array, *, lambd: float = 5e-3, eps: float = 1e-5
) -> jax.Array:
    """Barlow Twins (Zbontar et al. 2021, eq. 1):
    sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, with C from
    `barlow_twins_cross_correlation` of the two views' [N, D] projections.

    lambda = 5e-3 is the paper's ImageNet value (the reference's current
    --lambd default is 0.0051). Early versions of the reference also
    multiplied the whole loss by --scale-loss (1/32 with --lambd 3.9e-3, then
    0.024 with 0.0051) before it was dropped; it is a constant factor on the
    loss, equivalent to rescaling the learning rate of the parameters LARS
    does not adapt, so it is not exposed: multiply the result if a recipe
    needs it.
    """
    terms = barlow_twins_terms(z1, z2, eps)
    return terms["invariance"] + lambd * terms["redundancy"]


def vicreg_terms(
    z1: jax.Array, z2: jax.Array, *, gamma: float = 1.0, eps: float = 1e-4
) -> dict[str, jax.Array]:
    """The three terms of VICReg (Bardes, Ponce & LeCun 2022, eq. 1-6), as the
    reference computes them (facebookresearch/vicreg main_vicreg.py):

    - `invariance`: mean over batch AND dimensions of (z1 - z2)^2
      (F.mse_loss). The paper writes s = 1/n sum_i ||z_i - z'_i||^2, a sum
      over dimensions, but its coefficients (25, 25, 1) were tuned with the
      code's per-element mean, so the code is followed.
    - `variance`: v(Z) = mean_j relu(gamma - sqrt(Var(z^j) + eps)) with the
      unbiased variance (torch.var), AVERAGED over the two views:
      (v(z1) + v(z2)) / 2 as in the code's std_loss. The paper's
      mu [v(Z) + v(Z')] is twice this; with the same mu = 25 the code's
      weighting is the one that produced the published results.
    - `covariance`: c(Z) = sum_{i != j} Cov(Z)_ij^2 / d with the unbiased
      covariance (N - 1), SUMMED over the two views (paper and code agree).

    z1, z2: [N, D] expander outputs of the two views of the global batch.
    """
    z1, z2 = _f32(z1), _f32(z2)
    n, d = z1.shape

    def variance(z):
        std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
        return jnp.mean(jax.nn.relu(gamma - std))

    def covariance(z):
        z = z - jnp.mean(z, axis=0)
        cov = jnp.matmul(z.T, z, precision=_HIGHEST) / (n - 1)
        return _off_diagonal_sum_of_squares(cov) / d

    return {
        "invariance": jnp.mean(jnp.square(z1 - z2)),
        "variance": 0.5 * (variance(z1) + variance(z2)),
        "covariance": covariance(z1) + covariance(z2),
    }


def vicreg_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> jax.Array:
    """VICReg: lambda s + mu v + nu c over `vicreg_terms` (see there for the
    exact form of each term). Defaults are the paper's lambda = mu = 25,
    nu = 1, gamma = 1, eps = 1e-4, which are also the reference's
    --sim-coeff, --std-coeff, --cov-coeff."""
    terms = vicreg_terms(z1, z2, gamma=gamma, eps=eps)
    return (
        invariance_weight * terms["invariance"]
        + variance_weight * terms["variance"]
        + covariance_weight * terms["covariance"]
    )


def sinkhorn_knopp(
    scores: jax.Array, *, epsilon: float = 0.05, iterations: int = 3, valid: jax.Array | None = None
) -> jax.Array:
    """SwAV's codes (Caron et al. 2020, section 3.1 and its reference's
    `distributed_sinkhorn`): a soft assignment of N samples to K prototypes
    that splits the samples equally among the prototypes.

    scores: [N, K] prototype scores (cosines) of the GLOBAL batch, possibly
    with queued samples first. Q = exp(scores / epsilon), scaled to total 1,
    is alternately normalised `iterations` times: each prototype's row of the
    K x N plan to 1/K, then each sample's column to 1/N. The returned codes
    are the plan times N, [N, K]: each sample's codes sum to 1 (the last
    normalisation makes that exact); each prototype's total is N/K only in
    the limit of many iterations (3 in the paper). Every sum runs over the
    whole batch axis: under jit on globally sharded arrays they are global
    sums, and no device normalises its own shard. float32, no gradient.

    `valid` bool [N]: only those samples take part (N counts them; the others
    get zero codes), as DINOv2 assigns only the masked patch tokens. Every
    sum is floored at 1e-30 before it divides: a row or column that
    underflowed to 0 gives zero codes where it gave NaN before.
    """
    # epsilon may be traced (DINOv2 passes its scheduled teacher temperature).
    if iterations < 1 or (isinstance(epsilon, int | float) and epsilon <= 0):
        raise ValueError(
            f"Sinkhorn needs iterations >= 1 and epsilon > 0, got {iterations}, {epsilon}."
        )
    logits = jax.lax.stop_gradient(_f32(scores)) / epsilon
    n, k = logits.shape
    if valid is None:
        # The global maximum is one constant factor, cancelled by the first
        # normalisation; it keeps exp finite for small epsilon (1 / 0.03 = 33).
        q = jnp.exp(logits - jnp.max(logits))
    else:
        # The other rows start at 0 and stay 0 (the floors keep them from
        # 0 / 0); N's value cancels in the normalisations, so it need not count.
        valid = valid[:, None]
        q = jnp.where(valid, jnp.exp(logits - jnp.max(jnp.where(valid, logits, -1e30))), 0.0)
    q = q / jnp.maximum(jnp.sum(q), 1e-30)
    for _ in range(iterations):
        q = q / (jnp.maximum(jnp.sum(q, axis=0, keepdims=True), 1e-30) * k)  # prototype: 1/K
        q = q / (jnp.maximum(jnp.sum(q, axis=1, keepdims=True), 1e-30) * n)  # sample: 1/N
    return q * n


def swav_loss(scores: jax.Array, codes: jax.Array, temperature: float = 0.1) -> jax.Array:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1-2; the reference's
    main_swav.py): each crop's softmax(scores / temperature) predicts the
    codes of every OTHER assigned crop.

    scores: [V, N, K] prototype scores of every crop, the G assigned (global)
    crops first; codes: [G, N, K] their Sinkhorn codes (no gradient). For
    each assigned crop g, the cross-entropy -sum_k q_g log p_v is averaged
    over the batch and over the V - 1 crops v != g, then over the G assigned
    crops, as the reference divides `subloss` by sum(nmb_crops) - 1 and the
    total by len(crops_for_assign).
    """
    log_probs = jax.nn.log_softmax(_f32(scores) / temperature, axis=-1)
    codes = jax.lax.stop_gradient(_f32(codes))
    num_assigned, num_crops, batch = codes.shape[0], scores.shape[0], scores.shape[1]
    # cross_entropy[g, v]: batch mean of -sum_k q_g log p_v.
    cross_entropy = -jnp.einsum("gnk,vnk->gv", codes, log_probs, precision=_HIGHEST) / batch
    different = jnp.arange(num_assigned)[:, None] != jnp.arange(num_crops)[None, :]
    return jnp.sum(jnp.where(different, cross_entropy, 0.0)) / jnp.sum(different)


# ---------------------------------------------------------------------------
# I-JEPA (Assran et al., CVPR 2023).


def ijepa_loss(
    pred: jax.Array,
    target: jax.Array,
    valid: jax.Array,
    *,
    distance: str = "l2",
    eps: float = 1e-5,
) -> jax.Array:
    """I-JEPA's prediction loss: the predictor's outputs against the target
    encoder's layer-normed outputs at the patches of every target block.

    pred, target: [B, M, K, D] at the K slots of each of the M target blocks of
    every example (blocks of different sizes are padded to K); valid: bool
    [B, M, K], the slots that hold a patch of the block. The target is
    normalised over D without learned parameters (the reference's
    `F.layer_norm(h, (D,))`, eps 1e-5) and never trained through.

    Per patch: the mean over D of the squared difference ("l2", the paper's
    section 3 loss) or of the smooth L1 with beta 1 ("smooth_l1", what the
    reference code's `F.smooth_l1_loss` computes). Per block: the mean over
    its patches; then the mean over blocks and examples. With blocks of equal
    size (the reference draws one size per batch) this is the reference's mean
    over every element; with sizes drawn per block each block counts once, as
    the paper's 1/M sum over blocks says.
    """
    if distance not in ("l2", "smooth_l1"):
        raise ValueError(f"distance must be 'l2' or 'smooth_l1', got {distance!r}.")
    pred, target = _f32(pred), jax.lax.stop_gradient(_f32(target))
    mean = jnp.mean(target, axis=-1, keepdims=True)
    target = (target - mean) * jax.lax.rsqrt(jnp.var(target, axis=-1, keepdims=True) + eps)
    diff = pred - target
    if distance == "l2":
        elementwise = jnp.square(diff)
    else:
        elementwise = jnp.where(jnp.abs(diff) < 1.0, 0.5 * jnp.square(diff), jnp.abs(diff) - 0.5)
    per_patch = jnp.mean(elementwise, axis=-1)
    valid = valid.astype(jnp.float32)
    per_block = jnp.sum(per_patch * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
    return jnp.mean(per_block)
