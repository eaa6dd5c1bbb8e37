"""Missing-frame prediction: hide one frame of each clip and predict its
pixels from the others (masked modelling over time, as MAE over patches, He
et al. CVPR 2022, and VideoMAE, Tong et al. NeurIPS 2022, over space-time
tubes; here the unit hidden is a whole frame).

Each clip is a sequence of frame tokens (`models/sequence.ClipTransformer`);
one frame per clip, chosen uniformly at random, has its token replaced by a
shared learned mask token before the Transformer, and a small head predicts
that frame's normalised pixels from its output token. The loss is the MSE on
the hidden frame only (`losses.mae_loss` with a frame as the "patch"). To
fill the gap the encoder has to know what moves (the digit) and how (its
direction and speed), which is what the downstream probes ask.

Details that matter:
- The hidden frame is drawn per example from (seed, step, example index)
  (`augment.example_keys`): reproducible on resume, independent of the
  device count.
- The frame's position embedding stays on the mask token: the model knows
  *which* frame it must produce.
- `features` is the encoder on the whole clip, nothing hidden, mean-pooled
  over frames; the prediction head is thrown away after pretraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.data import augment
from ssl_jax.losses import mae_loss
from ssl_jax.models.vit import layer_norm, linear
from ssl_jax.registry import TASKS
from ssl_jax.tasks.base import FeatureInput, Task, collapse_metrics


def hidden_frames(rng: jax.Array, batch_size: int, num_frames: int) -> jax.Array:
    """float [B, T]: 1 at one uniformly drawn frame per example, 0 elsewhere."""
    keys = augment.example_keys(rng, batch_size)
    index = jax.vmap(lambda key: jax.random.randint(key, (), 0, num_frames))(keys)
    return jax.nn.one_hot(index, num_frames, dtype=jnp.float32)


CLIPS = FeatureInput(
    "video",
    "uint8",
    ("N", "T", "H", "W", 3),
    "T RGB frames 0-255, scaled to x / 255, then (x - 0.5) / 0.5",
)


class FramesTask(Task):
    feature_input = CLIPS

    def __init__(self, encoder: nnx.Module, *, rngs: nnx.Rngs, head_dim: int = 256):
        if not hasattr(encoder, "embed_frames"):
            raise ValueError(
                f"Missing-frame prediction needs a clip encoder (embed_frames), got "
                f"{type(encoder).__name__}: use encoder=clip_transformer."
            )
        self.encoder = encoder
        dim = encoder.embed_dim
        self.mask_token = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, dim)))
        self.head_hidden = linear(dim, head_dim, rngs=rngs)
        self.head_norm = layer_norm(head_dim, rngs=rngs)
        self.head_out = linear(head_dim, encoder.frame_dim, rngs=rngs)

    def augment(self, batch, rng, *, train=True):
        """uint8 clips -> normalised float clips (no other augmentation: a
        crop or flip would change the motion the probes ask about)."""
        del rng, train
        return {"video": augment.normalize(augment.to_float(batch["video"]))}

    def predict(self, video: jax.Array, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Normalised clips [B, T, H, W, C] and the hidden frames [B, T] ->
        (predicted pixels of every frame [B, T, H*W*C], the output tokens)."""
        x = self.encoder.embed_frames(video)
        x = jnp.where(hidden[..., None] > 0, self.mask_token[...].astype(x.dtype), x)
        tokens = self.encoder.encode_embeddings(x)
        h = self.head_norm(jax.nn.gelu(self.head_hidden(tokens), approximate=False))
        return self.head_out(h), tokens

    def loss(self, batch, rng, *, train):
        video = self.augment(batch, rng, train=train)["video"]
        b, t = video.shape[:2]
        hidden = hidden_frames(rng, b, t)
        pred, tokens = self.predict(video, hidden)
        loss = mae_loss(pred, video.reshape(b, t, -1), hidden)
        return loss, collapse_metrics(jnp.mean(tokens, axis=1))

    def features(self, video: jax.Array) -> jax.Array:
        """Mean-pooled frame tokens of the whole, unhidden clip."""
        x = augment.normalize(augment.to_float(video))
        return self.encoder(x, train=False).astype(jnp.float32)

    def visualize(self, batch, rng) -> jax.Array:
        """uint8 [3H, nW, 3]: per example (one column each), the true hidden
        frame, the frame before it, and the prediction."""
        video = self.augment(batch, rng)["video"]
        b, t, h, w, c = video.shape
        hidden = hidden_frames(rng, b, t)
        pred, _ = self.predict(video, hidden)
        index = jnp.argmax(hidden, axis=1)
        take = lambda x, i: jnp.take_along_axis(x, i[:, None, None, None, None], axis=1)[:, 0]
        true = take(batch["video"], index)
        before = take(batch["video"], jnp.maximum(index - 1, 0))
        zero, one = augment.normalize(0.0), augment.normalize(1.0)
        guess = take(pred.reshape(b, t, h, w, c), index)
        guess = jnp.round(jnp.clip((guess - zero) / (one - zero), 0, 1) * 255).astype(jnp.uint8)
        rows = [jnp.concatenate(list(r), axis=1) for r in (true, before, guess)]
        return jnp.concatenate(rows, axis=0)


@TASKS.register("frames")
def frames(encoder: nnx.Module, *, rngs: nnx.Rngs, **kwargs) -> FramesTask:
    return FramesTask(encoder, rngs=rngs, **kwargs)
