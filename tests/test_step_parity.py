"""The step-time side by side (`experiments/peers/step_parity.py`), dry-run
on a tiny config: both sides train, and the ratio is the peer's time over
ssl_jax's."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightly")

from experiments.peers import step_parity  # noqa: E402
from experiments.peers import train as peer_train  # noqa: E402


@pytest.mark.parametrize("name", ["rotation", "byol"])
def test_both_sides_take_steps_and_the_ratio_is_peer_over_ssl_jax(name):
    config = peer_train.load_config(name, "runlocal", ["compute_dtype=float32"])
    row = step_parity.compare(config, steps=1, rounds=2, warmup=1)
    assert row["task"] == name and row["compute_dtype"] == "float32"
    assert row["ssl_jax_step_ms"] > 0 and row["peer_step_ms"] > 0
    assert row["ratio"] == pytest.approx(row["peer_step_ms"] / row["ssl_jax_step_ms"], rel=0.01)
    assert row["rounds"] == 2 and row["steps_per_round"] == 1
