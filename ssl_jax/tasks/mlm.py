"""Masked language modelling (BERT; Devlin et al., "BERT: Pre-training of
Deep Bidirectional Transformers for Language Understanding", NAACL 2019).

Some positions of each token sequence are corrupted, a Transformer encoder
reads the corrupted sequence, and a linear head predicts the original token
at the chosen positions; the loss is the cross-entropy there only.

The masking rule, BERT's (section 3.1 and appendix A.1; its
`create_pretraining_data.py`): 15% of the real (non-[PAD]) positions of each
sequence are chosen, round(0.15 * n) and at least one, uniformly at random;
of the chosen, 80% become [MASK], 10% a random token, 10% stay as they are
(so the model cannot learn that only [MASK] positions matter). Here the
random token is one of the 256 bytes (`data/text.py`), never a special id.

Details that matter:
- The draws are per example: one key per example from the step's rng
  (`augment.example_keys`), so the masks survive a resume and do not depend on
  the device count, and `bert_masking_from_draws` applies the rule to given
  uniforms so a test can replay it with numpy.
- The loss is averaged over every chosen position of the global batch
  (`losses.masked_token_loss`), not per sequence first.
- `features` is the encoder on the uncorrupted sequence, mean-pooled over its
  real tokens; the prediction head is thrown away after pretraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import augment, text
from ssl_jax.losses import masked_token_loss
from ssl_jax.models.vit import layer_norm, linear
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import FeatureInput, Task, collapse_metrics


def masking_draws(rng: jax.Array, shape: tuple[int, int], num_random: int) -> dict:
    """The uniforms of BERT's rule for a [B, T] batch, one key per example:
    `choose` (which positions), `action` (mask / random / keep) in [0, 1),
    and `random` token ids in [0, num_random)."""

    def one(key):
        k_choose, k_action, k_random = jax.random.split(key, 3)
        return {
            "choose": jax.random.uniform(k_choose, shape[1:]),
            "action": jax.random.uniform(k_action, shape[1:]),
            "random": jax.random.randint(k_random, shape[1:], 0, num_random),
        }

    return jax.vmap(one)(augment.example_keys(rng, shape[0]))


def bert_masking_from_draws(
    tokens: jax.Array,
    draws: dict,
    *,
    pad_id: int,
    mask_id: int,
    rate: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """BERT's rule applied to given draws: int [B, T] tokens -> (corrupted
    tokens, chosen float [B, T]). In each row the round(rate * n) real
    positions (at least 1) with the smallest `choose` draws are chosen; a
    chosen position becomes [MASK] when its `action` < mask_fraction, its
    `random` token when action < mask_fraction + random_fraction, and stays."""
    valid = tokens != pad_id
    n_valid = jnp.sum(valid, axis=1, keepdims=True)
    n_chosen = jnp.maximum(jnp.round(rate * n_valid), 1)
    # Padding sorts last (draws are < 1); a position's rank among the real ones.
    noise = jnp.where(valid, draws["choose"], 2.0)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    chosen = valid & (rank < n_chosen)
    action = draws["action"]
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    out = jnp.where(to_mask, mask_id, tokens)
    out = jnp.where(to_random, draws["random"].astype(tokens.dtype), out)
    return out, chosen.astype(jnp.float32)


def bert_masking(rng: jax.Array, tokens: jax.Array, **rule) -> tuple[jax.Array, jax.Array]:
    """`bert_masking_from_draws` with fresh per-example draws from `rng`."""
    return bert_masking_from_draws(tokens, masking_draws(rng, tokens.shape, text.NUM_BYTES), **rule)


TOKENS = FeatureInput(
    "tokens",
    "int32",
    ("N", "T"),
    f"UTF-8 byte ids 0-255 (data/text.py), [PAD]={text.PAD_ID} after the text, "
    "T at most the encoder's max_length",
)


class MLMTask(Task):
    feature_input = TOKENS

    def __init__(
        self,
        encoder: nnx.Module,
        *,
        rngs: nnx.Rngs,
        mask_rate: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
    ):
        if not hasattr(encoder, "encode") or not hasattr(encoder, "vocab_size"):
            raise ValueError(
                f"Masked language modelling needs a token encoder (encode, vocab_size), got "
                f"{type(encoder).__name__}: use encoder=token_transformer."
            )
        if not 0.0 < mask_rate < 1.0 or mask_fraction + random_fraction > 1.0:
            raise ValueError(
                "task_kwargs.mask_rate must be in (0, 1) and mask_fraction + random_fraction "
                f"<= 1, got {mask_rate}, {mask_fraction}, {random_fraction}."
            )
        self.encoder = encoder
        # A tuple, not a dict: static module attributes must be hashable.
        self.rule = (
            ("pad_id", text.PAD_ID),
            ("mask_id", text.MASK_ID),
            ("rate", float(mask_rate)),
            ("mask_fraction", float(mask_fraction)),
            ("random_fraction", float(random_fraction)),
        )
        dim = encoder.embed_dim
        # BERT's MLM head: dense + GELU + LayerNorm, then the vocabulary.
        self.transform = linear(dim, dim, rngs=rngs)
        self.norm = layer_norm(dim, rngs=rngs)
        self.decoder = linear(dim, encoder.vocab_size, rngs=rngs)

    def augment(self, batch, rng, *, train=True):
        """int tokens -> the corrupted tokens, the originals, and the chosen positions."""
        del train  # masking is the task itself, in training and evaluation alike
        tokens = batch["tokens"]
        corrupted, chosen = bert_masking(rng, tokens, **dict(self.rule))
        return {"tokens": corrupted, "targets": tokens, "weights": chosen}

    def loss(self, batch, rng, *, train):
        inputs = self.augment(batch, rng, train=train)
        hidden = self.encoder.encode(inputs["tokens"])
        logits = self.decoder(self.norm(jax.nn.gelu(self.transform(hidden), approximate=False)))
        loss, accuracy = masked_token_loss(logits, inputs["targets"], inputs["weights"])
        valid = (inputs["targets"] != text.PAD_ID).astype(jnp.float32)[..., None]
        pooled = jnp.sum(hidden * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
        metrics = {
            "mlm_accuracy": accuracy,
            "masked_fraction": jnp.sum(inputs["weights"]) / jnp.sum(valid),
            **collapse_metrics(pooled),
        }
        return loss, metrics

    def features(self, tokens: jax.Array) -> jax.Array:
        """Mean-pooled encoder tokens of the uncorrupted sequences."""
        return self.encoder(tokens, train=False).astype(jnp.float32)


@TASKS.register("mlm")
def mlm(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> MLMTask:
    return MLMTask(encoder, rngs=rngs, **kwargs)
