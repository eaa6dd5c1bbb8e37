"""Checkpoints that are checked: finite before saving, fingerprinted, and a
corrupt one replaced by the newest good one, never silently."""

import errno
import logging
import time

import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.checkpoint import CORRUPT_DIR, Checkpointer, CheckpointError, NonFiniteStateError


def _state(step: int):
    # Random values: constant arrays compress to a few bytes, real weights do not.
    weights = np.random.default_rng(step).standard_normal((64, 32)).astype(np.float32)
    return {"step": jnp.int32(step), "params": {"w": jnp.asarray(weights), "b": jnp.zeros((32,))}}


def _saved(tmp_path, steps=(1, 2, 3), keep=3):
    checkpointer = Checkpointer(str(tmp_path), keep=keep)
    for step in steps:
        checkpointer.save(step, _state(step), counters={"skipped_steps": step * 10})
    checkpointer.close()
    return Checkpointer(str(tmp_path), keep=keep)


def _largest_array_file(directory):
    """The biggest of the state's array data files (tensorstore's `d/` chunks)."""
    chunks = [p for p in (directory / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(chunks, key=lambda p: p.stat().st_size)


def _flip_bytes(directory):
    """Flips bytes in the middle of the largest array file, the way a bad disk
    or a careless copy would: orbax's reader itself does not notice."""
    biggest = _largest_array_file(directory)
    data = bytearray(biggest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    biggest.write_bytes(bytes(data))


def test_round_trip_with_counters(tmp_path):
    checkpointer = _saved(tmp_path)
    step, state, counters = checkpointer.restore_latest(like=_state(0))
    assert step == 3 and counters == {"skipped_steps": 30}
    np.testing.assert_array_equal(state["params"]["w"], _state(3)["params"]["w"])
    checkpointer.close()


def test_a_state_with_nan_is_never_saved(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), keep=3)
    bad = _state(1)
    bad["params"]["b"] = bad["params"]["b"].at[3].set(jnp.nan)
    with pytest.raises(NonFiniteStateError, match=r"step 7 holds NaN/Inf in \['params'\]\['b'\]"):
        checkpointer.save(7, bad)
    checkpointer.close()
    assert checkpointer.latest_step() is None


def test_flipped_bytes_fall_back_to_the_previous_checkpoint_with_a_warning(tmp_path, caplog):
    checkpointer = _saved(tmp_path)
    _flip_bytes(tmp_path / "checkpoints" / "3")
    with caplog.at_level(logging.WARNING):
        step, state, counters = checkpointer.restore_latest(like=_state(0))
    assert step == 2 and counters == {"skipped_steps": 20}
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "checkpoints/3 is corrupt" in warning and "resuming from step 2" in warning
    assert (tmp_path / CORRUPT_DIR / "3").is_dir()  # kept for inspection
    assert sorted(checkpointer._manager.all_steps()) == [1, 2]
    # Training goes on: step 3 can be saved again.
    checkpointer.save(3, _state(3))
    checkpointer.close()


def test_a_reader_deletes_no_save_in_progress_and_moves_nothing(tmp_path, caplog):
    """load_encoder/export open checkpoints beside a possibly live run: the
    temporary directory of its save in progress must survive them."""
    _saved(tmp_path).close()
    in_progress = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    in_progress.mkdir()
    _flip_bytes(tmp_path / "checkpoints" / "3")
    reader = Checkpointer(str(tmp_path), keep=3, read_only=True)
    with caplog.at_level(logging.WARNING):
        step, _, _ = reader.restore_latest(like=_state(0), set_aside=False)
    reader.close()
    assert step == 2 and in_progress.is_dir()
    assert (tmp_path / "checkpoints" / "3").is_dir() and not (tmp_path / CORRUPT_DIR).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoints/3 is corrupt" in w and "using step 2 instead" in w for w in warnings)
    # The writer's mode does clean it up (what a reader must not do), in a
    # background thread of orbax's that close() does not wait for.
    Checkpointer(str(tmp_path), keep=3).close()
    deadline = time.monotonic() + 30
    while in_progress.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not in_progress.exists()


def test_a_missing_file_falls_back_too(tmp_path):
    checkpointer = _saved(tmp_path)
    _largest_array_file(tmp_path / "checkpoints" / "3").unlink()
    step, _, _ = checkpointer.restore_latest(like=_state(0))
    assert step == 2
    checkpointer.close()


@pytest.mark.parametrize("name", ["state/_METADATA", "meta/metadata"])
def test_a_missing_checkpoint_file_is_named_in_the_warning(finished_run, caplog, name):
    """Without its state/_METADATA, orbax reports a pytree mismatch of the
    run's nnx state (200 characters of reprs before); the warning names the file."""
    import ssl_jax

    (finished_run / "checkpoints" / "6" / name).unlink()
    with caplog.at_level(logging.WARNING):
        encoder = ssl_jax.load_encoder(str(finished_run))
    assert encoder.info["step"] == 3
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert f"cannot be read ({name} missing)" in warning, warning
    assert "<class" not in warning and " at 0x" not in warning


def test_no_usable_checkpoint_is_an_error_that_moves_nothing(tmp_path):
    checkpointer = _saved(tmp_path, steps=(1, 2), keep=2)
    for step in (1, 2):
        _flip_bytes(tmp_path / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match="No usable checkpoint.*step 2 is corrupt.*step 1"):
        checkpointer.restore_latest(like=_state(0))
    assert not (tmp_path / CORRUPT_DIR).exists()
    assert sorted(checkpointer._manager.all_steps()) == [1, 2]
    checkpointer.close()


def test_an_empty_workdir_has_nothing_to_restore(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), keep=1)
    assert checkpointer.restore_latest(like=_state(0)) is None
    checkpointer.close()


def test_a_storage_fault_stops_the_restore_and_moves_nothing(tmp_path, monkeypatch):
    # An unreadable newest checkpoint because of the machine (an I/O timeout,
    # permissions), not the checkpoint: no fallback to an older step.
    checkpointer = _saved(tmp_path)
    real = checkpointer._manager.restore

    def flaky(step, args):
        if step == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real(step, args=args)

    monkeypatch.setattr(checkpointer._manager, "restore", flaky)
    with pytest.raises(
        CheckpointError, match="checkpoints/3 .*Input/output error.*nothing was changed"
    ):
        checkpointer.restore_latest(like=_state(0))
    assert not (tmp_path / CORRUPT_DIR).exists()
    assert sorted(checkpointer._manager.all_steps()) == [1, 2, 3]
    checkpointer.close()
