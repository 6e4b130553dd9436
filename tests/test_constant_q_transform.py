"""ConstantQTransform: parity with librosa.cqt and the layer contract."""

import functools

import keras
import layer_harness as checks
import librosa
import numpy as np
import pytest

from keras_dae.layers.constant_q_transform import ConstantQTransform, soxr_decimation_filter

# librosa warns when a short clip is shorter than an octave's n_fft; it pads as usual.
pytestmark = pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")

SR = 16000
AMIN = 1e-5
# name -> (config, max dB error allowed in the bins within 60 dB of the peak). The configs
# cover librosa's code paths: plain halving per octave, 24 and 36 bins per octave, early
# downsampling by 2 and by 4 before the first octave, a hop that turns odd (librosa then
# stops halving), and non-default window, norm, filter_scale and scale.
CONFIGS = {
    "default": (dict(hop_length=256), 0.02),
    "24bpo": (dict(hop_length=256, bins_per_octave=24, n_bins=168), 0.02),
    "36bpo-early2": (dict(hop_length=128, bins_per_octave=36, n_bins=180), 0.02),
    "odd-hop": (dict(hop_length=160, fmin=55.0, n_bins=72), 0.02),
    "hamming-norm2": (
        dict(hop_length=512, fmin=55.0, n_bins=60, filter_scale=0.8, norm=2, window="hamming"),
        0.02,
    ),
    # Early downsampling by 4: soxr's multi-stage start-up differs in the first frame or two
    # (see the layer's docstring); everywhere else the agreement is as tight as above.
    "early4-unscaled": (dict(hop_length=256, n_bins=48, scale=False), 0.3),
}
SIGNAL_NAMES = ["tone", "chirp", "noise", "speech", "shutter"]


@functools.cache
def make_layer(name, **overrides):
    return ConstantQTransform(sample_rate=SR, **{**CONFIGS[name][0], **overrides})


def librosa_cqt(y, config):
    """`np.abs(librosa.cqt(...))` as `(frames, n_bins)`, the parity reference."""
    args = {k: v for k, v in config.items() if k not in ("to_db", "ref", "amin", "top_db")}
    return np.abs(librosa.cqt(y, sr=SR, pad_mode="constant", **args)).T


def to_db(magnitude):
    return 20.0 * np.log10(np.maximum(magnitude, AMIN))


@functools.cache
def _jitted(layer):
    import jax

    return jax.jit(layer.__call__)


def run(layer, y):
    """The layer on one clip. On JAX through `jax.jit`: compiling the whole graph once per
    length is several times faster than eager op-by-op compilation (eager vs compiled
    agreement is checked in `test_layer_contract`)."""
    if checks.BACKEND == "jax":
        return np.asarray(_jitted(layer)(y[None]))[0]
    return checks.to_numpy(layer(y[None]))[0]


# Every signal on the default config and one other; the remaining configs on two signals.
PARITY_CASES = [(name, config) for config in ("default", "24bpo") for name in SIGNAL_NAMES] + [
    (name, config)
    for config in ("36bpo-early2", "odd-hop", "hamming-norm2", "early4-unscaled")
    for name in ("chirp", "speech")
]


@pytest.mark.one_backend
@pytest.mark.parametrize("name, config_name", PARITY_CASES)
def test_magnitude_matches_librosa(signals, name, config_name):
    """Tolerance: 99% of bins within 60 dB of the peak agree with librosa to 1 dB (the guide);
    in fact every such bin agrees to the config's max error (0.02 dB for most)."""
    config, max_db = CONFIGS[config_name]
    y = signals[name]
    ours = run(make_layer(config_name), y)
    ref = librosa_cqt(y, config)
    assert ours.shape == ref.shape
    assert checks.db_parity_fraction(to_db(ours), to_db(ref)) >= 0.99
    loud = to_db(ref) >= to_db(ref).max() - 60
    assert np.abs(to_db(ours) - to_db(ref))[loud].max() < max_db


@pytest.mark.parametrize(
    "name, config_name",
    [(name, "default") for name in SIGNAL_NAMES]
    + [("tone", "36bpo-early2"), ("shutter", "odd-hop")],
)
@pytest.mark.one_backend
def test_db_matches_librosa_amplitude_to_db(signals, name, config_name):
    """to_db=True is librosa.amplitude_to_db(|C|, ref=1, amin=1e-5, top_db=80)."""
    config, max_db = CONFIGS[config_name]
    y = signals[name]
    ours = run(make_layer(config_name, to_db=True), y)
    ref = librosa.amplitude_to_db(librosa_cqt(y, config), ref=1.0, amin=AMIN, top_db=80.0)
    assert checks.db_parity_fraction(ours, ref) >= 0.99
    loud = ref >= ref.max() - 60
    assert np.abs(ours - ref)[loud].max() < max_db
    # Down to the floor at peak - 80 dB, float32 rounding reaches a few hundredths of a dB.
    assert np.abs(ours - ref).max() < 0.1


def test_db_ref_and_top_db_none(signals):
    y = signals["speech"]
    config = CONFIGS["default"][0]
    ours = run(make_layer("default", to_db=True, ref=0.5, top_db=None), y)
    ref = librosa.amplitude_to_db(librosa_cqt(y, config), ref=0.5, amin=AMIN, top_db=None)
    assert ours.min() < ours.max() - 80  # no floor
    loud = ref >= ref.max() - 60  # below that, float32 rounding shows (0.1 dB at -90 dB)
    np.testing.assert_allclose(ours[loud], ref[loud], atol=0.02)


def test_frequencies_match_librosa():
    layer = make_layer("24bpo")
    expected = librosa.cqt_frequencies(n_bins=168, fmin=layer.fmin, bins_per_octave=24)
    np.testing.assert_allclose(layer.cqt_frequencies(), expected, rtol=1e-12)


def test_decimation_filter_reproduces_librosa_resample(signals):
    """The in-graph halving is librosa.resample(orig_sr=2, target_sr=1) to float32 rounding."""
    taps = soxr_decimation_filter(2)
    assert len(taps) % 2 == 1 and 300 < len(taps) < 500
    y = signals["speech"].astype(np.float64)
    half = len(taps) // 2
    padded = np.pad(y, (half, half))
    ours = np.convolve(padded, taps[::-1], mode="valid")[::2]
    ref = librosa.resample(y, orig_sr=2, target_sr=1, res_type="soxr_hq")
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("config_name", ["default", "early4-unscaled"])
def test_silence_is_zero_and_db_floor(signals, config_name):
    y = signals["silence"]
    np.testing.assert_array_equal(run(make_layer(config_name), y), 0.0)
    np.testing.assert_allclose(run(make_layer(config_name, to_db=True), y), -100.0)


def test_top_db_is_per_example(signals):
    """A quiet clip's dB features do not change when a loud clip shares its batch."""
    layer = make_layer("default", to_db=True)
    quiet = 0.001 * signals["speech"][:16000]
    loud = 10 * signals["noise"]
    alone = run(layer, quiet)
    together = checks.to_numpy(layer(np.stack([quiet, loud])))[0]
    np.testing.assert_allclose(together, alone, atol=1e-3)
    ref = librosa.amplitude_to_db(librosa_cqt(quiet, CONFIGS["default"][0]), amin=AMIN)
    np.testing.assert_allclose(alone, ref, atol=0.02)


@pytest.mark.parametrize("num_samples", [1, 100, 255, 256, 4097, 16001])
def test_any_length(num_samples, signals):
    y = np.resize(signals["noise"], num_samples)
    layer = make_layer("default")
    out = checks.check_output_shape(layer, y[None])
    assert out.shape == (1, 1 + num_samples // 256, 84)
    ref = librosa_cqt(y, CONFIGS["default"][0])
    assert out[0].shape == ref.shape
    loud = to_db(ref) >= to_db(ref).max() - 60
    assert np.abs(to_db(out[0]) - to_db(ref))[loud].max() < 0.05


@pytest.mark.parametrize("num_samples", [255, 1021, 16001])
def test_frame_count_with_early_downsampling(num_samples, signals):
    """With early downsampling (by 4 here) librosa's frame count is 1 + ceil(n / 4) // 64,
    not 1 + n // 256 (2 frames for 255 samples); the layer follows it."""
    y = np.resize(signals["noise"], num_samples)
    layer = make_layer("early4-unscaled")
    ref = librosa_cqt(y, CONFIGS["early4-unscaled"][0])
    out = checks.check_output_shape(layer, y[None])
    assert out.shape[1] == ref.shape[0] == layer.num_frames(num_samples)
    assert checks.db_parity_fraction(to_db(out[0]), to_db(ref)) >= 0.99


def test_shorter_than_librosa_minimum_with_early_downsampling(signals):
    """librosa refuses clips shorter than the early downsampling factor; the layer still
    returns one finite frame."""
    out = checks.check_output_shape(make_layer("early4-unscaled"), signals["noise"][None, :3])
    assert out.shape == (1, 1, 48)


@pytest.mark.skipif(checks.BACKEND != "tensorflow", reason="TF graph with unknown length")
def test_dynamic_length_in_tf_graph(signals):
    import tensorflow as tf

    for config_name in ("default", "early4-unscaled", "odd-hop"):
        layer = make_layer(config_name)
        graph = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.float32)])
        for n in (3000, 16001):
            y = signals["speech"][None, :n]
            np.testing.assert_allclose(graph(y).numpy(), run(layer, y[0])[None], atol=1e-5)


def test_layer_contract(signals, tmp_path):
    """Magnitude output; a 4-octave config with early downsampling by 4, which keeps PyTorch's
    compilation (the slowest part of this file) short while covering every code path."""
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.run_layer_test(
        ConstantQTransform(sample_rate=SR, **CONFIGS["early4-unscaled"][0]), y, tmp_path
    )


def test_layer_contract_db(signals, tmp_path):
    """dB output. top_db=60: check_compiled compares with rtol=1e-4, i.e. 0.008 dB at -80 dB,
    while bins 60-80 dB below the peak carry float32 rounding of that order (TF's eager
    oneDNN convolutions and XLA differ by 0.03 dB there; both are within 0.04 dB of a
    float64 computation)."""
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    layer = ConstantQTransform(
        sample_rate=SR, to_db=True, top_db=60.0, **CONFIGS["36bpo-early2"][0]
    )
    checks.run_layer_test(layer, y, tmp_path, atol=1e-3)


@pytest.mark.parametrize("to_db, atol", [(False, 1e-5), (True, 1e-2)])
def test_mixed_precision(signals, to_db, atol):
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.check_mixed_precision(
        lambda: ConstantQTransform(sample_rate=SR, to_db=to_db), y, atol=atol
    )


def test_config_holds_constructor_arguments():
    config = ConstantQTransform(sample_rate=22050, n_bins=36, window=["kaiser", 8.0]).get_config()
    assert config["sample_rate"] == 22050 and config["n_bins"] == 36
    assert config["window"] == ("kaiser", 8.0)
    assert not ConstantQTransform.from_config(config).get_weights()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hop_length=0), "hop_length"),
        (dict(n_bins=0), "n_bins"),
        (dict(bins_per_octave=0), "bins_per_octave"),
        (dict(fmin=0.0), "fmin"),
        (dict(filter_scale=-1.0), "filter_scale"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(norm=-2), "norm"),
        (dict(window="no-such-window"), "window"),
        (dict(amin=0.0), "amin"),
        (dict(ref=0.0), "ref"),
        (dict(top_db=-1.0), "top_db"),
        (dict(sample_rate=-1), "sample_rate"),
        # The 96th bin from C1 is B8 (7.9 kHz): its bandwidth crosses the 8 kHz Nyquist.
        (dict(n_bins=96), "Nyquist.*n_bins"),
        (dict(n_bins=84, fmin=65.4), "Nyquist"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConstantQTransform(**kwargs)


def test_nyquist_check_agrees_with_librosa():
    """The config librosa accepts closest to Nyquist is accepted, the next bin up is not."""
    y = np.zeros(4096, np.float32)
    librosa.cqt(y, sr=SR, n_bins=95, hop_length=256)
    ConstantQTransform(sample_rate=SR, n_bins=95)
    with pytest.raises(librosa.ParameterError):
        librosa.cqt(y, sr=SR, n_bins=96, hop_length=256)
    with pytest.raises(ValueError, match="Nyquist"):
        ConstantQTransform(sample_rate=SR, n_bins=96)


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="batch, samples"):
        ConstantQTransform().compute_output_shape((2, 16000, 1))


def test_is_registered_for_safe_loading():
    assert keras.saving.get_registered_object("keras_dae>ConstantQTransform") is ConstantQTransform
