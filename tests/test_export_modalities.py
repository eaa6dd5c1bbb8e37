"""Export and load for every modality: an encoder of masked words takes token
ids, one of missing frames takes clips, one of masked spectrograms takes
waveforms, each gives the evaluators' features
bit for bit from its workdir and from its exported file, says in the file's
header what it takes, and refuses any other input in one line."""

import json

import numpy as np
import pytest
from safetensors import safe_open

import ssl_jax
from ssl_jax import config_lib, inference, train
from ssl_jax.data import audio, pipeline, text

N = 40  # training data; features are of the first 32 (12 does not divide them)


def _inputs(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "image":
        return rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    if kind == "tokens":  # bytes, then [PAD] after a random length
        tokens = rng.integers(0, text.NUM_BYTES, (N, 16)).astype(np.int32)
        lengths = rng.integers(4, 17, N)
        return np.where(np.arange(16) < lengths[:, None], tokens, text.PAD_ID).astype(np.int32)
    if kind == "audio":  # one second at 16 kHz, quieter than full scale
        return rng.integers(-3000, 3000, (N, audio.SAMPLES), dtype=np.int16)
    return rng.integers(0, 256, (N, 4, 16, 16, 3), dtype=np.uint8)  # video


# config, its input key, the header's description of that input
CASES = {
    "rotation": ("image", "uint8", ["N", "H", "W", 3]),
    "mlm": ("tokens", "int32", ["N", "T"]),
    "frames": ("video", "uint8", ["N", "T", "H", "W", 3]),
    "audio": ("audio", "int16", ["N", audio.SAMPLES]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (workdir, inputs, the trained model's features by `make_features_fn`)."""
    root, out = tmp_path_factory.mktemp("runs"), {}
    for name, (key, _, _) in CASES.items():
        config = config_lib.get_config(name, "runlocal")
        config.update(train_steps=2, log_every=1, checkpoint_every=2, eval_every=0)
        inputs = _inputs(key, np.random.default_rng(0))
        labels = np.zeros(N, np.int32)
        trained, _ = train.train(config, str(root / name), {key: inputs, "label": labels})
        features = inference.make_features_fn(trained, pipeline.make_mesh())(inputs[:32])
        out[name] = (root / name, inputs[:32], features)
    return out


@pytest.mark.parametrize("name", ["mlm", "frames", "audio"])
def test_an_encoder_round_trips_on_its_own_input(runs, tmp_path, name):
    workdir, inputs, expected = runs[name]
    key, dtype, axes = CASES[name]
    encoder = ssl_jax.load_encoder(str(workdir))
    assert encoder.input.key == key
    np.testing.assert_array_equal(encoder(inputs, batch_size=32), expected)
    # Other batch shapes may round differently (XLA tiles a matmul by its
    # shape), never by more than that.
    np.testing.assert_allclose(encoder(inputs, batch_size=12), expected, rtol=1e-4, atol=1e-5)

    path = tmp_path / f"{name}.safetensors"
    ssl_jax.export_encoder(str(workdir), str(path))
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["ssl_jax"])
    assert header["input"]["key"] == key
    assert header["input"]["dtype"] == dtype and header["input"]["axes"] == axes
    assert header["task"] == config_lib.get_config(name, "runlocal").task and header["step"] == 2
    exported = ssl_jax.load_encoder(str(path))
    assert exported.input == encoder.input
    np.testing.assert_array_equal(exported(inputs, batch_size=32), expected)


def test_token_ids_of_any_integer_dtype_are_taken(runs):
    workdir, inputs, expected = runs["mlm"]
    encoder = ssl_jax.load_encoder(str(workdir))
    np.testing.assert_array_equal(encoder(inputs.astype(np.int64)), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_another_kind_of_input_is_refused_in_one_line(runs, tmp_path, name):
    key = CASES[name][0]
    path = tmp_path / f"{name}.safetensors"
    ssl_jax.export_encoder(str(runs[name][0]), str(path))
    encoder = ssl_jax.load_encoder(str(path))
    for other in ("image", "tokens", "video", "audio"):
        # Known gap: a token encoder takes any integers that fit int32 [N, T],
        # so int16 waveforms pass its check (and fail later, at max_length);
        # FeatureInput has no value range to refuse them with.
        if other == key or (key, other) == ("tokens", "audio"):
            continue
        wrong = _inputs(other, np.random.default_rng(1))[:8]
        with pytest.raises(ValueError, match=f"^This encoder takes {key}: ") as refused:
            encoder(wrong)
        assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=f"takes {key}: .*; got float32"):
        encoder(runs[name][1][:8].astype(np.float32))  # right shape, wrong dtype


def test_integer_images_are_taken_only_if_they_fit_uint8(runs):
    """A cast must never wrap: 16-bit pixels are refused, not folded into 0-255."""
    workdir, images, expected = runs["rotation"]
    encoder = ssl_jax.load_encoder(str(workdir))
    np.testing.assert_array_equal(encoder(images.astype(np.int64)), expected)
    with pytest.raises(ValueError, match="takes image: uint8 .*; got uint16"):
        encoder(images.astype(np.uint16) * 257)
