"""Target-token statistics of an I-JEPA workdir: for its newest checkpoint
and for its random init, on 512 fixed CIFAR-10 dev training photos, the
target and context encoders' target_spread and target_position_share
(ssl_jax.tasks.ijepa.target_spread) and the pooled-feature collapse metrics;
written to WORKDIR/diag.json. Usage: python diag.py WORKDIR [init: random init only]."""

import glob
import json
import sys

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from PIL import Image

from ssl_jax import export, inference
from ssl_jax.data import augment
from ssl_jax.models.vit import patchify
from ssl_jax.tasks.base import collapse_metrics
from ssl_jax.tasks.ijepa import target_spread

wd = sys.argv[1]
files = sorted(glob.glob("/tmp/data/cifar10_dev/train/*/*"))
rng = np.random.default_rng(0)
files = [files[i] for i in rng.choice(len(files), 512, replace=False)]
images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
config = ConfigDict(json.load(open(f"{wd}/config.json")))
tasks = {"random_init": inference.build_task(config)}
if len(sys.argv) < 3:
    tasks["trained"] = export._load_workdir(wd).trained.module()
out = {}
for name, task in tasks.items():
    for which, enc in (("target", task.teacher.encoder), ("context", task.encoder)):
        x = augment.normalize(augment.to_float(jnp.asarray(images)))
        tok = enc.encode_tokens(patchify(x, enc.patch_size), None, enc.grid(x))[
            :, enc.num_prefix_tokens :
        ]
        m = {
            k: round(float(v), 4)
            for k, v in {**target_spread(tok), **collapse_metrics(jnp.mean(tok, 1))}.items()
        }
        out[f"{name}/{which}"] = m
        print(name, which, m, flush=True)
json.dump(out, open(f"{wd}/diag.json", "w"), indent=1)
