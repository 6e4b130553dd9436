"""The one clip pipeline (keras_dae.clip_pipeline): reading, chunking, batching and pooling.

Real files are decoded (the recordings of tests/data, resampled; a long one streamed); the
"model" is a numpy function of each chunk (its mean, peak and a few samples), so that every
output row can be traced back to the chunk it came from. The models' own scoring through the
pipeline is tested in test_predict.py (Tagger), test_training.py and test_threads.py
(predict_clips, evaluate) and test_hear.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from keras_dae.audio import AudioDecodeError, load_audio
from keras_dae.clip_pipeline import ClipPipeline
from keras_dae.data.chunking import chunk_sample_starts, chunk_waveform

# No Keras here: the backend does not change what these tests check.
pytestmark = pytest.mark.one_backend

SR = 16000


def features(batch: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in model: per chunk, its mean and peak ("score") and 3 samples ("embedding")."""
    batch = np.asarray(batch, np.float64)
    return {"score": np.stack([batch.mean(axis=1), np.abs(batch).max(axis=1)], axis=1),
            "embedding": batch[:, [0, batch.shape[1] // 2, -1]]}


class Recorder:
    """`features`, recording the number of rows of every call."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        return features(batch)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list:
    """Real recordings: a 44.1 kHz stereo speech clip, two shorter sounds, and a 31 s file
    made of the speech clip repeated (streamed when max_chunks is small)."""
    data = tmp_path_factory.mktemp("clips")
    speech = load_audio("tests/data/speech_front_center.wav", SR)
    long_wav = data / "long.wav"
    soundfile.write(long_wav, np.resize(speech, 31 * SR + 123), SR)
    return ["tests/data/speech_front_center.wav", "tests/data/camera_shutter.oga",
            "tests/data/phone_incoming_call.oga", str(long_wav)]


def expected(path_or_wave, hop: float) -> tuple[np.ndarray, dict]:
    wave = load_audio(path_or_wave, SR) if isinstance(path_or_wave, str) else path_or_wave
    chunks = chunk_waveform(wave, SR, 1.0, hop)
    return chunk_sample_starts(len(wave), SR, 1.0, hop), features(chunks)


@pytest.mark.parametrize("hop", [0.5, 0.25, 1.0 / 3])
@pytest.mark.parametrize("max_chunks", [256, 7])
def test_outputs_are_those_of_each_chunk_pooled_per_clip(files, hop, max_chunks):
    """Any hop; files decoded whole or streamed (max_chunks=7): every chunk's outputs, its
    time, and the clip's mean and max are those of chunking the decoded file directly."""
    pipeline = ClipPipeline(features, SR, hop_seconds=hop, batch_size=8, max_chunks=max_chunks)
    clips = list(pipeline.run(files))
    assert [c.index for c in clips] == list(range(len(files)))
    for path, clip in zip(files, clips, strict=True):
        starts, outputs = expected(path, hop)
        assert clip.error is None and clip.source == path
        assert clip.n_chunks == len(starts)
        np.testing.assert_array_equal(clip.chunk_starts(), starts)
        np.testing.assert_allclose(clip.chunk_times(),
                                   (starts + min(SR, clip.n_samples) / 2) / SR)
        for name, value in outputs.items():
            np.testing.assert_allclose(clip.chunks[name], value, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(clip.pooled(name), value.mean(axis=0), rtol=1e-6,
                                       atol=1e-7)
            np.testing.assert_allclose(clip.pooled(name, "max"), value.max(axis=0),
                                       rtol=1e-6, atol=1e-7)


def test_every_batch_is_padded_to_batch_size_or_to_the_small_batch(files):
    """Without `small_batch` every call has `batch_size` rows (one compiled shape; an even
    split over devices); with it, a last batch of at most that many rows is padded to it."""
    n_chunks = sum(len(expected(path, 0.5)[0]) for path in files)
    whole = Recorder()
    list(ClipPipeline(whole, SR, batch_size=16).run(files))
    assert set(whole.calls) == {16} and sum(whole.calls) == -(-n_chunks // 16) * 16
    small = Recorder()
    one_chunk = [np.full(4000, 0.1, np.float32)] * 3
    list(ClipPipeline(small, SR, batch_size=16, small_batch=8).run(one_chunk))
    assert small.calls == [8]


def test_chunks_of_consecutive_clips_share_batches_and_memory_stays_per_batch(files):
    """Short clips are packed together; without keep_chunks a clip keeps only its pooled
    outputs (an hour costs what a second does)."""
    calls = Recorder()
    clips = [np.full(4000 + 1000 * i, 0.01 * (i + 1), np.float32) for i in range(6)]
    scored = list(ClipPipeline(calls, SR, batch_size=8, keep_chunks=False).run(clips))
    assert calls.calls == [8]
    for wave, clip in zip(clips, scored, strict=True):
        assert clip.chunks == {} and clip.n_samples == len(wave)
        np.testing.assert_allclose(clip.pooled("score"), [0.01 * (clip.index + 1)] * 2,
                                   rtol=1e-6)


def test_a_bad_item_fails_alone_and_order_is_kept(files, tmp_path):
    """A file that cannot be decoded, one that fails part-way through a streamed read, and a
    bad array each come out with their error; the items around them are scored as alone."""
    nan_late = tmp_path / "nan_late.wav"
    wave = load_audio(files[0], SR)
    late = np.resize(wave, 20 * SR)
    late[15 * SR] = np.nan
    soundfile.write(nan_late, late, SR, subtype="FLOAT")
    items = [files[1], "tests/data/bad/truncated_header.wav", files[2], str(nan_late),
             np.array([0.1, np.inf], np.float32), files[0]]
    clips = list(ClipPipeline(features, SR, batch_size=8, max_chunks=4).run(items))
    assert [c.index for c in clips] == list(range(len(items)))
    assert isinstance(clips[1].error, AudioDecodeError)
    assert "truncated_header.wav" in str(clips[1].error)
    assert isinstance(clips[3].error, AudioDecodeError) and "NaN" in str(clips[3].error)
    assert isinstance(clips[4].error, ValueError) and clips[4].source == "<array>"
    with pytest.raises(ValueError, match="has no outputs"):
        clips[3].pooled("score")
    for i in (0, 2, 5):
        assert clips[i].error is None
        np.testing.assert_allclose(clips[i].chunks["score"], expected(items[i], 0.5)[1]["score"],
                                   rtol=1e-6, atol=1e-7)


def test_skipped_items_are_not_read_and_keep_their_index(files):
    seen = []

    def skip(item):
        seen.append(item)
        return item == files[1]

    clips = list(ClipPipeline(features, SR).run(files[:3], skip=skip))
    assert seen == files[:3]
    assert [c.index for c in clips] == [0, 2]


def test_arrays_are_scaled_and_resampled_like_files(files):
    """An int16 array at 44.1 kHz gives the outputs of its float version resampled."""
    pcm, rate = soundfile.read(files[0], dtype="int16")
    pcm = pcm[:, 0] if pcm.ndim == 2 else pcm
    pipeline = ClipPipeline(features, SR)
    (clip,) = pipeline.run([pcm], input_rate=rate)
    from keras_dae.clip_pipeline import as_waveform

    float_wave = as_waveform(pcm.astype(np.float32) / 32768, rate, SR)
    np.testing.assert_allclose(clip.chunks["score"], expected(float_wave, 0.5)[1]["score"],
                               rtol=1e-5, atol=1e-6)
    assert clip.n_samples == len(float_wave)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        ClipPipeline(features, SR, batch_size=0)
    with pytest.raises(ValueError, match="hop_seconds"):
        ClipPipeline(features, SR, hop_seconds=0)
    with pytest.raises(ValueError, match="pooling"):
        next(ClipPipeline(features, SR).run([np.ones(100, np.float32)])).pooled("score", "sum")
