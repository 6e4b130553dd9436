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
    # Each top label's stream shares (3 by default), as `Explanation.to_text` writes them.
    shares = re.findall(r"^        shares  (.+)$", out, re.MULTILINE)
    assert len(shares) == 3 * len(demo.DEMO_CLIPS)
    assert all(re.fullmatch(r"\S.* \d\.\d\d  (\w+ [+-]\d+% ){4} \(streams alone: .+\)"
                            r"(  streams disagree)?", line) for line in shares), shares
    assert f"wrote {picture}" in out
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / picture)
    assert image.shape[0] > image.shape[1] > 1000  # one row per clip, 14 in wide
    assert image[..., :3].std() > 0.1  # not blank


def test_demo_draws_each_top_labels_stream_shares(tiny_preset, tmp_path, monkeypatch):
    """Beside the score table, one diverging bar per top label: each stream's share of the
    fused logit (for it right of 0, against it left), one colour per stream throughout, under
    a title of the label and its fused score (and the mark when the streams disagree); titles
    clear of the bars and of the table's class names, inside the picture."""
    import matplotlib
    import matplotlib.pyplot as plt

    from keras_dae.inference import display_label

    tagger = Tagger(tiny_preset, batch_size=8)
    results = demo.run(tagger, demo.demo_clips()[:3])
    for result in results:
        assert len(result.explanations) == 3  # demo.run asks for them
        lines = demo.describe(result, tagger).splitlines()
        assert [line for line in lines if line.startswith("        shares  ")] == [
            f"        shares  {e.to_text()}" for e in result.explanations]
        assert lines.index(next(x for x in lines if "shares" in x)) == 2  # after "streams"
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # kept open to measure, closed below
    demo.plot(results, tmp_path / "demo.png", tagger.class_names, tagger.stream_names)
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    colours = demo._stream_colours(tagger.stream_names)
    assert len(set(colours.values())) == len(tagger.stream_names)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(tagger.stream_names)
    for result in results:
        titles = [f"{display_label(e.label)} {e.score:.2f}" for e in result.explanations]
        (axes,) = [a for a in fig.axes if [t.get_text() for t in a.texts if t.get_fontweight()
                                           == "bold"] == titles]
        assert axes.get_xlim() == (-1.0, 1.0)
        bars = [p for p in axes.patches if isinstance(p, matplotlib.patches.Rectangle)]
        assert len(bars) == 3 * len(tagger.stream_names)
        marks = [t for t in axes.texts if t.get_text() == demo.DISAGREE_MARK]
        assert len(marks) == sum(e.disagree for e in result.explanations)
        for row, explanation in enumerate(result.explanations):
            in_row = [b for b in bars if abs(b.get_y() + b.get_height() / 2 - row) < 1e-6]
            assert sum(b.get_width() for b in in_row) == pytest.approx(1.0, abs=1e-6)
            for name, share in explanation.shares.items():
                colour = matplotlib.colors.to_rgba(colours[name])
                (bar,) = [b for b in in_row if b.get_facecolor() == colour]
                assert bar.get_width() == pytest.approx(abs(share), abs=1e-6)
                if share > 0:
                    assert bar.get_x() >= -1e-9  # for it: right of 0
                elif share < 0:
                    assert bar.get_x() + bar.get_width() <= 1e-9  # against it: left of 0
        texts = [t for t in axes.texts if t.get_fontweight() == "bold" or t in marks]
        boxes = [b.get_window_extent(renderer) for b in bars]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1, text.get_text()
            assert not any(box.overlaps(b) for b in boxes), text.get_text()
        # The score table's class names (its right-hand tick labels) stop before the bars.
        table = next(a for a in fig.axes if a.images and a.get_yticklabels()[0].get_text()
                     == titles[0].rsplit(" ", 1)[0])
        names = [t.get_window_extent(renderer).x1 for t in table.get_yticklabels()]
        assert max(names) < axes.get_window_extent(renderer).x0
    label = axes.xaxis.label.get_window_extent(renderer)  # the last clip's, under its bars
    assert axes.xaxis.label.get_text() and page.y0 <= label.y0
    for text in fig.texts:  # the title and the captions
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, text.get_text()
    close(fig)


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
