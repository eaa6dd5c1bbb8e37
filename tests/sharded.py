"""One task's training loss on 1 device and on 8 simulated devices, for the
per-task tests that a loss is the same however the batch is sharded.

The device count is fixed once JAX starts, so the comparison runs in a fresh
process with XLA_FLAGS=--xla_force_host_platform_device_count=8: the jitted
loss of one random uint8 batch, first with everything on device 0, then
with the batch split over a `data` mesh of 8 and the parameters replicated.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import textwrap

from tests import forkserver

ROOT = pathlib.Path(__file__).parents[1]

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ssl_jax import config_lib, inference
    from ssl_jax.registry import MODELS, TASKS

    spec = json.loads(sys.argv[1])
    if spec["config"]:
        task = inference.build_task(config_lib.get_config(spec["config"], spec["arg"]))
    else:
        encoder = MODELS.get(spec["model"])(rngs=nnx.Rngs(0), **spec["model_kwargs"])
        task = TASKS.get(spec["task"])(encoder, rngs=nnx.Rngs(1), **spec["task_kwargs"])
    graphdef, params, rest = nnx.split(task, task.trainable, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    n, size = 16, spec["image_size"]
    images = jax.random.randint(jax.random.key(0), (n, size, size, 3), 0, 256, jnp.int32)
    batch = {"image": images.astype(jnp.uint8)}
    if spec["num_classes"]:
        batch["label"] = jnp.arange(n) % spec["num_classes"]

    @jax.jit
    def loss(params, batch):
        task = nnx.merge(graphdef, params, rest)
        value = task.loss(batch, jax.random.key(3), train=True)[0]
        return value, [getattr(task, name)[...] for name in spec["state"]]

    assert len(jax.devices()) == 8
    one, state_one = loss(params, jax.device_put(batch, jax.devices()[0]))
    mesh = Mesh(jax.devices(), ("data",))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    eight, state_eight = loss(jax.device_put(params, NamedSharding(mesh, P())), sharded)
    gaps = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(state_one, state_eight, strict=True)
    ]
    print(json.dumps({"one": float(one), "eight": float(eight), "state_gaps": gaps}))
    """
)


def losses_on_one_and_eight_devices(
    *,
    config: str = "",
    arg: str = "",
    task: str = "",
    model: str = "convnet_tiny",
    model_kwargs: dict | None = None,
    task_kwargs: dict | None = None,
    image_size: int = 8,
    num_classes: int = 0,
    state: tuple[str, ...] = (),
) -> dict:
    """{"one": loss, "eight": loss, "state_gaps": [max |difference|]} of the
    task built from `config` (a config file and its `arg`) or from `task`
    on `model` with the given keyword arguments; `state` names task
    variables the loss updates (their values after it are compared);
    `num_classes` > 0 adds labels for an online probe."""
    spec = {
        "config": config,
        "arg": arg,
        "task": task,
        "model": model,
        "model_kwargs": model_kwargs or {},
        "task_kwargs": task_kwargs or {},
        "image_size": image_size,
        "num_classes": num_classes,
        "state": list(state),
    }
    return run_script(_SCRIPT, json.dumps(spec))


def run_script(script: str, *argv: str) -> dict:
    """The JSON object on the last line that `script` prints, run in a fresh
    CPU process from the repository root (scripts that set their own device
    count before importing JAX)."""
    result = forkserver.run(
        [sys.executable, "-c", script, *argv],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
