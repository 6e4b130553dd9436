"""scripts/build_pretraining_corpus.py: unlabelled real audio for self-supervised pretraining.

Builds the --small corpus (from the Debian packages .ci/run installs) with a --small labelled
dataset excluded, and checks the files, the manifest, that no eval or val source of the
labelled dataset entered it, that the same seed rebuilds the same corpus, and the refusal of
a dataset without a source inventory. When the packages are missing the tests fail with the
command that installs them.
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

# The backend does not change what these tests check: tests/run.sh runs them once.
# No Keras code: run once, in TensorFlow's run (tests/run.sh balances the three).
pytestmark = pytest.mark.one_backend("tensorflow")

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SCRIPT = SCRIPTS / "build_pretraining_corpus.py"


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=600)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A --small labelled dataset: its eval and val sources must stay out of the corpus."""
    check = run(SCRIPT, "--check", "--small")
    if check.returncode != 0:
        pytest.fail("the Debian packages of the --small corpus are not installed: "
                    f"{check.stderr.strip()}\nInstall them with `python "
                    f"{SCRIPT.relative_to(REPO)} --small --check --install` (as root).",
                    pytrace=False)
    out = tmp_path_factory.mktemp("labelled") / "fsd50k"
    built = run(SCRIPTS / "build_sampled_dataset.py", "--out", out, "--small", "--seed", "3")
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def corpus(labelled, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    built = run(SCRIPT, "--out", out, "--small", "--exclude", labelled, "--seed", "5")
    assert built.returncode == 0, f"build failed:\n{built.stdout}\n{built.stderr}"
    return out


def held_out(labelled: Path) -> set[str]:
    return {r["member"] for r in read_csv(labelled / "source_inventory.csv")
            if r["split"] in ("eval", "val")}


def test_files_are_16khz_mono_flac_of_1_to_30_s_as_the_manifest_says(corpus):
    rows = read_csv(corpus / "manifest.csv")
    assert len({r["path"] for r in rows}) == len(rows)
    assert list(rows[0]) == ["path", "seconds", "source_id", "package", "package_version",
                             "licence", "copyright"]
    assert {r["path"] for r in rows} == {
        p.relative_to(corpus).as_posix() for p in (corpus / "audio").rglob("*") if p.is_file()}
    groups = {r["path"].split("/")[1] for r in rows}
    assert {"freedesktop", "sonic-pi", "hydrogen-data", "render-fluidr3",
            "render-timgm6mb", "render-freepats"} <= groups
    for row in rows:
        info = soundfile.info(corpus / row["path"])
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000, 1, "FLAC", "PCM_16"), row["path"]
        assert abs(info.frames / 16000 - float(row["seconds"])) < 1e-3, row["path"]
        assert 1.0 <= info.frames / 16000 <= 30.0, row["path"]
        audio, _ = soundfile.read(corpus / row["path"])
        assert np.max(np.abs(audio)) >= 1e-3, f"{row['path']} is near-silent"
        assert row["package_version"] and row["licence"] and row["copyright"], row
    total = sum(float(r["seconds"]) for r in rows)
    assert 0.8 * 144 <= total <= 1.6 * 144  # --small: a budget of 0.04 h


def test_no_eval_or_val_source_of_the_labelled_dataset_is_in_the_corpus(labelled, corpus):
    excluded = held_out(labelled)
    # The check means something: the small dataset holds out Sonic Pi files and FluidR3
    # presets, which the small corpus would otherwise take.
    assert any(m.startswith("/usr/share/sonic-pi/") for m in excluded)
    assert any(m.startswith("fluidr3:") for m in excluded)
    readme = (corpus / "README.md").read_text()
    assert "- fluidr3: " in readme  # the FluidR3 presets left out, counted
    for row in read_csv(corpus / "manifest.csv"):
        source = row["source_id"]
        if row["path"].startswith("audio/render-"):
            font, _, presets = source.split(" ")[0].partition(":")
            keys = {f"{font}:{p}" for p in presets.split("+")}
            assert not keys & excluded, (row["path"], keys & excluded)
        else:
            files = set(source.split(";"))
            assert all(f.startswith("/usr/share/") for f in files), source
            assert not files & excluded, (row["path"], files & excluded)


def test_same_seed_rebuilds_the_same_corpus(corpus, labelled, tmp_path):
    again = tmp_path / "again"
    built = run(SCRIPT, "--out", again, "--small", "--exclude", labelled, "--seed", "5",
                "--workers", "1")
    assert built.returncode == 0, built.stderr
    assert (again / "manifest.csv").read_text() == (corpus / "manifest.csv").read_text()

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in (root / "audio").rglob("*.flac")}

    assert digests(again) == digests(corpus)


def test_a_dataset_without_source_inventory_is_refused(tmp_path):
    (tmp_path / "not_a_dataset").mkdir()
    result = run(SCRIPT, "--out", tmp_path / "out", "--small", "--exclude",
                 tmp_path / "not_a_dataset")
    assert result.returncode == 2
    assert "source_inventory.csv" in result.stderr and "not_a_dataset" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def corpus_module():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from sampled_dataset import corpus, synthesis
    finally:
        sys.path.remove(str(SCRIPTS))
    return corpus, synthesis


def test_renders_never_play_a_held_out_preset_or_its_samples(corpus_module):
    corpus, synthesis = corpus_module
    held = {"fluidr3:000-000", "fluidr3:128-000"}  # Yamaha Grand Piano, the Standard kit
    filter_ = corpus.PresetFilter(["fluidr3"], corpus.Exclusions(held, set(), []))
    melodic = filter_.allowed("fluidr3", drums=False)
    kits = filter_.allowed("fluidr3", drums=True)
    # Bright Yamaha Grand and Honky Tonk play the Yamaha Grand's samples; every FluidR3 kit
    # shares samples with the Standard kit.
    assert not {(0, 0), (0, 1), (0, 3)} & set(melodic) and (0, 2) in melodic
    assert kits == []
    events = [(0.0, 0, bytes([0xB0, 0, 0])), (0.0, 0, bytes([0xC0, 0])),
              (0.0, 0, bytes([0xC9, 0]))]
    for n in range(8):
        events += [(n * 0.5, 2, bytes([0x90, 60 + n, 90])),
                   (n * 0.5 + 0.4, 1, bytes([0x80, 60 + n, 0])),
                   (n * 0.5, 2, bytes([0x99, 36, 90])),
                   (n * 0.5 + 0.1, 1, bytes([0x89, 36, 0]))]
    for variant in range(4):
        remapped, used = corpus.remap_midi(events, "fluidr3", melodic, kits, variant,
                                           np.random.default_rng(variant), drums_only=False)
        assert used and not {corpus.preset_key("fluidr3", *k) for k in used} & held
        assert all(m[0] & 0x0F != 9 for _, _, m in remapped)  # no allowed kit: no drums
        assert sum(m[0] & 0xF0 == 0x90 for _, _, m in remapped) == 8
        if variant == 0:  # the piano part stays a piano, of the same GM family
            assert used[0][1] < 8


def test_read_midi_reads_what_write_midi_wrote(corpus_module, tmp_path):
    _, synthesis = corpus_module
    events = [(0.0, 0, bytes([0xC0, 40])), (0.25, 2, bytes([0x90, 60, 100])),
              (1.5, 1, bytes([0x80, 60, 0])), (1.5, 0, bytes([0xB0, 7, 90]))]
    synthesis.write_midi(tmp_path / "a.mid", events)
    read = synthesis.read_midi((tmp_path / "a.mid").read_bytes())
    events.sort(key=lambda e: e[:2])  # write_midi's order: by time, then priority
    assert [(m, p) for _, p, m in read] == [(m, p) for _, p, m in events]
    assert np.allclose([t for t, _, _ in read], [t for t, _, _ in events], atol=1e-3)
