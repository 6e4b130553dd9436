"""Property tests (hypothesis): every front-end layer, the chunker and the streaming reader,
for arbitrary lengths (one sample up, shorter than a frame included), amplitudes (zero,
subnormal, tiny, full scale, huge) and sample rates: outputs are finite and have the
documented shapes, and nothing raises.

Amplitudes go up to 1e6 (120 dB above full scale): decoded audio is clipped to [-1, 1], so
this is far beyond what keras-dae itself feeds the layers; squared magnitudes of larger
values overflow float32, which the layers do not guard against.

Layers are built once per module (one per sample rate) and examples are few, so the module
takes about a minute per backend on two cores.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_dae import layers
from keras_dae.audio import iter_audio_blocks, load_audio
from keras_dae.data.chunking import (
    chunk_blocks,
    chunk_count,
    chunk_sample_starts,
    chunk_waveform,
)
from keras_dae.validation import InputError

# PitchTracker at 44.1 kHz warns (as librosa does) that its default frame holds less than
# two periods of fmin: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:With fmin=:UserWarning")

RATES = (8000, 16000, 22050, 44100)
AMPLITUDES = (0.0, 1e-42, 1e-30, 1e-6, 0.5, 1.0, 1e3, 1e6)
KINDS = ("noise", "sine", "square", "impulse", "constant", "alternating")
# Random examples on top of the explicit edge cases (`_edge_examples`); fewer under JAX,
# where every new input shape costs a compilation.
LAYER_SETTINGS = settings(max_examples=6 if keras.backend.backend() == "jax" else 12,
                          deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])


def make_signal(kind: str, n: int, amplitude: float, seed: int, sample_rate: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == "noise":
        y = rng.uniform(-1, 1, n)
    elif kind == "sine":
        y = np.sin(2 * np.pi * rng.uniform(30, sample_rate / 2.2) * t / sample_rate)
    elif kind == "square":
        y = np.sign(np.sin(2 * np.pi * rng.uniform(30, 2000) * t / sample_rate) + 1e-9)
    elif kind == "impulse":
        y = np.zeros(n)
        y[rng.integers(n)] = 1.0
    elif kind == "constant":
        y = np.ones(n)
    else:
        y = (-1.0) ** t
    return (amplitude * y).astype(np.float32)


signals = st.tuples(
    st.sampled_from(KINDS),
    st.one_of(st.integers(1, 64), st.integers(65, 3000)),  # shorter than a frame, and longer
    st.sampled_from(AMPLITUDES),
    st.integers(0, 2**16),
)

# One instance per (layer, sample rate), built on first use: construction (filterbanks,
# CQT kernels) is the expensive part.
_BUILT: dict = {}

FACTORIES = {
    "LogMelSpectrogram": lambda sr: layers.LogMelSpectrogram(sample_rate=sr, n_mels=32),
    "MFCC": lambda sr: layers.MFCC(sample_rate=sr, n_mels=32, n_mfcc=13),
    "SpectralDescriptors": lambda sr: layers.SpectralDescriptors(sample_rate=sr, n_bands=4),
    # 48 bins (4 octaves from C1) fit below Nyquist at every rate tested.
    "ConstantQTransform": lambda sr: layers.ConstantQTransform(sample_rate=sr, n_bins=48,
                                                               to_db=True),
    "PitchTracker": lambda sr: layers.PitchTracker(sample_rate=sr),
    "LearnedFilterbank": lambda sr: layers.LearnedFilterbank(sample_rate=sr, n_filters=16),
    "Neuralogram": lambda sr: layers.Neuralogram(sample_rate=sr),
}
# Layers without a frequency axis of their own are tested at 16 kHz only.
LAYER_RATES = {name: RATES for name in FACTORIES}
LAYER_RATES["Neuralogram"] = (16000,)


def layer_for(name: str, sample_rate: int):
    key = (name, sample_rate)
    if key not in _BUILT:
        _BUILT[key] = FACTORIES[name](sample_rate)
    return _BUILT[key]


def run_layer(layer, batch: np.ndarray) -> np.ndarray:
    """The layer's output as numpy. Under JAX through `jax.jit` (one compilation per input
    shape instead of one per op: 3-5x faster for these one-off shapes)."""
    if keras.backend.backend() == "jax":
        import jax

        key = ("jit", id(layer))
        if key not in _BUILT:
            if not layer.built:  # weights are created outside the trace
                layer.build((None, None))
            _BUILT[key] = jax.jit(lambda x: layer(x))
        return np.asarray(_BUILT[key](batch))
    return keras.ops.convert_to_numpy(layer(batch))


def documented_frames(layer, n: int) -> int:
    """Frames as the docstrings state them: centred frames, `1 + n // hop_length`; for the
    CQT, `1 + ceil(n / 2**d) // (hop_length / 2**d)`, `d` its early halvings (0 unless the
    bins lie far below Nyquist)."""
    if isinstance(layer, layers.ConstantQTransform):
        factor = 2**layer._early_downsample
        return 1 + (-(-n // factor)) // (layer.hop_length // factor)
    return 1 + n // layer.hop_length


def _edge_examples(n_rates: int):
    """Explicit examples on top of the random ones (which are derandomized, so the same for
    every layer): every amplitude, every kind, one sample, one sample short of a hop and of
    a frame, and a long input, spread over the sample rates."""
    cases = []
    lengths = (1, 2, 159, 255, 511, 1023, 3000)
    for i, amplitude in enumerate(AMPLITUDES):
        kind = KINDS[i % len(KINDS)]
        cases.append(((kind, lengths[i % len(lengths)], amplitude, i), i % n_rates))
    cases.append((("noise", 3000, 1e6, 7), n_rates - 1))
    cases.append((("impulse", 1, 1e6, 8), 0))

    def decorate(test):
        for signal, rate_index in cases:
            test = example(signal=signal, rate_index=rate_index)(test)
        return test

    return decorate


@pytest.mark.one_backend
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_front_end_outputs_are_finite_with_documented_shapes(name):
    rates = LAYER_RATES[name]

    @LAYER_SETTINGS
    @given(signal=signals, rate_index=st.integers(0, len(rates) - 1))
    @_edge_examples(len(rates))
    def check(signal, rate_index):
        kind, n, amplitude, seed = signal
        sample_rate = rates[rate_index]
        layer = layer_for(name, sample_rate)
        x = make_signal(kind, n, amplitude, seed, sample_rate)
        batch = np.stack([x, x[::-1] * np.float32(0.5)])
        out = run_layer(layer, batch)
        expected = (2, documented_frames(layer, n), layer.num_features)
        assert out.shape == expected, (out.shape, expected)
        assert tuple(layer.compute_output_shape((2, n))) == expected
        assert out.dtype == np.float32
        bad = ~np.isfinite(out)
        assert not bad.any(), f"{bad.sum()} non-finite values ({kind}, n={n}, x{amplitude})"

    check()


SHORTEST = {  # a front end as configured, and the fewest samples that make it a frame
    "LogMelSpectrogram(center=False)": (lambda: layers.LogMelSpectrogram(center=False), 512),
    "LogMelSpectrogram(pad_mode='reflect')": (
        lambda: layers.LogMelSpectrogram(pad_mode="reflect"), 257),
    "MFCC(center=False)": (lambda: layers.MFCC(center=False), 512),
    "SpectralDescriptors(center=False)": (lambda: layers.SpectralDescriptors(center=False), 512),
    "PitchTracker(center=False)": (lambda: layers.PitchTracker(center=False), 1024),
    "PitchTracker(pad_mode='reflect')": (lambda: layers.PitchTracker(pad_mode="reflect"), 513),
    "LearnedFilterbank(center=False)": (lambda: layers.LearnedFilterbank(center=False), 400),
    "LearnedFilterbank(center=False, pooling=4)": (
        lambda: layers.LearnedFilterbank(center=False, pooling=4), 400),
    "Neuralogram(center=False)": (lambda: layers.Neuralogram(center=False), 400),
    "LogMelSpectrogram()": (lambda: layers.LogMelSpectrogram(), 1),
    "ConstantQTransform()": (lambda: layers.ConstantQTransform(), 1),
}


@pytest.mark.parametrize("name", sorted(SHORTEST))
def test_a_waveform_too_short_for_a_frame_is_refused_by_name(name):
    """One sample short of a frame: a clear refusal naming the layer and the minimum, from the
    layer and from its shape inference, where the FFT or concatenation used to fail on its
    own terms (or return no frame); the minimum itself gives finite frames."""
    make, shortest = SHORTEST[name]
    layer = make()
    assert layer.minimum_samples == shortest
    message = f"{type(layer).__name__} '{layer.name}' needs at least {shortest} samples"
    with pytest.raises(InputError, match=message):
        layer(np.zeros((2, shortest - 1), np.float32))
    with pytest.raises(InputError, match=message):
        layer.compute_output_shape((2, shortest - 1))
    x = np.random.default_rng(0).standard_normal((2, shortest)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (2, layer.num_frames(shortest), layer.num_features)
    assert out.shape[1] >= 1 and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["LogMelSpectrogram", "PitchTracker", "LearnedFilterbank"])
def test_silence_and_subnormal_input_give_the_floor(name):
    """Zero and subnormal input: finite, and the same output (the floor of each layer)."""
    layer = layer_for(name, 16000)
    out = run_layer(layer, np.stack([np.zeros(500, np.float32),
                                     np.full(500, 1e-42, np.float32)]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The chunker

chunk_settings = settings(max_examples=150, deadline=None, derandomize=True)


@chunk_settings
@given(
    n=st.integers(1, 40000),
    sample_rate=st.sampled_from((50, 1000, 8000, 16000, 22050, 44100)),
    chunk_seconds=st.sampled_from((0.01, 0.1, 0.5, 1.0, 1.37)),
    hop_ratio=st.sampled_from((0.1, 0.25, 0.5, 1.0, 1.5)),
    amplitude=st.sampled_from(AMPLITUDES + (3e38,)),
    short=st.sampled_from(("tile", "pad")),
)
def test_chunks_cover_the_clip_with_documented_shapes(n, sample_rate, chunk_seconds, hop_ratio,
                                                     amplitude, short):
    hop_seconds = chunk_seconds * hop_ratio
    chunk = int(round(chunk_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    if chunk < 1 or hop < 1:
        with pytest.raises(ValueError, match="at least one sample"):
            chunk_count(n, sample_rate, chunk_seconds, hop_seconds)
        return
    x = make_signal("noise", n, amplitude, n, max(sample_rate, 100))
    chunks = chunk_waveform(x, sample_rate, chunk_seconds, hop_seconds, short)
    starts = chunk_sample_starts(n, sample_rate, chunk_seconds, hop_seconds)
    count = chunk_count(n, sample_rate, chunk_seconds, hop_seconds)
    assert chunks.shape == (count, chunk) == (starts.size, chunk)
    assert chunks.dtype == np.float32 and np.isfinite(chunks).all()
    if n <= chunk:
        assert count == 1
        assert np.array_equal(chunks[0, :n], x)
        return
    assert count == 1 + math.ceil((n - chunk) / hop)
    assert starts[0] == 0 and starts[-1] == n - chunk and (np.diff(starts) > 0).all()
    assert (np.diff(starts) <= hop).all()  # every sample covered
    for i in sorted({0, count // 2, count - 1}):
        assert np.array_equal(chunks[i], x[starts[i] : starts[i] + chunk])
    streamed = np.concatenate(list(chunk_blocks(np.array_split(x, 3), sample_rate,
                                                chunk_seconds, hop_seconds, short,
                                                max_chunks=7)))
    assert np.array_equal(streamed, chunks)


# ---------------------------------------------------------------------------------------------
# The streaming reader


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30000),
    rate=st.sampled_from((8000, 11025, 16000, 22050, 44100, 48000, 96000)),
    channels=st.integers(1, 6),
    subtype=st.sampled_from(("PCM_U8", "PCM_16", "PCM_24", "FLOAT")),
    block_seconds=st.sampled_from((0.001, 0.05, 0.5, 10.0)),
)
def test_streamed_blocks_equal_the_whole_file(tmp_path_factory, n, rate, channels, subtype,
                                              block_seconds):
    path = tmp_path_factory.mktemp("stream") / "x.wav"
    audio = np.random.default_rng(n).uniform(-1, 1, (n, channels)).astype(np.float32)
    soundfile.write(path, audio, rate, subtype=subtype)
    whole = load_audio(path, 16000)
    assert whole.size == math.ceil(n * 16000 / rate) and np.isfinite(whole).all()
    assert np.abs(whole).max() <= 1.0
    blocks = list(iter_audio_blocks(path, 16000, block_seconds))
    size = max(1, int(round(block_seconds * 16000)))
    assert all(b.size == size for b in blocks[:-1]) and 0 < blocks[-1].size <= size
    assert np.array_equal(np.concatenate(blocks), whole)
