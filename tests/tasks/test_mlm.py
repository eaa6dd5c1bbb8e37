"""Masked language modelling: BERT's masking rule and loss against plain
numpy, per-example draws, and learning on a tiny corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.data import text
from ssl_jax.losses import masked_token_loss
from ssl_jax.registry import MODELS, TASKS
from ssl_jax.tasks.mlm import bert_masking, bert_masking_from_draws, masking_draws

RULE = {"pad_id": text.PAD_ID, "mask_id": text.MASK_ID}


def _tokens(batch, length, seed=0):
    """Random bytes with a random number of trailing [PAD] per row (some rows full)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (batch, length)).astype(np.int32)
    for row in range(batch):
        n = rng.integers(1, length + 1) if row % 3 else length
        tokens[row, n:] = text.PAD_ID
    return tokens


def _numpy_bert(tokens, choose, action, random, rate=0.15, mask_p=0.8, random_p=0.1):
    """BERT's create_pretraining_data rule, written plainly: per row, order the
    real positions by their draw, choose the first max(1, round(rate * n));
    then per chosen position: [MASK], a random token, or unchanged."""
    out, chosen = tokens.copy(), np.zeros(tokens.shape, np.float32)
    for b in range(tokens.shape[0]):
        real = [i for i in range(tokens.shape[1]) if tokens[b, i] != text.PAD_ID]
        count = max(1, int(np.round(rate * len(real))))
        for i in sorted(real, key=lambda i: choose[b, i])[:count]:
            chosen[b, i] = 1.0
            if action[b, i] < mask_p:
                out[b, i] = text.MASK_ID
            elif action[b, i] < mask_p + random_p:
                out[b, i] = random[b, i]
    return out, chosen


def test_masking_matches_an_independent_numpy_implementation():
    tokens = _tokens(12, 40)
    draws = masking_draws(jax.random.key(3), tokens.shape, text.NUM_BYTES)
    out, chosen = bert_masking_from_draws(jnp.asarray(tokens), draws, **RULE)
    choose, action, random = (np.asarray(draws[k]) for k in ("choose", "action", "random"))
    want_out, want_chosen = _numpy_bert(tokens, choose, action, random)
    np.testing.assert_array_equal(chosen, want_chosen)
    np.testing.assert_array_equal(out, want_out)
    # The wrapper is the same rule on its own draws.
    wrapped = bert_masking(jax.random.key(3), jnp.asarray(tokens), **RULE)
    np.testing.assert_array_equal(wrapped[0], out)


def test_masking_statistics_follow_bert():
    tokens = _tokens(2000, 64, seed=1)
    out, chosen = bert_masking(jax.random.key(0), jnp.asarray(tokens), **RULE)
    out, chosen = np.asarray(out), np.asarray(chosen) > 0
    real = tokens != text.PAD_ID
    # Exactly max(1, round(0.15 n)) real positions per row; padding never touched.
    np.testing.assert_array_equal(
        chosen.sum(1), np.maximum(1, np.round(0.15 * real.sum(1))).astype(int)
    )
    assert not (chosen & ~real).any()
    np.testing.assert_array_equal(out[~chosen], tokens[~chosen])
    new, old = out[chosen], tokens[chosen]
    n = len(new)
    masked = np.mean(new == text.MASK_ID)
    kept = np.mean(new == old)
    replaced = np.mean((new != old) & (new != text.MASK_ID))
    tol = 4 * np.sqrt(0.1 * 0.9 / n)  # four standard errors
    assert abs(masked - 0.8) < tol
    assert abs(kept - (0.1 + 0.1 / 256)) < tol  # a random token equals the old one 1/256 times
    assert abs(replaced - 0.1 * 255 / 256) < tol
    assert new[new != text.MASK_ID].max() < 256  # random tokens are bytes, never special ids
    # Chosen positions are spread over the sequence (not always the first ones).
    per_position = chosen[real.all(1)].mean(0)
    assert per_position.min() > 0.08 and per_position.max() < 0.22


def test_masks_depend_on_the_example_and_step_key_only():
    tokens = jnp.asarray(_tokens(8, 32))
    _, a = bert_masking(jax.random.key(0), tokens, **RULE)
    _, small = bert_masking(jax.random.key(0), tokens[:3], **RULE)
    _, other = bert_masking(jax.random.key(1), tokens, **RULE)
    np.testing.assert_array_equal(small, a[:3])  # whatever the batch (or its sharding)
    assert not np.array_equal(a, other)


def test_masked_token_loss_matches_numpy_and_ignores_unchosen_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (3, 5))
    weights = (rng.random((3, 5)) < 0.4).astype(np.float32)
    weights[0, 0] = 1.0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    want = (nll * weights).sum() / weights.sum()
    want_acc = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    loss, acc = masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-6)
    grad = jax.grad(lambda x: masked_token_loss(x, jnp.asarray(targets), jnp.asarray(weights))[0])
    g = np.asarray(grad(jnp.asarray(logits)))
    assert np.all(g[weights == 0] == 0) and np.all(np.abs(g[weights == 1]).sum(-1) > 0)


def test_padding_changes_nothing_for_the_real_tokens():
    encoder = MODELS.get("token_transformer_test")(rngs=nnx.Rngs(0))
    tokens = jnp.asarray(_tokens(2, 16, seed=4)[:, :10])
    tokens = tokens.at[:, 8:].set(text.PAD_ID)
    longer = jnp.concatenate([tokens, jnp.full((2, 6), text.PAD_ID)], axis=1)
    a, b = encoder(tokens, train=False), encoder(longer, train=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mlm_refuses_an_image_encoder():
    encoder = MODELS.get("vit_test")(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="token_transformer"):
        TASKS.get("mlm")(encoder, rngs=nnx.Rngs(1))


def test_embedding_and_last_pool_keeps_the_embeddings_mean_beside_the_last_layer():
    tokens = jnp.asarray(_tokens(4, 12))
    both = MODELS.get("token_transformer_test")(rngs=nnx.Rngs(0), pool="embedding_and_last")
    last = MODELS.get("token_transformer_test")(rngs=nnx.Rngs(0))
    assert both.feature_dim == 2 * last.feature_dim
    features = np.asarray(both(tokens, train=False))
    np.testing.assert_allclose(
        features[:, last.feature_dim :], last(tokens, train=False), atol=1e-6
    )
    table = np.asarray(both.embed.embedding[...])
    for row, ids in zip(features, np.asarray(tokens), strict=True):
        real = ids[ids != text.PAD_ID]
        np.testing.assert_allclose(row[: last.feature_dim], table[real].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="Unknown pool 'max'"):
        MODELS.get("token_transformer_test")(rngs=nnx.Rngs(0), pool="max")
