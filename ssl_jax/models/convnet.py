"""A small plain ConvNet: the fast default encoder for small images on a CPU.

Stages of [conv3x3 - BN - ReLU] x depth with global average pooling at the
end. The first convolution has stride `stem_stride` and the first one of every
later stage stride 2.

The default (`widths=(32, 64, 128)`, `depth=2`, `stem_stride=2`) has 0.29 M
parameters, costs about 16 MFLOPs per 32x32 image (forward) and has a 43 px
receptive field, so each output position sees a whole 8x8 digit upsampled to
32 px. On 16 px inputs use `stem_stride=1`: the same cost and the same view
of the digit (receptive field 23 px). The strided first convolution is what
keeps 32 px cheap: XLA's CPU convolutions are slow, and a full-resolution
first stage would cost 71 MFLOPs per image, 4-5x the training time.

Constructor kwargs (all optional, set from the config):
  in_channels: input channels (3).
  widths: channels of each stage; feature_dim is the last one.
  depth: convolutions per stage.
  stem_stride: stride of the very first convolution (2).
  conv_init: the convolutions' initialisation, `layers.CONV_INITS`: "he"
    (He normal, fan_out; the default) or "torch" (PyTorch's nn.Conv2d
    default, 6x smaller variance; measured per method in `convnet_preset`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ssl_jax.models.layers import ConvBN, global_avg_pool
from ssl_jax.models.presets import EncoderPreset
from ssl_jax.registry import ENCODERS, MODELS


class ConvNet(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        depth: int = 2,
        stem_stride: int = 2,
        conv_init: str = "he",
    ):
        if not widths or depth < 1:
            raise ValueError(f"ConvNet needs a stage and depth >= 1, got {widths=}, {depth=}.")
        self.in_channels = in_channels  # tasks that feed another input than RGB check it
        layers = []
        channels = in_channels
        for stage, width in enumerate(widths):
            for i in range(depth):
                stride = (2 if stage > 0 else stem_stride) if i == 0 else 1
                layers.append(ConvBN(channels, width, 3, stride=stride, init=conv_init, rngs=rngs))
                channels = width
        self.layers = nnx.List(layers)
        self.feature_dim: int = channels

    def feature_map(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, H, W, C] -> [B, H / s, W / s, feature_dim], s = stem_stride * 2^(stages - 1)."""
        for layer in self.layers:
            x = nnx.relu(layer(x, train=train))
        return x

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return global_avg_pool(self.feature_map(x, train=train))


@MODELS.register("convnet")
def convnet(*, rngs: nnx.Rngs, **kwargs) -> ConvNet:
    return ConvNet(rngs=rngs, **kwargs)


@MODELS.register("convnet_tiny")
def convnet_tiny(*, rngs: nnx.Rngs, **kwargs) -> ConvNet:
    """Two one-conv stages of 8 and 16 channels, no stem stride (feature_dim 16): for tests."""
    kwargs.setdefault("widths", (8, 16))
    kwargs.setdefault("depth", 1)
    kwargs.setdefault("stem_stride", 1)
    return ConvNet(rngs=rngs, **kwargs)


@ENCODERS.register("convnet")
def convnet_preset(image_size: int, *, test: bool = False) -> EncoderPreset:
    """The default ConvNet at any size (stride-2 stem; recipes may set
    `stem_stride=1` for 16 px images), He-initialised; tiny for tests.

    PyTorch's conv init (`conv_init="torch"`) is not the default but a
    recipe's choice (rotation's and DINO's photo recipes, through their
    `family_kwargs`): on the CIFAR-10 photos (1,000 steps) it lifted
    rotation's probe by 5.6 points and DINO's by 3.0, but cost BYOL 3.9 and
    SimSiam 1.1 (their PyTorch peers 4.4 and 8.4), and was within 1 point for
    SimCLR and MoCo v3 (docs/results.md, "Every method")."""
    del image_size
    if test:
        return EncoderPreset("convnet_tiny")
    return EncoderPreset("convnet", {"stem_stride": 2, "conv_init": "he"})
