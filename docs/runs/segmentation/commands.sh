#!/bin/bash
# The recorded segmentation-probe runs (docs/runs/segmentation/<method>/results.json):
# each pretrains on the embedded digits with its config's tiny recipe (MAE's
# shortened to 1000 steps), then probes the frozen encoder, and its random init,
# on the embedded digit scenes (evals.segmentation_probe, its defaults).
# Run from the repository root; WORK is any scratch directory.
set -e
WORK=${WORK:-/tmp/segrun}
python -m ssl_jax.main --config=configs/simclr.py:segmentation --workdir=$WORK/simclr
python -m ssl_jax.main --config=configs/byol.py:segmentation --workdir=$WORK/byol
python -m ssl_jax.main --config=configs/mae.py:segmentation --workdir=$WORK/mae --config.train_steps=1000
