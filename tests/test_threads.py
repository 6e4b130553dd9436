"""Several threads at once give the results of one thread: prediction, clip scoring,
decoding, and the loader (its cache and skip record are shared between threads)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
from bad_inputs import make_corpus

from keras_dae import training, zoo
from keras_dae.audio import iter_audio_blocks, load_audio
from keras_dae.concurrency import predict
from keras_dae.data import ChunkLoader, ClipDataset

SR = 16000
THREADS = 4


def run_in_threads(function, items):
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(function, items))


@pytest.fixture(scope="module")
def model():
    return zoo.load("diverse_tiny", weights=None, num_classes=3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six WAV files at various rates and lengths, plus two bad ones."""
    directory = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i, (rate, seconds) in enumerate([(16000, 0.4), (44100, 1.7), (8000, 2.3),
                                         (22050, 0.9), (48000, 3.1), (16000, 1.0)]):
        t = np.arange(int(rate * seconds)) / rate
        y = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = directory / f"clip{i}.wav"
        soundfile.write(path, y.astype(np.float32), rate)
        paths.append(path)
    bad = make_corpus(directory / "bad")
    return paths, [bad["nan"], bad["truncated_body"]]


@pytest.mark.usefixtures("no_network")
def test_predict_from_threads_matches_one_thread(model):
    """keras_dae.concurrency.predict (which every keras-dae scoring path uses): on JAX, plain
    model.predict from two threads at once fails (see the module's docstring)."""
    rng = np.random.default_rng(1)
    inputs = [(0.1 * rng.standard_normal((n, SR))).astype(np.float32)
              for n in (1, 5, 8, 3, 13, 2, 8, 4)]
    expected = [model.predict(x, batch_size=4, verbose=0) for x in inputs]
    for _ in range(2):
        got = run_in_threads(lambda x: predict(model, x, batch_size=4), inputs)
        for g, e in zip(got, expected, strict=True):
            assert set(g) == set(e)
            for key in e:
                np.testing.assert_allclose(g[key], e[key], atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("no_network")
def test_clip_scores_from_threads_match_one_thread(model, clips):
    good, bad = clips
    dataset = ClipDataset([*good, *bad], np.zeros((len(good) + 2, 3), np.float32),
                          ["a", "b", "c"], [""] * 3, [p.stem for p in [*good, *bad]])
    expected, kept, skipped = training.predict_clips(model, dataset, SR, batch_size=8)
    assert len(kept) == len(good) and len(skipped) == 2
    results = run_in_threads(lambda _: training.predict_clips(model, dataset, SR, batch_size=8),
                             range(THREADS))
    for scores, kept_here, skipped_here in results:
        np.testing.assert_array_equal(kept_here, kept)
        assert skipped_here == skipped
        for key in expected:
            np.testing.assert_allclose(scores[key], expected[key], atol=1e-5, rtol=1e-5)


def test_decoding_from_threads_matches_one_thread(clips):
    good, _ = clips
    expected = [load_audio(p, SR) for p in good]
    for got, e in zip(run_in_threads(lambda p: load_audio(p, SR), good * 2), expected * 2,
                      strict=True):
        np.testing.assert_array_equal(got, e)
    streamed = run_in_threads(
        lambda p: np.concatenate(list(iter_audio_blocks(p, SR, block_seconds=0.25))), good)
    for got, e in zip(streamed, expected, strict=True):
        np.testing.assert_array_equal(got, e)


def test_loader_batches_from_threads_match_one_thread(clips):
    """Batches asked for by several threads at once (as PyDataset workers do) equal those of
    one thread, bad files are recorded once, and their chunks are replaced the same way."""
    good, bad = clips
    paths = [*good, *bad]
    dataset = ClipDataset(paths, np.eye(len(paths), dtype=np.float32)[:, :3].copy(),
                          ["a", "b", "c"], [""] * 3, [p.stem for p in paths])

    def make():
        return ChunkLoader(dataset, SR, batch_size=3, seed=2, cache_mb=0.1)

    single = make()
    expected = [single[i] for i in range(len(single))]
    for _ in range(2):
        shared = make()
        got = run_in_threads(shared.__getitem__, list(range(len(shared)))[::-1])[::-1]
        assert shared.skipped == single.skipped
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)
