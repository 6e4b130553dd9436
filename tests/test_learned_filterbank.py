"""LearnedFilterbank: Gabor initialisation, trainability, and the layer contract."""

import keras
import layer_harness as checks
import librosa
import numpy as np
import pytest

from keras_dae.layers.learned_filterbank import LearnedFilterbank, gabor_filters

SR = 16000


@pytest.mark.parametrize("initializer, win_length, edges", [
    ("gabor", 400, lambda: librosa.mel_frequencies(42, fmin=60.0, fmax=SR / 2)),
    ("constant_q", 2048, lambda: np.geomspace(60.0, SR / 2, 42)),
])
def test_gabor_init_responds_at_its_centres(initializer, win_length, edges):
    """A sine at each filter's centre frequency (mel- or log-spaced) excites that filter more
    than any other."""
    layer = LearnedFilterbank(sample_rate=SR, n_filters=40, fmin=60.0, win_length=win_length,
                              initializer=initializer)
    centres = edges()[1:-1]
    t = np.arange(SR // 4) / SR
    tones = np.stack([np.sin(2 * np.pi * f * t) for f in centres[::4]]).astype("float32")
    out = checks.to_numpy(layer(tones))  # (n_tones, frames, 40)
    winners = out[:, 5:-5].mean(axis=1).argmax(axis=-1)
    np.testing.assert_array_equal(winners, np.arange(40)[::4])


def _band_db(power):
    """Each band in dB relative to its own peak, floored at -60 dB."""
    level = 10 * np.log10(np.maximum(power, 1e-20))
    return np.maximum(level - level.max(axis=0, keepdims=True), -60.0)


def test_gabor_init_approximates_mel(signals):
    """At initialisation each filter's energy over time tracks the matching mel band.

    Both are taken in dB relative to each band's own peak and floored at -60 dB (the Gabor
    filters have unit-area envelopes, the mel filters Slaney's normalisation, so absolute
    levels differ by a per-band constant). Measured: correlation 0.95 on the speech clip.
    """
    y = signals["speech"]
    layer = LearnedFilterbank(sample_rate=SR, n_filters=64, compression="none")
    ours = checks.to_numpy(layer(y[None]))[0]
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=512, win_length=400, hop_length=160, n_mels=64, fmin=60.0
    ).T

    corr = np.corrcoef(_band_db(ours).ravel(), _band_db(mel).ravel())[0, 1]
    assert corr > 0.9, corr


@pytest.mark.parametrize("pooling, bar", [(1, 0.95), (4, 0.985)])
def test_pooled_energies_track_mel_bands_closer(signals, pooling, bar):
    """The upper 32 of 64 bands against librosa's mel bands, as in
    `test_gabor_init_approximates_mel`: one response per frame samples a wide band's envelope
    at one instant, pooling averages it over the hop. Measured on the speech clip: 0.966
    unpooled, 0.992 with pooling=4."""
    y = signals["speech"]
    layer = LearnedFilterbank(sample_rate=SR, n_filters=64, compression="none", pooling=pooling)
    ours = checks.to_numpy(layer(y[None]))[0]
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=512, win_length=400, hop_length=160, n_mels=64, fmin=60.0
    ).T
    corr = np.corrcoef(_band_db(ours)[:, 32:].ravel(), _band_db(mel)[:, 32:].ravel())[0, 1]
    assert corr > bar, corr


def test_pooling_steadies_the_wide_bands_as_a_mel_band(signals):
    """On white noise a band's log energy varies from frame to frame only by chance. Unpooled,
    a wide band's is one draw of its squared envelope (std near pi / sqrt(6) = 1.28 nats, an
    exponential's log); pooled over the hop it is as steady as librosa's mel band, which
    integrates its STFT window. Measured over the top 16 of 64 bands: 1.20 unpooled, 0.45
    pooled (4), 0.44 for the mel bands."""
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(2 * SR)).astype("float32")

    def top_band_std(log_energy):
        return log_energy[3:-3, -16:].std(axis=0).mean()

    unpooled = top_band_std(checks.to_numpy(LearnedFilterbank(n_filters=64)(noise[None]))[0])
    pooled = top_band_std(checks.to_numpy(
        LearnedFilterbank(n_filters=64, pooling=4)(noise[None]))[0])
    mel = top_band_std(np.log(librosa.feature.melspectrogram(
        y=noise, sr=SR, n_fft=512, win_length=400, hop_length=160, n_mels=64, fmin=60.0).T))
    assert unpooled > 1.0, unpooled
    assert abs(pooled - mel) < 0.1 * mel, (pooled, mel)


def test_pooling_averages_the_responses_under_a_hann_window(signals):
    """Against numpy: responses every hop / k samples of the centred signal, padded by a hop
    more on each side, then each frame the Hann-weighted mean of its 2k + 1 responses."""
    y = signals["speech"][:8000]
    k, hop, win = 4, 160, 400
    layer = LearnedFilterbank(n_filters=16, pooling=k, compression="none")
    ours = checks.to_numpy(layer(y[None]))[0]
    filters = checks.to_numpy(layer.filters())
    x = np.pad(y, win // 2 + hop)
    starts = np.arange(0, len(x) - win + 1, hop // k)
    response = np.stack([x[s:s + win] for s in starts]) @ filters
    power = response[:, :16] ** 2 + response[:, 16:] ** 2
    weights = np.hanning(2 * k + 3)[1:-1]
    weights /= weights.sum()
    frames = 1 + len(y) // hop
    expected = np.stack([weights @ power[t * k:t * k + 2 * k + 1] for t in range(frames)])
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-9)


def test_constant_q_init_approximates_librosa_cqt(signals):
    """At initialisation the log-spaced filters' energy over time tracks librosa.cqt's bins at
    the same centres (12 per octave from 265 Hz), compared as `test_gabor_init_approximates_mel`
    compares with mel bands. The bandwidths differ (each Gabor filter is as wide at half its
    peak as its spacing, a CQT bin's Hann window wider), hence a correlation, not equality. Measured:
    0.954 on the speech clip with 2048-sample filters (0.947 with 1024)."""
    y = signals["speech"]
    fmin, n_bins, bins_per_octave = 250.0, 40, 12
    layer = LearnedFilterbank(sample_rate=SR, n_filters=n_bins, win_length=2048, fmin=fmin,
                              fmax=fmin * 2 ** ((n_bins + 1) / bins_per_octave),
                              initializer="constant_q", compression="none")
    ours = checks.to_numpy(layer(y[None]))[0]
    cqt = np.abs(librosa.cqt(y, sr=SR, hop_length=160, fmin=fmin * 2 ** (1 / bins_per_octave),
                             n_bins=n_bins, bins_per_octave=bins_per_octave)).T ** 2
    assert ours.shape == cqt.shape

    corr = np.corrcoef(_band_db(ours).ravel(), _band_db(cqt).ravel())[0, 1]
    assert corr > 0.9, corr


def test_constant_q_bandwidths_follow_their_spacing():
    """Each log-spaced filter's frequency response is as wide at half its peak as its spacing
    (a constant Q above the window's floor of `sample_rate / win_length`), as the mel-spaced
    ones are as wide as their triangles at half height."""
    n, win_length = 32, 2048
    filters = gabor_filters(n, win_length, SR, 60.0, SR / 2, spacing="log")
    spectrum = np.abs(np.fft.fft(filters[:, :n] + 1j * filters[:, n:], n=1 << 16, axis=0))
    spectrum = spectrum[: 1 << 15]
    hz = SR / (1 << 16)
    width = (spectrum >= spectrum.max(axis=0) / 2).sum(axis=0) * hz
    edges = np.geomspace(60.0, SR / 2, n + 2)
    expected = np.maximum((edges[2:] - edges[:-2]) / 2, SR / win_length)
    above_floor = expected > 2 * SR / win_length  # truncation widens the floored ones
    np.testing.assert_allclose(width[above_floor], expected[above_floor], rtol=0.1)


def test_cepstra_are_the_dct_of_the_log_energies(signals, tmp_path):
    """`n_cepstra` returns the first coefficients of the orthonormal DCT-II of the log
    energies (`scipy.fft.dct`, as librosa.feature.mfcc takes it), and the layer keeps its
    contract (config, save and reload) with them."""
    import scipy

    y = np.stack([signals["speech"][:16000], signals["tone"]])
    energies = checks.to_numpy(LearnedFilterbank(sample_rate=SR, n_filters=32)(y))
    layer = LearnedFilterbank(sample_rate=SR, n_filters=32, n_cepstra=12)
    cepstra = checks.to_numpy(layer(y))
    assert cepstra.shape == energies.shape[:2] + (12,)
    expected = scipy.fft.dct(energies, type=2, norm="ortho", axis=-1)[..., :12]
    np.testing.assert_allclose(cepstra, expected, atol=1e-3 * np.abs(expected).max())
    checks.run_layer_test(layer, y, tmp_path, atol=1e-3)


def test_filters_are_unit_area_envelopes():
    filters = gabor_filters(8, 400, SR, 60.0, 8000.0)
    assert filters.shape == (400, 16)
    envelope = np.hypot(filters[:, :8], filters[:, 8:])
    np.testing.assert_allclose(envelope.sum(axis=0), 1.0, rtol=1e-6)


def test_gradients_flow_and_training_changes_filters(signals):
    """One gradient step through the front end changes its kernel and lowers the loss."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.stack([signals["speech"][:8000], signals["tone"][:8000]] * 4)
    x = x + 0.01 * rng.standard_normal(x.shape).astype("float32")
    y = np.array([[1.0], [0.0]] * 4, "float32")
    inputs = keras.Input((8000,))
    frontend = LearnedFilterbank(sample_rate=SR, n_filters=16)
    h = keras.layers.GlobalAveragePooling1D()(frontend(inputs))
    h = keras.layers.LayerNormalization()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    before = checks.to_numpy(frontend.kernel).copy()
    loss0 = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    after = checks.to_numpy(frontend.kernel)
    assert np.abs(after - before).max() > 1e-6
    assert model.evaluate(x, y, verbose=0) < loss0


def test_scaled_kernel_applies_the_gabor_filters():
    """The kernel holds each filter over its peak; the filters applied are the Gabor ones."""
    layer = LearnedFilterbank(sample_rate=SR, n_filters=16)
    layer.build((None, 16000))
    gabor = gabor_filters(16, 400, SR, 60.0, SR / 2)
    np.testing.assert_allclose(checks.to_numpy(layer.filters()), gabor, rtol=1e-6, atol=1e-9)
    kernel = checks.to_numpy(layer.kernel).reshape(400, 2, 16)
    np.testing.assert_allclose(np.abs(kernel).max(axis=(0, 1)), 1.0, rtol=1e-6)
    unscaled = LearnedFilterbank(sample_rate=SR, n_filters=16, scaled_kernel=False)
    y = np.random.default_rng(0).standard_normal((2, 4000)).astype("float32")
    np.testing.assert_allclose(checks.to_numpy(layer(y)), checks.to_numpy(unscaled(y)),
                               atol=1e-4)


@pytest.mark.parametrize("scaled,step", [(True, 1.0), (False, 1.0), (True, 0.1), (True, 10.0),
                                         (False, 0.1)])
def test_an_adam_step_moves_each_filter_in_proportion_to_its_peak(signals, scaled, step):
    """Adam's first step moves every weight by its learning rate: a scaled filter's taps move
    by that share of the filter's peak, an unscaled one's by the rate itself, each times
    `learning_rate_scale`."""
    lr = 1e-3
    x = np.stack([signals["speech"][:8000], signals["tone"][:8000]])
    layer = LearnedFilterbank(sample_rate=SR, n_filters=16, scaled_kernel=scaled,
                              learning_rate_scale=step)
    inputs = keras.Input((8000,))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(layer(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    before = checks.to_numpy(layer.filters()).copy()
    model.train_on_batch(x, np.zeros((2, 16), "float32"))
    moved = np.abs(checks.to_numpy(layer.filters()) - before).max(axis=0)
    peak = np.tile(np.abs(before).reshape(400, 2, 16).max(axis=(0, 1)), 2)
    np.testing.assert_allclose(moved, step * (lr * peak if scaled else lr), rtol=0.02)
    gabor = gabor_filters(16, 400, SR, 60.0, SR / 2)  # applied as initialised, at any step
    np.testing.assert_allclose(before, gabor, rtol=1e-5, atol=1e-9)


def test_learning_rate_scale_zero_freezes_the_filters(signals, tmp_path):
    """At 0 the kernel is not trainable, even after the layer is made trainable again (as
    the trainer does with the whole featurizer), and the config round-trips."""
    layer = LearnedFilterbank(sample_rate=SR, n_filters=16, learning_rate_scale=0.0)
    inputs = keras.Input((8000,))
    model = keras.Model(inputs, keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling1D()(layer(inputs))))
    model.trainable = True
    assert not layer.trainable_weights and len(layer.non_trainable_weights) == 1
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    before = checks.to_numpy(layer.filters()).copy()
    x = np.stack([signals["speech"][:8000], signals["tone"][:8000]])
    model.fit(x, np.ones((2, 2), "float32"), epochs=3, verbose=0)
    np.testing.assert_array_equal(checks.to_numpy(layer.filters()), before)
    np.testing.assert_allclose(before, gabor_filters(16, 400, SR, 60.0, SR / 2), rtol=1e-5,
                               atol=1e-9)
    assert LearnedFilterbank.from_config(layer.get_config()).learning_rate_scale == 0.0


@pytest.mark.parametrize("step", [-0.1, float("nan"), float("inf")])
def test_learning_rate_scale_must_be_finite_and_non_negative(step):
    with pytest.raises(ValueError, match="learning_rate_scale"):
        LearnedFilterbank(n_filters=8, learning_rate_scale=step)


def test_configs_without_scaled_kernel_load_unscaled(tmp_path):
    """A config saved before `scaled_kernel` existed loads as it was trained: unscaled."""
    config = LearnedFilterbank(n_filters=8).get_config()
    del config["scaled_kernel"]
    assert LearnedFilterbank.from_config(config).scaled_kernel is False
    assert LearnedFilterbank.from_config({**config, "scaled_kernel": True}).scaled_kernel


@pytest.mark.parametrize("pooling", [1, 4])
@pytest.mark.parametrize("num_samples", [1, 399, 400, 16000, 16123])
def test_any_length(num_samples, pooling):
    y = np.random.default_rng(0).standard_normal((2, num_samples)).astype("float32")
    out = checks.check_output_shape(LearnedFilterbank(n_filters=8, pooling=pooling), y)
    assert out.shape == (2, 1 + num_samples // 160, 8)


@pytest.mark.parametrize("center", [True, False])
def test_pooling_keeps_the_frames(center):
    """Pooled or not, the same frames for every length, without centring too (where a
    signal needs a whole window)."""
    rng = np.random.default_rng(0)
    for num_samples in (1, 300, 399, 400, 401, 560, 16123)[0 if center else 3:]:
        y = rng.standard_normal((2, num_samples)).astype("float32")
        pooled = checks.to_numpy(LearnedFilterbank(n_filters=8, center=center, pooling=4)(y))
        expected = LearnedFilterbank(n_filters=8, center=center).num_frames(num_samples)
        assert pooled.shape == (2, expected, 8), (num_samples, pooled.shape)
        assert np.isfinite(pooled).all()


@pytest.mark.parametrize("pooling", [1, 4])
def test_relative_level_takes_the_gain_out(signals, tmp_path, pooling):
    """`relative_level`: the energies over the input's mean energy before the log (numpy
    reference from the layer's own powers), the same output at 40 dB less, silence at the
    floor; the layer keeps its contract (config, save and reload) with it."""
    speech = signals["speech"][:16000]
    y = np.stack([speech, 0.01 * speech, np.zeros_like(speech)])
    power = checks.to_numpy(LearnedFilterbank(sample_rate=SR, n_filters=32, pooling=pooling,
                                              compression="none")(y))
    layer = LearnedFilterbank(sample_rate=SR, n_filters=32, pooling=pooling,
                              relative_level=True)
    out = checks.to_numpy(layer(y))
    expected = np.log(power[:2] / power[:2].mean(axis=(1, 2), keepdims=True) + 1e-6)
    np.testing.assert_allclose(out[:2], expected, atol=1e-3)
    np.testing.assert_allclose(out[1], out[0], atol=2e-3)
    np.testing.assert_allclose(out[2], np.log(1e-6), rtol=1e-6)
    absolute = checks.to_numpy(LearnedFilterbank(sample_rate=SR, n_filters=32,
                                                 pooling=pooling)(y))
    assert np.abs(absolute[1] - absolute[0]).max() > 1.0  # what it takes out
    checks.run_layer_test(layer, y[:2], tmp_path, atol=1e-3)


def test_random_init_and_power_compression(signals):
    layer = LearnedFilterbank(n_filters=8, initializer="random", compression="none")
    out = checks.check_output_shape(layer, signals["noise"][None])
    assert (out >= 0).all()


@pytest.mark.parametrize("pooling", [1, 4])
def test_layer_contract(signals, tmp_path, pooling):
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.run_layer_test(LearnedFilterbank(sample_rate=SR, n_filters=32, pooling=pooling), y,
                          tmp_path, atol=1e-4)


def test_mixed_precision(signals):
    """Under mixed_bfloat16 the layer still computes in float32 (see its docstring)."""
    y = np.stack([signals["speech"][:16000], signals["tone"]])
    checks.check_mixed_precision(lambda: LearnedFilterbank(n_filters=32), y, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_filters=0), "n_filters"),
        (dict(initializer="sinc"), "initializer"),
        (dict(compression="pcen"), "compression"),
        (dict(fmin=9000.0), "fmin"),
        (dict(fmin=0.0, initializer="constant_q"), "fmin"),
        (dict(n_filters=16, n_cepstra=17), "n_cepstra"),
        (dict(n_cepstra=8, compression="none"), "n_cepstra"),
        (dict(eps=0.0), "eps"),
        (dict(pooling=0), "pooling"),
        (dict(pooling=3), "pooling"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnedFilterbank(**kwargs)
