"""`keras-dae demo`: the bundled clips, what it prints and the picture it writes."""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_dae import cli, demo, zoo
from keras_dae.audio import load_audio
from keras_dae.inference import DEFAULT_MODEL, Tagger

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_clips_are_small_short_documented_and_packaged():
    clips = demo.demo_clips()
    assert [p.name for p in clips] == list(demo.DEMO_CLIPS) and len(clips) >= 3
    assert sum(p.stat().st_size for p in clips) < 1_000_000
    readme = (clips[0].parent / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    section = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    package_data = re.findall(r'"([^"]+)"', re.search(r"keras_dae = \[(.*?)\]", section, re.S).group(1))
    for path in clips:
        audio = load_audio(path, 16000)
        assert 0.5 <= len(audio) / 16000 <= 5.0
        assert np.abs(audio).max() > 0.05  # not silence
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{path.name}`"))
        assert re.search(r"\| (CC0|GPL-2\+?) \(", row), row  # a licence for every clip
        relative = path.relative_to(ROOT / "keras_dae").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data), relative
    relative = "data/demo/README.md"
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data)


@pytest.mark.one_backend
def test_demo_prints_labels_over_time_and_draws_them(tiny_preset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    picture = "demo.png"  # the default
    assert cli.main(["demo", "--model", str(tiny_preset)]) == 0
    out = capsys.readouterr().out
    for name in demo.DEMO_CLIPS:
        assert re.search(rf"^{re.escape(name)}  \(\d\.\d\d s\)  \w", out, re.MULTILINE), name
    # One line per second of each clip, and each stream's own top label.
    assert out.count("0.0-1.0 s") == 4  # the four clips longer than one second
    assert out.count("0.0-0.9 s") == 1  # the dog: 0.93 s
    assert out.count("streams  pitch ") == len(demo.DEMO_CLIPS)
    assert f"wrote {picture}" in out
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / picture)
    assert image.shape[0] > image.shape[1] > 1000  # one row per clip, 14 in wide
    assert image[..., :3].std() > 0.1  # not blank


def test_demo_on_given_files(tiny_preset, tmp_path, capsys):
    from conftest import DATA_DIR

    path = DATA_DIR / "speech_front_center.wav"
    assert cli.main(["demo", str(path), "--model", str(tiny_preset), "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "speech_front_center.wav  (1.43 s)" in out and "wrote" not in out
    assert cli.main(["demo", str(tmp_path / "missing.wav"), "--model", str(tiny_preset)]) == 2
    assert "missing.wav" in capsys.readouterr().err


def test_demo_without_matplotlib_prints_the_tags_and_names_the_extra(tiny_preset, tmp_path,
                                                                     monkeypatch, capsys):
    """An install with a backend extra only: the tags, then one line naming the extra that
    draws the picture, and exit 0. A picture asked for by name is refused before any work."""
    from conftest import DATA_DIR

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    path = DATA_DIR / "speech_front_center.wav"
    assert cli.main(["demo", str(path), "--model", str(tiny_preset)]) == 0
    out = capsys.readouterr().out
    assert "speech_front_center.wav  (1.43 s)" in out
    assert out.count("keras-dae[plot]") == 1
    assert out.rstrip().splitlines()[-1] == (
        'no picture: matplotlib is not installed (pip install "keras-dae[plot]" draws it)')
    assert list(tmp_path.iterdir()) == []
    for command in (["demo", str(path), "--model", str(tiny_preset)], ["frontends", str(path)]):
        assert cli.main([*command, "--plot", "picture.png"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == ("error: the picture picture.png needs matplotlib: "
                                'pip install "keras-dae[plot]"\n')


def _shipped_preset():
    try:
        return zoo.load(DEFAULT_MODEL)
    except (zoo.PresetError, ValueError) as error:
        pytest.skip(f"the shipped preset is not available here: {error}")


@pytest.mark.slow
def test_the_shipped_preset_finds_what_the_demo_clips_hold():
    """Each demo clip's source is out of the preset's training split; its own class (or,
    for the heron, Bird or Animal) must be among the clip's top two labels."""
    tagger = Tagger(_shipped_preset())
    expected = {"speech_czech_letters.ogg": {"Speech"}, "guitar_em9.ogg": {"Guitar"},
                "drums_amen_break.ogg": {"Drum_kit"}, "heron_flying.ogg": {"Bird", "Animal"},
                "dog_bark.ogg": {"Animal"}}
    for result in demo.run(tagger, top_k=2):
        top = {label.label for label in result.labels}
        assert top & expected[Path(result.source).name], (result.source, result.labels)
