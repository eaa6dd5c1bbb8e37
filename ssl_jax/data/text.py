"""Text as token ids: bytes, and the labelled corpus that ships with Python.

Tokens are the text's UTF-8 bytes (ids 0-255) plus two special ids, [PAD]
and [MASK]: no tokenizer to train or download, every text is representable,
and the vocabulary is the same for every corpus (ByT5, Xue et al. 2022, makes
the case for byte-level models). A split holds int32 `tokens` [N, length]:
chunks of `length` bytes, the last chunk of a document padded with [PAD].

`pydoc` (`pydoc:length=128`): the documentation topics of the Python
standard library (`pydoc_data.topics`, what `help("if")` prints: 79 topics,
~465k characters in CPython 3.11), in every Python install, so it works
offline. The downstream task is honest and not trivial: *which topic a chunk
of text comes from*, over the topics long enough to have at least
`min_chunks` chunks (30 topics at 128 bytes, 3.11; chance = the largest topic,
~15%). Chunks do not overlap, identical chunks are kept once (repeated
boilerplate would otherwise sit on both sides), and every fifth chunk of each
topic, in reading order, is the test split. The corpus changes a little
between Python versions (it is the version's documentation); the dataset's
name and sizes say what was read.

`tfds:imdb_reviews`, `tfds:ag_news_subset`, ...: a prepared TFDS dataset with
one Text and one ClassLabel feature goes through the same reader
(`tfds_source.load` hands it here): each example's first `length` bytes.
"""

from __future__ import annotations

import numpy as np

from ssl_jax.data.base import ArrayDataset, DatasetError
from ssl_jax.registry import DATASETS

PAD_ID = 256
MASK_ID = 257
VOCAB_SIZE = 258  # 256 bytes + [PAD] + [MASK]
NUM_BYTES = 256  # the "random token" of BERT's masking rule is one of these

_PYDOC_DEFAULTS = {"length": 128, "min_chunks": 20}
_TEST_EVERY = 5  # every fifth chunk of a topic is a test chunk
_MIN_FILL = 0.5  # a document's last, shorter chunk is kept if at least half full


def encode(text: str | bytes, length: int) -> np.ndarray:
    """The first `length` bytes of `text` as int32 token ids, [PAD]-filled."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = np.full(length, PAD_ID, np.int32)
    ids = np.frombuffer(data[:length], np.uint8)
    out[: len(ids)] = ids
    return out


def decode(tokens: np.ndarray) -> str:
    """Token ids back to text ([PAD] dropped, [MASK] shown as "?")."""
    ids = [int(t) for t in np.asarray(tokens).ravel() if t != PAD_ID]
    return bytes(t if t < NUM_BYTES else ord("?") for t in ids).decode("utf-8", "replace")


def chunks(text: str, length: int) -> list[bytes]:
    """Non-overlapping `length`-byte pieces of `text` (the last one kept only
    if it is at least half full)."""
    data = text.encode("utf-8")
    pieces = [data[i : i + length] for i in range(0, len(data), length)]
    return [p for p in pieces if len(p) >= _MIN_FILL * length]


def parse_options(arg: str, defaults: dict[str, int], kind: str) -> dict[str, int]:
    """`key=INT,...` after a dataset's name (unknown keys are an error)."""
    options = dict(defaults)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in options or not value.strip().isdigit():
            raise DatasetError(
                f"Bad {kind} option {item!r}: use {kind}:KEY=INT,... with KEY in "
                f"{', '.join(options)}."
            )
        options[key] = int(value)
    return options


def pydoc_corpus(length: int, min_chunks: int) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """{split: (tokens int32 [N, length], labels int32 [N])} of the pydoc
    topics (see the module docstring) and the topics' names."""
    from pydoc_data.topics import topics

    per_topic = {name: chunks(text, length) for name, text in sorted(topics.items())}
    # Identical chunks (shared boilerplate) are kept once, at their first place.
    seen: set[bytes] = set()
    for name, pieces in per_topic.items():
        unique = []
        for piece in pieces:  # within a topic too
            if piece not in seen:
                seen.add(piece)
                unique.append(piece)
        per_topic[name] = unique
    names = tuple(n for n, pieces in per_topic.items() if len(pieces) >= min_chunks)
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(names):
        for i, piece in enumerate(per_topic[name]):
            tokens, labels = splits["test" if i % _TEST_EVERY == _TEST_EVERY - 1 else "train"]
            tokens.append(encode(piece, length))
            labels.append(label)
    out = {
        split: (np.stack(tokens).astype(np.int32), np.asarray(labels, np.int32))
        for split, (tokens, labels) in splits.items()
    }
    return out, names


def load_pydoc(arg: str, split: str):
    options = parse_options(arg, _PYDOC_DEFAULTS, "pydoc")
    if options["length"] < 2 or options["min_chunks"] < _TEST_EVERY:
        raise DatasetError(f"pydoc needs length >= 2 and min_chunks >= {_TEST_EVERY}.")
    corpus, names = pydoc_corpus(options["length"], options["min_chunks"])
    tokens, labels = corpus[split]
    name = "pydoc:" + ",".join(f"{k}={v}" for k, v in options.items())
    return ArrayDataset(tokens, labels, len(names), name, "tokens", names)


def from_texts(texts, labels, num_classes: int, name: str, length: int, class_names=None):
    """A text split from raw texts (str or UTF-8 bytes), e.g. a TFDS dataset's."""
    tokens = np.stack([encode(t, length) for t in texts]) if len(texts) else np.zeros((0, length))
    return ArrayDataset(
        tokens.astype(np.int32),
        np.asarray(labels, np.int32),
        num_classes,
        name,
        "tokens",
        class_names,
    )


@DATASETS.register("pydoc")
def _load(arg, split, image_size, data_dir, cache_dir) -> ArrayDataset:
    del image_size, data_dir, cache_dir  # no pixels; the corpus ships with Python
    return load_pydoc(arg, split)
