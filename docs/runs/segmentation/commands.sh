#!/bin/bash
# The recorded segmentation-probe runs (docs/runs/segmentation/<dir>/results.json,
# masks.png / masks_random_init.png: test scenes, true masks, predicted masks).
# Each pretrains on the embedded digits with its config's tiny recipe, then
# probes the frozen encoder, and its random init, on the embedded digit scenes
# (evals.segmentation_probe with its defaults; the :segmentation option sets
# image_size=32, twice the run's 16 px). Run from the repository root with the
# project's venv; WORK is any scratch directory.
#
# Recorded on 2026-12-07, CPU only, a 2-core machine shared with four other
# agents (wall times are not comparable). simclr/ and byol/ were pretrained
# by the same commands before the scenes' image_size option existed and then
# evaluated again at 32 px by rerunning the same command on the finished
# workdir (a finished run only evaluates again; results.json is that
# evaluation's); mae_1000_steps/ and mae/ ran once with the final code.
set -e
WORK=${WORK:-/tmp/segrun}
python -m ssl_jax.main --config=configs/simclr.py:segmentation --workdir=$WORK/simclr  # -> simclr/
python -m ssl_jax.main --config=configs/byol.py:segmentation --workdir=$WORK/byol  # -> byol/
python -m ssl_jax.main --config=configs/mae.py:segmentation --workdir=$WORK/mae --config.train_steps=1000  # -> mae_1000_steps/
python -m ssl_jax.main --config=configs/mae.py:segmentation --workdir=$WORK/mae2000  # -> mae/ (the recipe's 2000 steps)
