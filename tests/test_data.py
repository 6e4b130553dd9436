"""keras_dae.data: FSD50K/CSV/folder readers, chunking, and the streaming loader.

The datasets are built in tmp_path from the real recordings of tests/data, written with
soundfile at 44.1 kHz (WAV and FLAC, mono and stereo, 0.3 s to 3.3 s), plus broken files.
"""

import csv
import json
import logging
import math
import os
import shutil
import tracemalloc
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.signal
import soundfile
from conftest import DATA_DIR

from keras_dae.audio import load_audio
from keras_dae.data import (
    ChunkLoader,
    ClipDataset,
    chunk_count,
    chunk_sample_starts,
    chunk_starts,
    chunk_waveform,
    detect_format,
    iterate_clips,
    read_csv_dataset,
    read_folder_dataset,
    read_fsd50k,
    read_fsd50k_vocabulary,
    read_split,
    write_fsd50k_layout,
)

SR = 16000
FILE_SR = 44100

VOCABULARY = [
    ("Speech", "/m/09x0r"),
    ("Male_speech_and_man_speaking", "/m/05zppz"),
    ("Human_voice", "/m/09l8g"),
    ("Camera", "/m/0dv5r"),
    ("Mechanisms", "/t/dd00077"),
    ("Telephone", "/m/07cx4"),
    ("Ringtone", "/m/01hnzm"),
]
MID = dict(VOCABULARY)


def recording(name: str, seconds: float | None = None, stereo: bool = False) -> np.ndarray:
    """A tests/data recording at 44.1 kHz, (samples, channels), tiled or cut to `seconds`."""
    audio, sr = soundfile.read(DATA_DIR / name, dtype="float32", always_2d=True)
    if not stereo:
        audio = audio.mean(axis=1, keepdims=True)
    g = math.gcd(sr, FILE_SR)
    audio = scipy.signal.resample_poly(audio, FILE_SR // g, sr // g, axis=0)
    if seconds is not None:
        n = int(round(seconds * FILE_SR))
        audio = np.resize(audio.T, (audio.shape[1], n)).T  # tiles along time
    return np.clip(audio, -1, 1).astype(np.float32)


def row(fname, labels, split=None):
    out = (fname, labels, [MID[x] for x in labels])
    return out if split is None else (*out, split)


# fname -> (recording, seconds, stereo); None seconds = the whole recording
CLIPS = {
    "1001": ("speech_front_center.wav", None, False),  # 1.43 s
    "1002": ("camera_shutter.oga", None, True),  # 0.87 s, stereo
    "1003": ("phone_incoming_call.oga", 3.3, False),
    "1004": ("speech_front_center.wav", 0.3, False),
    "1005": ("camera_shutter.oga", 2.2, False),
    "2001": ("phone_incoming_call.oga", None, False),
    "2002": ("speech_front_center.wav", 2.5, False),
}
DEV = [
    row("1001", ["Male_speech_and_man_speaking", "Speech", "Human_voice"], "train"),
    row("1002", ["Camera", "Mechanisms"], "train"),
    row("1003", ["Telephone", "Ringtone"], "train"),
    row("1006", ["Camera"], "train"),  # a 0-byte file
    row("1007", ["Telephone"], "train"),  # a text file named .wav
    row("1008", ["Speech"], "train"),  # listed, but no audio file
    row("1004", ["Speech", "Human_voice"], "val"),
    row("1005", ["Camera", "Mechanisms"], "val"),
]
EVAL = [row("2001", ["Telephone", "Ringtone"]), row("2002", ["Speech"])]


@pytest.fixture(scope="module")
def fsd(tmp_path_factory):
    root = tmp_path_factory.mktemp("FSD50K")
    paths = write_fsd50k_layout(root, DEV, EVAL, VOCABULARY)
    for fname, (name, seconds, stereo) in CLIPS.items():
        folder = paths["eval_audio"] if fname.startswith("2") else paths["dev_audio"]
        soundfile.write(folder / f"{fname}.wav", recording(name, seconds, stereo), FILE_SR)
    (paths["dev_audio"] / "1006.wav").write_bytes(b"")
    (paths["dev_audio"] / "1007.wav").write_text("not audio at all, just text\n" * 50)
    return root


@pytest.fixture(scope="module")
def train(fsd):
    with pytest.warns(UserWarning, match="1008.wav"):
        return read_fsd50k(fsd, "train")


# ---------------------------------------------------------------------------------------------
# FSD50K


@pytest.mark.one_backend
def test_layout_files_are_in_fsd50k_format(fsd):
    truth = fsd / "FSD50K.ground_truth"
    vocabulary = (truth / "vocabulary.csv").read_text().splitlines()
    assert vocabulary[0] == "0,Speech,/m/09x0r"  # no header
    assert len(vocabulary) == len(VOCABULARY)
    dev = (truth / "dev.csv").read_text().splitlines()
    assert dev[0] == "fname,labels,mids,split"
    assert dev[1] == (
        '1001,"Male_speech_and_man_speaking,Speech,Human_voice","/m/05zppz,/m/09x0r,/m/09l8g",train'
    )
    assert dev[4] == "1006,Camera,/m/0dv5r,train"  # one label: not quoted
    assert (truth / "eval.csv").read_text().splitlines()[0] == "fname,labels,mids"


@pytest.mark.one_backend
def test_read_fsd50k_official_split_and_multi_hot(fsd, train):
    val = read_fsd50k(fsd, "val")
    evaluation = read_fsd50k(fsd, "eval")
    for dataset, rows in ((val, DEV[6:]), (evaluation, EVAL)):
        assert dataset.clip_ids == [r[0] for r in rows]
    assert train.clip_ids == ["1001", "1002", "1003", "1006", "1007"]
    assert [p.name for p in train.missing] == ["1008.wav"]
    assert train.labels == [label for label, _ in VOCABULARY]
    assert train.mids == [mid for _, mid in VOCABULARY]
    for dataset, rows in ((train, DEV), (val, DEV), (evaluation, EVAL)):
        assert dataset.targets.dtype == np.float32
        assert dataset.targets.shape == (len(dataset), len(VOCABULARY))
        by_id = {r[0]: r[1] for r in rows}
        for i, clip_id in enumerate(dataset.clip_ids):
            assert sorted(dataset.clip_labels(i)) == sorted(by_id[clip_id])
            assert dataset.targets[i].sum() == len(by_id[clip_id])
            assert dataset.paths[i].is_file()
    assert evaluation.paths[0].parent.name == "FSD50K.eval_audio"
    assert train.groups is None
    with pytest.raises(ValueError, match="split must be one of"):
        read_fsd50k(fsd, "test")


@pytest.mark.one_backend
def test_read_fsd50k_groups_from_uploaders(fsd, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fsd, root)
    (root / "FSD50K.metadata").mkdir()
    info = {"1004": {"title": "a", "uploader": "alice"}, "1005": {"uploader": "bob"}}
    (root / "FSD50K.metadata" / "dev_clips_info_FSD50K.json").write_text(json.dumps(info))
    val = read_fsd50k(root, "val")
    assert val.groups == ["alice", "bob"]
    assert val.subset([1]).groups == ["bob"]


@pytest.mark.one_backend
def test_read_fsd50k_unknown_label_names_file_row_and_label(fsd, tmp_path):
    root = tmp_path / "bad"
    paths = write_fsd50k_layout(root, DEV, EVAL, VOCABULARY)
    text = paths["dev_csv"].read_text().replace("Camera,Mechanisms", "Camera,Mechanism_typo", 1)
    paths["dev_csv"].write_text(text)
    with pytest.raises(ValueError) as error:
        read_fsd50k(root, "train")
    message = str(error.value)
    assert "dev.csv" in message and "line 3" in message and "'Mechanism_typo'" in message
    with pytest.raises(ValueError, match="not in the vocabulary"):
        write_fsd50k_layout(root, [row("1", ["Speech"], "train")], [], VOCABULARY[1:])


@pytest.mark.one_backend
def test_fsd50k_vocabulary_has_no_header_and_is_ordered_by_index(tmp_path):
    path = tmp_path / "vocabulary.csv"
    path.write_text("1,Telephone,/m/07cx4\n0,Speech,/m/09x0r\n")
    assert read_fsd50k_vocabulary(path) == (["Speech", "Telephone"], ["/m/09x0r", "/m/07cx4"])
    path.write_text("index,label,mid\n0,Speech,/m/09x0r\n")
    with pytest.raises(ValueError, match="no header"):
        read_fsd50k_vocabulary(path)


# ---------------------------------------------------------------------------------------------
# CSV and folder datasets


@pytest.mark.one_backend
def test_csv_dataset(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.flac", recording("speech_front_center.wav"), FILE_SR)
    soundfile.write(audio / "b.wav", recording("phone_incoming_call.oga", 2.1, True), FILE_SR)
    shutter = (DATA_DIR / "camera_shutter.oga").resolve()
    with (tmp_path / "clips.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerow(["audio/a.flac", "speech,voice"])  # quoted: holds a comma
        writer.writerow(["audio/b.wav", "phone; ring"])
        writer.writerow([str(shutter), "camera"])
        writer.writerow(["audio/gone.wav", "camera"])
    assert '"speech,voice"' in (tmp_path / "clips.csv").read_text()
    with pytest.warns(UserWarning, match="gone.wav"):
        dataset = read_csv_dataset(tmp_path / "clips.csv")
    assert dataset.labels == ["camera", "phone", "ring", "speech", "voice"]
    assert dataset.paths == [audio / "a.flac", audio / "b.wav", shutter]
    assert dataset.targets.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert [p.name for p in dataset.missing] == ["gone.wav"]
    # Every path decodes to real audio (FLAC, stereo WAV, Ogg Vorbis).
    for path in dataset.paths:
        assert np.abs(load_audio(path, SR)).max() > 0.01

    with pytest.warns(UserWarning):
        fixed = read_csv_dataset(tmp_path / "clips.csv", labels=["voice", "speech", "ring",
                                                                  "phone", "camera", "dog"])
    assert fixed.targets[0].tolist() == [1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"clips.csv, line 3 .*'ring'"):
        read_csv_dataset(tmp_path / "clips.csv", labels=["speech", "voice", "phone", "camera"])
    (tmp_path / "unquoted.csv").write_text("path,labels\naudio/a.flac,speech,voice\n")
    with pytest.raises(ValueError, match="line 2: more fields"):
        read_csv_dataset(tmp_path / "unquoted.csv")


@pytest.mark.one_backend
def test_folder_dataset(tmp_path):
    root = tmp_path / "folders"
    for sub in ("dog/nested", "phone", "empty", ".hidden"):
        (root / sub).mkdir(parents=True)
    soundfile.write(root / "dog" / "a.wav", recording("speech_front_center.wav", 0.5), FILE_SR)
    soundfile.write(root / "dog" / "nested" / "b.FLAC", recording("camera_shutter.oga"), FILE_SR)
    shutil.copy(DATA_DIR / "phone_incoming_call.oga", root / "phone" / "ring.ogg")
    shutil.copy(DATA_DIR / "camera_shutter.oga", root / "phone" / "shutter.oga")
    shutil.copy(DATA_DIR / "camera_shutter.oga", root / ".hidden" / "x.oga")
    (root / "phone" / "notes.txt").write_text("not audio")
    with pytest.warns(UserWarning, match="empty"):
        dataset = read_folder_dataset(root)
    assert dataset.labels == ["dog", "phone"]
    assert dataset.clip_ids == ["dog/a", "dog/nested/b", "phone/ring", "phone/shutter"]
    assert dataset.targets.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert dataset.label_counts().tolist() == [2, 2]
    sub = dataset.subset(np.array([False, True, True, False]))
    assert sub.clip_ids == ["dog/nested/b", "phone/ring"] and len(sub) == 2
    with pytest.raises(ValueError, match=r"targets must have shape"):
        ClipDataset(dataset.paths, dataset.targets[:, :1], dataset.labels, dataset.mids,
                    dataset.clip_ids)


@pytest.mark.one_backend
def test_read_split_reads_each_layout_and_detects_it(fsd, tmp_path):
    folders = tmp_path / "folders"
    for split, label in (("train", "dog"), ("train", "phone"), ("val", "dog")):
        (folders / split / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA_DIR / "camera_shutter.oga", folders / split / label / "a.oga")
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    shutil.copy(DATA_DIR / "camera_shutter.oga", csvs / "a.oga")
    (csvs / "train.csv").write_text("path,labels\na.oga,camera\n")
    with pytest.warns(UserWarning, match="1008.wav"):
        assert read_split(fsd, "train").clip_ids == read_fsd50k(fsd, "train").clip_ids
    assert [detect_format(p) for p in (fsd, csvs, folders, tmp_path)] == [
        "fsd50k", "csv", "folders", None]
    assert read_split(folders, "val").labels == ["dog"]
    assert read_split(csvs, "train", "csv").labels == ["camera"]
    assert read_split(csvs, "eval") is None and read_split(folders, "eval") is None
    with pytest.raises(FileNotFoundError, match="not a dataset directory"):
        read_split(tmp_path, "train")
    with pytest.raises(ValueError, match="format must be one of"):
        read_split(csvs, "train", "tfrecord")


@pytest.mark.one_backend
def test_with_labels_reindexes_to_a_vocabulary_and_refuses_unknown_labels(fsd, train):
    evaluation = read_fsd50k(fsd, "eval")
    vocabulary = list(reversed(train.labels)) + ["Dog"]
    moved = evaluation.with_labels(vocabulary, "eval", "classes of the model")
    assert moved.labels == vocabulary and moved.clip_ids == evaluation.clip_ids
    for i in range(len(evaluation)):
        assert moved.clip_labels(i) == sorted(evaluation.clip_labels(i),
                                              key=vocabulary.index)
    mids = dict(zip(evaluation.labels, evaluation.mids, strict=True))
    assert moved.mids == [mids.get(label, "") for label in vocabulary]
    assert moved.targets[:, -1].sum() == 0
    assert evaluation.with_labels(evaluation.labels) is evaluation
    with pytest.raises(ValueError, match=r"eval: labels \['Speech'\] are not classes of"):
        evaluation.with_labels([x for x in vocabulary if x != "Speech"], "eval")


# ---------------------------------------------------------------------------------------------
# Malformed metadata and entries: one short line naming the file and the line

GT = "FSD50K.ground_truth"
DEV_HEADER = b"fname,labels,mids,split\n"
GOOD_ROW = b"1001,Speech,/m/09x0r,train\n"
METADATA = "FSD50K.metadata/dev_clips_info_FSD50K.json"


def short_error(call, *args) -> str:
    with pytest.raises(ValueError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.one_backend
@pytest.mark.parametrize(
    ("relative", "content", "line"),
    [
        (f"{GT}/vocabulary.csv", b"0,Speech,/m/09x0r\n1,Caf\xe9,/m/07cx4\n", 2),
        (f"{GT}/vocabulary.csv", b'0,"Speech"x,/m/09x0r\n', 1),
        (f"{GT}/vocabulary.csv", b"0,Speech,/m/09x0r\n1,Tele\x00phone,/m/07cx4\n", 2),
        (f"{GT}/dev.csv", DEV_HEADER + GOOD_ROW + b"1002,Sp\xffeech,/m/09x0r,train\n", 3),
        # An unclosed quote swallows the rest of the file: the error must not echo it.
        (f"{GT}/dev.csv", DEV_HEADER + GOOD_ROW + b'1002,"Speech,/m/09x0r,train\n'
         + GOOD_ROW * 5000, 3),
        (METADATA, b'{"1001": {"uploader": "a"},\n "1002": {"uploader": }\n}', 2),
        (METADATA, b'{"1001": {"uploader": "\xe9"}}', 1),
        (METADATA, b"[1, 2]", 1),
        ("clips.csv", b"path,labels\na.wav,dog\nb\xff.wav,cat\n", 3),
        ("clips.csv", b'path,labels\na.wav,"dog\n' + b"x" * 200_000, 2),
    ],
    ids=["vocabulary-utf8", "vocabulary-quote", "vocabulary-nul", "dev-utf8", "dev-unclosed",
         "metadata-json", "metadata-utf8", "metadata-array", "csv-utf8", "csv-unclosed"],
)
def test_malformed_text_inputs_name_the_file_and_line(fsd, tmp_path, relative, content, line):
    root = tmp_path / "fsd"
    shutil.copytree(fsd, root)
    path = root / relative
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    if relative == "clips.csv":
        message = short_error(read_csv_dataset, path)
    else:
        message = short_error(read_fsd50k, root, "train")
    assert message.startswith(f"{path}, line {line}: "), message


@pytest.mark.one_backend
@pytest.mark.parametrize("fname", ["../1001", "/tmp/1001", "..", "sub\\1001", "1,2"])
def test_entries_leading_outside_the_dataset_are_refused(fsd, tmp_path, fname):
    root = tmp_path / "fsd"
    shutil.copytree(fsd, root)
    dev = root / GT / "dev.csv"
    with dev.open("a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow([fname, "Speech", "/m/09x0r", "val"])
    n = len(dev.read_text().splitlines())
    message = short_error(read_fsd50k, root, "val")
    assert message.startswith(f"{dev}, line {n}: bad fname"), message
    # The writer refuses the same names, with the same check.
    message = short_error(write_fsd50k_layout, tmp_path / "w", [row(fname, ["Speech"], "val")],
                          [], VOCABULARY)
    assert message.startswith("dev_rows[0]: bad fname"), message


@pytest.mark.one_backend
def test_folder_links_outside_the_root_are_left_out_and_reported(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(DATA_DIR / "camera_shutter.oga", outside / "shutter.oga")
    root = tmp_path / "folders"
    (root / "dog").mkdir(parents=True)
    shutil.copy(DATA_DIR / "camera_shutter.oga", root / "dog" / "inside.oga")
    (root / "dog" / "alias.oga").symlink_to("inside.oga")  # stays inside: kept
    (root / "dog" / "escape.oga").symlink_to(outside / "shutter.oga")
    (root / "dog" / "up.oga").symlink_to("../../elsewhere/shutter.oga")
    (root / "cat").symlink_to(outside)  # a class folder that is a link to outside
    with pytest.warns(UserWarning) as caught:
        dataset = read_folder_dataset(root)
    messages = " ".join(str(w.message) for w in caught)
    assert "3 files link to outside" in messages and "dog/escape.oga" in messages
    assert "cat/shutter.oga" in messages and "dog/up.oga" in messages
    assert dataset.clip_ids == ["dog/alias", "dog/inside"]
    allowed = read_folder_dataset(root, allow_links_outside=True)
    assert allowed.clip_ids == ["cat/shutter", "dog/alias", "dog/escape", "dog/inside", "dog/up"]


@pytest.mark.one_backend
def test_repeated_rows_and_contradicting_mids_are_reported(fsd, tmp_path):
    shutil.copy(DATA_DIR / "camera_shutter.oga", tmp_path / "a.oga")
    shutil.copy(DATA_DIR / "phone_incoming_call.oga", tmp_path / "b.oga")
    (tmp_path / "clips.csv").write_text(
        "path,labels\na.oga,camera\nb.oga,phone\n./a.oga,camera\na.oga,phone\n"
    )
    with pytest.warns(UserWarning, match=r"clips.csv: 2 rows repeating an earlier row's path "
                                         r"were left out \(first: line 4 repeats line 2"):
        dataset = read_csv_dataset(tmp_path / "clips.csv")
    assert dataset.clip_ids == ["a.oga", "b.oga"]
    assert dataset.targets.tolist() == [[1, 0], [0, 1]]

    root = tmp_path / "fsd"
    shutil.copytree(fsd, root)
    dev = root / GT / "dev.csv"
    text = dev.read_text()
    # 1004 (val, line 8) carries Camera's mid for Speech; 1005 (line 9) has its mids reordered.
    text = text.replace('1004,"Speech,Human_voice","/m/09x0r,', '1004,"Speech,Human_voice","/m/0dv5r,')
    text = text.replace('"/m/0dv5r,/t/dd00077",val', '"/t/dd00077,/m/0dv5r",val')
    dev.write_text(text)
    with pytest.warns(UserWarning, match=r"dev.csv: 1 row whose mids contradict .*vocabulary.csv "
                                         r"for their labels \(first: line 8, fname 1004\)"):
        val = read_fsd50k(root, "val")
    assert val.clip_ids == ["1004", "1005"] and val.clip_labels(0) == ["Speech", "Human_voice"]
    # A class without an AudioSet id ("" in the vocabulary and in the row) contradicts nothing.
    plain = write_fsd50k_layout(tmp_path / "plain", [("1", ["x"], [""], "train")], [],
                                [("x", "")])
    (plain["dev_audio"] / "1.wav").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_fsd50k(tmp_path / "plain", "train").clip_ids == ["1"]
    dev.write_text(text + "1001,Speech,/m/09x0r,val\n")  # 1001 is a train clip already
    message = short_error(read_fsd50k, root, "val")
    assert message == f"{dev}, line 10: fname 1001 appears twice (first on line 2)"


@pytest.mark.one_backend
def test_entries_that_are_not_regular_files_are_counted_in_the_skip_summary(tmp_path):
    folder = tmp_path / "folders" / "dog"
    folder.mkdir(parents=True)
    shutil.copy(DATA_DIR / "camera_shutter.oga", folder / "good.oga")
    os.mkfifo(folder / "fifo.wav")
    (folder / "broken.wav").symlink_to("nowhere.wav")
    (folder / "loop_a.wav").symlink_to("loop_b.wav")
    (folder / "loop_b.wav").symlink_to("loop_a.wav")
    (folder / "notes.txt").symlink_to("nowhere.txt")  # not audio: not a clip
    dataset = read_folder_dataset(tmp_path / "folders")
    assert dataset.clip_ids == ["dog/broken", "dog/fifo", "dog/good", "dog/loop_a", "dog/loop_b"]
    loader = ChunkLoader(dataset, SR, batch_size=2, shuffle=False)
    assert sorted(Path(p).name for p in loader.skipped) == [
        "broken.wav", "fifo.wav", "loop_a.wav", "loop_b.wav"]
    summary = loader.skip_summary()
    assert summary.startswith("skipped 4 of 5 files: ")
    for kind in ("2 unreadable", "1 missing", "1 not a regular file"):
        assert kind in summary, summary


# ---------------------------------------------------------------------------------------------
# Chunking


@pytest.mark.one_backend
@pytest.mark.parametrize("n", [1, 16, 8000, 15999, 16000, 16001, 19200, 24000, 32000, 36800, 40000])
def test_chunks_cover_the_clip(n):
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    chunks = chunk_waveform(x, SR)
    starts = chunk_sample_starts(n, SR)
    assert chunks.shape == (chunk_count(n, SR), SR) == (starts.size, SR)
    np.testing.assert_allclose(chunk_starts(n, SR), starts / SR)
    if n <= SR:
        assert chunks.shape[0] == 1
        np.testing.assert_array_equal(chunks[0], np.resize(x, SR))  # tiled from the start
        padded = chunk_waveform(x, SR, short="pad")
        np.testing.assert_array_equal(padded[0, :n], x)
        assert not padded[0, n:].any()
        return
    assert chunks.shape[0] == 1 + math.ceil((n - SR) / 8000)
    np.testing.assert_array_equal(np.diff(starts[:-1]), 8000)  # every 0.5 s ...
    assert 0 < starts[-1] - starts[-2] <= 8000
    np.testing.assert_array_equal(chunks[-1], x[-SR:])  # ... the last one ends at the end
    for chunk, start in zip(chunks, starts, strict=True):
        np.testing.assert_array_equal(chunk, x[start : start + SR])


@pytest.mark.one_backend
def test_one_millisecond_clip_is_tiled():
    x = np.linspace(-0.5, 0.5, 16, dtype=np.float32)  # 1 ms at 16 kHz
    chunks = chunk_waveform(x, SR)
    assert chunks.shape == (1, SR)
    np.testing.assert_array_equal(chunks[0].reshape(-1, 16), np.tile(x, (1000, 1)))
    assert chunk_starts(16, SR).tolist() == [0.0]


@pytest.mark.one_backend
def test_chunking_other_settings_and_bad_input():
    x = np.arange(22050, dtype=np.float64) / 22050
    chunks = chunk_waveform(x, 22050, chunk_seconds=0.4, hop_seconds=0.25)
    assert chunks.dtype == np.float32 and chunks.shape == (4, 8820)
    np.testing.assert_allclose(chunks[-1], x[-8820:], rtol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        chunk_waveform(np.zeros(0, np.float32), SR)
    with pytest.raises(ValueError, match="no finite samples"):
        chunk_waveform(np.full(100, np.nan, np.float32), SR)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        chunk_waveform(np.array([0.0, np.inf, 0.0]), SR)
    with pytest.raises(ValueError, match="1-D"):
        chunk_waveform(np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ValueError, match="short must be"):
        chunk_waveform(np.zeros(100, np.float32), SR, short="repeat")
    with pytest.raises(ValueError, match="hop_seconds"):
        chunk_waveform(np.zeros(100, np.float32), SR, hop_seconds=0)


@pytest.mark.one_backend
def test_long_clip_needs_no_extra_copies():
    """10 minutes at 16 kHz: chunking allocates the result and (almost) nothing else."""
    x = np.random.default_rng(0).uniform(-1, 1, 10 * 60 * SR).astype(np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        chunks = chunk_waveform(x, SR)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert chunks.shape == (1199, SR)
    assert not np.shares_memory(chunks, x)
    # The result is 2x the clip (50% overlap); allow 5% of the clip on top of it.
    assert chunks.nbytes <= peak <= chunks.nbytes + 0.05 * x.nbytes, (peak, chunks.nbytes)
    np.testing.assert_array_equal(chunks[700], x[700 * 8000 : 700 * 8000 + SR])
    np.testing.assert_array_equal(chunks[-1], x[-SR:])


# ---------------------------------------------------------------------------------------------
# The loader


def test_loader_indexes_headers_and_skips_unreadable_files(train):
    loader = ChunkLoader(train, sample_rate=SR, batch_size=4, shuffle=False)
    bad = {str(p) for p in train.paths if p.stem in ("1006", "1007")}
    assert set(loader.skipped) == bad
    assert "0 bytes" in loader.skipped[min(bad)] and "text file" in loader.skipped[max(bad)]
    # 1001: 1.43 s -> 2 chunks; 1002: 0.87 s -> 1 (tiled); 1003: 3.3 s -> 6.
    expected = {"1001": 2, "1002": 1, "1003": 6}
    counts = np.bincount(loader.clip_index, minlength=len(train))
    assert {train.clip_ids[i]: int(c) for i, c in enumerate(counts) if c} == expected
    assert loader.n_items == 9 and len(loader) == 3
    x, y = loader[0]
    assert x.shape == (4, SR) and x.dtype == np.float32 and y.shape == (4, 7)
    assert loader[2][0].shape == (1, SR)
    # Batch 0 in dataset order: clip 1001's two chunks, then 1002 (stereo, tiled), then 1003.
    chunks_1001 = chunk_waveform(load_audio(train.paths[0], SR), SR)
    np.testing.assert_array_equal(x[:2], chunks_1001)
    np.testing.assert_array_equal(y[:2], train.targets[[0, 0]])
    shutter = load_audio(train.paths[1], SR)
    np.testing.assert_array_equal(x[2], np.resize(shutter, SR))
    with pytest.raises(IndexError):
        loader[3]
    assert len(ChunkLoader(train, SR, batch_size=4, drop_last=True)) == 2


def tiny_model(n_classes, names=None):
    inputs = keras.Input((SR,))
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((100, 160))(inputs))
    if names is None:
        return keras.Model(inputs, keras.layers.Dense(n_classes, activation="sigmoid")(h))
    outputs = {n: keras.layers.Dense(n_classes, activation="sigmoid", name=n)(h) for n in names}
    return keras.Model(inputs, outputs)


class RecordingLoader(ChunkLoader):
    """Notes which (epoch, batch) pairs Keras asks for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = []

    def __getitem__(self, index):
        self.asked.append((self.epoch, index))
        return super().__getitem__(index)


@pytest.mark.parametrize("names, workers", [(None, 1), (("fused", "pitch"), 2)])
def test_fit_one_epoch(train, names, workers):
    keras.utils.set_random_seed(0)
    loader = RecordingLoader(train, SR, batch_size=4, seed=3, target_names=names,
                             workers=workers)
    model = tiny_model(train.n_classes, names)
    loss = "binary_crossentropy" if names is None else {n: "binary_crossentropy" for n in names}
    model.compile(optimizer="adam", loss=loss)
    history = model.fit(loader, epochs=1, shuffle=False, verbose=0,
                        callbacks=[loader.epoch_callback()])
    assert np.isfinite(history.history["loss"]).all()
    assert [a for a in loader.asked if a[0] == 0][-3:] == [(0, 0), (0, 1), (0, 2)]
    if names is not None:
        _, y = loader[0]
        assert set(y) == set(names) and y["fused"].shape == (4, train.n_classes)


def test_order_is_a_function_of_seed_and_epoch(train):
    a = ChunkLoader(train, SR, batch_size=3, seed=7)
    b = ChunkLoader(train, SR, batch_size=3, seed=7)
    c = ChunkLoader(train, SR, batch_size=3, seed=8)
    orders = [np.concatenate([a.batch_items(i) for i in range(len(a))])]
    for _ in range(3):
        a.on_epoch_end()
        orders.append(np.concatenate([a.batch_items(i) for i in range(len(a))]))
    for epoch, order in enumerate(orders):
        assert sorted(order) == list(range(a.n_items))  # a permutation of every chunk
        b.set_epoch(epoch)
        np.testing.assert_array_equal(order, np.concatenate([b.batch_items(i) for i in range(3)]))
    assert len({tuple(o) for o in orders}) == 4  # each epoch its own order
    c.set_epoch(3)
    assert not np.array_equal(orders[3], np.concatenate([c.batch_items(i) for i in range(3)]))
    b.set_epoch(2)
    a.set_epoch(2)
    for i in range(len(a)):
        for u, v in zip(a[i], b[i], strict=True):
            np.testing.assert_array_equal(u, v)


def test_fit_sees_the_same_order_when_resumed(train):
    def run(initial_epoch):
        loader = RecordingLoader(train, SR, batch_size=4, seed=5)
        model = tiny_model(train.n_classes)
        model.compile(optimizer="sgd", loss="binary_crossentropy")
        model.fit(loader, epochs=3, initial_epoch=initial_epoch, shuffle=False, verbose=0,
                  callbacks=[loader.epoch_callback()])
        return loader.asked

    full, resumed = run(0), run(2)
    # The last len(loader) requests of each run are epoch 2's batches, in order.
    assert full[-3:] == resumed[-3:] == [(2, 0), (2, 1), (2, 2)]
    assert [a for a in full if a[0] == 1][-3:] == [(1, 0), (1, 1), (1, 2)]


def test_bad_files_are_reported_once_and_replaced(train, tmp_path, caplog):
    good = [p for p in train.paths if p.stem in ("1001", "1002", "1003")]
    nan_wav = tmp_path / "nan.wav"
    soundfile.write(nan_wav, np.array([0.1, np.nan, 0.2] * 8000, np.float32), FILE_SR,
                    subtype="FLOAT")
    vanishing = tmp_path / "vanishing.wav"
    shutil.copy(good[0], vanishing)
    paths = [*good, nan_wav, vanishing]
    dataset = ClipDataset(paths, np.eye(5, dtype=np.float32), list("abcde"), [""] * 5,
                          [p.stem for p in paths])
    loader = ChunkLoader(dataset, SR, batch_size=5, seed=1)
    assert loader.skipped == {}  # both have sound headers
    vanishing.unlink()  # deleted after indexing
    allowed = np.concatenate([chunk_waveform(load_audio(p, SR), SR) for p in good])
    with caplog.at_level(logging.WARNING, logger="keras_dae.data.loader"):
        for epoch in range(2):
            loader.set_epoch(epoch)
            for i in range(len(loader)):
                x, y = loader[i]
                assert x.shape[0] == len(loader.batch_items(i))  # full batches
                assert not y[:, 3:].any()  # no chunk of the bad files
                for row_x, row_y in zip(x, y, strict=True):
                    match = np.flatnonzero((allowed == row_x).all(axis=1))
                    assert match.size, "a row is not a chunk of a good file"
                    assert row_y[:3].sum() == 1
    assert set(loader.skipped) == {str(nan_wav), str(vanishing)}
    assert "NaN" in loader.skipped[str(nan_wav)]
    assert "no such file" in loader.skipped[str(vanishing)]
    for path in (nan_wav, vanishing):
        assert sum(str(path) in r.getMessage() for r in caplog.records) == 1
    skipped = {}
    clips = dict(iterate_clips(dataset, SR, skipped=skipped))
    assert sorted(clips) == [0, 1, 2] and set(skipped) == set(loader.skipped)
    np.testing.assert_array_equal(clips[2], chunk_waveform(load_audio(good[2], SR), SR))


def test_balanced_sampling_favours_rare_classes(fsd, tmp_path):
    shutter = fsd / "FSD50K.dev_audio" / "1002.wav"  # 0.87 s: one chunk each
    paths, labels = [], []
    for i in range(7):
        path = tmp_path / f"{i}.wav"
        shutil.copy(shutter, path)
        paths.append(path)
        labels.append(1 if i == 6 else 0)  # six clips of class 0, one of class 1
    dataset = ClipDataset(paths, np.eye(2, dtype=np.float32)[labels], ["common", "rare"],
                          ["", ""], [p.stem for p in paths])
    shares = {}
    for balanced in (False, True):
        loader = ChunkLoader(dataset, SR, batch_size=7, seed=0, balanced=balanced)
        seen = []
        for epoch in range(30):
            loader.set_epoch(epoch)
            seen.append(loader[0][1])
        seen = np.concatenate(seen)
        assert seen.shape == (210, 2)
        shares[balanced] = seen.mean(axis=0)
    assert shares[False][1] == pytest.approx(1 / 7)
    assert shares[True][1] > 0.35 and shares[True][0] < 0.65  # expected 0.5 each


def test_random_level_scales_each_chunk_by_its_own_gain(train):
    """`gain_db`: every chunk is the plain loader's scaled by one gain within +-gain_db dB,
    the gains differ between chunks, are the same when drawn again, and the targets do not
    change."""
    plain = ChunkLoader(train, SR, batch_size=8, seed=4)
    leveled = ChunkLoader(train, SR, batch_size=8, seed=4, gain_db=6.0)
    (x, y), (xg, yg) = plain[0], leveled[0]
    np.testing.assert_array_equal(y, yg)
    gains = []
    for row, scaled in zip(x, xg, strict=True):
        loud = np.abs(row) > 1e-3
        ratios = scaled[loud] / row[loud]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)
        gains.append(ratios[0])
    assert 10 ** (-6 / 20) - 1e-6 <= min(gains) and max(gains) <= 10 ** (6 / 20) + 1e-6
    assert np.ptp(gains) > 0.1
    np.testing.assert_array_equal(xg, ChunkLoader(train, SR, batch_size=8, seed=4,
                                                  gain_db=6.0)[0][0])
    with pytest.raises(ValueError, match="gain_db"):
        ChunkLoader(train, SR, gain_db=-1.0)


def test_mixup_targets_are_convex_combinations(train):
    plain = ChunkLoader(train, SR, batch_size=8, seed=4)
    mixed = ChunkLoader(train, SR, batch_size=8, seed=4, mixup=0.4)
    x, y = plain[0]
    xm, ym = mixed[0]
    assert xm.shape == x.shape and ym.shape == y.shape
    assert ((ym >= 0) & (ym <= 1)).all()
    lams = []
    for i in range(len(x)):
        found = None
        for j in range(len(x)):
            d = x[i] - x[j]
            lam = 1.0 if not d.any() else float(np.dot(xm[i] - x[j], d) / np.dot(d, d))
            if (-1e-6 <= lam <= 1 + 1e-6 and np.allclose(xm[i], lam * x[i] + (1 - lam) * x[j],
                                                         atol=1e-5)
                    and np.allclose(ym[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5)):
                found = lam
                break
        assert found is not None, f"row {i} is not a mix of two rows with the same weights"
        lams.append(found)
    assert any(0.05 < lam < 0.95 for lam in lams)
    assert (ym % 1 != 0).any()  # some targets really are fractional
