"""Self-supervised pretraining (`keras-dae pretrain`, keras_dae.pretraining): positive pairs
of real recordings, the contrastive model (a training step on every backend), a run that
resumes, and its backbone preset put under new heads by `from_preset`, `finetune` and `train`.
The tests of whole runs go to PyTorch's run (tests/run.sh): its eager steps cost no tracing."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
import soundfile

from keras_dae import cli
from keras_dae.audio import load_audio
from keras_dae.data import read_unlabelled
from keras_dae.data.bundled import demo_clips
from keras_dae.data.chunking import chunk_waveform
from keras_dae.data.pair_loader import (
    PairLoader,
    ShardClips,
    ShardPairLoader,
    augment_views,
    low_pass,
)
from keras_dae.metrics import effective_rank, temporal_share
from keras_dae.models import DiverseClassifier
from keras_dae.models.contrastive import (
    ClipStatistics,
    DiverseContrastive,
    EmbeddingSpread,
    FeaturePrediction,
    FrameFeatures,
)
from keras_dae.models.feature_masking import FeatureMasking
from keras_dae.models.featurizer import default_stream_frontends
from keras_dae.pretrainer import Pretrainer, frame_masking
from keras_dae.pretraining import pretrain_run, split_files
from keras_dae.train_config import TrainConfig
from keras_dae.zoo import PresetError
from keras_dae.zoo.presets import PRESETS

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Unlabelled audio as a corpus holds it: cuts of 0.5-2.5 s of the five bundled real
    recordings, eight per recording in its own folder, and one file that is not audio."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for path in demo_clips():
        audio = load_audio(path, SR)
        folder = root / path.stem
        folder.mkdir()
        for i in range(8):  # each cut its own: its length, start and gain
            length = min(len(audio), int(rng.integers(SR // 2, 40000)))
            start = int(rng.integers(0, len(audio) - length + 1))
            cut = audio[start:start + length] * rng.uniform(0.2, 0.9)
            soundfile.write(folder / f"{i}.flac", cut, SR)
    (root / "notes.wav").write_text("not audio")
    return root


def _weights(layer):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.trainable_weights]


def _files_audio(dataset):
    return {str(p): load_audio(p, SR) for p in dataset.paths if p.suffix == ".flac"}


@pytest.mark.one_backend
def test_pairs_are_two_chunks_of_one_file_and_the_same_for_a_seed_and_epoch(corpus):
    data = read_unlabelled(corpus)
    assert len(data) == 41 and data.n_classes == 0
    loader = PairLoader(data, ["pitch", "timbre"], augment=False, batch_size=8, seed=3)
    assert "notes.wav" in next(iter(loader.skipped)) and len(loader) == 40 // 8
    audio = _files_audio(data)
    inputs, targets = loader[1]
    assert set(targets) == {"pitch", "timbre"}
    np.testing.assert_array_equal(targets["pitch"], np.arange(8))
    for a, p in zip(inputs["anchor"], inputs["positive"], strict=True):
        # Both views are 1 s windows of one recording (its chunks), not the same window.
        owners = [[k for k, x in audio.items()
                   if any(np.array_equal(c, view) for c in chunk_waveform(x, SR))]
                  for view in (a, p)]
        assert len(owners[0]) == 1 and owners[0] == owners[1]
        assert len(chunk_waveform(audio[owners[0][0]], SR)) == 1 or not np.array_equal(a, p)
    again = PairLoader(data, ["pitch", "timbre"], augment=False, batch_size=8, seed=3)[1]
    np.testing.assert_array_equal(again[0]["anchor"], inputs["anchor"])
    loader.set_epoch(1)
    assert not np.array_equal(loader[1][0]["anchor"], inputs["anchor"])


@pytest.fixture(scope="module")
def corpus_shards(corpus, tmp_path_factory):
    """The corpus written to shards by `keras-dae shard --format unlabelled`."""
    pytest.importorskip("grain")
    pytest.importorskip("array_record")
    out = tmp_path_factory.mktemp("corpus_shards") / "shards"
    assert cli.main(["shard", "--data", str(corpus), "--format", "unlabelled", "--out",
                     str(out), "--shard-size", "16"]) == 0
    return out


@pytest.mark.one_backend
def test_pairs_from_shards_are_the_pairs_from_the_files(corpus, corpus_shards):
    """The same clips give the same pairs, augmented alike, from the shards as from the
    files (to the shards' 16-bit precision, times the augmentation's gain of at most 6 dB),
    the same batches in the same order, the same hours of audio; the file that is not audio
    was left out when the shards were written and is reported."""
    files, shards = read_unlabelled(corpus), ShardClips(corpus_shards)
    assert len(shards) == 40 and "notes.wav" in next(iter(shards.skipped))
    for seed, epoch in ((3, 0), (5, 2)):
        a = PairLoader(files, ["timbre"], batch_size=8, seed=seed, epoch=epoch)
        b = ShardPairLoader(shards, ["timbre"], batch_size=8, seed=seed, epoch=epoch)
        assert len(a) == len(b) == 5 and b.audio_seconds == pytest.approx(a.audio_seconds)
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            np.testing.assert_array_equal(ya["timbre"], yb["timbre"])
            for view in ("anchor", "positive"):
                np.testing.assert_allclose(xb[view], xa[view], rtol=0, atol=2.1 / 65534)
    assert "notes.wav" in next(iter(b.skipped))
    held_out = shards.subset([1, 4, 7, 8, 9, 20, 30, 39])
    loader = ShardPairLoader(held_out, ["timbre"], augment=False, batch_size=8, shuffle=False)
    x, _ = loader[0]  # row k: a pair of chunks of clip k of the subset
    for row, clip in enumerate(held_out.clips):
        records = np.flatnonzero(np.asarray(shards.shards.items[:, 0]) == clip)
        chunks = [shards.shards[r]["waveform"] for r in records]
        for view in ("anchor", "positive"):
            assert any(np.array_equal(x[view][row], c) for c in chunks), (row, view)


@pytest.mark.one_backend
def test_each_process_gets_its_rows_of_every_global_batch_with_their_positions(corpus_shards):
    """Two processes' pairs, side by side, are one process's batch (the augmentation mixes
    rows across the whole global batch), their targets the rows' global positions."""
    options = dict(batch_size=8, seed=1, epoch=1)
    whole = ShardPairLoader(corpus_shards, ["pitch"], **options)
    parts = [ShardPairLoader(corpus_shards, ["pitch"], process_index=p, process_count=2,
                             **options) for p in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1])
    for index in range(len(whole)):
        x, y = whole[index]
        halves = [part[index] for part in parts]
        for view in ("anchor", "positive"):
            np.testing.assert_array_equal(x[view], np.concatenate([h[0][view] for h in halves]))
        np.testing.assert_array_equal(halves[1][1]["pitch"], np.arange(4, 8))
        np.testing.assert_array_equal(y["pitch"], np.concatenate([h[1]["pitch"] for h in halves]))
    with pytest.raises(Exception, match="must divide by their number"):
        ShardPairLoader(corpus_shards, ["pitch"], batch_size=9, process_count=2)


@pytest.mark.one_backend
def test_pretraining_from_shards_runs_and_counts_the_audio(corpus, corpus_shards, tmp_path):
    """`keras-dae pretrain --data SHARDS`: one epoch from the shards, its report's hours
    those of the readable files, the file left out of the shards among the skipped."""
    out = tmp_path / "run"
    assert cli.main(["pretrain", "--data", str(corpus_shards), "--out", str(out), "--preset",
                     "diverse_tiny", "--batch-size", "8", "--val-fraction", "0.2", "--epochs",
                     "1", "--jit-compile", "off", "--lowpass", "0.5", "--spread", "1",
                     "--projection-hidden", "16", "--predict-features", "0.5",
                     "--predict-frames", "0.25"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["lowpass"] == 0.5 and report["config"]["spread"] == 1.0
    assert report["config"]["projection_hidden"] == 16
    assert report["config"]["predict_features"] == 0.5
    pretrained = DiverseContrastive.from_preset(out / "preset")
    assert pretrained.spread_weight == 1.0 and pretrained.projection_hidden == 16
    assert pretrained.prediction_weight == 0.5 and pretrained.frame_prediction_weight == 0.25
    assert report["config"]["predict_frames"] == 0.25
    assert report["history"][0]["val_added_loss"] > 0  # the spread and prediction terms
    shares = report["history"][0]["val_temporal_share"]  # the frames' variance along time
    assert set(shares) == {"pitch", "timbre", "neuralogram", "end_to_end"}
    assert all(0.0 < t < 1.0 for t in shares.values())
    ranks = report["history"][0]["val_rank"]  # the towers' effective rank on held-out anchors
    assert set(ranks) == {"pitch", "timbre", "neuralogram", "end_to_end"}
    assert all(1.0 <= r <= 8 for r in ranks.values())  # 8 held-out files
    assert report["cost"]["epochs"] == 1 and report["cost"]["files"] == 40
    assert report["cost"]["steps"] == 32 // 8
    seconds = sum(soundfile.info(p).duration for p in corpus.rglob("*.flac"))
    assert report["cost"]["audio_hours"] == pytest.approx(seconds / 3600, rel=1e-6)
    assert "notes.wav" in next(iter(report["skipped"]))
    assert DiverseContrastive.from_preset(out / "preset").stream_names == [
        "pitch", "timbre", "neuralogram", "end_to_end"]


@pytest.mark.one_backend
def test_augmentation_mixes_another_file_below_the_view_and_keeps_silence():
    rng = np.random.default_rng(0)
    views = rng.uniform(-0.1, 0.1, (2, 16, SR)).astype(np.float32)
    mix = {"max_gain_db": 0.0, "probability": 1.0, "snr_db": (10.0, 10.0)}
    silent = views.copy()
    silent[:, 3] = 0.0  # a silent file stays silent
    assert np.all(augment_views(silent, np.random.default_rng(1), mix)[:, 3] == 0)
    out = augment_views(views, np.random.default_rng(1), mix)
    assert out.shape == views.shape
    residual = out - views
    for v in range(2):
        for row in (0, 5, 15):
            # What was added is another row's chunk of the other view, 10 dB below the row.
            match = [j for j in range(16) if j != row and np.allclose(
                residual[v, row] / np.abs(residual[v, row]).max(),
                views[1 - v, j] / np.abs(views[1 - v, j]).max(), atol=1e-4)]
            assert len(match) == 1
            ratio = np.sqrt(np.mean(residual[v, row] ** 2) / np.mean(views[v, row] ** 2))
            assert ratio == pytest.approx(10 ** (-10 / 20), rel=1e-3)
    gained = augment_views(views, np.random.default_rng(2),
                           {"max_gain_db": 6.0, "probability": 0.0, "snr_db": (5.0, 20.0)})
    gains = np.abs(gained[:, :, 0] / np.where(views[:, :, 0] == 0, 1, views[:, :, 0]))
    assert np.all((gains[:, [0, 1, 2, 4]] > 10 ** (-6 / 20) - 1e-6)
                  & (gains[:, [0, 1, 2, 4]] < 10 ** (6 / 20) + 1e-6))


@pytest.mark.one_backend
def test_low_pass_keeps_the_band_below_its_cutoff_and_removes_the_band_above():
    t = np.arange(SR) / SR
    tones = {hz: np.sin(2 * np.pi * hz * t) for hz in (500, 2900, 3250, 3600, 7000)}
    rows = np.stack([sum(tones.values())] * 2).astype(np.float32)
    out = low_pass(rows, np.array([3500.0, 6000.0]), SR)  # roll-off 3000-3500 Hz, 5500-6000
    amplitude = np.abs(np.fft.rfft(out, axis=-1)) / (SR / 2)  # 1 Hz bins: tone hz at bin hz
    assert out.dtype == np.float32 and out.shape == rows.shape
    np.testing.assert_allclose(amplitude[0, [500, 2900]], 1.0, atol=1e-4)
    assert amplitude[0, 3250] == pytest.approx(0.5, abs=1e-3)  # half way down the roll-off
    assert np.all(amplitude[0, [3600, 7000]] < 1e-4)
    np.testing.assert_allclose(amplitude[1, [500, 2900, 3250, 3600]], 1.0, atol=1e-4)
    assert amplitude[1, 7000] < 1e-4


@pytest.mark.one_backend
def test_augmentation_low_passes_the_share_of_views_it_is_asked_to(tmp_path):
    rng = np.random.default_rng(0)
    views = rng.uniform(-0.1, 0.1, (2, 64, SR)).astype(np.float32)  # white: energy to 8 kHz
    plain = {"max_gain_db": 0.0, "probability": 0.0}
    kept = augment_views(views, np.random.default_rng(1), plain)
    np.testing.assert_array_equal(kept, views)
    out = augment_views(views, np.random.default_rng(1),
                        {**plain, "lowpass_probability": 0.5, "lowpass_hz": (2000.0, 6000.0)})
    spectrum = np.abs(np.fft.rfft(out, axis=-1)) ** 2
    above_6k = spectrum[..., 6000:].sum(-1) / spectrum.sum(-1)  # white noise: 0.25
    passed = above_6k < 1e-6
    assert 0.3 < passed.mean() < 0.7  # about half the views
    np.testing.assert_array_equal(out[~passed], views[~passed])  # the others as they were
    with pytest.raises(Exception, match="lowpass, spread, projection_hidden, predict_features, "
                                        "predict_frames and mask_frames are for "):
        from keras_dae.training import Trainer
        Trainer(None, None, None, tmp_path, TrainConfig(lowpass=0.5))
    with pytest.raises(SystemExit):  # keras-dae train has no --lowpass
        cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                  "--lowpass", "0.5"])


@pytest.mark.one_backend
def test_spread_terms_are_vicregs_and_the_rank_tells_a_collapsed_embedding():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.5, (16, 6)).astype(np.float32)
    x[:, 1] = 2 * x[:, 0]  # two dimensions that move together
    layer = EmbeddingSpread(weight=2.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    centred = x - x.mean(0)
    covariance = centred.T @ centred / 15
    variance_term = np.mean(np.maximum(0.0, 1 - np.sqrt(np.diag(covariance) + 1e-4)))
    covariance_term = (np.sum(covariance ** 2) - np.sum(np.diag(covariance) ** 2)) / 6
    assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(
        2 * (variance_term + covariance_term), rel=1e-5)
    collapsed = EmbeddingSpread(weight=1.0)
    collapsed(np.tile(x[:1], (16, 1)))  # every row the same: no spread, no covariance
    assert float(keras.ops.convert_to_numpy(collapsed.losses[0])) == pytest.approx(0.99, 1e-5)
    assert effective_rank(x) < effective_rank(rng.normal(size=(16, 6)))
    line = np.outer(rng.normal(size=50), rng.normal(size=6)) + rng.normal(size=6)  # + offset
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.concatenate([np.eye(6), -np.eye(6)]) + 3) == pytest.approx(6.0)
    with pytest.raises(Exception, match="finite"):
        effective_rank(np.full((4, 3), np.nan))


@pytest.mark.one_backend
def test_feature_prediction_regresses_the_clip_statistics_linearly():
    """PASE's regression worker: the targets are each feature's mean and standard deviation
    over the frames, standardised over the clips they were adapted on; the loss is the weight
    times the mean squared error of a linear map."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 7, 3)).astype(np.float32)
    b = rng.normal(2.0, 3.0, size=(4, 5, 2)).astype(np.float32)
    statistics = np.concatenate([a.mean(1), a.std(1), b.mean(1), b.std(1)], axis=-1)
    layer = ClipStatistics()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([a, b])), statistics,
                               rtol=1e-4, atol=1e-4)  # not adapted yet: as they are
    layer.adapt([a, b])
    targets = keras.ops.convert_to_numpy(layer([a, b]))
    np.testing.assert_allclose(targets, (statistics - statistics.mean(0)) / statistics.std(0),
                               rtol=1e-3, atol=1e-3)
    embedding = rng.normal(size=(4, 6)).astype(np.float32)
    layer = FeaturePrediction(10, weight=0.5)
    out = layer([[embedding, embedding[::-1]], [targets, targets]])  # two views
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out[1]), embedding[::-1])
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.regression.weights)
    expected = 0.5 * (np.mean((embedding @ kernel + bias - targets) ** 2)
                      + np.mean((embedding[::-1] @ kernel + bias - targets) ** 2))
    assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(expected, 1e-5)
    learned = {name: frontends for name, frontends in default_stream_frontends(SR).items()
               if name == "end_to_end"}
    with pytest.raises(Exception, match="needs a handcrafted stream to predict"):
        DiverseContrastive.with_default_frontends(SR, tower=PRESETS["diverse_tiny"]["tower"],
                                                  streams=learned, prediction_weight=1.0)


@pytest.mark.one_backend
def test_frame_targets_average_the_features_onto_the_towers_frames():
    """`--predict-frames`' targets: each handcrafted stream standardised per feature (over the
    frames it was adapted on), then averaged over the frames that fall in each of the tower's
    output frames; the tower's frames are those its embedding is the mean of."""
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, size=(2, 7, 3)).astype(np.float32)  # 7 frames onto 3
    b = rng.normal(-1.0, 0.5, size=(2, 3, 2)).astype(np.float32)  # 3 frames onto 3
    layer = FrameFeatures(2)
    layer.adapt([a, b])
    out = keras.ops.convert_to_numpy(layer([a, b, np.zeros((2, 3, 4), np.float32)]))
    assert out.shape == (2, 3, 5)
    za = (a - a.reshape(-1, 3).mean(0)) / a.reshape(-1, 3).std(0)
    zb = (b - b.reshape(-1, 2).mean(0)) / b.reshape(-1, 2).std(0)
    groups = [[0, 1, 2], [3, 4], [5, 6]]  # floor(j * 3 / 7)
    expected_a = np.stack([za[:, g].mean(1) for g in groups], axis=1)
    np.testing.assert_allclose(out[..., :3], expected_a, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out[..., 3:], zb, rtol=1e-3, atol=1e-3)
    tower = DiverseContrastive.with_default_frontends(
        SR, tower=PRESETS["diverse_fsd50k"]["tower"]).backbone.towers["timbre"]
    features = rng.normal(size=(2, 101, 31)).astype(np.float32)
    frames = keras.ops.convert_to_numpy(tower(features, return_sequence=True))
    assert frames.shape == (2, tower.output_frames(101), 64) == (2, 26, 64)  # pooled twice
    np.testing.assert_allclose(frames.mean(1), keras.ops.convert_to_numpy(tower(features)),
                               rtol=1e-5, atol=1e-5)
    assert temporal_share(np.repeat(frames[:, :1], 26, axis=1)) == 0.0  # time averaged away
    assert 0.1 < temporal_share(frames) < 1.0
    independent = rng.normal(size=(500, 4, 8))  # frames independent: (T - 1) / T
    assert temporal_share(independent) == pytest.approx(0.75, abs=0.02)
    with pytest.raises(Exception, match="finite"):
        temporal_share(np.full((2, 3, 4), np.inf))


@pytest.mark.one_backend
def test_masked_prediction_masks_every_towers_frames_in_training_only(corpus, tmp_path,
                                                                       monkeypatch):
    """`--mask-frames 0.6 --predict-frames 1`: in the training steps every tower sees spans of
    its input frames masked (zeroed after normalisation; 46% of them on average), in
    validation none; the backbone saved is the architecture's (no masking), the report says
    what was asked, and a share outside [0, 1] is refused."""
    masked = {"train": [], "val": []}
    call = FeatureMasking.call

    def spy(self, inputs, training=None):
        out = call(self, inputs, training=training)
        frames = np.all(keras.ops.convert_to_numpy(out) == 0.0, axis=-1)  # (batch, frames)
        masked["train" if training else "val"].append(frames.mean())
        return out

    monkeypatch.setattr(FeatureMasking, "call", spy)
    out = tmp_path / "run"
    assert _pretrain_cli(corpus, out, 1, "--predict-frames", "1", "--mask-frames", "0.6") == 0
    monkeypatch.setattr(FeatureMasking, "call", call)
    assert len(masked["train"]) >= 4 * 2 * (32 // 8)  # four towers, two views, every step
    assert 0.3 < np.mean(masked["train"]) < 0.6
    assert masked["val"] and max(masked["val"]) == 0.0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["mask_frames"] == 0.6
    assert report["history"][0]["val_added_loss"] > 0  # the frame regression
    preset = DiverseContrastive.from_preset(out / "preset")
    assert all(tower.feature_masking is None and not tower.masking.active
               for tower in preset.backbone.towers.values())
    assert frame_masking(0.6) == {"time_masks": 4, "time_mask_fraction": 0.3,
                                  "feature_masks": 0}
    with pytest.raises(SystemExit):
        _pretrain_cli(corpus, tmp_path / "bad", 1, "--mask-frames", "1.5")


@pytest.mark.one_backend
def test_pretraining_can_start_from_small_tied_attention(corpus, tmp_path, monkeypatch):
    """`keras-dae pretrain --reinit-attention`: the towers the first step sees have every
    block's query, key and value kernels drawn the same (`reinitialize_attention`), where Keras'
    own draw gives three different ones; the report says which was asked."""
    tied = []
    init = Pretrainer.__init__

    def spy(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        tied.extend(all(np.array_equal(*(keras.ops.convert_to_numpy(d.kernel) for d in pair))
                        for pair in ((b._attention.query_dense, b._attention.key_dense),
                                     (b._attention.query_dense, b._attention.value_dense)))
                    for t in model.backbone.towers.values() for b in t.blocks)

    monkeypatch.setattr(Pretrainer, "__init__", spy)
    for flags, drawn in (([], False), (["--reinit-attention"], True)):
        tied.clear()
        out = tmp_path / f"run_{drawn}"
        assert _pretrain_cli(corpus, out, 1, *flags) == 0
        assert len(tied) == 4 * PRESETS["diverse_tiny"]["tower"]["num_layers"]
        assert all(t is drawn for t in tied)
        assert json.loads((out / "report.json").read_text())["config"][
            "reinit_attention"] is drawn


@pytest.mark.one_backend
def test_too_few_files_for_a_batch_and_a_batch_of_one_pair_are_refused(corpus):
    data = read_unlabelled(corpus)
    with pytest.raises(Exception, match="41 audio files: too few .* batches of 32"):
        split_files(data, 0.05, 32, 0)
    train, val = split_files(data, 0.05, 8, 0)
    assert len(val) == 8 and len(train) == 33
    with pytest.raises(Exception, match="at least 2 pairs"):  # no negatives, no spread
        pretrain_run(corpus, corpus.parent / "one", "diverse_tiny",
                     TrainConfig(batch_size=1, spread=1.0))
    assert set(map(str, train.paths)).isdisjoint(map(str, val.paths))


def test_contrastive_model_trains_scores_pairs_and_round_trips_through_keras_file(tmp_path):
    """On every backend: one step of the objective (with the embeddings' spread terms and the
    timbre features' prediction, of their clip statistics and frame by frame, both views of
    each counted in the loss) reaches the learned front ends, and the model saves to `.keras`
    and reloads with equal outputs. The learned streams and timbre (the whole runs below train
    all four)."""
    keras.utils.set_random_seed(0)
    learned = {name: frontends for name, frontends in default_stream_frontends(SR).items()
               if name in ("neuralogram", "end_to_end", "timbre")}
    model = DiverseContrastive.with_default_frontends(SR, tower=PRESETS["diverse_tiny"]["tower"],
                                                      streams=learned, spread_weight=1.0,
                                                      projection_hidden=8,
                                                      prediction_weight=0.5,
                                                      frame_prediction_weight=0.25)
    assert [layer.name for layer in model.projections["end_to_end"].layers] == [
        "hidden", "dense", "norm", "tanh"]  # SimCLR's hidden ReLU layer, then COLA's head
    x = {"anchor": np.random.default_rng(0).uniform(-0.5, 0.5, (3, SR)).astype("float32"),
         "positive": np.random.default_rng(1).uniform(-0.5, 0.5, (3, SR)).astype("float32")}
    front_ends = [model.featurizer.streams[s][0] for s in ("neuralogram", "end_to_end")]
    before = [_weights(layer) for layer in front_ends]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    targets = {s: np.arange(3, dtype="int32") for s in model.stream_names}
    logs = model.train_on_batch(x, targets, return_dict=True)
    assert np.isfinite(logs["loss"])  # the streams' losses and, above them, the spread terms
    streams = ("neuralogram", "end_to_end", "timbre")
    assert logs["loss"] > sum(logs[f"{s}_loss"] for s in streams) + 1e-3
    logs = model.evaluate(x, targets, return_dict=True, verbose=0)
    model(x)  # eagerly: the spread and both prediction terms of both views, 3 streams
    added = [float(keras.ops.convert_to_numpy(term)) for term in model.losses]
    assert len(added) == 9 and all(term > 0 for term in added)
    assert logs["loss"] == pytest.approx(sum(logs[f"{s}_loss"] for s in streams) + sum(added),
                                         rel=1e-4)
    for layer, old in zip(front_ends, before, strict=True):
        assert any(not np.allclose(a, b) for a, b in zip(old, _weights(layer), strict=True))
    out = {k: keras.ops.convert_to_numpy(v) for k, v in model(x).items()}
    assert set(out) == set(streams)
    assert all(v.shape == (3, 3) for v in out.values())
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.spread_weight == 1.0 and again.projection_hidden == 8
    assert again.prediction_weight == 0.5 and again.frame_prediction_weight == 0.25
    for k, v in again(x).items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), out[k], rtol=1e-5, atol=1e-5)


class _Stopped(Exception):
    """The run stopped after its first epoch's checkpoint (as a kill would stop it)."""


@pytest.fixture(scope="module")
def pretrained_run(corpus, tmp_path_factory):
    """`keras-dae pretrain` of diverse_tiny for two epochs, stopped after the first epoch's
    checkpoint, then `--resume`d; returns the run directory and the first epoch's history.
    Eager steps: compiling them would take longer than the eight steps take."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    original = Pretrainer._end_of_epoch

    def stop_after_first_epoch(self, stage, epoch, logs):
        original(self, stage, epoch, logs)
        if epoch == 0:
            raise _Stopped

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pretrainer, "_end_of_epoch", stop_after_first_epoch)
        with pytest.raises(_Stopped):
            pretrain_run(corpus, out, "diverse_tiny", TrainConfig(
                tower_epochs=2, batch_size=8, jit_compile=False), val_fraction=0.2)
    first = json.loads((out / "checkpoint" / "state.json").read_text())["history"]
    assert not (out / "preset").exists()
    assert cli.main(["pretrain", "--data", str(corpus), "--out", str(out), "--preset",
                     "diverse_tiny", "--batch-size", "8", "--val-fraction", "0.2", "--epochs",
                     "2", "--jit-compile", "off", "--resume"]) == 0
    return out, first


@pytest.mark.one_backend
def test_pretraining_trains_every_tower_and_front_end_and_resumes(pretrained_run, corpus):
    out, first = pretrained_run
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert len(first) == 1 and report["history"][0] == first[0]  # resumed, not restarted
    assert report["cost"]["epochs"] == 2 and report["cost"]["steps"] == 2 * (32 // 8)
    seconds = sum(soundfile.info(p).duration for p in corpus.rglob("*.flac"))
    assert report["cost"]["audio_hours"] == pytest.approx(seconds / 3600, rel=1e-6)
    assert "notes.wav" in next(iter(report["skipped"]))
    keras.utils.set_random_seed(0)
    fresh = DiverseContrastive.with_default_frontends(SR, tower=PRESETS["diverse_tiny"]["tower"])
    trained = DiverseContrastive.from_preset(out / "preset")
    for stream in fresh.stream_names:  # every tower moved, and the front ends with weights
        before, after = _weights(fresh.backbone.towers[stream]), _weights(
            trained.backbone.towers[stream])
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True)), stream
    for stream in ("neuralogram", "end_to_end"):
        layer = trained.featurizer.streams[stream][0]
        assert layer.trainable_weights
        assert any(not np.allclose(a, b) for a, b in zip(
            _weights(fresh.featurizer.streams[stream][0]), _weights(layer), strict=True))


def _pretrain_cli(corpus, out, epochs, *extra):
    return cli.main(["pretrain", "--data", str(corpus), "--out", str(out), "--preset",
                     "diverse_tiny", "--batch-size", "8", "--val-fraction", "0.2", "--epochs",
                     str(epochs), "--jit-compile", "off", *extra])


@pytest.mark.one_backend
def test_a_finished_run_resumed_with_more_epochs_trains_on(pretrained_run, corpus, tmp_path,
                                                          capsys):
    run, _ = pretrained_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = json.loads((out / "report.json").read_text())
    assert _pretrain_cli(corpus, out, 2, "--resume") == 2  # nothing to add
    assert "finished after 2 epochs: --resume with --epochs above 2" in capsys.readouterr().err
    assert before["best_epoch"] == 1  # the last epoch is the kept one: the run goes on from it
    assert _pretrain_cli(corpus, out, 3, "--resume") == 0
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2]
    assert report["history"][:2] == before["history"]  # continued, not restarted
    assert report["cost"]["epochs"] == 3 and report["cost"]["steps"] == 3 * (32 // 8)
    metadata = json.loads((out / "preset" / "metadata.json").read_text())
    assert metadata["pretraining"]["epochs"] == 3
    # A run whose last epoch scored worse than an earlier one keeps the earlier epoch's
    # weights: its checkpoint is not where it stopped, so it is not continued.
    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["history"][0]["val_loss"] = min(h["val_loss"] for h in state["history"]) - 1.0
    state_path.write_text(json.dumps(state))
    epochs = len(state["history"])
    assert _pretrain_cli(corpus, out, epochs + 1, "--resume") == 2
    assert f"kept epoch 1 of {epochs}" in capsys.readouterr().err
    assert json.loads(state_path.read_text())["stage"] == "done"  # left as it was


@pytest.mark.one_backend
def test_backbone_preset_takes_new_heads_and_refuses_to_tag_without(pretrained_run):
    out, _ = pretrained_run
    backbone = DiverseContrastive.from_preset(out / "preset")
    with pytest.raises(PresetError, match="a pretrained backbone without classes.*finetune"):
        DiverseClassifier.from_preset(out / "preset")
    model = DiverseClassifier.from_preset(out, class_names=["dog", "bell", "cat"])
    assert model.num_classes == 3 and model.class_names == ["dog", "bell", "cat"]
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, SR)).astype("float32")
    features = backbone.featurizer(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.backbone(features)["embedding"]),
                               keras.ops.convert_to_numpy(
                                   backbone.backbone(features)["embedding"]), atol=1e-6)
    assert model(x)["fused"].shape == (2, 3)


@pytest.fixture
def labelled_data(pretrained_run, tmp_path, monkeypatch):
    """The pretraining run's backbone installed as `diverse_pretrained` (in a KERAS_DAE_HOME
    of the test's own) and a small labelled dataset in FSD50K's layout, returned."""
    from fsd50k_fixture import write_small_fsd50k

    out, _ = pretrained_run
    home = tmp_path / "home"
    shutil.copytree(out / "preset", home / "presets" / "diverse_pretrained")
    monkeypatch.setenv("KERAS_DAE_HOME", str(home))
    return write_small_fsd50k(tmp_path / "fsd50k", per_class=(4, 2, 2))


@pytest.mark.one_backend
def test_train_and_finetune_start_from_the_pretrained_preset(labelled_data, tmp_path):
    data = labelled_data
    assert cli.main(["train", "--data", str(data), "--out", str(tmp_path / "train"),
                     "--preset", "diverse_pretrained", "--epochs", "1", "--fusion-epochs",
                     "1", "--joint-epochs", "0", "--batch-size", "8", "--jit-compile", "off"]) == 0
    pretrained = DiverseContrastive.from_preset("diverse_pretrained")
    assert cli.main(["finetune", "--from", "diverse_pretrained", "--data", str(data), "--out",
                     str(tmp_path / "probe"), "--mode", "probe"]) == 0
    probe = DiverseClassifier.from_preset(tmp_path / "probe")
    for stream in probe.stream_names:  # a probe keeps the pretrained towers as they are
        for a, b in zip(_weights(probe.backbone.towers[stream]),
                        _weights(pretrained.backbone.towers[stream]), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.one_backend
def test_train_draws_the_attention_small_by_default_and_keeps_the_rest(labelled_data, tmp_path,
                                                                       capsys):
    """`keras-dae train --preset diverse_pretrained` draws every block's attention from its
    initializers (biases zero) and adapts the feature normalisation on the training clips by
    default, and keeps everything else as pretrained (no tower epochs here, so nothing else
    moves); `--no-reinit-attention --no-adapt-normalization` keeps the attention and the
    pretraining corpus's statistics too; random towers get their attention drawn the same way
    unless `--no-reinit-attention` keeps Keras' draw; each flag is refused where it means
    nothing."""
    data = labelled_data
    pretrained = DiverseContrastive.from_preset("diverse_pretrained")
    for flags, drawn in (([], True), (["--no-reinit-attention", "--no-adapt-normalization"],
                                      False)):
        out = tmp_path / f"train_{drawn}"
        assert cli.main(["train", "--data", str(data), "--out", str(out), "--preset",
                         "diverse_pretrained", "--epochs", "0", "--fusion-epochs", "1",
                         "--joint-epochs", "0", "--batch-size", "8", "--jit-compile", "off",
                         *flags]) == 0
        config = json.loads((out / "report.json").read_text())["config"]
        assert config["reinit_attention"] is drawn and config["adapt_normalization"] is drawn
        trained = DiverseClassifier.from_preset(out)
        for stream in trained.stream_names:
            norm, pre = (keras.ops.convert_to_numpy(m.backbone.towers[stream].normalization.mean)
                         for m in (trained, pretrained))
            assert np.allclose(norm, pre) is not drawn  # adapted on the labelled clips, or kept
            for new, old in zip(trained.backbone.towers[stream].blocks,
                                pretrained.backbone.towers[stream].blocks, strict=True):
                for a, b in zip(new.weights, old.weights, strict=True):
                    x, y = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
                    if drawn and "/self_attention_layer/" in a.path:  # drawn anew
                        assert not np.allclose(x, y)
                        if a.path.endswith("bias"):
                            assert not x.any()
                        elif "attention_output" not in a.path:  # query, key and value tied
                            np.testing.assert_array_equal(x, keras.ops.convert_to_numpy(
                                new._attention.query_dense.kernel))
                    else:  # the norms and feed-forward layers (all, kept) as pretrained
                        np.testing.assert_array_equal(x, y)
    train = ["train", "--data", str(data), "--out", str(tmp_path / "random"), "--preset",
             "diverse_tiny"]
    for flags, drawn in (([], True), (["--no-reinit-attention"], False)):  # random towers
        assert cli.main(train + ["--epochs", "0", "--fusion-epochs", "1", "--joint-epochs", "0",
                                 "--batch-size", "8", "--jit-compile", "off", "--overwrite",
                                 *flags]) == 0
        assert json.loads((tmp_path / "random" / "report.json").read_text())[
            "config"]["reinit_attention"] is drawn
        trained = DiverseClassifier.from_preset(tmp_path / "random")
        for block in (b for t in trained.backbone.towers.values() for b in t.blocks):
            query, key, value = (keras.ops.convert_to_numpy(d.kernel) for d in (
                block._attention.query_dense, block._attention.key_dense,
                block._attention.value_dense))
            # drawn small with query, key and value tied, or as Keras draws them
            assert (np.array_equal(query, key) and np.array_equal(query, value)) is drawn
    capsys.readouterr()
    finetune = ["finetune", "--from", "diverse_pretrained", "--data", str(data), "--out",
                str(tmp_path / "probe")]
    for argv, says in ((finetune + ["--reinit-attention"], "--reinit-attention is for `keras-dae"),
                       (train + ["--overwrite", "--no-adapt-normalization"], "no statistics to keep"),
                       (finetune + ["--adapt-normalization"], "finetune keeps the preset's")):
        assert cli.main(argv) == 2
        assert says in capsys.readouterr().err


@pytest.mark.one_backend
def test_the_named_preset_says_how_to_make_its_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_DAE_HOME", str(tmp_path))
    with pytest.raises(PresetError, match="No weights for preset 'diverse_pretrained'.*"
                       "scripts/pretrain_preset.sh"):
        DiverseClassifier.from_preset("diverse_pretrained", class_names=["a", "b"])
    random = DiverseClassifier.from_preset("diverse_pretrained", load_weights=False,
                                           class_names=["a", "b"])
    assert random.num_classes == 2
    assert random.stream_names == ["pitch", "timbre", "neuralogram", "end_to_end"]
