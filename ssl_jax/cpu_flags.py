"""XLA CPU flags that ssl_jax turns on before JAX starts its CPU backend.

jaxlib 0.10 hands almost every CPU convolution to YNNPACK. On the 2-core VM
this project is measured on, a train step is faster with the convolutions left
on XLA's own (Eigen) path
(`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`):
the ConvNet rotation step on the CIFAR photos took 487 ms instead of 810 in
float32 and 440 instead of 840 in bfloat16, SimCLR's 526 instead of 753
(`experiments/peers/step_parity.py`, `experiments/conv_cpu.py`; figures in
docs/benchmarks/). The flag is experimental and unknown flags abort XLA, so it
is only set on the jaxlib versions it was measured on, and never over the
user's own choice:

- `XLA_FLAGS` that already names `xla_cpu_experimental_ynn_fusion_type` wins;
- `SSL_JAX_XLA_CPU_DEFAULTS=0` turns this off (e.g. to compare both paths).

It acts only if the CPU backend has not started yet (XLA reads `XLA_FLAGS`
once): `import ssl_jax` before using JAX, as the entry points do. Results
change in the last digits against YNNPACK's rounding, never in meaning.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

CONV_ON_XLA = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# jaxlib versions on which the flag exists and was measured to help.
MEASURED_JAXLIB = ("0.10.2",)
OPT_OUT = "SSL_JAX_XLA_CPU_DEFAULTS"


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def apply(
    environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None
) -> bool:
    """Adds the flag to `environ["XLA_FLAGS"]` where it applies; True if it did."""
    if environ.get(OPT_OUT, "1") == "0":
        return False
    current = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in current:
        return False
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if not version.startswith(MEASURED_JAXLIB):
        return False
    environ["XLA_FLAGS"] = f"{current} {CONV_ON_XLA}".strip()
    return True
