"""One writer per workdir, and the run's identity across resumes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ssl_jax import config_lib, workdir
from ssl_jax.workdir import WorkdirError

_HOLD = textwrap.dedent(
    """
    import sys, time
    from ssl_jax import workdir
    with workdir.locked(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _holder(path):
    """A separate process that takes the lock and sleeps with it."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirError, match=rf"in use by process {holder.pid} on "):
            with workdir.locked(str(tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    held = json.loads((tmp_path / workdir.LOCK_FILE).read_text())
    assert held["pid"] == holder.pid  # the dead holder's record is still there
    with workdir.locked(str(tmp_path)):
        mine = json.loads((tmp_path / workdir.LOCK_FILE).read_text())
        assert mine["pid"] == os.getpid()
    assert f"Taking over the lock of process {holder.pid}" in caplog.text
    # Released cleanly: the next taker sees nobody to take over from.
    assert (tmp_path / workdir.LOCK_FILE).read_text() == ""


def test_the_lock_is_reentrant_within_a_process_and_released_at_the_end(tmp_path):
    with workdir.locked(str(tmp_path)), workdir.locked(str(tmp_path)):
        pass  # a run and its nested baseline runs share the lock
    holder = _holder(tmp_path)  # free again for another process
    holder.kill()
    holder.wait()


def _config(**overrides):
    config = config_lib.base_config()
    config.update(overrides)
    return config


def test_changes_to_what_the_run_computes_are_refused_naming_the_fields(tmp_path):
    workdir.save_config(str(tmp_path), _config(), changes={}, from_step=0)
    changed = _config(seed=1, batch_size=64)
    changed.optimizer.learning_rate = 0.5
    with pytest.raises(WorkdirError) as error:
        workdir.config_changes(str(tmp_path), changed, resuming=True)
    message = str(error.value)
    assert "seed 0 -> 1" in message and "batch_size 256 -> 64" in message
    assert "optimizer.learning_rate" in message and "--allow_config_change" in message
    # A fresh start (no checkpoint) may use any config.
    assert workdir.config_changes(str(tmp_path), changed, resuming=False) == {}


def test_cadence_and_evaluation_fields_may_change(tmp_path):
    workdir.save_config(str(tmp_path), _config(), changes={}, from_step=0)
    neutral = _config(log_every=10, eval_every=20, checkpoint_every=100, keep_checkpoints=5)
    neutral.probe.steps = 7
    neutral.knn.k = 3
    neutral.baselines.supervised = True
    neutral.collapse_warning.min_rank_fraction = 0.0  # silencing a warning computes nothing else
    assert workdir.config_changes(str(tmp_path), neutral, resuming=True) == {}


def test_fields_added_or_retired_since_a_workdir_was_written(tmp_path):
    # A config stored before optimizer.freeze existed resumes as it was...
    old = {"optimizer": {"name": "adamw"}, "train_steps": 10}
    assert (
        workdir.identity_changes(old, {**old, "optimizer": {"name": "adamw", "freeze": []}}) == {}
    )
    frozen = {**old, "optimizer": {"name": "adamw", "freeze": [["head/prototypes", 0.1]]}}
    assert workdir.identity_changes(old, frozen) == {
        "optimizer.freeze": [[], [["head/prototypes", 0.1]]]
    }
    # ...a retired field at the value where it did nothing is no change...
    idle = {**old, "task_kwargs": {"freeze_prototypes_fraction": 0.0}}
    assert workdir.identity_changes(idle, old) == {}
    # ...any other field a side lacks still is, and a retired field in use
    # cannot resume at all, with or without --allow_config_change.
    assert workdir.identity_changes({**old, "extra": 0}, old) == {"extra": [0, None]}
    assert workdir.identity_changes({**old, "extra": []}, old) == {"extra": [[], None]}
    used = {**old, "task_kwargs": {"freeze_prototypes": 0.01}}
    (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(used))
    config = config_lib.ConfigDict(old)
    for allow in (False, True):
        with pytest.raises(WorkdirError, match=r"freeze_prototypes=0.01, now optimizer.freeze"):
            workdir.config_changes(str(tmp_path), config, resuming=True, allow_change=allow)


def test_an_allowed_change_is_recorded_with_its_step(tmp_path):
    workdir.save_config(str(tmp_path), _config(), changes={}, from_step=0)
    longer = _config(train_steps=2000)
    changes = workdir.config_changes(str(tmp_path), longer, resuming=True, allow_change=True)
    assert changes == {"train_steps": [1000, 2000]}
    workdir.save_config(str(tmp_path), longer, changes=changes, from_step=600)
    (entry,) = map(json.loads, (tmp_path / workdir.HISTORY_FILE).read_text().splitlines())
    assert entry["from_step"] == 600 and entry["changes"] == {"train_steps": [1000, 2000]}
    assert json.loads((tmp_path / "config.json").read_text())["train_steps"] == 2000


def test_tuples_and_lists_compare_equal_after_the_json_round_trip(tmp_path):
    config = _config()
    config.probe.l2_grid = (1e-3, 1e-2)
    config.model_kwargs = config_lib.ConfigDict({"widths": (8, 16)})
    workdir.save_config(str(tmp_path), config, changes={}, from_step=0)
    assert workdir.config_changes(str(tmp_path), config, resuming=True) == {}
    config.model_kwargs.widths = (8, 32)
    with pytest.raises(WorkdirError, match=r"model_kwargs.widths \[8, 16\] -> \[8, 32\]"):
        workdir.config_changes(str(tmp_path), config, resuming=True)


def test_write_json_is_atomic_and_names_the_file_when_it_fails(tmp_path):
    target = tmp_path / "results.json"
    workdir.write_json(str(target), {"a": 1})
    (tmp_path / "results.json.tmp").mkdir()  # the temporary file cannot be written
    with pytest.raises(WorkdirError, match=f"Cannot write {target}"):
        workdir.write_json(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}


def test_a_workdir_that_cannot_be_one_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a workdir")
    with pytest.raises(WorkdirError, match=r"is a file, not a directory: pass a directory"):
        with workdir.locked(str(a_file)):
            pass
    with pytest.raises(WorkdirError, match=r"a folder on its path is a file"):
        with workdir.locked(str(a_file / "run")):
            pass
    assert a_file.read_text() == "not a workdir"
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(WorkdirError, match=r"is a broken link: remove it or pass another"):
        with workdir.locked(str(tmp_path / "link")):
            pass

    # Read-only storage (root ignores file modes, so the OS's answer is played).
    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", path)

    monkeypatch.setattr(workdir.os, "makedirs", read_only)
    with pytest.raises(WorkdirError, match=r"\(Read-only file system\): choose a writable"):
        with workdir.locked(str(tmp_path / "new")):
            pass
    monkeypatch.undo()
    monkeypatch.setattr(workdir.os, "open", read_only)
    with pytest.raises(WorkdirError, match=r"Cannot write the workdir .*copy its workdir first"):
        with workdir.locked(str(tmp_path)):
            pass
