"""Audio as waveforms: synthesised tones, folders of WAV files, and WAV
records written by `ssl_jax.prepare`.

A split holds int16 `audio` [N, SAMPLES]: mono 16-bit PCM at 16 kHz, one
second per clip (the rate and length of Speech Commands, and the rate
Audio-MAE's front end uses). int16 rather than float32 because it is what
a WAV file holds, half the host memory, and the device scales it (x / 32768)
where it computes the log-mel spectrogram (`models/audio.py`), as images
travel as uint8.

`tones` (`tones:train_per_class=160,test_per_class=40,seed=0`): the
embedded default, synthesised from a seed, no file or network. Ten classes
of sound, each at a random pitch (110-880 Hz, log-uniform), loudness, onset,
duration and envelope (percussive, sustained or swelling), over background
noise at a random level. What tells the classes apart is the structure of
the sound, never its pitch or level: which partials it has (sine, all
harmonics, odd harmonics), which intervals it stacks (major or minor triad),
how it moves in time (rising or falling glide, vibrato, tremolo) or whether
it is a band of noise. Several of these (major vs minor, rising vs falling,
vibrato vs a plain sine) are the same average spectrum shape at different
pitches, so a linear probe on a random network's pooled features is far
from the ceiling (README: measured). Deterministic: a function of the
options and the split alone.

`audiofolder:/root`: `root/train/<class>/<file>.wav` and
`root/test/<class>/<file>.wav` (or `val/`), the classes and their order
taken from train/ (as `imagefolder:`). Files are read with the standard
library's `wave` (8/16/24/32-bit integer PCM, any channel count, averaged
to mono), resampled to 16 kHz by linear interpolation when they are at
another rate (no anti-alias filter: record at 16 kHz for best results), and
cut to one second (the middle second of longer files) or padded with
silence at the end.

`audiorecords:/dir`: the ArrayRecord shards that
`python -m ssl_jax.prepare --source=audiofolder:/root --out=/dir` writes
(each WAV file stored byte for byte), read whole into memory and decoded as
`audiofolder:` decodes files.
"""

from __future__ import annotations

import io
import os
import wave

import numpy as np

from ssl_jax.data.base import ArrayDataset, DatasetError
from ssl_jax.registry import DATASETS

SAMPLE_RATE = 16_000
SAMPLES = SAMPLE_RATE  # one second per clip
INPUT_KEY = "audio"
WAV_EXTENSIONS = (".wav", ".wave")

_TONES_DEFAULTS = {"train_per_class": 160, "test_per_class": 40, "seed": 0}
# The test split's draws come from another stream of the same seed.
_SPLIT_STREAM = {"train": 0, "test": 1}
_PITCH_RANGE = (110.0, 880.0)  # Hz: A2 to A5
_PEAK = 0.9  # of int16 full scale: nothing clips


# ----------------------------------------------------------------------------- synthesis
# Each class is one function (f0, t, rng) -> one second of its sound before
# the envelope; the draws inside are part of the data (the order matters).
_RICH = np.arange(1, 9)  # the first 8 harmonics
_FOUR = _RICH[:4]


def _harmonics(freq, t, rng, ks, weights, phase=None) -> np.ndarray:
    """Sum of sines at k * freq (k in ks, only those below Nyquist) with
    `weights` and random phases; `phase`: the running phase of a moving
    fundamental (then `freq` is its instantaneous frequency)."""
    phase = 2 * np.pi * freq * t if phase is None else phase
    out = np.zeros_like(t)
    for k, w in zip(ks, weights, strict=True):
        if k * np.max(freq) < SAMPLE_RATE / 2:
            out += w * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _moving(freq, t, rng) -> np.ndarray:
    """Four harmonics of a fundamental whose frequency follows `freq` [t]."""
    return _harmonics(freq, t, rng, _FOUR, 1.0 / _FOUR, 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)


def _triad(third: float):
    """Root, third and fifth (just intonation), three harmonics each."""

    def sound(f0, t, rng):
        three = np.arange(1, 4)
        return sum(_harmonics(f0 * r, t, rng, three, 1.0 / three) for r in (1.0, third, 1.5))

    return sound


def _vibrato(f0, t, rng):
    rate, depth = rng.uniform(5, 8), rng.uniform(0.03, 0.06)
    return _moving(f0 * (1 + depth * np.sin(2 * np.pi * rate * t)), t, rng)


def _tremolo(f0, t, rng):
    rate = rng.uniform(8, 14)
    return _harmonics(f0, t, rng, _FOUR, 1.0 / _FOUR) * (0.55 + 0.45 * np.sin(2 * np.pi * rate * t))


def _noise_band(f0, t, rng):
    """White noise kept within a fifth either side of f0."""
    spectrum = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1 / SAMPLE_RATE)
    spectrum[(freqs < f0 / 1.5) | (freqs > f0 * 1.5)] = 0
    return np.fft.irfft(spectrum, len(t))


_ODD = np.arange(1, 16, 2)
SOUNDS = {
    "sine": lambda f0, t, rng: np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)),
    "harmonic": lambda f0, t, rng: _harmonics(f0, t, rng, _RICH, 1.0 / _RICH),
    "odd_harmonic": lambda f0, t, rng: _harmonics(f0, t, rng, _ODD, 1.0 / _ODD),
    "major_triad": _triad(5 / 4),
    "minor_triad": _triad(6 / 5),
    # An octave over the second, exponential in frequency.
    "glide_up": lambda f0, t, rng: _moving(f0 * 2.0**t, t, rng),
    "glide_down": lambda f0, t, rng: _moving(f0 * 2.0 ** (1.0 - t), t, rng),
    "vibrato": _vibrato,
    "tremolo": _tremolo,
    "noise_band": _noise_band,
}
CLASS_NAMES = tuple(SOUNDS)


def _envelope(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random onset, duration and shape: percussive, sustained or swelling."""
    duration = rng.uniform(0.35, 0.9)
    onset = rng.uniform(0.0, 1.0 - duration)
    local = (t - onset) / duration  # 0..1 inside the sound
    inside = (local >= 0) & (local <= 1)
    shape = rng.integers(3)
    if shape == 0:  # percussive: sharp attack, exponential decay
        env = np.minimum(local / 0.02, 1.0) * np.exp(-local * rng.uniform(3, 6))
    elif shape == 1:  # sustained: short ramps in and out
        env = np.minimum(np.minimum(local / 0.08, 1.0), (1 - local) / 0.08)
    else:  # swelling: slow attack, quick release
        env = np.minimum(local**2, (1 - local) / 0.05)
    return np.where(inside, np.clip(env, 0.0, 1.0), 0.0)


def synthesise(label: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of class `label` (float64 [SAMPLES], peak at most `_PEAK`)."""
    t = np.arange(SAMPLES) / SAMPLE_RATE
    f0 = float(np.exp(rng.uniform(*np.log(_PITCH_RANGE))))
    sound = SOUNDS[CLASS_NAMES[label]](f0, t, rng) * _envelope(t, rng)
    sound /= np.max(np.abs(sound)) + 1e-12
    noise = rng.standard_normal(SAMPLES) * 10 ** rng.uniform(-2.5, -1.2)  # -50 to -24 dB
    clip = sound * 10 ** rng.uniform(-1.0, 0.0) + noise  # a 20 dB range of loudness
    return clip * (_PEAK / max(_PEAK, np.max(np.abs(clip))))


def to_int16(clip: np.ndarray) -> np.ndarray:
    """float waveform in [-1, 1] -> int16 PCM (rounded, clipped)."""
    return np.clip(np.round(np.asarray(clip) * 32768.0), -32768, 32767).astype(np.int16)


def parse_options(arg: str) -> dict[str, int]:
    options = dict(_TONES_DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in options or not value.strip().isdigit():
            raise DatasetError(
                f"Bad tones option {item!r}: use tones:train_per_class=INT,test_per_class=INT,"
                "seed=INT."
            )
        options[key] = int(value)
    if options["train_per_class"] < 1 or options["test_per_class"] < 1:
        raise DatasetError(f"tones needs at least 1 clip per class and split, got {options}.")
    return options


def load_tones(arg: str, split: str) -> ArrayDataset:
    options = parse_options(arg)
    per_class = options[f"{split}_per_class"]
    rng = np.random.default_rng([options["seed"], _SPLIT_STREAM[split]])
    labels = np.tile(np.arange(len(CLASS_NAMES), dtype=np.int32), per_class)
    audio = np.stack([to_int16(synthesise(int(label), rng)) for label in labels])
    name = "tones:" + ",".join(f"{k}={v}" for k, v in options.items())
    return ArrayDataset(audio, labels, len(CLASS_NAMES), name, INPUT_KEY, CLASS_NAMES)


# ----------------------------------------------------------------------------- WAV files
def read_wav(data: bytes, where: str) -> np.ndarray:
    """WAV bytes -> int16 [SAMPLES], mono at 16 kHz (see the module docstring);
    DatasetError naming `where` if the bytes are not a WAV file `wave` reads."""
    try:
        with wave.open(io.BytesIO(data)) as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as e:
        raise DatasetError(
            f"Cannot read {where} as a WAV file ({e}); convert it to 16-bit PCM WAV, e.g. "
            "ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav."
        ) from None
    # A truncated file ends in a partial frame: read the whole frames it has.
    frames = frames[: len(frames) // (width * channels) * (width * channels)]
    raw = np.frombuffer(frames, np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        x = (raw.astype(np.float64) - 128.0) / 128.0
    elif width == 3:  # little-endian 24-bit, sign-extended through int32
        b = raw.reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / 2.0**23
    else:
        x = np.frombuffer(frames, f"<i{width}").astype(np.float64) / 2.0 ** (8 * width - 1)
    x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE and len(x):
        duration = len(x) / rate
        x = np.interp(
            np.arange(round(duration * SAMPLE_RATE)) / SAMPLE_RATE, np.arange(len(x)) / rate, x
        )
    if len(x) > SAMPLES:
        start = (len(x) - SAMPLES) // 2
        x = x[start : start + SAMPLES]
    return to_int16(np.pad(x, (0, SAMPLES - len(x))))


def write_wav(path: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """int16 [samples] or [samples, channels] -> a PCM WAV file."""
    audio = np.asarray(audio, np.int16)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with wave.open(path, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(audio.astype("<i2").tobytes())


_SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}


def list_audio_folder(root: str, split: str) -> tuple[list[str], str, list[tuple[str, int]]]:
    """(classes from train/, the split's folder name, [(wav path, label)])."""
    layout = f"expected {root}/train/<class>/<file>.wav and {root}/test/<class>/<file>.wav"
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DatasetError(f"Audio folder {root} has no train/ folder; {layout}.")
    hidden = lambda name: name.startswith(".")
    classes = sorted(
        c
        for c in os.listdir(train_dir)
        if not hidden(c) and os.path.isdir(os.path.join(train_dir, c))
    )
    folder = next((f for f in _SPLIT_FOLDERS[split] if os.path.isdir(os.path.join(root, f))), None)
    if folder is None:
        raise DatasetError(f"Audio folder {root} has no test/ (or val/) folder; {layout}.")
    files = []
    split_dir = os.path.join(root, folder)
    for c in sorted(os.listdir(split_dir)):
        class_dir = os.path.join(split_dir, c)
        if hidden(c) or not os.path.isdir(class_dir):
            continue
        if c not in classes:
            raise DatasetError(
                f"Class folder {class_dir} has no counterpart in {train_dir}; add it there "
                "or remove it."
            )
        files += [
            (os.path.join(class_dir, f), classes.index(c))
            for f in sorted(os.listdir(class_dir))
            if not hidden(f) and f.lower().endswith(WAV_EXTENSIONS)
        ]
    if not files:
        raise DatasetError(f"No .wav files under {split_dir}/<class>/; {layout}.")
    return classes, folder, files


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DatasetError(f"Cannot read {path}: {e.strerror or e}.") from None


def _resolve(path: str, data_dir: str | None, kind: str) -> str:
    if not path.strip():
        raise DatasetError(f"{kind}: needs a path, e.g. --config.dataset={kind}:/data/sounds.")
    return os.path.abspath(
        os.path.join(os.path.expanduser(data_dir or ""), os.path.expanduser(path))
    )


def load_audio_folder(path: str, split: str, data_dir: str | None = None) -> ArrayDataset:
    root = _resolve(path, data_dir, "audiofolder")
    classes, _, files = list_audio_folder(root, split)
    audio = np.stack([read_wav(_read_file(f), f) for f, _ in files])
    labels = np.array([label for _, label in files], np.int32)
    return ArrayDataset(
        audio, labels, len(classes), f"audiofolder:{root}", INPUT_KEY, tuple(classes)
    )


def folder_examples(path: str, data_dir: str | None, verify: bool, threads: int):
    """What `ssl_jax.prepare` writes of `audiofolder:path`: ({split folder:
    iterator of records.Example holding each WAV file as is}, classes)."""
    from ssl_jax.data import records  # lazy: only prepare needs the writer's types

    del threads  # WAV files are read, not decoded: one thread keeps up
    root = _resolve(path, data_dir, "audiofolder")

    def examples(files):
        for f, label in files:
            data = _read_file(f)
            if verify:
                read_wav(data, f)
            # The records format names the stored file `image`, whatever it holds.
            yield records.Example(os.path.relpath(f, root), data, label)

    out, classes = {}, None
    for split in ("train", "test"):
        classes, folder, files = list_audio_folder(root, split)
        out[folder] = examples(files)
    return out, classes


def load_audio_records(path: str, split: str, data_dir: str | None = None) -> ArrayDataset:
    from ssl_jax.data import records

    directory = _resolve(path, data_dir, "audiorecords")
    source = records.RecordSource(directory, split)
    items = source.__getitems__(range(len(source))) if len(source) else []
    audio = np.stack([read_wav(r["image"], f"{r['key']} in {directory}") for r in items])
    labels = np.array([r["label"] for r in items], np.int32)
    names = source.class_names
    return ArrayDataset(
        audio, labels, source.num_classes, f"audiorecords:{directory}", INPUT_KEY, names
    )


@DATASETS.register("tones")
def _load_tones(arg, split, image_size, data_dir, cache_dir) -> ArrayDataset:
    del image_size, data_dir, cache_dir  # synthesised: nothing to read or cache
    return load_tones(arg, split)


@DATASETS.register("audiofolder")
def _load_folder(arg, split, image_size, data_dir, cache_dir) -> ArrayDataset:
    del image_size, cache_dir  # WAV decoding is cheap: no cache
    return load_audio_folder(arg, split, data_dir)


@DATASETS.register("audiorecords")
def _load_records(arg, split, image_size, data_dir, cache_dir) -> ArrayDataset:
    del image_size, cache_dir
    return load_audio_records(arg, split, data_dir)
