"""Writing the dataset: FSD50K's ground-truth CSVs, the source tables and the README."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

from .common import DEFAULT, ClassSet
from .planning import MIXTURE_PROBABILITY, Clip
from .sources import PACKAGE_SETS, Group


def write_outputs(out: Path, clips: list[Clip], groups: dict[str, Group],
                  versions: dict[str, str], seed: int, n_clips: int, elapsed: float,
                  argv: list[str], class_set: ClassSet = DEFAULT) -> None:
    mids = class_set.mids
    gt = out / "FSD50K.ground_truth"
    with open(gt / "vocabulary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for index, (label, mid) in enumerate(class_set.classes):
            writer.writerow([index, label, mid])
    dev = sorted((c for c in clips if c.split != "eval"), key=lambda c: c.fname)
    ev = sorted((c for c in clips if c.split == "eval"), key=lambda c: c.fname)
    with open(gt / "dev.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels", "mids", "split"])
        for c in dev:
            writer.writerow([c.fname, ",".join(c.labels), ",".join(mids[x] for x in c.labels),
                             c.split])
    with open(gt / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels", "mids"])
        for c in ev:
            writer.writerow([c.fname, ",".join(c.labels), ",".join(mids[x] for x in c.labels)])
    with open(out / "sources.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "split", "source_ids", "members", "packages"])
        for c in sorted(clips, key=lambda c: c.fname):
            gids = [g for comp in c.components for g in comp.groups]
            members = [m for comp in c.components for m in comp.detail.get("members", [])]
            packages = sorted({m.package for g in gids for m in groups[g].members})
            writer.writerow([c.fname, c.split, ";".join(gids), ";".join(members),
                             ";".join(packages)])
    with open(out / "source_inventory.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source_id", "class", "split", "member", "name_or_role", "package",
                         "package_version", "licence", "copyright"])
        for gid, group in sorted(groups.items()):
            for m in group.members:
                writer.writerow([gid, group.label, group.split, m.key, m.role, m.package,
                                 versions[m.package], m.licence, m.copyright])
    (out / "README.md").write_text(
        readme_text(clips, groups, versions, seed, n_clips, elapsed, argv, class_set))


# The README paragraphs that differ between the class sets.
NOVEL_TEXT = {
    "title": "# Sampled FSD50K-format dataset: novel classes",
    "intro": "For measuring fine-tuning on classes a model has not seen: none of these classes "
    "is one of the 15 classes of the default sampled dataset (`build_sampled_dataset.py` "
    "without `--classes`, on which the shipped preset `diverse_sampled15` was trained) or an "
    "AudioSet ancestor or descendant of one, and no source of this dataset (recorded file, "
    "SoundFont preset or sample, patch) is used there.",
    "splits": "Splits are by source: each source group (a SoundFont preset, or the presets of "
    "a SoundFont sharing a sample; a freepats patch; a recorded file; merged when two hold the "
    "same recording) is in exactly one of train, val and eval (`source_inventory.csv`), so eval "
    "measures generalisation to unseen instruments and recordings. `sources.csv` maps each "
    "clip to its source group and files.",
    "labels": "Counts are clips carrying the label. Every clip has exactly one label: there "
    "are no mixtures, and no class is an AudioSet ancestor of another. Every mid was checked "
    "against the AudioSet ontology (github.com/audioset/ontology).",
    "how": [
        "- Each clip has one class, drawn in balanced rounds, so every class has the same "
        "number of clips in each split (up to one, when a split's size is not a multiple of the "
        "number of classes).",
        "- Instruments (FluidR3, TimGM6mb, freepats): random melodies, chords, arpeggios or "
        "held notes in the instrument's register, random tempo, articulation and velocity, "
        "rendered by FluidSynth (SoundFonts) or TiMidity++ (freepats), reverb and chorus off. "
        "Sound effects (seashore, rain, stream, wind chimes, doors, vehicles): one middle C, held "
        "to the end. Recorded bells and door: 1-3 strikes; the choir "
        "recording: a random segment.",
    ],
}


def readme_text(clips: list[Clip], groups: dict[str, Group], versions: dict[str, str],
                seed: int, n_clips: int, elapsed: float, argv: list[str],
                class_set: ClassSet = DEFAULT) -> str:
    novel = class_set.name != "default"
    splits = list(class_set.split_fractions)
    lines = [
        NOVEL_TEXT["title"] if novel else "# Sampled FSD50K-format dataset",
        "",
        "Generated by `scripts/build_sampled_dataset.py` (keras-dae) with "
        f"`{' '.join(argv)}` (seed {seed}, {n_clips} clips) in {elapsed:.0f} s. "
        "Every sound is a real recording or a sampled instrument from a Debian package; "
        "clips are 0.5-4 s, 44.1 kHz mono 16-bit WAV, in FSD50K's layout and CSV formats.",
        "",
    ]
    if novel:
        lines += [NOVEL_TEXT["intro"], "", NOVEL_TEXT["splits"], ""]
    else:
        lines += [
            "Splits are by source: each source group (a FluidR3 preset, or the presets sharing "
            "a sample; a drum kit; a recorded file; all speech in one language) is in exactly "
            "one of train, val and eval (`source_inventory.csv`), so eval measures "
            "generalisation to unseen instruments, kits, recordings and voices. `sources.csv` "
            "maps each clip to its source groups and files.",
            "",
        ]
    lines += [
        "## Classes",
        "",
        "| index | label | AudioSet id | train | val | eval | source groups (train/val/eval) |",
        "|---|---|---|---|---|---|---|",
    ]
    label_counts = {s: Counter(x for c in clips if c.split == s for x in c.labels)
                    for s in splits}
    group_counts = {s: Counter(g.label for g in groups.values() if g.split == s)
                    for s in splits}
    for index, (label, mid) in enumerate(class_set.classes):
        lines.append(f"| {index} | {label} | {mid} | "
                     + " | ".join(str(label_counts[s][label]) for s in splits) + " | "
                     + "/".join(str(group_counts[s][label]) for s in splits) + " |")
    lines += [
        "",
        NOVEL_TEXT["labels"] if novel else
        "Counts are clips carrying the label. As in FSD50K, a clip also carries its class's "
        "AudioSet ancestors that are in this vocabulary: Bass_guitar -> Guitar, Flute -> "
        "Wind_instrument_and_woodwind_instrument, Bird -> Animal (AudioSet puts ducks, geese, "
        "chickens and turkeys under Fowl, not Bird: they are Animal only). Every mid was checked "
        "against the AudioSet ontology (github.com/audioset/ontology).",
        "",
        "## Splits",
        "",
        "| split | clips | mixtures | duration (s) | mean (s) |",
        "|---|---|---|---|---|",
    ]
    for s in splits:
        sc = [c for c in clips if c.split == s]
        total = sum(c.duration for c in sc)
        mixtures = sum(len(c.components) > 1 for c in sc)
        lines.append(f"| {s} | {len(sc)} | {mixtures} | {total:.1f} | "
                     f"{total / max(1, len(sc)):.2f} |")
    total = sum(c.duration for c in clips)
    lines += [
        f"| all | {len(clips)} | {sum(len(c.components) > 1 for c in clips)} | {total:.1f} | "
        f"{total / max(1, len(clips)):.2f} |",
        "",
        "## How clips are made",
        "",
    ]
    if novel:
        lines += NOVEL_TEXT["how"]
    else:
        lines += [
            "- Each clip has one class drawn in balanced rounds; with probability "
            f"{MIXTURE_PROBABILITY} a second class (sharing no label with the first) is mixed in "
            "over a random part of the clip at -8 to +2 dB, and the labels are the union.",
            "- FluidR3 instruments: random melodies, chords, arpeggios or held notes in the "
            "instrument's register, random tempo, articulation and velocity, rendered by "
            "FluidSynth (reverb and chorus off). FluidR3 and sample-based drum kits: random grooves "
            "(70-170 BPM, swing, fills, crashes). Tabla: strokes of 1-3 bols at a steady pulse. "
            "Speech: utterances of one language in a row. Animals and birds: 1-3 calls. Longer "
            "recordings and drum loops: a random segment.",
        ]
    lines += [
        "- 30% of components get a synthetic room (RT60 0.2-0.8 s). Components are levelled "
        "to equal active RMS, and the clip is scaled to a peak of -18 to -1 dBFS.",
        "",
        "## Sources and licences",
        "",
        "| Debian package | version | what is used | licence(s) of the files used |",
        "|---|---|---|---|",
    ]
    licences: dict[str, Counter] = defaultdict(Counter)
    for g in groups.values():
        for m in g.members:
            licences[m.package][m.licence] += 1
    for package, what in PACKAGE_SETS[class_set.name].items():
        lic = ", ".join(f"{k} ({v} items)" for k, v in licences[package].most_common()) or "-"
        lines.append(f"| {package} | {versions[package]} | {what} | {lic} |")
    lines += [
        "",
        "Per-file licences and copyright holders (from each package's DEP-5 copyright file) "
        "are in `source_inventory.csv`. Redistributing these clips means following those "
        "licences (" + ", ".join(sorted({m.licence for g in groups.values() for m in g.members}))
        + ").",
        "",
        "## Source groups per split",
        "",
    ]
    for label in class_set.labels:
        lines.append(f"- **{label}**")
        for s in splits:
            ids = sorted(g.id for g in groups.values() if g.label == label and g.split == s)
            lines.append(f"  - {s}: " + ", ".join(f"`{i}`" for i in ids))
    return "\n".join(lines) + "\n"
