"""Audio data: the synthesised tones, a WAV folder the test writes, and the
same folder through `ssl_jax.prepare` into records and back."""

import wave

import numpy as np
import pytest

from ssl_jax import prepare
from ssl_jax.data import audio
from ssl_jax.data.datasets import DatasetError, load_dataset

RATE = audio.SAMPLE_RATE


def test_tones_are_deterministic_balanced_int16_clips():
    a = load_dataset("tones:train_per_class=2,test_per_class=1", "train", image_size=16)
    b = load_dataset("tones:train_per_class=2,test_per_class=1", "train", image_size=16)
    test = load_dataset("tones:train_per_class=2,test_per_class=1", "test", image_size=16)
    assert a.input_key == "audio" and a.inputs.dtype == np.int16
    assert a.inputs.shape == (20, audio.SAMPLES) and test.inputs.shape == (10, audio.SAMPLES)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert np.bincount(a.labels).tolist() == [2] * 10 and a.class_names == audio.CLASS_NAMES
    assert not np.array_equal(a.inputs[:10], test.inputs)  # the splits draw differently
    peaks = np.abs(a.inputs.astype(np.int32)).max(axis=1)
    assert np.all(peaks < 32767) and np.all(peaks > 1000)  # nothing clips, nothing is silent
    with pytest.raises(DatasetError, match="Bad tones option"):
        load_dataset("tones:train=3", "train", image_size=16)


def test_glides_move_their_pitch_the_labelled_way():
    """The rising glide's spectral centroid climbs over its sounding part, the
    falling one's drops: the labels say what the waveforms do."""
    rng = np.random.default_rng(3)

    def centroid_trend(label):
        clip = audio.synthesise(label, rng)
        frames = clip[: len(clip) // 800 * 800].reshape(-1, 800)
        power = np.abs(np.fft.rfft(frames * np.hanning(800), axis=1)) ** 2
        loud = power.sum(axis=1) > 0.2 * power.sum(axis=1).max()
        centroid = (power @ np.fft.rfftfreq(800, 1 / RATE)) / power.sum(axis=1)
        return np.polyfit(np.flatnonzero(loud), centroid[loud], 1)[0]

    up, down = audio.CLASS_NAMES.index("glide_up"), audio.CLASS_NAMES.index("glide_down")
    assert all(centroid_trend(up) > 0 for _ in range(4))
    assert all(centroid_trend(down) < 0 for _ in range(4))


def _folder(root):
    """Two classes; 16 kHz mono, 8 kHz stereo (resampled, averaged), 8-bit, too
    long and too short files; a text file that is ignored."""
    t = lambda seconds, rate: np.arange(int(seconds * rate)) / rate
    tone = lambda f, seconds, rate: 0.5 * np.sin(2 * np.pi * f * t(seconds, rate)) * 32767
    for split in ("train", "test"):
        for c, f in (("high", 1000.0), ("low", 200.0)):
            (root / split / c).mkdir(parents=True)
            audio.write_wav(str(root / split / c / "a.wav"), tone(f, 1.0, RATE))
            # Stereo with a silent right channel: the mono mix is half the left.
            stereo = np.stack([tone(f, 0.5, 8000), np.zeros(4000)], axis=1)
            audio.write_wav(str(root / split / c / "b.wav"), stereo, sample_rate=8000)
            # 2.5 s, sounding only in its middle second.
            middle = (t(2.5, RATE) >= 0.75) & (t(2.5, RATE) < 1.75)
            audio.write_wav(str(root / split / c / "c.WAV"), tone(f, 2.5, RATE) * middle)
            (root / split / c / "notes.txt").write_text("not audio")
    with wave.open(str(root / "train" / "low" / "d.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(RATE)
        w.writeframes((128 + 64 * np.sin(2 * np.pi * 200 * t(1, RATE))).astype(np.uint8).tobytes())
    return root


def test_a_wav_folder_is_read_resampled_and_cut_to_one_second(tmp_path):
    root = _folder(tmp_path / "sounds")
    train = load_dataset(f"audiofolder:{root}", "train", image_size=16)
    assert train.class_names == ("high", "low") and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert train.inputs.shape == (7, RATE) and train.inputs.dtype == np.int16
    a, b, c, d = train.inputs[3:]  # the low (200 Hz) tones
    expected = np.round(0.5 * np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE) * 32767)
    np.testing.assert_allclose(a, expected, atol=1)
    # 8 kHz stereo, half a second: mixed to mono, resampled to 16 kHz, then silence.
    np.testing.assert_allclose(b[: RATE // 2 - 2], 0.5 * expected[: RATE // 2 - 2], atol=300)
    assert not np.any(b[RATE // 2 :])
    # 2.5 s: the middle second (starting 0.75 s in, a whole number of 200 Hz periods).
    np.testing.assert_allclose(c, expected, atol=1)
    # 8-bit unsigned (128 + 64 sin): centred on zero, scaled to 16 bits.
    np.testing.assert_allclose(d, expected, atol=300)


def test_prepare_writes_the_wav_folder_and_records_read_back_the_same(tmp_path):
    root = _folder(tmp_path / "sounds")
    info = prepare.prepare(f"audiofolder:{root}", str(tmp_path / "records"), verify=True)
    assert info["num_classes"] == 2 and info["splits"]["train"]["num_examples"] == 7
    for split in ("train", "test"):
        folder = load_dataset(f"audiofolder:{root}", split, image_size=16)
        records = load_dataset(f"audiorecords:{tmp_path / 'records'}", split, image_size=16)
        np.testing.assert_array_equal(records.inputs, folder.inputs)
        np.testing.assert_array_equal(records.labels, folder.labels)
        assert records.class_names == folder.class_names and records.input_key == "audio"


def test_bad_audio_folders_are_one_line_errors_naming_the_problem(tmp_path):
    root = _folder(tmp_path / "sounds")
    (root / "train" / "high" / "broken.wav").write_bytes(b"RIFF....not a wave file")
    with pytest.raises(DatasetError, match=r"broken\.wav as a WAV file.*ffmpeg") as error:
        load_dataset(f"audiofolder:{root}", "train", image_size=16)
    assert "\n" not in str(error.value)
    with pytest.raises(DatasetError, match=r"broken\.wav as a WAV file"):
        prepare.prepare(f"audiofolder:{root}", str(tmp_path / "out"), verify=True)
    with pytest.raises(DatasetError, match="no train/ folder"):
        load_dataset(f"audiofolder:{tmp_path}", "train", image_size=16)


@pytest.mark.parametrize("kind", ["audiofolder", "audiorecords"])
def test_a_bucket_path_is_refused_before_anything_runs(tmp_path, kind):
    """The WAV readers open local files only: a URL is one line up front."""
    from ssl_jax import config_lib, experiment
    from ssl_jax.workdir import WorkdirError

    config = config_lib.get_config("audio", f"runlocal,dataset={kind}:memory://bucket/sounds")
    with pytest.raises(WorkdirError, match=f"{kind} data is read from local files only"):
        experiment.check_paths(config, str(tmp_path / "run"))


@pytest.mark.parametrize("width", [2, 3])
def test_a_truncated_wav_is_read_to_its_last_whole_frame(tmp_path, width):
    samples = (np.arange(800) % 200 - 100).astype(np.int32) << (8 * (width - 2))
    frames = np.stack([samples, samples], 1).astype("<i4").view(np.uint8).reshape(-1, 4)
    frames = frames[:, 4 - width :]  # little-endian: the low bytes go; 2 rows a frame

    def wav(frame_bytes):
        path = tmp_path / "clip.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2), w.setsampwidth(width), w.setframerate(RATE)
            w.writeframes(frame_bytes)
        return path.read_bytes()

    cut = wav(frames.tobytes())[:-1]  # the last frame loses a byte
    whole_frames = audio.read_wav(wav(frames[: 2 * 799].tobytes()), "clip.wav")
    np.testing.assert_array_equal(audio.read_wav(cut, "cut.wav"), whole_frames)
