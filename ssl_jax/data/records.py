"""ArrayRecord datasets of encoded images: writing ours, reading ours and TFDS's.

The streaming input path (`ssl_jax.data.streaming`) reads records at random
through these sources, one record at a time, so its memory does not grow with
the dataset. Every source has `len`, `source[i] -> {"image": bytes, "label":
int, "key": str}`, `__getitems__`, `name`, `split`, `num_classes` and
`class_names`, and pickles cheaply (readers are opened lazily, per process),
so grain's worker processes can each hold one.

Our format, written by `write_records` (and `python -m ssl_jax.prepare`):

    <dir>/<split>-NNNNN-of-MMMMM.array_record   shards, "group_size:1" (one
        record per chunk, for random access), uncompressed (JPEG/PNG bytes do
        not compress); each record is a msgpack map
        {"image": bytes (the encoded file as is), "label": int, "key": str},
        and for a segmentation dataset (`--source=segfolder:`) also
        "mask": bytes (its encoded PNG mask as is; the label is then 0, its
        classes being the masks')
    <dir>/<split>-labels.npy                    the split's labels, int32 in
        record order (numpy's .npy), so label statistics and few-label draws
        read no image bytes
    <dir>/dataset_info.json                     written last: format version,
        num_classes, class_names, whether the records hold masks, per split
        its shards and their example counts, its labels file (with a version
        of its own) and class counts, and what produced it

Directories written before labels files existed (no "labels" entry in a
split) still read; `RecordSource.stored_labels()` is then None and callers
read the labels from the records. The optional "mask" field (and the info's
"masks") came without a version change, as neither changes what an older
reader reads: a directory whose info has no "masks" holds no masks.

A directory without `dataset_info.json` is not a dataset: shards are written
under temporary names, renamed when their split is complete, and the info file
is written (atomically) only after every split, so a killed writer never
leaves something that looks complete.

`open_source("arrayrecord:/dir" | "tfds:NAME[/CONFIG][:VERSION]", split)`
opens either kind. Split "test" falls back to "validation" or "val" where the
dataset has no "test" split, as `ssl_jax.data.datasets` does.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import datetime
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from ssl_jax import storage
from ssl_jax.data.base import SPLITS, DatasetError, only_feature

log = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"
FORMAT = "ssl_jax.records"
FORMAT_VERSION = 1
DEFAULT_EXAMPLES_PER_SHARD = 1024
# One record per chunk (random access reads one chunk); no compression of
# already-compressed image bytes.
_WRITER_OPTIONS = "group_size:1,uncompressed"
_SHARD_RE = re.compile(r"^(?:\.tmp-)?[\w.-]+-\d{5}(?:-of-\d{5})?\.array_record$")
# A split's labels file (or a killed write's temporary: `storage.write_bytes`'s
# `.tmp` suffix, an older version's `.tmp-` prefix); its format has its own
# version (a split's "labels" entry).
_LABELS_RE = re.compile(r"^(?:\.tmp-)?\w+-labels\.npy(?:\.tmp)?$")
LABELS_VERSION = 1
# Where a split has no "test", evaluation uses these (the order is the preference).
_TEST_FALLBACKS = ("test", "validation", "val")
Record = dict[str, Any]  # {"image": bytes, "label": int, "key": str[, "mask": bytes]}


@dataclasses.dataclass(frozen=True)
class Example:
    """One example to write: `key` names it in errors (e.g. the file's relative path)."""

    key: str
    image: bytes  # The encoded file (JPEG, PNG, ...), stored as is.
    label: int
    mask: bytes | None = None  # A segmentation mask's encoded PNG, stored as is.


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def labels_name(split: str) -> str:
    return f"{split}-labels.npy"


def encode_record(example: Example) -> bytes:
    record = {"image": bytes(example.image), "label": int(example.label), "key": str(example.key)}
    if example.mask is not None:
        record["mask"] = bytes(example.mask)
    return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> Record:
    """msgpack bytes -> {"image", "label", "key"[, "mask"]}; ValueError saying
    what is malformed."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ValueError(f"not msgpack ({type(e).__name__}: {e})") from None
    if not (
        isinstance(record, dict)
        and isinstance(record.get("image"), bytes)
        and isinstance(record.get("label"), int)
        and isinstance(record.get("key"), str)
        and isinstance(record.get("mask", b""), bytes)
    ):
        raise ValueError("not a {image: bytes, label: int, key: str[, mask: bytes]} map")
    return record


# ----------------------------------------------------------------------------- writing


def write_records(
    out_dir: str,
    splits: Mapping[str, Iterable[Example]],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
    producer: str = "",
    overwrite: bool = False,
) -> dict:
    """Writes each split's examples into shards under `out_dir`; returns dataset_info.

    The examples are consumed one at a time (never a whole split in memory).
    A dataset already in `out_dir`, or shards a killed writer left there, are
    an error unless `overwrite` (then they are removed first, the info file
    before the shards). Files that are not shards are never touched. If the
    call fails, the shards it wrote are removed again. Either every example
    has a mask or none has.
    """
    if not isinstance(examples_per_shard, int) or examples_per_shard < 1:
        raise DatasetError(f"examples_per_shard must be a positive int, got {examples_per_shard}.")
    if class_names is not None and len(class_names) != num_classes:
        raise DatasetError(f"{len(class_names)} class names for {num_classes} classes.")
    info_path = os.path.join(out_dir, INFO_FILE)
    os.makedirs(out_dir, exist_ok=True)
    stale = [e for e in os.listdir(out_dir) if _SHARD_RE.match(e) or _LABELS_RE.match(e)]
    if not overwrite and os.path.exists(info_path):
        raise DatasetError(
            f"{out_dir} already holds a dataset; pass overwrite (prepare: --overwrite) "
            "to replace it."
        )
    if not overwrite and stale:
        raise DatasetError(
            f"{out_dir} holds shards of an unfinished write (no {INFO_FILE}); "
            "pass overwrite (prepare: --overwrite) to replace them."
        )
    # The info file goes first: from here on the directory does not look complete.
    if os.path.exists(info_path):
        os.remove(info_path)
    for entry in stale:
        os.remove(os.path.join(out_dir, entry))

    written: list[str] = []  # Removed again if this call fails.
    masks: list[bool] = []  # Whether the first example had a mask: all must agree.
    try:
        info_splits = {
            split: _write_split(
                out_dir, split, examples, num_classes, examples_per_shard, written, masks
            )
            for split, examples in splits.items()
        }
    except BaseException:
        for path in written:
            if os.path.exists(path):
                os.remove(path)
        raise

    has_masks = bool(masks and masks[0])
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "record": "msgpack map {image: bytes (encoded file), label: int, key: str"
        + (", mask: bytes (encoded PNG)}" if has_masks else "}"),
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "masks": has_masks,
        "splits": info_splits,
        "producer": producer,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(info_path, info, indent=1, sort_keys=False)
    return info


def _write_split(
    out_dir: str,
    split: str,
    examples: Iterable[Example],
    num_classes: int,
    examples_per_shard: int,
    written: list[str],
    masks: list[bool],
) -> dict:
    """Streams one split into temporary shards (and its labels into a compact
    array), then renames them to their final names. `masks` holds whether the
    dataset's first example had a mask (set by it)."""
    from array_record.python import array_record_module

    if not re.fullmatch(r"\w+", split):
        raise DatasetError(f"Split name {split!r} must be letters, digits or '_'.")
    temp_paths, counts, num_bytes, writer = [], [], 0, None
    labels = array.array("i")  # 4 bytes a label: 5 MB for ImageNet's train split.
    try:
        for example in examples:
            if not 0 <= example.label < num_classes:
                raise DatasetError(
                    f"Label {example.label} of {example.key} is outside [0, {num_classes})."
                )
            if not masks:
                masks.append(example.mask is not None)
            elif masks[0] != (example.mask is not None):
                raise DatasetError(
                    f"Example {example.key} has {'a' if example.mask is not None else 'no'} "
                    "mask, unlike the first: a dataset's examples all have masks or none has."
                )
            if writer is None or counts[-1] == examples_per_shard:
                if writer is not None:
                    writer.close()
                name = f".tmp-{split}-{len(temp_paths):05d}.array_record"
                temp_paths.append(os.path.join(out_dir, name))
                written.append(temp_paths[-1])
                writer = array_record_module.ArrayRecordWriter(temp_paths[-1], _WRITER_OPTIONS)
                counts.append(0)
            data = encode_record(example)
            writer.write(data)
            counts[-1] += 1
            labels.append(int(example.label))
            num_bytes += len(data)
    finally:
        if writer is not None:
            writer.close()
    if not counts:
        raise DatasetError(f"Split {split!r} has no examples to write.")
    shards = []
    for index, (temp, count) in enumerate(zip(temp_paths, counts, strict=True)):
        name = shard_name(split, index, len(counts))
        # Shards stream through ArrayRecordWriter (never a whole shard in
        # memory), so not `storage.write_bytes`: their own temporary, renamed.
        os.replace(temp, os.path.join(out_dir, name))
        written.append(os.path.join(out_dir, name))
        shards.append({"file": name, "num_examples": count})
    label_array = np.frombuffer(labels, np.intc).astype(np.int32)
    return {
        "num_examples": sum(counts),
        "num_bytes": num_bytes,
        "shards": shards,
        "labels": _write_labels(out_dir, split, label_array, num_classes, written),
    }


def _write_labels(
    out_dir: str, split: str, labels: np.ndarray, num_classes: int, written: list[str]
) -> dict:
    """Writes a split's labels beside its shards; returns its info entry."""
    name = labels_name(split)
    data = io.BytesIO()  # 4 bytes a label: small beside the shards, which stream
    np.save(data, labels.astype(np.int32), allow_pickle=False)
    storage.write_bytes(os.path.join(out_dir, name), data.getvalue())
    written.append(os.path.join(out_dir, name))
    return {
        "file": name,
        "version": LABELS_VERSION,
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
    }


# ----------------------------------------------------------------------------- reading ours


def read_info(directory: str) -> dict:
    """The dataset_info.json of a records directory, checked; DatasetError if absent or bad."""
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isdir(directory):
        raise DatasetError(f"Records directory {directory} does not exist; write it with prepare.")
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise DatasetError(
            f"{directory} has no {INFO_FILE}: not a records dataset, or its writer was "
            "stopped before the end; (re)run python -m ssl_jax.prepare."
        ) from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"Cannot read {path}: {e}; re-run ssl_jax.prepare.") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an {FORMAT} info file.")
    if info.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {info.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; re-run ssl_jax.prepare."
        )
    if not isinstance(info.get("splits"), dict) or not isinstance(info.get("num_classes"), int):
        raise DatasetError(f"{path} lacks 'splits' or 'num_classes'; re-run ssl_jax.prepare.")
    return info


class RecordSource:
    """Random access to one split of a directory written by `write_records`."""

    def __init__(self, directory: str, split: str):
        self.directory = os.path.abspath(directory)
        info = read_info(self.directory)
        self.split = _pick_split(split, list(info["splits"]), f"arrayrecord:{self.directory}")
        self.name = f"arrayrecord:{self.directory}"
        self.num_classes = int(info["num_classes"])
        names = info.get("class_names")
        self.class_names = tuple(names) if names is not None else None
        shards = info["splits"][self.split]["shards"]
        self._files = [os.path.join(self.directory, s["file"]) for s in shards]
        self._counts = [int(s["num_examples"]) for s in shards]
        for path in self._files:
            if not os.path.isfile(path):
                raise DatasetError(f"Shard {path} is missing; re-run ssl_jax.prepare.")
        self._starts = [0]
        for count in self._counts:
            self._starts.append(self._starts[-1] + count)
        self._labels_entry = info["splits"][self.split].get("labels")
        self._labels: np.ndarray | None = None
        self._source = None  # Opened lazily in each process that reads.
        self.has_masks = bool(info.get("masks", False))

    def stored_labels(self) -> np.ndarray | None:
        """Every record's label (int32, record order) from the split's labels
        file, reading no record; None for a directory prepared before labels
        files existed."""
        if self._labels is None and self._labels_entry is not None:
            self._labels = _read_labels(
                self.directory, self._labels_entry, len(self), self.num_classes
            )
        return self._labels

    def __getstate__(self):
        # Readers are per process; the labels are reloaded where they are needed.
        return {**self.__dict__, "_source": None, "_labels": None}

    def __len__(self) -> int:
        return self._starts[-1]

    def _data_source(self):
        if self._source is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            # "path[0:n]" tells the reader the shard's length, so opening a split does
            # not open every shard; each is opened on its first read.
            self._source = ArrayRecordDataSource(
                [f"{p}[0:{n}]" for p, n in zip(self._files, self._counts, strict=True)]
            )
        return self._source

    def where(self, index: int) -> str:
        """Names record `index` for error messages: its shard file and position in it."""
        shard = bisect.bisect_right(self._starts, index) - 1
        position = index - self._starts[shard]
        return (
            f"{index} of {self.name} split {self.split} "
            f"(shard {self._files[shard]}, record {position})"
        )

    def __getitem__(self, index: int) -> Record:
        index = _check_index(index, len(self))
        try:
            return decode_record(self._data_source()[index])
        except (RuntimeError, ValueError, OSError) as e:  # Riegeli's errors are RuntimeErrors.
            raise self._error(index, e) from None

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        """Reads many records at once (ArrayRecord reads each shard's in parallel)."""
        indices = [_check_index(i, len(self)) for i in indices]
        try:
            return [decode_record(d) for d in self._data_source().__getitems__(indices)]
        except (RuntimeError, ValueError, OSError):
            return [self[i] for i in indices]  # One by one, to name the bad record.

    def _error(self, index: int, error: BaseException) -> DatasetError:
        reason = " ".join(str(error).split()) or type(error).__name__
        return DatasetError(
            f"Cannot read record {self.where(index)}: {reason}. The shard is damaged: "
            "re-run ssl_jax.prepare."
        )


def _read_labels(directory: str, entry, num_examples: int, num_classes: int) -> np.ndarray:
    """A split's labels file, checked against its info entry; DatasetError naming
    the file otherwise."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise DatasetError(
            f"{os.path.join(directory, INFO_FILE)} has a malformed 'labels' entry; "
            "re-run ssl_jax.prepare."
        )
    path = os.path.join(directory, entry["file"])
    redo = "re-run ssl_jax.prepare (--overwrite)."
    if entry.get("version") != LABELS_VERSION:
        raise DatasetError(
            f"{path} has labels format version {entry.get('version')}, this code reads "
            f"{LABELS_VERSION}; {redo}"
        )
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DatasetError(f"Cannot read labels file {path}: {reason}; {redo}") from None
    counts = entry.get("class_counts")
    problem = None
    if labels.shape != (num_examples,) or labels.dtype.kind not in "iu":
        problem = f"holds {labels.dtype} {labels.shape}, expected int ({num_examples},)"
    elif num_examples and not 0 <= labels.min() <= labels.max() < num_classes:
        problem = f"holds labels outside [0, {num_classes})"
    elif counts != np.bincount(labels, minlength=num_classes).tolist():
        problem = f"does not match the class counts in {INFO_FILE}"
    if problem:
        raise DatasetError(f"Labels file {path} {problem}; {redo}")
    return labels.astype(np.int32)


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"Record index {index} outside [0, {length}).")
    return index


def _pick_split(split: str, available: list[str], name: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    wanted = [split] if split == "train" else list(_TEST_FALLBACKS)
    chosen = next((s for s in wanted if s in available), None)
    if chosen is None:
        raise DatasetError(f"{name} has no split {' or '.join(wanted)}; it has {available}.")
    return chosen


# ----------------------------------------------------------------------------- reading tfds


class TfdsSource:
    """Random access to a TFDS dataset prepared in ArrayRecord format, without TensorFlow.

    Images stay encoded (tfds's `SkipDecoding`); keys are `tfds:SPEC[split][i]`,
    as in `ssl_jax.data.datasets`.
    """

    def __init__(self, spec: str, split: str, data_dir: str | None = None):
        self.spec, self.data_dir = spec, data_dir
        builder = self._builder()
        self.name = f"tfds:{spec}"
        self.split = _pick_split(split, list(builder.info.splits), self.name)
        self._length = builder.info.splits[self.split].num_examples
        import tensorflow_datasets as tfds

        features = builder.info.features
        self._image_key = only_feature(features, tfds.features.Image, "image", spec)
        self._label_key = only_feature(features, tfds.features.ClassLabel, "label", spec)
        self.num_classes = features[self._label_key].num_classes
        self.class_names = tuple(features[self._label_key].names)
        self._source = None
        self._data_source()  # Fails now, not in a worker, if the format is wrong.
        if split != "train":
            self._skip_unlabelled_splits(builder)

    def _skip_unlabelled_splits(self, builder) -> None:
        """Some tfds datasets (imagenet2012 with its test archive) have a "test"
        split whose labels are all -1: evaluation falls back to the next split."""
        available = list(builder.info.splits)
        while self._length and int(self._data_source()[0][self._label_key]) < 0:
            later = _TEST_FALLBACKS[_TEST_FALLBACKS.index(self.split) + 1 :]
            following = [s for s in later if s in available]
            if not following:
                raise DatasetError(
                    f"{self.name}[{self.split}] holds no labels (label -1) and the dataset has "
                    "no other evaluation split; evaluate on another dataset "
                    "(--config.probe.dataset)."
                )
            log.warning(
                "%s[%s] holds no labels; evaluating on %s.", self.name, self.split, following[0]
            )
            self.split, self._source = following[0], None
            self._length = builder.info.splits[self.split].num_examples

    def __getstate__(self):
        # tfds's own source pickles its builder's info, which a worker process cannot
        # always rebuild (a builder class defined at run time); we reopen by name.
        return {**self.__dict__, "_source": None}

    def _builder(self):
        builder = tfds_builder(self.spec, self.data_dir)
        if not builder.is_prepared():
            raise DatasetError(
                f"tfds:{self.spec} is not prepared in {builder.data_dir_root}. "
                f"{_tfds_prepare_hint(self.spec, builder.data_dir_root)}"
            )
        return builder

    def _data_source(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            builder = self._builder()
            try:
                self._source = builder.as_data_source(
                    split=self.split, decoders={self._image_key: tfds.decode.SkipDecoding()}
                )
            except NotImplementedError:  # Prepared as TFRecord: needs TensorFlow to read.
                raise DatasetError(
                    f"tfds:{self.spec} is not in ArrayRecord format. "
                    f"{_tfds_prepare_hint(self.spec, builder.data_dir_root)}"
                ) from None
        return self._source

    def __len__(self) -> int:
        return self._length

    def stored_labels(self) -> None:
        """tfds keeps no labels apart from the examples: they are read from the
        records (`python -m ssl_jax.prepare` stores them once)."""
        return None

    def where(self, index: int) -> str:
        return f"{self.name}[{self.split}][{index}]"

    def __getitem__(self, index: int) -> Record:
        index = _check_index(index, len(self))
        try:
            example = self._data_source()[index]
            image, label = example[self._image_key], int(example[self._label_key])
        except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DatasetError(f"Cannot read record {self.where(index)}: {reason}.") from None
        if not isinstance(image, bytes):
            raise DatasetError(f"Record {self.where(index)} holds no encoded image.")
        return {"image": image, "label": label, "key": self.where(index)}

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        return [self[i] for i in indices]


def tfds_builder(spec: str, data_dir: str | None):
    """tfds's builder of `spec`; DatasetError in one line for an unknown name, or
    for features whose tfds code needs TensorFlow (tfds 4.9's Video feature
    imports it even to read a prepared dataset's description)."""
    import tensorflow_datasets as tfds  # Lazy: importing tfds takes a moment.

    try:
        return tfds.builder(spec, data_dir=data_dir)
    except ValueError as e:  # Includes tfds's DatasetNotFoundError.
        where = data_dir or "the default tfds data_dir"
        raise DatasetError(
            f"tfds does not know {spec!r} and found no prepared copy in {where} "
            f"({type(e).__name__}); check the name in the tfds catalog."
        ) from None
    except ImportError as e:
        raise DatasetError(
            f"tensorflow_datasets {tfds.__version__} cannot open tfds:{spec} without "
            f"TensorFlow ({e}; its Video feature imports it): pip install tensorflow-cpu "
            "in this environment, or use a dataset without video."
        ) from None


def _tfds_prepare_hint(spec: str, data_dir_root: str) -> str:
    return (
        "Prepare it once (needs network and TensorFlow, e.g. in a separate env with "
        f"`pip install tensorflow tensorflow-datasets`): tfds build {spec} "
        f"--data_dir={data_dir_root} --file_format=array_record"
    )


# ----------------------------------------------------------------------------- opening


def source_names() -> list[str]:
    return ["arrayrecord:/path/to/dir", "tfds:NAME[/CONFIG][:VERSION]"]


def open_source(spec: str, split: str, *, data_dir: str | None = None):
    """Opens `split` ("train" or "test") of `arrayrecord:DIR` or `tfds:NAME`.

    A relative DIR is taken relative to `data_dir` when one is given; for tfds,
    `data_dir` is tfds's data directory.
    """
    kind, _, arg = spec.partition(":")
    if kind == "arrayrecord" and arg:
        path = os.path.join(os.path.expanduser(data_dir or ""), os.path.expanduser(arg))
        source = RecordSource(path, split)
        if source.has_masks:
            # Every label is 0 there (the classes are per pixel): as images with
            # labels, any probe would score 100% on nothing.
            raise DatasetError(
                f"{spec} holds segmentation records (images with masks, every label 0): "
                f"read them as evals.segmentation_probe.dataset=segrecords:{arg}, not as "
                "a labelled image dataset."
            )
        return source
    if kind == "tfds" and arg:
        if split not in SPLITS:
            raise DatasetError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
        return TfdsSource(arg, split, data_dir)
    hint = ""
    if kind == "imagefolder":
        hint = " Convert an image folder first: python -m ssl_jax.prepare --source=... --out=DIR."
    raise DatasetError(
        f"Unknown streaming source {spec!r}: use {' or '.join(source_names())}.{hint}"
    )
