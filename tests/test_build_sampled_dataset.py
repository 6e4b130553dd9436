"""scripts/build_sampled_dataset.py: an FSD50K-format dataset from real Debian-packaged sounds.

Builds the --small dataset (60 clips) once into a temporary directory and checks FSD50K's
layout and CSV formats, the source-disjoint splits, and the audio itself. Needs the Debian
packages the script lists (`python scripts/build_sampled_dataset.py --check`); when they are
missing the tests fail with the command that installs them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile

# The backend does not change what these tests check: tests/run.sh runs them once.
# No Keras code: run once, in JAX's run (tests/run.sh balances the three).
pytestmark = pytest.mark.one_backend("jax")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_sampled_dataset.py"
SR = 44100


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False, timeout=600)


def load_module():
    spec = importlib.util.spec_from_file_location("build_sampled_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_sampled_dataset"] = module
    path = list(sys.path)
    try:  # the script puts scripts/ on sys.path for its sampled_dataset package
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


@pytest.fixture(scope="module")
def packages_installed() -> None:
    result = run_script("--check")
    if result.returncode != 0:
        pytest.fail(
            "the Debian packages for the sampled dataset are not installed: "
            f"{result.stderr.strip()}\nInstall them with `python {SCRIPT.relative_to(REPO)} "
            "--install --check` (as root), or the apt-get line above.", pytrace=False)


@pytest.fixture(scope="module")
def dataset(packages_installed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sampled") / "fsd50k"
    result = run_script("--out", str(out), "--small", "--seed", "3")
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    return out


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def ground_truth(out: Path) -> tuple[dict[str, tuple[str, str]], list[list[str]],
                                      list[list[str]], list[list[str]]]:
    gt = out / "FSD50K.ground_truth"
    vocabulary = read_rows(gt / "vocabulary.csv")
    dev = read_rows(gt / "dev.csv")
    ev = read_rows(gt / "eval.csv")
    return {row[1]: (row[0], row[2]) for row in vocabulary}, vocabulary, dev, ev


def test_layout(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == [
        "FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth", "README.md",
        "source_inventory.csv", "sources.csv"]
    assert sorted(p.name for p in (dataset / "FSD50K.ground_truth").iterdir()) == [
        "dev.csv", "eval.csv", "vocabulary.csv"]
    _, _, dev, ev = ground_truth(dataset)
    dev_wavs = {p.stem for p in (dataset / "FSD50K.dev_audio").iterdir()}
    eval_wavs = {p.stem for p in (dataset / "FSD50K.eval_audio").iterdir()}
    assert all(p.suffix == ".wav" for d in ("dev", "eval")
               for p in (dataset / f"FSD50K.{d}_audio").iterdir())
    assert dev_wavs == {row[0] for row in dev[1:]}
    assert eval_wavs == {row[0] for row in ev[1:]}
    assert not dev_wavs & eval_wavs
    # --small: 60 clips, 2/3 train, 2/15 val, 1/5 eval.
    splits = [row[3] for row in dev[1:]]
    assert (splits.count("train"), splits.count("val"), len(ev) - 1) == (40, 8, 12)


def test_csv_formats(dataset: Path) -> None:
    vocab, vocabulary, dev, ev = ground_truth(dataset)
    # vocabulary.csv: no header, index,label,mid with consecutive indices and AudioSet ids.
    assert [row[0] for row in vocabulary] == [str(i) for i in range(len(vocabulary))]
    assert 10 <= len(vocabulary) <= 20
    assert all(len(row) == 3 and re.fullmatch(r"/[mt]/[0-9a-z_]+", row[2]) for row in vocabulary)
    assert len({row[1] for row in vocabulary}) == len({row[2] for row in vocabulary}) == len(
        vocabulary)
    assert vocab["Piano"][1] == "/m/05r5c" and vocab["Speech"][1] == "/m/09x0r"
    assert dev[0] == ["fname", "labels", "mids", "split"]
    assert ev[0] == ["fname", "labels", "mids"]
    fnames = [row[0] for row in dev[1:] + ev[1:]]
    assert all(f.isdigit() for f in fnames) and len(set(fnames)) == len(fnames)
    multi = 0
    for row in dev[1:] + ev[1:]:
        labels, mids = row[1].split(","), row[2].split(",")
        assert len(labels) == len(set(labels)) == len(mids)
        assert [vocab[label][1] for label in labels] == mids
        multi += len(labels) > 1
    assert all(row[3] in ("train", "val") for row in dev[1:])
    assert multi > 0  # mixtures and ancestor labels
    # Multi-label fields are one quoted CSV field, as in FSD50K.
    text = (dataset / "FSD50K.ground_truth" / "dev.csv").read_text()
    assert re.search(r'^\d+,"[^"]+,[^"]+","/m/[^"]+,[^"]+",(train|val)$', text, re.M)


def test_splits_are_disjoint_by_source(dataset: Path) -> None:
    _, _, dev, ev = ground_truth(dataset)
    clip_split = {row[0]: row[3] for row in dev[1:]} | {row[0]: "eval" for row in ev[1:]}
    sources = read_rows(dataset / "sources.csv")
    assert sources[0] == ["fname", "split", "source_ids", "members", "packages"]
    assert {row[0] for row in sources[1:]} == set(clip_split)
    splits_of = defaultdict(set)
    for fname, split, source_ids, members, packages in sources[1:]:
        assert split == clip_split[fname]
        assert source_ids and members and packages
        for source in source_ids.split(";"):
            splits_of[source].add(split)
    assert all(len(s) == 1 for s in splits_of.values()), {
        k: v for k, v in splits_of.items() if len(v) > 1}
    # The inventory assigns every source group of every class to one split, each split
    # holding sources of every class.
    inventory = read_rows(dataset / "source_inventory.csv")
    header = inventory[0]
    group_split, classes_in = {}, defaultdict(set)
    for row in inventory[1:]:
        record = dict(zip(header, row, strict=True))
        assert group_split.setdefault(record["source_id"], record["split"]) == record["split"]
        assert record["package"] and record["package_version"] and record["licence"]
        classes_in[record["split"]].add(record["class"])
    assert set(group_split.values()) == {"train", "val", "eval"}
    assert classes_in["train"] == classes_in["val"] == classes_in["eval"]
    for source, splits in splits_of.items():
        assert splits == {group_split[source]}


def test_source_folds_partition_the_dev_sources(dataset: Path, tmp_path: Path) -> None:
    """scripts/source_folds.py: fold 0 is the official split; in every fold no source is in
    both training and validation; each dev source validates in one fold at most; eval and
    audio are the original's; the folds read as FSD50K datasets."""
    from keras_dae.data import read_split

    folds = tmp_path / "folds"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "source_folds.py"),
                             "--data", str(dataset), "--out", str(folds), "--folds", "3"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == [
        "fold 0", "fold 1", "fold 2"]
    _, _, dev, ev = ground_truth(dataset)
    fold_of = {}
    for k in range(3):
        fold = folds / f"fold{k}"
        _, _, fold_dev, fold_ev = ground_truth(fold)
        assert fold_ev == ev and fold_dev[0] == dev[0]
        assert {tuple(r[:3]) for r in fold_dev[1:]} <= {tuple(r[:3]) for r in dev[1:]}
        if k == 0:
            assert fold_dev == dev
        split_groups = defaultdict(set)
        for row in read_rows(fold / "sources.csv")[1:]:
            split_groups[row[1]].update(row[2].split(";"))
        assert split_groups["val"] and split_groups["train"]
        assert not split_groups["val"] & split_groups["train"]
        for group in split_groups["val"]:
            assert fold_of.setdefault(group, k) == k, group
        train, val = read_split(fold, "train", "fsd50k"), read_split(fold, "val", "fsd50k")
        assert len(train.paths) + len(val.paths) == len(fold_dev) - 1
        assert all(Path(p).is_file() for p in val.paths)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "source_folds.py"),
                             "--data", str(dataset), "--out", str(folds)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2 and "not empty" in result.stderr


def test_labels_follow_sources(dataset: Path) -> None:
    """A clip's labels are its sources' classes plus their in-vocabulary AudioSet ancestors."""
    module = load_module()
    _, _, dev, ev = ground_truth(dataset)
    labels = {row[0]: row[1].split(",") for row in dev[1:] + ev[1:]}
    inventory = read_rows(dataset / "source_inventory.csv")
    class_of = {row[0]: row[1] for row in inventory[1:]}
    for fname, _, source_ids, _, _ in read_rows(dataset / "sources.csv")[1:]:
        expected = set()
        for source in source_ids.split(";"):
            expected |= set(module.label_with_parents(class_of[source]))
        assert set(labels[fname]) == expected, fname
    assert module.label_with_parents("Bass_guitar") == ["Bass_guitar", "Guitar"]
    assert module.label_with_parents("Bird") == ["Bird", "Animal"]


def test_audio_is_real_44k_mono_pcm16(dataset: Path) -> None:
    peaks = []
    for folder in ("FSD50K.dev_audio", "FSD50K.eval_audio"):
        for path in sorted((dataset / folder).iterdir()):
            info = soundfile.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16"), path
            audio, _ = soundfile.read(path, dtype="float32")
            assert 0.5 * SR - 1 <= len(audio) <= 4.0 * SR + 1, (path, len(audio))
            peak = float(np.max(np.abs(audio)))
            frames = audio[: len(audio) // 1024 * 1024].reshape(-1, 1024)
            loudest = float(np.sqrt(np.max(np.mean(frames ** 2, axis=1))))
            assert peak < 1.0, path  # no clipping
            assert 10 ** (-19 / 20) <= peak, (path, peak)  # peak -18 to -1 dBFS
            assert loudest > 10 ** (-45 / 20), (path, loudest)  # not silent
            peaks.append(peak)
    assert np.std(20 * np.log10(peaks)) > 2.0  # gains vary


def test_deterministic_given_seed(dataset: Path, tmp_path: Path) -> None:
    def digest(out: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != "README.md":  # README records the run time
                h.update(path.relative_to(out).as_posix().encode() + path.read_bytes())
        return h.hexdigest()

    for name in ("a", "b"):
        result = run_script("--out", str(tmp_path / name), "--n-clips", "15", "--seed", "5")
        assert result.returncode == 0, result.stderr
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    # Another seed (the module's dataset has seed 3) draws another split of the sources.
    split_a = {row[0]: row[2] for row in read_rows(tmp_path / "a" / "source_inventory.csv")}
    split_3 = {row[0]: row[2] for row in read_rows(dataset / "source_inventory.csv")}
    assert split_a.keys() == split_3.keys() and split_a != split_3


def test_clear_errors(packages_installed, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = run_script("--out", str(tmp_path / "full"), "--small")
    assert result.returncode == 2 and "not empty" in result.stderr
    result = run_script("--out", str(tmp_path / "few"), "--n-clips", "3")
    assert result.returncode == 2 and "--n-clips" in result.stderr
    # A missing package is named, with the way to install it.
    module = load_module()
    module.PACKAGES["keras-dae-no-such-package"] = "a package that does not exist"
    with pytest.raises(module.BuildError, match=r"keras-dae-no-such-package.*--install.*"
                       r"apt-get install -y --no-install-recommends keras-dae-no-such-package"):
        module.ensure_packages(install=False)


def test_fsd50k_vocabulary_agrees_with_sampled_dataset_classes():
    """The sampled dataset's AudioSet ids were checked against the ontology; every class it
    shares with FSD50K must carry the same id in the shipped vocabulary."""
    from keras_dae.zoo.presets import preset_vocabulary

    builder = load_module()
    labels, mids = preset_vocabulary("diverse_fsd50k")
    vocabulary = dict(zip(labels, mids, strict=True))
    shared = [(label, mid) for label, mid in builder.CLASSES if label in vocabulary]
    assert len(shared) == 13, shared  # Flute and Synthesizer are AudioSet-only classes
    for label, mid in shared:
        assert vocabulary[label] == mid, label


@pytest.fixture(scope="module")
def novel_dataset(tmp_path_factory) -> Path:
    result = run_script("--classes", "novel", "--check")
    if result.returncode != 0:
        pytest.fail("the Debian packages for the novel classes are not installed: "
                    f"{result.stderr.strip()}", pytrace=False)
    out = tmp_path_factory.mktemp("novel") / "fsd50k"
    result = run_script("--classes", "novel", "--out", str(out), "--small", "--seed", "3")
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_novel_classes_layout_and_source_split(novel_dataset: Path, dataset: Path) -> None:
    """--classes novel: FSD50K's layout, classes and sources the default set does not have,
    one label a clip, balanced splits disjoint by source, each class in each split."""
    module = load_module()
    vocab, vocabulary, dev, ev = ground_truth(novel_dataset)
    assert sorted(p.name for p in novel_dataset.iterdir()) == [
        "FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth", "README.md",
        "source_inventory.csv", "sources.csv"]
    assert 6 <= len(vocabulary) <= 10
    assert not set(vocab) & {label for label, _ in module.CLASSES}
    assert not {mid for _, mid in vocab.values()} & {mid for _, mid in module.CLASSES}
    assert {p.stem for p in (novel_dataset / "FSD50K.dev_audio").iterdir()} == {
        row[0] for row in dev[1:]}
    assert {p.stem for p in (novel_dataset / "FSD50K.eval_audio").iterdir()} == {
        row[0] for row in ev[1:]}
    rows = [(row[1], row[3]) for row in dev[1:]] + [(row[1], "eval") for row in ev[1:]]
    assert all("," not in labels for labels, _ in rows)  # single-class clips
    assert Counter(split for _, split in rows) == {"train": 40, "val": 12, "eval": 16}
    assert set(Counter(labels for labels, split in rows if split == "train").values()) == {5}
    assert {(labels, split) for labels, split in rows} == {
        (label, split) for label in vocab for split in ("train", "val", "eval")}
    inventory = read_rows(novel_dataset / "source_inventory.csv")
    group_split = {row[0]: row[2] for row in inventory[1:]}
    for fname, split, source_ids, _, _ in read_rows(novel_dataset / "sources.csv")[1:]:
        assert group_split[source_ids] == split, fname
    # Every class has at least three source groups, one or more in each split.
    splits_of = defaultdict(set)
    for row in inventory[1:]:
        splits_of[row[1]].add((row[0], row[2]))
    for label in vocab:
        assert {s for _, s in splits_of[label]} == {"train", "val", "eval"}, label
    # No file or preset of the default build (every source it has, in its inventory) is a
    # source here.
    default_members = {row[3] for row in read_rows(dataset / "source_inventory.csv")[1:]}
    assert not default_members & {row[3] for row in inventory[1:]}
