"""ssl_jax: self-supervised learning in JAX/Flax.

The Python API (each name is imported on first use, so `import ssl_jax` is
cheap):

    import ssl_jax
    config = ssl_jax.get_config("simclr", "runlocal")    # a packaged config, or a file path
    results = ssl_jax.run(config, "runs/simclr")         # pretrain + evaluate, as the CLI does
    encoder = ssl_jax.load_encoder("runs/simclr")        # or an exported .safetensors file
    train_x, test_x = encoder(train_images), encoder(test_images)   # what encoder.input says
    probe = ssl_jax.linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
    print(probe.top1, ssl_jax.knn_top1(train_x, train_y, test_x, test_y, num_classes=10))

Lower level: `build_task(config)` (the task module with its encoder),
`pretrain(config, workdir, data)` (the shared loop, `ssl_jax.train.train`, on
a dict of arrays),
`load_dataset(name, split, image_size=...)`, `export_encoder(workdir, path)`.
"""

from __future__ import annotations

import importlib

from ssl_jax import cpu_flags

__version__ = "0.1.0"

# Before anything starts JAX's CPU backend: see cpu_flags for why and when.
cpu_flags.apply()

# Public name -> (module, attribute).
_API = {
    "get_config": ("ssl_jax.config_lib", "get_config"),
    "build_task": ("ssl_jax.inference", "build_task"),
    # Not "train": that name is the module ssl_jax.train.
    "pretrain": ("ssl_jax.train", "train"),
    "run": ("ssl_jax.experiment", "run"),
    "load_encoder": ("ssl_jax.export", "load_encoder"),
    "export_encoder": ("ssl_jax.export", "export_encoder"),
    "Encoder": ("ssl_jax.export", "Encoder"),
    "load_dataset": ("ssl_jax.data.datasets", "load_dataset"),
    "linear_probe": ("ssl_jax.evaluate.linear_probe", "fit_linear_probe"),
    "knn_top1": ("ssl_jax.evaluate.knn", "knn_top1"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
