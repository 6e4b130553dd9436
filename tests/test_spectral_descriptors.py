"""SpectralDescriptors: parity with librosa.feature.spectral_* and the layer contract."""

import layer_harness as checks
import librosa
import numpy as np
import pytest

from keras_dae.layers.spectral_descriptors import SpectralDescriptors

SR = 16000
NAMES = ["tone", "chirp", "noise", "speech", "shutter"]
STFTS = {
    "512-160": dict(n_fft=512, hop_length=160),
    "1024-256-800": dict(n_fft=1024, hop_length=256, win_length=800),
}
SCALARS = ["centroid", "bandwidth", "rolloff", "flatness"]
# Bar: each descriptor (each contrast band) within 1% of its range over the clip.
TOLERANCE = 0.01


def librosa_descriptor(name, y, stft, **kwargs):
    """`(frames, columns)` of the librosa.feature twin of descriptor `name`."""
    f = librosa.feature
    if name == "centroid":
        out = f.spectral_centroid(y=y, sr=SR, **stft)
    elif name == "bandwidth":
        out = f.spectral_bandwidth(y=y, sr=SR, **stft, p=kwargs.get("p", 2))
    elif name == "rolloff":
        out = f.spectral_rolloff(y=y, sr=SR, **stft, roll_percent=kwargs.get("roll_percent", 0.85))
    elif name == "flatness":
        out = f.spectral_flatness(y=y, **stft)
    else:
        out = f.spectral_contrast(
            y=y,
            sr=SR,
            **stft,
            fmin=kwargs.get("contrast_fmin", 200.0),
            n_bands=kwargs.get("n_bands", 6),
            quantile=kwargs.get("quantile", 0.02),
            linear=kwargs.get("linear", False),
        )
    return out.T


def range_relative_error(ours, ref, mask=None):
    """Per column: max |error| over the (masked) frames, over the column's range in `ref`."""
    span = ref.max(axis=0) - ref.min(axis=0)
    assert np.all(span > 0)
    err = np.abs(ours - ref)
    if mask is not None:
        err = np.where(mask, err, 0.0)
    return err.max(axis=0) / span


def valleys_above_float32_noise(y, stft, contrast_fmin=200.0, n_bands=6, rel=1e-5):
    """`(frames, n_bands + 1)`: True where every bin around the band is >= rel * frame peak.

    For noiseless synthetic signals (tone, chirp) a band's valley can lie far below what a
    float32 DFT resolves: librosa's FFT reports valleys 200+ dB below the frame peak where a
    float32 DFT has rounding noise 120-145 dB down, and the layer floors magnitudes 120 dB
    down (`contrast_floor`). The dB contrast of such cells is noise in librosa, so parity on
    synthetic signals is checked where the band's minimum (over a superset of librosa's
    band) is within 100 dB of the frame peak. Noise and recordings are checked on every cell.
    """
    mag = np.abs(librosa.stft(y.astype(np.float64), **stft))
    freq = librosa.fft_frequencies(sr=SR, n_fft=stft["n_fft"])
    edges = [0.0] + [contrast_fmin * 2.0**k for k in range(n_bands)] + [np.inf]
    ok = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        idx = np.flatnonzero((freq >= low) & (freq <= high))
        around = mag[max(idx[0] - 1, 0) : idx[-1] + 2]
        ok.append(around.min(axis=0) >= rel * mag.max(axis=0))
    return np.stack(ok, axis=1)


SYNTHETIC = ("tone", "chirp")


def contrast_mask(name, y, stft, contrast_fmin=200.0, n_bands=6):
    """None (every cell) for noise and recordings, the resolvable cells for tone and chirp."""
    if name not in SYNTHETIC:
        return None
    mask = valleys_above_float32_noise(y, stft, contrast_fmin, n_bands)
    assert mask.mean() > 0.15  # Enough cells left to mean something (19% for 1024-tone).
    return mask


def run_layer(y, **kwargs):
    return checks.to_numpy(SpectralDescriptors(sample_rate=SR, **kwargs)(y[None]))[0]


_BATCHED = {}


def run_on_all_signals(signals, **kwargs):
    """Name -> the layer's output for each of NAMES, from one call on a zero-padded batch.

    One call per config keeps the grid fast (eager JAX compiles each op once per shape).
    Zero padding at the end does not change the clip's own frames: librosa pads with zeros
    too, and the extra frames are silent, so they neither raise the per-example dB peak of
    contrast nor survive the slicing to librosa's frame count done by the callers.
    """
    key = tuple(sorted(kwargs.items()))
    if key not in _BATCHED:
        clips = [signals[name] for name in NAMES]
        length = max(len(y) for y in clips)
        batch = np.stack([np.pad(y, (0, length - len(y))) for y in clips])
        out = checks.to_numpy(SpectralDescriptors(sample_rate=SR, **kwargs)(batch))
        _BATCHED[key] = dict(zip(NAMES, out, strict=True))
    return _BATCHED[key]


def check_contrast(ours, ref, mask):
    """dB contrast: within 1% of each band's range, where the valley is resolvable (`mask`)."""
    rel = range_relative_error(ours, ref, mask)
    assert rel.max() <= TOLERANCE, rel
    assert rel.max() <= 5e-3  # In practice (~1e-4; JAX reaches 1.2e-3 in a quiet top band).
    assert np.all(np.isfinite(ours))


CASES = {
    "512-160": (STFTS["512-160"], "matmul"),
    "1024-256-800": (STFTS["1024-256-800"], "matmul"),
    "512-160-fft": (STFTS["512-160"], "fft"),
}


@pytest.mark.one_backend
@pytest.mark.parametrize("stft, dft_mode", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("name", NAMES)
def test_matches_librosa(signals, name, stft, dft_mode):
    """Each descriptor within 1% of its range over the clip (contrast: of each band's range).

    dB contrast on tone and chirp is compared where the band's valley is resolvable in
    float32 (see `valleys_above_float32_noise`); everything else on every frame.
    """
    y = signals[name]
    ref = np.concatenate([librosa_descriptor(d, y, stft) for d in SCALARS + ["contrast"]], axis=1)
    ours = run_on_all_signals(signals, dft_mode=dft_mode, **stft)[name][: len(ref)]
    assert ours.shape == ref.shape == (ref.shape[0], 11)

    rel = range_relative_error(ours[:, :4], ref[:, :4])
    assert rel.max() <= TOLERANCE, dict(zip(SCALARS, rel, strict=True))
    # In practice: ~1e-5 of the range, and the roll-off lands on the same bin.
    assert rel.max() <= 1e-3
    np.testing.assert_array_equal(ours[:, 2], ref[:, 2])

    check_contrast(ours[:, 4:], ref[:, 4:], contrast_mask(name, y, stft))

    ref_linear = librosa_descriptor("contrast", y, stft, linear=True)
    ours_linear = run_on_all_signals(
        signals, descriptors=("contrast",), linear=True, dft_mode=dft_mode, **stft
    )[name][: len(ref_linear)]
    assert range_relative_error(ours_linear, ref_linear).max() <= TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_contrast_settings_match_librosa(signals, name):
    """Other bands and a quantile that averages several bins (top_k path)."""
    y = signals[name]
    stft = STFTS["512-160"]
    config = dict(n_bands=4, contrast_fmin=300.0, quantile=0.1)
    ref = librosa_descriptor("contrast", y, stft, **config)
    ours = run_on_all_signals(signals, descriptors=("contrast",), **stft, **config)[name]
    ours = ours[: len(ref)]
    assert ours.shape == ref.shape == (ref.shape[0], 5)
    check_contrast(ours, ref, contrast_mask(name, y, stft, 300.0, 4))
    ref_linear = librosa_descriptor("contrast", y, stft, linear=True, **config)
    ours_linear = run_on_all_signals(
        signals, descriptors=("contrast",), linear=True, **stft, **config
    )[name][: len(ref_linear)]
    assert range_relative_error(ours_linear, ref_linear).max() <= TOLERANCE


@pytest.mark.parametrize("name", SYNTHETIC)
def test_contrast_floor_makes_deep_valleys_reproducible(signals, name):
    """Valleys below float32 resolution: with the floor, the matmul and FFT DFTs agree on
    every cell (unfloored they differ by ~10-20 dB there, as they would across backends)."""
    y = signals[name][None]
    matmul = run_layer(y[0], descriptors=["contrast"])
    fft = run_layer(y[0], descriptors=["contrast"], dft_mode="fft")
    np.testing.assert_allclose(matmul, fft, atol=0.5)
    unfloored = run_layer(y[0], descriptors=["contrast"], contrast_floor=None)
    assert np.all(np.isfinite(unfloored))


@pytest.mark.one_backend
@pytest.mark.parametrize("name", ["speech", "shutter", "noise"])
def test_contrast_floor_leaves_recordings_alone(signals, name):
    y = signals[name]
    floored = run_layer(y, descriptors=["contrast"])
    unfloored = run_layer(y, descriptors=["contrast"], contrast_floor=None)
    np.testing.assert_allclose(floored, unfloored, atol=1e-4)


def test_contrast_is_per_example(signals):
    """The dB floor of contrast is per example: batch-mates do not change a clip's values."""
    layer = SpectralDescriptors(sample_rate=SR, descriptors=["contrast"])
    quiet = 0.001 * signals["speech"][:16000]
    alone = checks.to_numpy(layer(quiet[None]))[0]
    together = checks.to_numpy(layer(np.stack([quiet, 10 * signals["noise"]])))[0]
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_silence_gives_librosa_values(signals):
    """All-zero frames: centroid 0, bandwidth 0, roll-off 0, flatness 1, contrast 0 (as librosa)."""
    out = run_layer(signals["silence"])
    assert np.all(np.isfinite(out))
    expected = np.array([0.0, 0.0, 0.0, 1.0] + [0.0] * 7, np.float32)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def test_partly_silent_clip_is_finite_and_matches_librosa(signals):
    """Silent frames inside a clip: finite, and equal to librosa's (contrast there is the
    difference of the peak and valley dB floors, which depend on the rest of the clip)."""
    y = signals["speech"][:16000].copy()
    y[4000:12000] = 0.0
    stft = STFTS["512-160"]
    ours = run_layer(y, **stft)
    assert np.all(np.isfinite(ours))
    ref = np.concatenate([librosa_descriptor(d, y, stft) for d in SCALARS + ["contrast"]], axis=1)
    silent = slice(4000 // 160 + 2, 12000 // 160 - 1)
    np.testing.assert_allclose(ours[silent, :3], 0.0, atol=0)
    np.testing.assert_allclose(ours[silent], ref[silent], atol=1e-3)
    assert range_relative_error(ours, ref).max() <= TOLERANCE


def test_tiny_signal_is_finite(signals):
    out = run_layer(1e-25 * signals["noise"])
    assert np.all(np.isfinite(out))


def test_descriptor_order_and_feature_names(signals):
    y = signals["speech"][:16000]
    full = SpectralDescriptors(sample_rate=SR)
    assert full.feature_names == SCALARS + [f"contrast_{k}" for k in range(7)]
    assert full.num_features == 11
    subset = SpectralDescriptors(
        sample_rate=SR, descriptors=("rolloff", "contrast", "centroid"), n_bands=3
    )
    assert subset.feature_names == ["rolloff"] + [f"contrast_{k}" for k in range(4)] + ["centroid"]
    a = checks.to_numpy(full(y[None]))[0]
    b = checks.to_numpy(subset(y[None]))[0]
    np.testing.assert_allclose(b[:, 0], a[:, 2])
    np.testing.assert_allclose(b[:, -1], a[:, 0])
    ref = librosa_descriptor("contrast", y, STFTS["512-160"], n_bands=3)
    assert range_relative_error(b[:, 1:5], ref).max() <= TOLERANCE


def test_bandwidth_p_and_roll_percent(signals):
    y = signals["speech"]
    stft = STFTS["512-160"]
    ours = run_layer(y, descriptors=["bandwidth", "rolloff"], p=1.0, roll_percent=0.5)
    ref = np.concatenate(
        [
            librosa_descriptor("bandwidth", y, stft, p=1.0),
            librosa_descriptor("rolloff", y, stft, roll_percent=0.5),
        ],
        axis=1,
    )
    assert range_relative_error(ours, ref).max() <= TOLERANCE


def interpolated_rolloff(y, stft, roll_percent=0.85):
    """The interpolated roll-off in float64 from librosa's own STFT magnitudes: the crossing
    of `roll_percent` of each frame's total, placed linearly inside the crossing bin."""
    mag = np.abs(librosa.stft(y, **stft)).astype(np.float64).T  # (frames, bins)
    cumulative = np.cumsum(mag, axis=1)
    threshold = roll_percent * cumulative[:, -1:]
    k = np.argmax(cumulative >= threshold, axis=1)
    rows = np.arange(len(mag))
    before = np.where(k > 0, cumulative[rows, np.maximum(k - 1, 0)], 0.0)
    width = mag[rows, k]
    fraction = np.where(width > 0, (threshold[:, 0] - before) / np.where(width > 0, width, 1), 1)
    return np.maximum(k - 1 + fraction, 0.0) * SR / stft["n_fft"]


@pytest.mark.one_backend
@pytest.mark.parametrize("name", NAMES)
def test_interpolated_rolloff_stays_inside_librosas_bin(signals, name):
    """`interpolate_rolloff=True`: within one bin below librosa's roll-off, never above it,
    and equal to the float64 interpolation of librosa's STFT (to 1% of a bin on 99% of the
    frames; near-empty crossing bins amplify float32 rounding, so all frames get one bin)."""
    y, stft = signals[name], STFTS["512-160"]
    bin_hz = SR / stft["n_fft"]
    ref = librosa_descriptor("rolloff", y, stft)[:, 0]
    ours = run_layer(y, descriptors=["rolloff"], interpolate_rolloff=True)[: len(ref), 0]
    assert np.all(ours <= ref + 1e-3) and np.all(ours > ref - bin_hz - 1e-3)
    error = np.abs(ours - interpolated_rolloff(y, stft))
    assert np.quantile(error, 0.99) <= 0.01 * bin_hz, np.quantile(error, 0.99)
    assert error.max() <= bin_hz


def test_interpolated_rolloff_is_continuous_where_librosas_jumps():
    """Four equal bins and roll_percent 0.5: the cumulative sum meets the threshold exactly at
    bin 1. Lowering bin 1 by 1e-4 moves librosa's roll-off a whole bin (1 -> 2) and the
    interpolated one by 5e-5 of a bin."""
    import keras

    def positions(mag):
        mag = keras.ops.convert_to_tensor(np.asarray(mag, "float32")[None, None])
        cumulative = keras.ops.cumsum(mag, axis=-1)
        threshold = 0.5 * cumulative[..., -1:]
        index = keras.ops.sum(keras.ops.cast(cumulative < threshold, "float32"), axis=-1,
                              keepdims=True)
        interpolated = SpectralDescriptors._rolloff_position(cumulative, threshold, index)
        return float(checks.to_numpy(index).ravel()[0]), float(
            checks.to_numpy(interpolated).ravel()[0])

    assert positions([1, 1, 1, 1]) == (1.0, 1.0)
    index, interpolated = positions([1, 1 - 1e-4, 1, 1])
    assert index == 2.0
    assert interpolated == pytest.approx(1.0 + 5e-5, abs=1e-5)
    assert positions([0, 0, 0, 0]) == (0.0, 0.0)  # silence: bin 0, as in librosa
    assert positions([4, 1, 1, 1])[1] == 0.0  # the first bin crosses: clipped at 0


@pytest.mark.parametrize("num_samples", [1, 100, 511, 16000, 16001])
def test_any_length(num_samples, signals):
    y = np.resize(signals["speech"], num_samples)[None]
    layer = SpectralDescriptors(sample_rate=SR)
    out = checks.check_output_shape(layer, y)
    assert out.shape == (1, 1 + num_samples // 160, 11)
    stft = STFTS["512-160"]
    ref = np.concatenate(
        [librosa_descriptor(d, y[0], stft) for d in SCALARS + ["contrast"]], axis=1
    )
    # Absolute tolerances: 1 Hz, 1e-4 flatness, 0.05 dB contrast.
    np.testing.assert_allclose(out[0, :, :3], ref[:, :3], atol=1.0)
    np.testing.assert_allclose(out[0, :, 3], ref[:, 3], atol=1e-4)
    np.testing.assert_allclose(out[0, :, 4:], ref[:, 4:], atol=0.05)


@pytest.mark.parametrize("interpolate_rolloff", [False, True])
def test_layer_contract(signals, tmp_path, interpolate_rolloff):
    y = np.stack([signals["speech"][:16000], signals["noise"]])
    layer = SpectralDescriptors(sample_rate=SR, interpolate_rolloff=interpolate_rolloff)
    checks.run_layer_test(layer, y, tmp_path, atol=1e-4)


def test_mixed_precision(signals):
    y = np.stack([signals["speech"][:16000], signals["noise"]])
    checks.check_mixed_precision(lambda: SpectralDescriptors(sample_rate=SR), y, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(descriptors=("centroid", "mfcc")), "descriptors"),
        (dict(descriptors=("centroid", "centroid")), "descriptors"),
        (dict(descriptors=()), "descriptors"),
        (dict(roll_percent=1.0), "roll_percent"),
        (dict(n_bands=0), "n_bands"),
        (dict(contrast_fmin=0.0), "contrast_fmin"),
        (dict(contrast_fmin=300.0), "contrast_fmin"),  # 300 * 2**5 > 8 kHz
        (dict(contrast_fmin=10.0), "contrast_fmin"),  # first band holds only bin 0
        (dict(quantile=0.0), "quantile"),
        (dict(contrast_floor=1.0), "contrast_floor"),
        (dict(p=0.0), "p"),
        (dict(flatness_power=-1.0), "flatness_power"),
        (dict(amin=0.0), "amin"),
        (dict(hop_length=0), "hop_length"),
        (dict(sample_rate=0), "sample_rate"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpectralDescriptors(**kwargs)


def test_contrast_settings_librosa_rejects_are_rejected():
    """The Nyquist rule is librosa's: it raises too for contrast_fmin=300 and 6 bands."""
    with pytest.raises(librosa.ParameterError):
        librosa.feature.spectral_contrast(S=np.ones((257, 3)), sr=SR, fmin=300.0)
    SpectralDescriptors(sample_rate=SR, contrast_fmin=249.0)  # 249 * 32 < 8000: accepted.
