"""Workdirs, exports and prepared data on an object store, with a local fsspec
filesystem standing in for the bucket (`fakestore://`): it keeps its objects
in a temporary directory and, like a bucket, refuses to append."""

import json
import os
import shutil
import socket
import time

import fsspec
import numpy as np
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from ssl_jax import storage, workdir
from ssl_jax.workdir import WorkdirError


@pytest.fixture
def bucket(tmp_path):
    """`fakestore://` for this test, backed by `tmp_path/bucket`; returns that directory."""
    root = tmp_path / "bucket"
    root.mkdir()

    class FakeStore(DirFileSystem):
        protocol = "fakestore"

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

        def open(self, path, mode="rb", *args, **kwargs):
            if "a" in mode:
                raise OSError("an object store cannot append")
            return super().open(path, mode, *args, **kwargs)

    fsspec.register_implementation("fakestore", FakeStore, clobber=True)
    yield root
    FakeStore.clear_instance_cache()


def test_a_missing_filesystem_package_is_one_line_naming_it(monkeypatch, tmp_path):
    def missing(name):
        raise ImportError(f"no {name}")

    monkeypatch.setattr(storage, "_fsspec_class", missing)
    monkeypatch.setattr(storage.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WorkdirError) as error:
        workdir.check_path("gs://b/x", "--workdir")
    assert str(error.value) == "--workdir=gs://b/x needs gcsfs (or tensorflow): pip install gcsfs"
    with pytest.raises(WorkdirError, match=r"^--workdir=s3://b/x needs s3fs: pip install s3fs$"):
        workdir.check_path("s3://b/x", "--workdir")


def test_a_cloud_workdir_is_checked_before_anything_runs(monkeypatch, tmp_path):
    from ssl_jax import config_lib, experiment

    monkeypatch.chdir(tmp_path)
    config = config_lib.base_config()
    with pytest.raises(WorkdirError, match="no filesystem is known for nosuch://"):
        experiment.run(config, "nosuch://bucket/run")
    # memory:// is served by fsspec, but orbax cannot write checkpoints there.
    with pytest.raises(WorkdirError, match="orbax, which writes to local paths and gs:// only"):
        experiment.run(config, "memory://bucket/run")
    config.dataset = "arrayrecord:memory://bucket/records"
    with pytest.raises(WorkdirError, match="read from local files only"):
        experiment.run(config, str(tmp_path / "run"))
    assert sorted(os.listdir(tmp_path)) == []  # no stray `nosuch:` folder, no run
    # A relative folder lies under a URL data_dir (refused); an absolute one does not.
    config.data_dir = "memory://bucket"
    config.dataset = "imagefolder:photos"
    with pytest.raises(WorkdirError, match="read from local files only"):
        experiment.check_paths(config, str(tmp_path / "run"))
    config.dataset = f"imagefolder:{tmp_path / 'photos'}"
    experiment.check_paths(config, str(tmp_path / "run"))


def _lock_object(bucket, **holder):
    (bucket / "run").mkdir(exist_ok=True)
    text = json.dumps({"host": "tpu-7", "pid": 1, "started": "then", **holder})
    (bucket / "run" / workdir.LOCK_FILE).write_text(text)


def test_a_live_lock_object_is_refused_and_a_stale_one_taken_over(bucket, caplog):
    _lock_object(bucket, heartbeat=time.time() - 10)
    with pytest.raises(WorkdirError, match="in use by process 1 on tpu-7.*heartbeat"):
        with workdir.locked("fakestore://run"):
            pass
    _lock_object(bucket, heartbeat=time.time() - workdir.STALE_SECONDS - 1)
    with workdir.locked("fakestore://run"):
        holder = json.loads((bucket / "run" / workdir.LOCK_FILE).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert "Taking over the lock of process 1 on tpu-7" in caplog.text
    assert (bucket / "run" / workdir.LOCK_FILE).read_text() == ""  # released


def test_the_lock_object_heartbeat_is_renewed_while_held(bucket, monkeypatch):
    monkeypatch.setattr(workdir, "HEARTBEAT_SECONDS", 0.05)
    with workdir.locked("fakestore://run"):
        first = json.loads((bucket / "run" / workdir.LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.3)
        later = json.loads((bucket / "run" / workdir.LOCK_FILE).read_text())["heartbeat"]
    assert later > first


def test_metrics_on_an_object_store_are_rewritten_whole_and_trimmed_on_resume(bucket):
    from ssl_jax import metrics

    writer = metrics.MetricWriter("fakestore://run", total_steps=4, start_step=0)
    for step in (1, 2, 3):
        writer.write(step, {"loss": step / 10})
    writer.close()
    resumed = metrics.MetricWriter("fakestore://run", total_steps=4, start_step=2)
    resumed.write(3, {"loss": 0.5})
    resumed.close()
    rows = metrics.read_records(str(bucket / "run" / metrics.METRICS_FILE))
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.5)]
    assert metrics.last_logged("fakestore://run", "loss") == 0.5
    assert list((bucket / "run" / "tensorboard").iterdir())  # events uploaded


def test_a_run_on_an_object_store_trains_resumes_and_exports(bucket, tmp_path):
    """The stand-in workdir against a local one: the same state bit for bit
    after a resume, the same losses, and an export to the store that loads."""
    from ssl_jax import export, train
    from tests.test_train import _arrays, _config

    config = _config(train_steps=4, checkpoint_every=2, log_every=2)
    _, local = train.train(config, str(tmp_path / "local"), _arrays())
    _, first = train.train(config, "fakestore://run", _arrays())
    shutil.rmtree(bucket / "run" / "checkpoints" / "4")  # as if killed before step 4's save
    _, resumed = train.train(config, "fakestore://run", _arrays())
    assert resumed["resumed_from_step"] == 2
    assert resumed["state_fingerprint"] == local["state_fingerprint"]
    with (
        open(tmp_path / "local" / "metrics.jsonl") as a,
        open(bucket / "run" / "metrics.jsonl") as b,
    ):
        losses = [[json.loads(line)["loss"] for line in f] for f in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert json.loads((bucket / "run" / "config.json").read_text())["train_steps"] == 4

    export.export_encoder("fakestore://run", "fakestore://encoders/run.safetensors")
    loaded = export.load_encoder("fakestore://encoders/run.safetensors")
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    expected = export.load_encoder(str(tmp_path / "local"))(images)
    np.testing.assert_array_equal(loaded(images), expected)


def test_prepare_to_an_object_store_uploads_the_info_file_last(bucket, tmp_path, monkeypatch):
    from PIL import Image

    from ssl_jax import prepare
    from ssl_jax.data import records

    for split in ("train", "test"):
        (tmp_path / "photos" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (6, 6), (i * 60, 0, 0)).save(
                tmp_path / "photos" / split / "cat" / f"{i}.png"
            )
    uploaded = []
    copy_up = storage._copy_up
    monkeypatch.setattr(
        storage, "_copy_up", lambda s, t: (uploaded.append(os.path.basename(t)), copy_up(s, t))
    )
    info = prepare.prepare(f"imagefolder:{tmp_path / 'photos'}", "fakestore://recs")
    # Two shards and two labels files, then the info file that names them.
    assert uploaded[-1] == records.INFO_FILE and len(uploaded) == 5
    stored = json.loads((bucket / "recs" / records.INFO_FILE).read_text())
    assert stored == json.loads(json.dumps(info))
    source = records.open_source(f"arrayrecord:{bucket / 'recs'}", "train")
    assert len(source) == 3
    assert source.stored_labels().tolist() == [0] * 3  # the labels file came up too
    with pytest.raises(Exception, match="already holds a dataset"):
        prepare.prepare(f"imagefolder:{tmp_path / 'photos'}", "fakestore://recs")


def test_a_file_url_is_written_atomically_and_appended_as_a_local_path(tmp_path, monkeypatch):
    # fsspec writes a file:// object in place: a kill mid-write would leave
    # half of metrics.jsonl. It goes through the local branches instead.
    replaced = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(b), replace(a, b)))
    url = f"file://{tmp_path}/run/metrics.jsonl"
    os.makedirs(tmp_path / "run")
    storage.write_bytes(url, b'{"step": 1}\n')
    storage.append_line(url, '{"step": 2}\n')
    assert replaced == [str(tmp_path / "run" / "metrics.jsonl")]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    # A relative file:// URL is where fsspec (and so every reader) puts it.
    monkeypatch.chdir(tmp_path)
    storage.write_bytes("file://run/other.jsonl", b"x\n")
    assert (tmp_path / "run" / "other.jsonl").read_bytes() == b"x\n"
    assert storage.exists("file://run/other.jsonl")
