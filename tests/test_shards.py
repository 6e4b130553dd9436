"""ArrayRecord shards: written once from the audio, read back as the ChunkLoader would cut it,
shuffled per (seed, epoch) by grain, trained on, and with bounded memory at FSD50K's size."""


import numpy as np
import pytest
from fsd50k_fixture import write_small_fsd50k

pytest.importorskip("grain")
pytest.importorskip("array_record")

from keras_dae.data import ChunkLoader, ShardLoader, ShardSet, read_fsd50k, write_shards  # noqa: E402
from keras_dae.data.shards import ShardWriter, decode_chunk, encode_chunk  # noqa: E402

# Under tests/run.sh, on one backend only; .ci/run's environment without TensorFlow shards and
# trains from shards on JAX and PyTorch (tests/test_without_tensorflow.py).
pytestmark = pytest.mark.one_backend

# int16 with a per-chunk scale: at most half a step of peak / 32767, plus float32 rounding.
QUANTISATION = 1.01 / 65534


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_small_fsd50k(tmp_path_factory.mktemp("fsd50k"))


@pytest.fixture(scope="module")
def train_with_bad_files(data_dir):
    """The fixture's train split plus an empty file and a text file posing as WAV."""
    train = read_fsd50k(data_dir, "train")
    audio = data_dir / "FSD50K.dev_audio"
    (audio / "empty.wav").write_bytes(b"")
    (audio / "text.wav").write_text("not audio")
    bad = train.subset([0, 1])
    bad.paths = [audio / "empty.wav", audio / "text.wav"]
    bad.clip_ids = ["empty", "text"]
    from keras_dae.data import ClipDataset

    return ClipDataset(paths=train.paths + bad.paths,
                       targets=np.concatenate([train.targets, bad.targets]),
                       labels=train.labels, mids=train.mids,
                       clip_ids=train.clip_ids + bad.clip_ids)


@pytest.fixture(scope="module")
def shards(train_with_bad_files, tmp_path_factory):
    return write_shards(train_with_bad_files, tmp_path_factory.mktemp("shards"), shard_size=10)


def test_record_round_trip():
    rng = np.random.default_rng(0)
    for peak in (1.0, 0.3, 1e-3, 0.0):
        waveform = (peak * rng.uniform(-1, 1, 1000)).astype(np.float32)
        record = decode_chunk(encode_chunk(waveform, [3, 7], clip=5, chunk=2))
        assert (record["clip"], record["chunk"]) == (5, 2)
        assert record["labels"].tolist() == [3, 7]
        assert record["waveform"].dtype == np.float32
        np.testing.assert_allclose(record["waveform"], waveform, rtol=0,
                                   atol=QUANTISATION * max(peak, 1e-30))
    with pytest.raises(ValueError, match="not a keras-dae chunk record"):
        decode_chunk(b"something else entirely")


def test_shards_hold_the_chunk_loaders_chunks(shards, train_with_bad_files):
    """Every record is the ChunkLoader's chunk of the same (clip, chunk), within the stated
    quantisation error, with its clip's labels; bad files are skipped and reported."""
    loader = ChunkLoader(train_with_bad_files, batch_size=8, shuffle=False)
    good = [i for i, p in enumerate(train_with_bad_files.paths) if str(p) not in loader.skipped]
    assert len(shards) == loader.n_items > 0
    assert shards.n_clips == len(good) == len(train_with_bad_files) - 2
    assert sorted(shards.skipped) == sorted(loader.skipped)
    assert {"empty file (0 bytes)"} <= set(shards.skipped.values())
    assert len(shards.index["files"]) == -(-len(shards) // 10)
    worst = 0.0
    for item in range(len(shards)):
        record = shards[item]
        clip = good[record["clip"]]
        assert clip == loader.clip_index[item] and record["chunk"] == loader.chunk_index[item]
        assert shards.clip_ids[record["clip"]] == train_with_bad_files.clip_ids[clip]
        reference = loader.chunk(item)
        peak = np.abs(reference).max()
        worst = max(worst, np.abs(record["waveform"] - reference).max() / peak)
        np.testing.assert_array_equal(shards.item_targets([item])[0],
                                      train_with_bad_files.targets[clip])
    assert worst <= QUANTISATION, worst * 65534


def test_refuses_to_overwrite_and_leaves_no_partial_index(shards, train_with_bad_files, tmp_path):
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(train_with_bad_files, shards.directory)
    out = tmp_path / "partial"
    with pytest.raises(RuntimeError), ShardWriter(out, ["a"], sample_rate=16000) as writer:
        writer.add_clip("x", np.zeros((2, 16000), np.float32), [0])
        raise RuntimeError("interrupted")
    assert not (out / "shards.json").exists() and not list(out.glob("chunks-*"))
    with pytest.raises(FileNotFoundError, match="no shard index"):
        ShardSet(out)


def test_shuffle_is_a_function_of_seed_and_epoch(shards):
    def order(seed, epoch, **kwargs):
        loader = ShardLoader(shards, batch_size=4, seed=seed, epoch=epoch, **kwargs)
        return np.concatenate([loader.batch_items(i) for i in range(len(loader))])

    first = order(0, 0)
    assert sorted(first) == list(range(len(shards)))  # every chunk once per epoch
    np.testing.assert_array_equal(first, order(0, 0))
    assert not np.array_equal(first, order(0, 1))
    assert not np.array_equal(first, order(1, 0))
    # grain's own per-epoch seeds are seed + epoch; ours are independent streams.
    assert not np.array_equal(order(0, 1), order(1, 0))
    np.testing.assert_array_equal(order(0, 0, shuffle=False), np.arange(len(shards)))
    # The loader's epoch protocol: on_epoch_end moves on, set_epoch jumps back.
    loader = ShardLoader(shards, batch_size=4, seed=0)
    loader.on_epoch_end()
    np.testing.assert_array_equal(loader.batch_items(0), order(0, 1)[:4])
    # Batches carry what batch_items says, waveforms and targets in the fit format.
    loader = ShardLoader(shards, batch_size=4, seed=3, target_names=("fused", "pitch"))
    x, y = loader[1]
    items = loader.batch_items(1)
    assert x.shape == (4, shards.chunk_samples) and x.dtype == np.float32
    assert set(y) == {"fused", "pitch"} and y["fused"].dtype == np.float32
    np.testing.assert_array_equal(y["fused"], shards.item_targets(items))
    np.testing.assert_array_equal(x[0], shards[items[0]]["waveform"])
    balanced = [ShardLoader(shards, batch_size=4, seed=0, balanced=True).batch_items(0)
                for _ in range(2)]
    np.testing.assert_array_equal(*balanced)


def test_training_on_shards(data_dir, shards, tmp_path):
    """The trainer (and `keras-dae train --shards`) takes a ShardSet for its training data."""
    import keras

    from keras_dae import training
    from keras_dae.models import build_diverse_classifier
    from keras_dae.zoo import PRESETS

    val = read_fsd50k(data_dir, "val")
    keras.utils.set_random_seed(0)
    model = build_diverse_classifier(len(shards.labels), tower=PRESETS["diverse_tiny"]["tower"])
    config = training.TrainConfig(tower_epochs=1, fusion_epochs=1, joint_epochs=0, batch_size=8,
                                  normalization_chunks=16)
    trainer = training.Trainer(model, shards, val, tmp_path / "run", config, verbose=0)
    state = trainer.run()
    assert [(h["stage"], h["epoch"]) for h in state["history"]] == [
        ("towers", 0), ("fusion", -1), ("fusion", 0)]  # -1: the fusion stage's start
    assert np.isfinite([h["loss"] for h in state["history"] if h["epoch"] >= 0]).all()
    with pytest.raises(ValueError, match="shards hold"):
        training.Trainer(model, shards, val, tmp_path / "r2",
                         training.TrainConfig(hop_seconds=0.25))


def test_shard_command(data_dir, tmp_path, capsys):
    from keras_dae.cli import main as cli_main

    out = tmp_path / "shards"
    assert cli_main(["shard", "--data", str(data_dir), "--out", str(out), "--split", "val"]) == 0
    assert "wrote ShardSet" in capsys.readouterr().out
    assert ShardSet(out).n_clips == len(read_fsd50k(data_dir, "val"))
    assert cli_main(["shard", "--data", str(data_dir), "--out", str(out), "--split", "val"]) == 2
    assert "already holds shards" in capsys.readouterr().err


# Bounded memory at FSD50K's size: the measurements of benchmarks/data_memory.py (each in a
# fresh process, tracemalloc started after the imports), with bounds that would fail if a
# loader held the decoded audio.


@pytest.mark.slow
def test_fsd50k_sized_index_has_bounded_memory(tmp_path):
    """50,000 clips in FSD50K's layout with its 200-class vocabulary (links to a few real
    recordings): reading the index and building the loader stays under 100 MB of
    Python/numpy allocations, and fetching batches from across the epoch adds no more than
    the loader's clip cache (`cache_mb`, 16 here) and a batch. Most of the index is the
    dataset's float32 target matrix (45,000 train clips x 200 x 4 bytes = 34 MB); holding
    the decoded chunks instead would take 5 GB."""
    from benchmarks import data_memory

    result = data_memory.measure("index", data_memory.write_fsd50k_index(tmp_path / "fsd50k"))
    assert result["n_clips"] > 40_000 and result["n_items"] >= 50_000
    assert result["index_mb"] < 100, result
    assert result["peak_mb"] < result["index_mb"] + 16 + 20, result


@pytest.mark.one_backend("tensorflow")  # no Keras code; the run with time to spare
def test_reading_300k_shard_records_has_bounded_memory(tmp_path):
    """An FSD50K-sized shard set (300,000 records, 10 ms each to spare the disk: the index
    structures scale with the record count, not the record size): streaming batches from
    across two epochs stays under 20 MB of Python/numpy allocations and grows the process by
    under 50 MB in all (ArrayRecord's native readers included); holding the records would
    take 190 MB here (and 19 GB with 1 s chunks)."""
    from benchmarks import data_memory

    result = data_memory.measure("shards", data_memory.write_shard_set(tmp_path / "shards"))
    assert result["n_items"] == 300_000
    assert result["peak_mb"] < 20, result
    assert result["rss_growth_mb"] < 50, result
