import os
import sys

import pytest

from ssl_jax import sweeps
from tests import forkserver
from tests.test_main import ROOT


def test_grid_zipped_product_chain():
    assert sweeps.grid(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert sweeps.zipped(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError, match="differ in length"):
        sweeps.zipped(a=[1, 2], b=[3])
    crossed = sweeps.product(sweeps.grid(a=[1, 2]), sweeps.grid(seed=[0, 1]))
    assert len(crossed) == 4 and {"a": 2, "seed": 1} in crossed
    with pytest.raises(ValueError, match="same field twice"):
        sweeps.product(sweeps.grid(a=[1]), sweeps.grid(a=[2]))
    assert sweeps.chain(sweeps.grid(a=[1]), sweeps.grid(b=[2])) == [{"a": 1}, {"b": 2}]


def test_values_and_names_format_for_the_command_line():
    assert sweeps.format_value(True) == "true"
    assert sweeps.format_value((10,)) == "(10,)"
    assert sweeps.format_value([1, 2]) == "(1,2)"
    assert sweeps.run_name({"seed": 1, "optimizer.learning_rate": 0.1}) == (
        "optimizer.learning_rate=0.1,seed=1"
    )
    assert "/" not in sweeps.run_name({"dataset": "imagefolder:/data/x"})


def _sweep(workdir, *extra):
    command = [
        sys.executable,
        "experiments/sweep.py",
        "--config=configs/rotation.py:runlocal",
        f"--workdir={workdir}",
        "--set=baselines.random_init=false",
        "--set=probe.labels_per_class=(2,)",
        *extra,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = forkserver.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_sweep_runs_summarises_plots_and_never_repeats_work(tmp_path):
    dry = _sweep(tmp_path, "--dry_run")
    assert dry.count("ssl_jax.main") == 2 and "--config.optimizer.learning_rate=0.2" in dry
    assert not (tmp_path / "summary.csv").exists()

    _sweep(tmp_path, "--parallel=2")
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert runs == ["optimizer.learning_rate=0.05", "optimizer.learning_rate=0.2"]
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[0].startswith("run,optimizer.learning_rate,status")
    assert (tmp_path / "summary.md").exists()
    assert (tmp_path / "sweep_linear_probe_top1.png").stat().st_size > 1000
    stamps = {r: (tmp_path / r / "results.json").stat().st_mtime_ns for r in runs}

    again = _sweep(tmp_path)
    assert again.count("skip (finished)") == 2
    assert stamps == {r: (tmp_path / r / "results.json").stat().st_mtime_ns for r in runs}


@pytest.mark.slow
def test_compare_writes_table_bar_chart_and_label_efficiency(tmp_path):
    command = [
        sys.executable,
        "experiments/compare.py",
        f"--workdir={tmp_path}",
        "--configs=configs/rotation.py",
        "--arg=runlocal",
        "--set=probe.labels_per_class=(1,3)",
        "--set=probe.few_label_draws=1",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = forkserver.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "comparison.csv").read_text().splitlines()
    assert table[0].startswith("encoder,top1,top5,knn_top1")
    assert [line.split(",")[0] for line in table[1:]] == [
        "rotation",
        "random init (rotation's convnet_tiny)",
        "supervised (rotation's convnet_tiny)",
        "supervised from scratch (rotation's convnet_tiny)",
    ]
    assert "top1@1/class" in table[0] and "top1@3/class" in table[0]
    for name in ("comparison.png", "label_efficiency.png", "comparison.md"):
        assert (tmp_path / name).stat().st_size > 100
    curve = (tmp_path / "label_efficiency.csv").read_text().splitlines()
    # Four encoders (pretrained, random init, supervised on all labels, from
    # scratch) x (two budgets + all labels).
    assert len(curve) == 1 + 4 * 3
