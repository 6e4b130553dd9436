#!/usr/bin/env python3
"""Build a strongly labelled sound-event set: Scaper soundscapes from the sampled dataset.

Each soundscape is 10 s of a real background recording with foreground events at known
onsets, mixed by Scaper (the field's soundscape synthesiser) from the single-class clips of
the sampled dataset (``scripts/build_sampled_dataset.py``). The layout and annotation format
are DCASE / DESED's, so tools written for those sets read it unchanged:

    OUT/audio/{val,eval}/<name>.wav             16 kHz, mono, 16-bit PCM, 10 s
    OUT/metadata/{val,eval}.tsv                 filename onset offset event_label  (strong labels)
    OUT/metadata/{val,eval}_durations.tsv       filename duration
    OUT/sources.csv                             each event's clip and each background's file
    OUT/README.md                               how it was made, counts per class

Splits follow the clip dataset's, which are made by source: val soundscapes use only its val
clips and eval soundscapes only its eval clips, and the background recordings are split too,
so an eval soundscape holds no instrument, voice, recording or background that a val one
holds. A clip's event carries its class and the class's ancestors in the vocabulary, as the
clip dataset's labels do (a Bird event is also an Animal event), and overlapping events of one
class are written as one (their union), as DCASE's tools require. Foreground clips are trimmed
of their leading and trailing silence first (40 dB below their peak), so an event's onset and
offset are those of the sound, not of the clip.

Usage:
    python scripts/build_soundscapes.py --data /tmp/sampled_fsd50k --out /tmp/soundscapes
    python scripts/build_soundscapes.py --data DIR --out OUT --small      # 4 + 4, for tests

Needs ``scaper`` (``pip install "keras-dae[events]"``) and the Debian package
``tuxpaint-stamps-default`` (the backgrounds). Deterministic given ``--seed``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from sampled_dataset.common import PARENTS, label_with_parents  # noqa: E402

from keras_dae.event_evaluation import merge_overlaps  # noqa: E402

SAMPLE_RATE = 16000
DURATION = 10.0
TRIM_DB = 40.0
# Real recordings of steady household and street noise, none of them a class of the
# vocabulary, split between the two sets (Tux Paint stamps, GPL-2+).
STAMPS = Path("/usr/share/tuxpaint/stamps")
BACKGROUNDS = {
    "val": ["household/vacuum_cleaner.ogg", "household/kettle.ogg", "household/toilet.ogg"],
    "eval": ["household/Washing-machine.ogg", "vehicles/emergency/firetruck.ogg",
             "space/apollo_lander.ogg"],
}
SIZES = {"val": 60, "eval": 100}
SMALL_SIZES = {"val": 4, "eval": 4}


class BuildError(RuntimeError):
    """A problem that stops the build; the message says what is wrong."""


def single_class_clips(data: Path, split: str) -> dict[str, list[Path]]:
    """The clips of `split` ('val' or 'eval') that hold one class (with its ancestors):
    {class: [wav paths]}."""
    if split == "eval":
        table, audio = data / "FSD50K.ground_truth/eval.csv", data / "FSD50K.eval_audio"
    else:
        table, audio = data / "FSD50K.ground_truth/dev.csv", data / "FSD50K.dev_audio"
    if not table.is_file():
        raise BuildError(f"{table} not found: --data must be a dataset made by "
                         "scripts/build_sampled_dataset.py")
    clips: dict[str, list[Path]] = {}
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("split", "eval") != split:
                continue
            labels = set(row["labels"].split(","))
            leaves = [label for label in labels  # no other label has it as its parent
                      if not any(PARENTS.get(other) == label for other in labels)]
            if len(leaves) == 1 and set(label_with_parents(leaves[0])) == labels:
                clips.setdefault(leaves[0], []).append(audio / f"{row['fname']}.wav")
    if not clips:
        raise BuildError(f"no single-class clips in the {split} split of {data}")
    return clips


def write_mono_16k(path: Path, out: Path, trim: bool = False) -> float:
    """Writes `path` as mono 16 kHz float WAV to `out` (with `trim`, without its leading and
    trailing silence); returns its duration (s)."""
    import librosa

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = librosa.resample(audio.mean(axis=1), orig_sr=rate, target_sr=SAMPLE_RATE)
    if trim:
        audio, _ = librosa.effects.trim(audio, top_db=TRIM_DB)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio, SAMPLE_RATE, subtype="FLOAT")
    return audio.size / SAMPLE_RATE


def prepare_sources(data: Path, split: str, work: Path) -> tuple[Path, Path, dict]:
    """Scaper's folders for one split: `fg/<class>/<clip>.wav` (trimmed) and
    `bg/noise/<recording>.wav`; returns them and {clip path: its source file}."""
    fg, bg = work / split / "fg", work / split / "bg"
    origin = {}
    for label, paths in sorted(single_class_clips(data, split).items()):
        for path in paths:
            out = fg / label / f"{path.stem}.wav"
            if write_mono_16k(path, out, trim=True) >= 0.25:  # keep sounds long enough for a 0.2 s collar
                origin[str(out)] = str(path.relative_to(data))
            else:
                out.unlink()
    for rel in BACKGROUNDS[split]:
        source = STAMPS / rel
        if not source.is_file():
            raise BuildError(f"background recording {source} not found: install the Debian "
                             "package tuxpaint-stamps-default")
        out = bg / "noise" / f"{Path(rel).stem}.wav"
        write_mono_16k(source, out)
        origin[str(out)] = f"tuxpaint-stamps-default:{rel}"
    return fg, bg, origin


def _scaper():
    """Scaper (1.6.5, the latest) still spells infinity `np.Inf`, which NumPy 2 removed."""
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # noqa: NPY201  (setting it, for Scaper)
    try:
        import scaper
    except ImportError as error:
        raise BuildError(f'{error}: pip install "keras-dae[events]"') from None
    return scaper


def soundscape(fg: Path, bg: Path, seed: int, audio_path: Path) -> list[tuple]:
    """Generates one soundscape; returns its events (onset, offset, class, source clip)."""
    scaper = _scaper()

    rng = np.random.default_rng(seed)
    sc = scaper.Scaper(DURATION, str(fg), str(bg), random_state=int(seed))
    sc.sr, sc.n_channels, sc.ref_db = SAMPLE_RATE, 1, -40
    sc.fade_in_len = sc.fade_out_len = 0.01
    sc.add_background(label=("choose", []), source_file=("choose", []),
                      source_time=("uniform", 0, 1))
    for _ in range(int(rng.integers(2, 5))):  # 2-4 events, overlaps allowed
        sc.add_event(label=("choose", []), source_file=("choose", []),
                     source_time=("const", 0), event_time=("uniform", 0, DURATION - 1.5),
                     event_duration=("uniform", 1.5, 5.0), snr=("uniform", 6, 24),
                     pitch_shift=None, time_stretch=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Scaper warns when a clip is shorter than its draw
        _, jam, _, _ = sc.generate(str(audio_path), None, fix_clipping=True,
                                   disable_instantiation_warnings=True)
    events = []
    for obs in jam.annotations.search(namespace="scaper")[0].data:
        if obs.value["role"] == "foreground":
            events.append((obs.time, obs.time + obs.duration, obs.value["label"],
                           obs.value["source_file"]))
    return events


def build(data: Path, out: Path, sizes: dict[str, int], seed: int) -> dict[str, Counter]:
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"output directory {out} is not empty")
    counts = {}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n_split, (split, n) in enumerate(sizes.items()):
            fg, bg, origin = prepare_sources(data, split, Path(work))
            (out / "audio" / split).mkdir(parents=True, exist_ok=True)
            (out / "metadata").mkdir(parents=True, exist_ok=True)
            strong, durations, counts[split] = [], [], Counter()
            for i in range(n):
                name = f"{split}_{i:04d}.wav"
                path = out / "audio" / split / name
                events = soundscape(fg, bg, seed * 100_003 + n_split * 10_007 + i, path)
                audio, rate = sf.read(path, dtype="float32")
                sf.write(path, audio, rate, subtype="PCM_16")  # the 16-bit PCM sets ship as
                durations.append((name, f"{audio.size / rate:.3f}"))
                labelled = [(onset, offset, each) for onset, offset, label, _ in events
                            for each in label_with_parents(label)]
                for onset, offset, label in merge_overlaps(labelled):  # DCASE's form
                    strong.append((name, f"{onset:.3f}", f"{offset:.3f}", label))
                    counts[split][label] += 1
                rows += [(split, name, f"{onset:.3f}", f"{offset:.3f}", label, origin[source])
                         for onset, offset, label, source in events]
            rows += [(split, "", "", "", "background", source)
                     for path, source in sorted(origin.items()) if "/bg/" in path]
            write_tsv(out / "metadata" / f"{split}.tsv",
                      ("filename", "onset", "offset", "event_label"), strong)
            write_tsv(out / "metadata" / f"{split}_durations.tsv", ("filename", "duration"),
                      durations)
    with open(out / "sources.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "filename", "onset", "offset", "label", "source"))
        writer.writerows(rows)
    write_readme(out, data, counts, seed)
    return counts


def write_tsv(path: Path, header: tuple, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_readme(out: Path, data: Path, counts: dict[str, Counter], seed: int) -> None:
    scaper = _scaper()

    classes = sorted(set().union(*counts.values()))
    lines = ["# Soundscapes with strong labels", "",
             f"Made by `scripts/build_soundscapes.py --seed {seed}` with Scaper "
             f"{scaper.__version__} from the clips of `{data.name}` (the sampled dataset) over "
             "real background recordings (Tux Paint stamps, GPL-2+); see sources.csv.", "",
             "| class | val events | eval events |", "|---|---:|---:|"]
    lines += [f"| {c} | {counts.get('val', {}).get(c, 0)} | {counts.get('eval', {}).get(c, 0)} |"
              for c in classes]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "build.json").write_text(json.dumps({"seed": seed, "sample_rate": SAMPLE_RATE,
                                                "duration": DURATION}, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="a dataset made by scripts/build_sampled_dataset.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="4 val and 4 eval soundscapes")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        counts = build(args.data, args.out, SMALL_SIZES if args.small else SIZES, args.seed)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = {split: sum(c.values()) for split, c in counts.items()}
    print(f"wrote soundscapes with {total} labelled events to {args.out} in "
          f"{time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
