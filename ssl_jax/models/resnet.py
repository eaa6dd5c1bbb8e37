"""ResNet encoders (He et al., 2016) without the classifier head.

`resnet18/34/50` follow the torchvision layouts, so with `stem="imagenet"` their
parameter counts equal the published ones minus the final fc layer.
`resnet_tiny` is the same code at toy size, for tests.

Constructor kwargs (all optional, set from the config):
  in_channels: input channels (3).
  stem: "cifar" (3x3 conv, stride 1, no max-pool: for 32 px and smaller) or
    "imagenet" (7x7 conv stride 2 + 3x3 max-pool stride 2: 4x downsampling).
  width: channels of the first stage (64); each later stage doubles them.
  zero_init_residual: start the last batch-norm scale of every residual branch
    at zero (True).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ssl_jax.models.layers import ConvBN, global_avg_pool
from ssl_jax.models.presets import EncoderPreset
from ssl_jax.registry import ENCODERS, MODELS


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions; used by ResNet-18/34."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, *, stride: int, zero_init: bool, rngs: nnx.Rngs
    ):
        out_channels = width * self.expansion
        self.conv1 = ConvBN(in_channels, width, 3, stride=stride, rngs=rngs)
        self.conv2 = ConvBN(width, out_channels, 3, zero_scale=zero_init, rngs=rngs)
        self.shortcut = _shortcut(in_channels, out_channels, stride, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nnx.relu(self.conv1(x, train=train))
        y = self.conv2(y, train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + skip)


class Bottleneck(nnx.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4); used by ResNet-50.

    The stride sits on the 3x3 convolution ("ResNet v1.5", as in torchvision),
    not on the first 1x1 as in the original paper: a strided 1x1 simply drops
    three quarters of the positions, while a strided 3x3 still sees all of
    them. It costs a little compute for about half a point of ImageNet top-1,
    and it is torchvision's ResNet-50, the one most SSL results are reported on.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, *, stride: int, zero_init: bool, rngs: nnx.Rngs
    ):
        out_channels = width * self.expansion
        self.conv1 = ConvBN(in_channels, width, 1, rngs=rngs)
        self.conv2 = ConvBN(width, width, 3, stride=stride, rngs=rngs)
        self.conv3 = ConvBN(width, out_channels, 1, zero_scale=zero_init, rngs=rngs)
        self.shortcut = _shortcut(in_channels, out_channels, stride, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nnx.relu(self.conv1(x, train=train))
        y = nnx.relu(self.conv2(y, train=train))
        y = self.conv3(y, train=train)
        skip = x if self.shortcut is None else self.shortcut(x, train=train)
        return nnx.relu(y + skip)


def _shortcut(in_channels: int, out_channels: int, stride: int, rngs: nnx.Rngs) -> ConvBN | None:
    """Identity when shapes match, else a 1x1 projection (with the block's stride) + BN."""
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvBN(in_channels, out_channels, 1, stride=stride, rngs=rngs)


class CifarStem(nnx.Module):
    """3x3 conv, stride 1, no pooling: small images keep their resolution."""

    def __init__(self, in_channels: int, width: int, *, rngs: nnx.Rngs):
        self.conv = ConvBN(in_channels, width, 3, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return nnx.relu(self.conv(x, train=train))


class ImagenetStem(nnx.Module):
    """7x7 conv stride 2, then 3x3 max-pool stride 2: 4x downsampling."""

    def __init__(self, in_channels: int, width: int, *, rngs: nnx.Rngs):
        self.conv = ConvBN(in_channels, width, 7, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nnx.relu(self.conv(x, train=train))
        # Padding with -inf (max_pool's pad value) as in PyTorch's padding=1.
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


STEMS = {"cifar": CifarStem, "imagenet": ImagenetStem}


class ResNet(nnx.Module):
    """Stem, then stages of residual blocks (stride 2 at the start of every
    stage but the first), then global average pooling."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_sizes: Sequence[int],
        *,
        rngs: nnx.Rngs,
        in_channels: int = 3,
        stem: str = "cifar",
        width: int = 64,
        zero_init_residual: bool = True,
    ):
        if stem not in STEMS:
            raise ValueError(f"Unknown ResNet stem {stem!r}; expected one of {sorted(STEMS)}.")
        self.in_channels = in_channels  # tasks that feed another input than RGB check it
        self.stem = STEMS[stem](in_channels, width, rngs=rngs)
        blocks = []
        channels = width
        for stage, num_blocks in enumerate(stage_sizes):
            stage_width = width * 2**stage
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                # zero_init_residual: each block's residual branch then outputs
                # zeros, so every block starts as the identity (or its
                # projection shortcut) and the network starts as a shallow one
                # whose signal and gradients pass undamped through the skips;
                # the branches grow in as their BN scales learn. Goyal et al.
                # (2017) found this stabilises large-batch training, which is
                # the regime of contrastive methods.
                blocks.append(
                    block(
                        channels,
                        stage_width,
                        stride=stride,
                        zero_init=zero_init_residual,
                        rngs=rngs,
                    )
                )
                channels = stage_width * block.expansion
        self.blocks = nnx.List(blocks)
        self.feature_dim: int = channels

    def feature_map(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[B, H, W, C] -> last-stage map [B, H / s, W / s, feature_dim]."""
        x = self.stem(x, train=train)
        for block in self.blocks:
            x = block(x, train=train)
        return x

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return global_avg_pool(self.feature_map(x, train=train))


@MODELS.register("resnet18")
def resnet18(*, rngs: nnx.Rngs, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), rngs=rngs, **kwargs)


@MODELS.register("resnet34")
def resnet34(*, rngs: nnx.Rngs, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), rngs=rngs, **kwargs)


@MODELS.register("resnet50")
def resnet50(*, rngs: nnx.Rngs, **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), rngs=rngs, **kwargs)


@MODELS.register("resnet_tiny")
def resnet_tiny(*, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """Two one-block stages at width 8 (feature_dim 16): for tests."""
    kwargs.setdefault("width", 8)
    return ResNet(BasicBlock, (1, 1), rngs=rngs, **kwargs)


def _resnet_preset(name: str):
    def preset(image_size: int, *, test: bool = False) -> EncoderPreset:
        """The CIFAR stem (3x3, stride 1, no pooling) up to 32 px, ImageNet's above."""
        if test:
            return EncoderPreset("resnet_tiny")
        return EncoderPreset(name, {"stem": "cifar" if image_size <= 32 else "imagenet"})

    ENCODERS.register(name)(preset)


for _name in ("resnet18", "resnet34", "resnet50"):
    _resnet_preset(_name)
