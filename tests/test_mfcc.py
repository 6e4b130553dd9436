"""MFCC: parity with librosa.feature.mfcc and the layer contract."""

import layer_harness as checks
import librosa
import numpy as np
import pytest

from keras_dae.layers.mfcc import MFCC

SR = 16000
STFT = dict(n_fft=512, hop_length=160)
CONFIGS = {
    "default": dict(),
    "40mel-13": dict(n_mels=40, n_mfcc=13),
    "lifter22": dict(lifter=22.0),
    "40mel-13-lifter22": dict(n_mels=40, n_mfcc=13, lifter=22.0),
    "dct3": dict(dct_type=3),
    "dct1-400-band": dict(
        dct_type=1, n_fft=400, win_length=400, n_mels=40, fmin=50.0, fmax=7600.0, n_mfcc=13
    ),
    "unnormalised": dict(norm=None, mel_norm=None, n_mels=64),
}


def librosa_mfcc(y, config):
    args = dict(STFT)
    args.update({k: v for k, v in config.items() if k != "dft_mode"})
    return librosa.feature.mfcc(y=y, sr=SR, **args).T


def range_relative_error(ours, ref):
    """Per coefficient: max |error| over the clip divided by that coefficient's range there."""
    span = ref.max(axis=0) - ref.min(axis=0)
    assert np.all(span > 0)
    return np.abs(ours - ref).max(axis=0) / span


@pytest.mark.one_backend
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("name", ["tone", "chirp", "noise", "speech", "shutter"])
def test_matches_librosa(signals, name, config):
    """Tolerance: every coefficient within 1% of its range over the clip (librosa's output)."""
    y = signals[name]
    ours = checks.to_numpy(MFCC(sample_rate=SR, **config)(y[None]))[0]
    ref = librosa_mfcc(y, config)
    assert ours.shape == ref.shape
    rel = range_relative_error(ours, ref)
    assert rel.max() <= 0.01
    # In practice the agreement is ~100x tighter than the 1% bar.
    assert rel.max() <= 1e-3


@pytest.mark.parametrize("name", ["chirp", "speech"])
def test_fft_mode_matches_librosa(signals, name):
    y = signals[name]
    config = dict(n_mels=40, n_mfcc=13, lifter=22.0)
    ours = checks.to_numpy(MFCC(sample_rate=SR, dft_mode="fft", **config)(y[None]))[0]
    assert range_relative_error(ours, librosa_mfcc(y, config)).max() <= 0.01


def test_silence_matches_librosa_and_is_finite(signals):
    y = signals["silence"]
    ours = checks.to_numpy(MFCC(sample_rate=SR)(y[None]))[0]
    assert np.all(np.isfinite(ours))
    # All log-mel bins sit at 10*log10(amin) = -100 dB: only c0 is non-zero.
    np.testing.assert_allclose(ours, librosa_mfcc(y, {}), atol=5e-3)
    np.testing.assert_allclose(ours[:, 0], -100.0 * np.sqrt(128), rtol=1e-5)


def test_top_db_is_per_example(signals):
    """A quiet clip's coefficients do not change when a loud clip shares its batch."""
    layer = MFCC(sample_rate=SR, n_mels=40, n_mfcc=13)
    quiet = 0.001 * signals["speech"][:16000]
    loud = 10 * signals["noise"]
    alone = checks.to_numpy(layer(quiet[None]))[0]
    together = checks.to_numpy(layer(np.stack([quiet, loud])))[0]
    np.testing.assert_allclose(together, alone, atol=1e-3)
    ref = librosa_mfcc(quiet, dict(n_mels=40, n_mfcc=13))
    assert range_relative_error(alone, ref).max() <= 0.01


def test_norm_is_the_dct_norm_as_in_librosa(signals):
    """`norm` switches the DCT normalisation, `mel_norm` the filters', as in librosa.feature.mfcc."""
    y = signals["speech"][:16000]
    for config in [dict(norm=None), dict(mel_norm=None), dict(mel_norm=2.0)]:
        ours = checks.to_numpy(MFCC(sample_rate=SR, n_mels=40, **config)(y[None]))[0]
        ref = librosa_mfcc(y, dict(n_mels=40, **config))
        assert range_relative_error(ours, ref).max() <= 0.01, config
    config = MFCC(norm=None, mel_norm=None).get_config()
    assert config["norm"] is None and config["mel_norm"] is None


@pytest.mark.parametrize("num_samples", [1, 100, 511, 16000, 16001])
def test_any_length(num_samples, signals):
    y = np.resize(signals["speech"], num_samples)[None]
    layer = MFCC(sample_rate=SR, n_mels=40, n_mfcc=13)
    out = checks.check_output_shape(layer, y)
    assert out.shape == (1, 1 + num_samples // 160, 13)
    ref = librosa_mfcc(y[0], dict(n_mels=40, n_mfcc=13))
    np.testing.assert_allclose(out[0], ref, atol=0.02)


def test_reflect_padding_matches_librosa(signals):
    y = signals["speech"]
    config = dict(n_mels=40, n_mfcc=13, pad_mode="reflect")
    ours = checks.to_numpy(MFCC(sample_rate=SR, **config)(y[None]))[0]
    assert range_relative_error(ours, librosa_mfcc(y, config)).max() <= 0.01


@pytest.mark.parametrize("config", [dict(), dict(n_mels=40, n_mfcc=13, lifter=22.0)])
def test_layer_contract(signals, tmp_path, config):
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.run_layer_test(MFCC(sample_rate=SR, **config), y, tmp_path, atol=1e-4)


def test_mixed_precision(signals):
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.check_mixed_precision(lambda: MFCC(sample_rate=SR, n_mfcc=13), y, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_mfcc=0), "n_mfcc"),
        (dict(n_mfcc=41, n_mels=40), "n_mfcc"),
        (dict(dct_type=5), "dct_type"),
        (dict(norm="forward"), "norm"),
        (dict(lifter=-1.0), "lifter"),
        (dict(lifter="22"), "lifter"),
        (dict(n_mels=0), "n_mels"),
        (dict(n_fft=256, win_length=512), "win_length"),
        (dict(sample_rate=0), "sample_rate"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MFCC(**kwargs)
