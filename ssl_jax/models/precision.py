"""Mixed precision: bfloat16 compute, float32 parameters.

With `config.compute_dtype = "bfloat16"` every Flax layer of the task (Conv,
Linear, LayerNorm, BatchNorm, ...) casts its inputs and parameters to
bfloat16 for the computation, while the parameters themselves, batch-norm
statistics (Flax computes them in at least float32), gradients and optimizer
state stay float32. That is Flax's own `dtype` / `param_dtype` split, so
setting `dtype` on each layer of a built task is the whole policy; tasks
compute their losses in float32 and `Task.features` returns float32.

On GPUs and TPUs bfloat16 matmuls run at several times the float32 rate and
activations take half the memory; on CPUs it is usually slower, so the
embedded-data configs stay float32.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def set_compute_dtype(module: nnx.Module, name: str) -> nnx.Module:
    """Sets the computation dtype of every Flax layer inside `module`, in place."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"config.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}."
        )
    dtype = COMPUTE_DTYPES[name]
    for _, layer in nnx.iter_modules(module):
        # Layers with a parameter dtype are Flax's: their `dtype` is the compute dtype.
        if hasattr(layer, "param_dtype") and hasattr(layer, "dtype"):
            layer.dtype = dtype
    return module
