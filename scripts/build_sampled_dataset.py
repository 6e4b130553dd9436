#!/usr/bin/env python3
"""Build an FSD50K-format tagging dataset from real sampled and recorded sounds.

Every sound comes from a Debian 12 package (installable offline from the Debian archive):
FluidR3 GM (sampled instruments, rendered with FluidSynth), Hydrogen and Sonic Pi drum and
tabla samples, and recorded speech and animal sounds from KDE and Tux Paint data packages.
The output has FSD50K's layout and CSV formats, so code written for FSD50K reads it unchanged:

    OUT/FSD50K.dev_audio/<fname>.wav        44.1 kHz, mono, 16-bit PCM
    OUT/FSD50K.eval_audio/<fname>.wav
    OUT/FSD50K.ground_truth/dev.csv         fname,labels,mids,split   (split = train|val)
    OUT/FSD50K.ground_truth/eval.csv        fname,labels,mids
    OUT/FSD50K.ground_truth/vocabulary.csv  index,label,mid           (no header)
    OUT/sources.csv                         fname,split,source_ids,members,packages
    OUT/source_inventory.csv                every source file/preset, its group, split, licence
    OUT/README.md                           classes, counts, durations, sources and licences

Splits are made by source: each source group (a FluidR3 preset, or all presets that share a
sample; a recorded file; a drum kit; a language's speech) belongs to exactly one of train, val
and eval, so eval measures generalisation to unseen instruments, kits, recordings and voices.

``--classes novel`` builds a second dataset, for measuring fine-tuning: 8 classes that are not
among (nor AudioSet ancestors or descendants of) the 15 default ones, from sources the default
build does not use (FluidR3, FluidR3 GS and TimGM6mb SoundFonts, freepats patches rendered with
TiMidity++, Sonic Pi recordings), single-class clips, 680 by default.

Usage:
    python scripts/build_sampled_dataset.py --out /tmp/sampled_fsd50k [--install] [--seed 0]
    python scripts/build_sampled_dataset.py --out DIR --small      # 60 clips, for tests
    python scripts/build_sampled_dataset.py --check                # are the packages there?
    python scripts/build_sampled_dataset.py --classes novel --out /tmp/novel_fsd50k --seed 0

The recipe lives in the ``sampled_dataset`` package next to this script, one job per
module: ``sources`` (which Debian packages' files are used, how they are found, grouped and
licensed, and the source-disjoint split), ``planning`` (each clip's classes, sources and
gains), ``synthesis`` (rendering, augmenting and mixing the audio), ``layout`` (the
FSD50K-layout CSVs, source tables and README), ``audio`` and ``common`` (shared helpers).

Runs in about 20 s for the default 1,500 clips on 2 CPU cores. Deterministic given
``--seed`` (and the installed package versions, which the README records).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import soundfile as sf

_HERE = str(Path(__file__).resolve().parent)  # the sampled_dataset package sits next to it
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from sampled_dataset.audio import AudioCache  # noqa: E402
from sampled_dataset.common import (  # noqa: E402
    CLASS_SETS,
    CLASSES,
    DEFAULT,
    SAMPLE_RATE,
    BuildError,
    ClassSet,
    label_with_parents,
)
from sampled_dataset.layout import write_outputs  # noqa: E402
from sampled_dataset.planning import Clip, plan_clips  # noqa: E402
from sampled_dataset.sources import (  # noqa: E402
    PACKAGE_SETS,
    PACKAGES,
    Inventory,
    assign_splits,
    ensure_packages,
)
from sampled_dataset.synthesis import mix_clip, render_fluidsynth, render_recorded  # noqa: E402

__all__ = ["CLASSES", "CLASS_SETS", "PACKAGES", "BuildError", "build", "ensure_packages",
           "label_with_parents", "main"]

SMALL_N_CLIPS = DEFAULT.small_n_clips
DEFAULT_N_CLIPS = DEFAULT.default_n_clips


def build(out: Path, n_clips: int, seed: int, workers: int, install: bool,
          argv: list[str], class_set: ClassSet = DEFAULT) -> list[Clip]:
    """Build the dataset of ``class_set`` into ``out`` (must be empty or absent); return the
    clips."""
    start = time.time()
    if n_clips < len(class_set.classes):
        raise BuildError(f"--n-clips must be at least {len(class_set.classes)} (got {n_clips})")
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"output directory {out} is not empty")
    versions = ensure_packages(install, PACKAGE_SETS[class_set.name])
    print("collecting sources...", flush=True)
    cache = AudioCache()
    groups = Inventory(class_set).build(cache)
    assign_splits(groups, seed)
    clips = plan_clips(groups, n_clips, seed, class_set)
    print(f"planned {len(clips)} clips from {len(groups)} source groups; rendering...",
          flush=True)
    gm = [c for clip in clips for c in clip.components if groups[c.groups[0]].kind.startswith(
        "gm")]
    with tempfile.TemporaryDirectory(prefix="sampled_fsd50k_") as tmp:
        render_fluidsynth(gm, groups, workers, Path(tmp))
    for clip in clips:
        for comp in clip.components:
            if comp.audio is None:
                comp.audio = render_recorded(comp, groups, cache)
    for sub in ("FSD50K.dev_audio", "FSD50K.eval_audio", "FSD50K.ground_truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for clip in clips:
        audio = mix_clip(clip)
        folder = "FSD50K.eval_audio" if clip.split == "eval" else "FSD50K.dev_audio"
        sf.write(out / folder / f"{clip.fname}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        for comp in clip.components:
            comp.audio = None
    write_outputs(out, clips, groups, versions, seed, n_clips, time.time() - start, argv,
                  class_set)
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    novel = CLASS_SETS["novel"]
    parser.add_argument("--out", type=Path, help="output directory (created; must be empty)")
    parser.add_argument("--classes", choices=sorted(CLASS_SETS), default="default",
                        help="the class set: default (15 classes, the shipped preset's) or "
                        f"novel ({len(novel.classes)} other classes from other sources, for "
                        "measuring fine-tuning)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-clips", type=int, default=None,
                        help=f"number of clips (default {DEFAULT_N_CLIPS}: 2/3 train, "
                        f"2/15 val, 1/5 eval; novel: {novel.default_n_clips}: 10/17 train, "
                        "3/17 val, 4/17 eval)")
    parser.add_argument("--small", action="store_true",
                        help=f"{SMALL_N_CLIPS} clips ({novel.small_n_clips} for novel), for tests")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel FluidSynth or TiMidity++ renders (default: up to 2)")
    parser.add_argument("--install", action="store_true",
                        help="apt-get install the Debian packages that are missing (root)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the Debian packages are installed")
    args = parser.parse_args(argv)
    class_set = CLASS_SETS[args.classes]
    try:
        if args.check:
            versions = ensure_packages(args.install, PACKAGE_SETS[class_set.name])
            for package, version in versions.items():
                print(f"{package} {version}")
            return 0
        if args.out is None:
            parser.error("--out is required")
        if args.small and args.n_clips is not None:
            parser.error("--small and --n-clips are exclusive")
        n_clips = (class_set.small_n_clips if args.small
                   else (args.n_clips or class_set.default_n_clips))
        start = time.time()
        clips = build(args.out, n_clips, args.seed, args.workers, args.install,
                      ["build_sampled_dataset.py"] + list(argv if argv is not None
                                                          else sys.argv[1:]), class_set)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = Counter(c.split for c in clips)
    print(f"wrote {len(clips)} clips ({dict(counts)}) to {args.out} in "
          f"{time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
