"""What an encoder family answers when a config asks for it at an image size.

Each model module registers its families with `ssl_jax.registry.ENCODERS`:
`preset(image_size, *, test) -> EncoderPreset`, the registered model name and
keyword arguments of the family's variant for that size (`test`: its tiny
variant for unit tests and `runlocal`), and the optimizer the family needs
when a config's recipe was written for another kind of encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EncoderPreset:
    model: str  # a name registered in ssl_jax.registry.MODELS
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Fields of config.optimizer the family needs, applied when the config's
    # optimizer is another one (a ViT is not trained with a ConvNet's SGD).
    optimizer: dict[str, Any] | None = None
