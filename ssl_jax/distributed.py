"""Multi-host start-up through `jax.distributed`.

Every process runs the same command. With `--coordinator_address`,
`--num_processes` and `--process_id` the cluster is given explicitly (e.g.
several processes on one machine); with `--distributed` alone JAX detects it
from the environment (SLURM, TPU pods, Open MPI, ...). After that, the code
is the same as on one host: `jax.devices()` lists every process's devices,
each process feeds its own rows of the global batch, only process 0 writes
logs and results, and checkpoints are written collectively by orbax.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)


def initialize(
    *,
    auto: bool = False,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins the cluster; a no-op for a single process given nothing."""
    explicit = coordinator_address is not None
    if not (auto or explicit):
        return
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(
            "--coordinator_address needs --num_processes and --process_id as well "
            "(or use --distributed alone to auto-detect SLURM/TPU/MPI)."
        )
    # CPU processes exchange data through gloo; accelerators use their own
    # collectives and ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    else:
        jax.distributed.initialize()
    log.info(
        "Process %d of %d; %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
