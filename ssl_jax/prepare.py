"""Writes a dataset's images, still encoded, into ArrayRecord shards for streaming.

    python -m ssl_jax.prepare --source=imagefolder:/data/imagenet --out=/data/imagenet_records
    python -m ssl_jax.prepare --source=tfds:imagenette --data_dir=~/tensorflow_datasets \\
        --out=/data/imagenette_records

An image folder is `root/train/<class>/<image>` plus `root/test/<class>/...`
(or `root/val/...`), with the classes (and their label order) taken from
train/, checked by the in-memory loader's own function
(`ssl_jax.data.image_folder.list_image_folder`); its test split is written
under its folder's name ("test" or "val"). An audio folder (the same layout
of .wav files, `ssl_jax.data.audio`) is written the same way, each WAV file
as it is, and read back as `audiorecords:<out>`. A segmentation folder
(`root/train/images/<name>` with `root/train/masks/<name>.png`,
`ssl_jax.data.segmentation`) is written with each image and its mask PNG as
they are, its class names in dataset_info.json, and read back by the
segmentation probe as `segrecords:<out>`. A tfds source (prepared in
ArrayRecord format) is copied split by split ("train" and "test", or
"validation").

Files are copied byte for byte (fast; memory bounded: examples stream through
a small window). `--verify` decodes every image once on a thread pool and stops
at the first one that cannot be decoded, naming it. The output is readable as
`arrayrecord:<out>` by `ssl_jax.data.streaming` (see `ssl_jax.data.records`
for the format). Bad input ends with one line on stderr and exit code 2
(`--verbose` shows the traceback).

`--out` may be a URL (`gs://bucket/imagenet_records`, where its filesystem
package is installed): the shards are written in a local temporary directory
(`--staging_dir`, default the system's), then uploaded, `dataset_info.json`
last, so a reader that finds it finds every shard.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from absl import app, flags
from absl import logging as absl_logging

from ssl_jax import cli, storage
from ssl_jax.data import audio, decode, image_folder, records, segmentation
from ssl_jax.data.base import DatasetError

_SOURCE = flags.DEFINE_string(
    "source",
    None,
    "imagefolder:/path/to/root, audiofolder:/path/to/root, segfolder:/path/to/root or tfds:NAME.",
)
_OUT = flags.DEFINE_string("out", None, "Directory to write the shards and dataset_info.json into.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "tfds data_dir; or the base of a relative image-folder path."
)
_EXAMPLES_PER_SHARD = flags.DEFINE_integer(
    "examples_per_shard", records.DEFAULT_EXAMPLES_PER_SHARD, "Examples per shard file."
)
_VERIFY = flags.DEFINE_bool("verify", False, "Decode every image once; stop at a broken one.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a dataset (or leftovers) in --out.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads reading and verifying.")
_STAGING_DIR = flags.DEFINE_string(
    "staging_dir", None, "Local directory for the shards of a URL --out before their upload."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks.")
flags.mark_flags_as_required(["source", "out"])


# ----------------------------------------------------------------------------- reading


def _read_file(root: str, verify: bool, item: tuple[str, int]) -> records.Example:
    path, label = item
    key = os.path.relpath(path, root)
    data = decode.read_image_file(path)  # Raises DatasetError naming the file.
    if verify:
        decode.decode_image(data, path)  # Raises DatasetError naming the file.
    return records.Example(key, data, label)


def _ordered_map(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """fn over items on a thread pool, in order, with at most 4 * threads in flight
    (PIL and file reads release the GIL; the window bounds memory)."""
    pending: collections.deque = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max(threads, 1))
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * max(threads, 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- sources


def _imagefolder_splits(path: str, data_dir: str | None, verify: bool, threads: int):
    root = image_folder.resolve_root(path, data_dir)
    classes, splits = image_folder.list_image_folder(root)
    read = lambda item: _read_file(root, verify, item)
    examples = {split: _ordered_map(read, files, threads) for split, files in splits.items()}
    return examples, classes


def _tfds_splits(spec: str, data_dir: str | None, verify: bool, threads: int):
    sources = [records.TfdsSource(spec, split, data_dir) for split in ("train", "test")]

    def read(source: records.TfdsSource, index: int) -> records.Example:
        record = source[index]
        if verify:
            decode.decode_image(record["image"], record["key"])
        return records.Example(record["key"], record["image"], record["label"])

    examples = {
        s.split: _ordered_map(lambda i, s=s: read(s, i), range(len(s)), threads) for s in sources
    }
    return examples, list(sources[0].class_names)


def _segfolder_splits(path: str, data_dir: str | None, verify: bool, threads: int):
    root = segmentation.local_root(path, data_dir, "segfolder")
    splits, classes, read = segmentation.folder_examples(root, verify)
    return {split: _ordered_map(read, pairs, threads) for split, pairs in splits.items()}, classes


# audiofolder: WAV files stored as they are (`data/audio.py`); read them back
# with --config.dataset=audiorecords:<out>. segfolder: images with their
# masks, read back by the segmentation probe as segrecords:<out>.
_SOURCES = {
    "imagefolder": _imagefolder_splits,
    "tfds": _tfds_splits,
    "audiofolder": audio.folder_examples,
    "segfolder": _segfolder_splits,
}


def prepare(
    source: str,
    out: str,
    *,
    data_dir: str | None = None,
    examples_per_shard: int = records.DEFAULT_EXAMPLES_PER_SHARD,
    verify: bool = False,
    overwrite: bool = False,
    threads: int = 1,
    staging_dir: str | None = None,
) -> dict:
    """Writes `source` into `out` (a directory or a URL); returns the
    dataset_info written."""
    kind, _, arg = source.partition(":")
    if kind not in _SOURCES or not arg:
        raise DatasetError(
            f"Unknown source {source!r}: use imagefolder:/path, audiofolder:/path, "
            "segfolder:/path or tfds:NAME."
        )
    if storage.is_url(out):
        return _prepare_to_url(
            source, out, data_dir, examples_per_shard, verify, overwrite, threads, staging_dir
        )
    examples, classes = _SOURCES[kind](arg, data_dir, verify, threads)
    return _write(
        source, os.path.expanduser(out), examples, classes, examples_per_shard, verify, overwrite
    )


def _prepare_to_url(
    source, out, data_dir, examples_per_shard, verify, overwrite, threads, staging_dir
):
    """`prepare` into a local staging directory, then uploaded to the URL
    `out`, the info file last. An earlier dataset there is refused unless
    `overwrite`; then its info file goes first (its shards are overwritten
    by name; shards of another name stay, unread)."""
    storage.check(out, "--out")
    info = storage.join(out, records.INFO_FILE)
    if storage.exists(info):
        if not overwrite:
            raise DatasetError(
                f"{out} already holds a dataset; pass overwrite (prepare: --overwrite) to "
                "replace it."
            )
        storage.remove(info)
    with tempfile.TemporaryDirectory(prefix="ssl_jax_prepare_", dir=staging_dir) as local:
        result = prepare(
            source,
            local,
            data_dir=data_dir,
            examples_per_shard=examples_per_shard,
            verify=verify,
            threads=threads,
        )
        storage.makedirs(out)
        storage.upload_tree(local, out, last=records.INFO_FILE)
    return result


def _write(source, out, examples, classes, examples_per_shard, verify, overwrite) -> dict:
    return records.write_records(
        out,
        examples,
        num_classes=len(classes),
        class_names=classes,
        examples_per_shard=examples_per_shard,
        producer=f"ssl_jax.prepare --source={source}" + (" --verify" if verify else ""),
        overwrite=overwrite,
    )


def _summary(info: dict, out: str, seconds: float) -> str:
    where = out if storage.is_url(out) else os.path.abspath(out)
    lines = [f"wrote {where} ({info['num_classes']} classes, {seconds:.1f} s)"]
    for split, s in info["splits"].items():
        lines.append(
            f"  {split}: {s['num_examples']:,} examples, {len(s['shards'])} shard(s), "
            f"{s['num_bytes'] / 1e6:,.1f} MB"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # tfds logs every metadata read at INFO through absl: keep that for --verbose.
    absl_logging.set_verbosity(absl_logging.INFO if _VERBOSE.value else absl_logging.WARNING)
    start = time.perf_counter()
    try:
        info = prepare(
            _SOURCE.value,
            _OUT.value,
            data_dir=_DATA_DIR.value,
            examples_per_shard=_EXAMPLES_PER_SHARD.value,
            verify=_VERIFY.value,
            overwrite=_OVERWRITE.value,
            threads=_THREADS.value,
            staging_dir=_STAGING_DIR.value,
        )
    except (DatasetError, OSError, ValueError) as error:
        if _VERBOSE.value:
            raise
        print(f"prepare: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
    print(_summary(info, _OUT.value, time.perf_counter() - start))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad or missing flag is one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        if "--verbose" in argv:
            raise
        print(f"prepare: error: {error} (see --helpfull)", file=sys.stderr)
        sys.exit(2)


def console() -> None:
    """The `ssl-jax-prepare` command (pyproject's console script)."""
    cli.help_lists_flags(__name__)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    console()
