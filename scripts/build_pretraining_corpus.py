#!/usr/bin/env python3
"""Build an unlabelled corpus of real audio for self-supervised pretraining.

Every sound comes from a Debian 12 package (installable offline from the Debian archive):
recorded speech prompts in five languages, letters, words and descriptions in ~30 more, sound
themes, drum and sample libraries, game sound effects and music, and MIDI tunes from Debian
packages rendered with four SoundFonts, the freepats patches and two recorded drum kits under
varied General MIDI programs. Nothing is synthesised from scratch.

    OUT/audio/<source group>/<name>.flac   16 kHz, mono, 16-bit FLAC, 1-30 s each
    OUT/manifest.csv                       path,seconds,source_id,package,package_version,
                                           licence,copyright
    OUT/README.md                          hours per package and kind, licences, exclusions

``--exclude DATASET_DIR`` (repeatable) keeps out every source that a labelled dataset built
by ``build_sampled_dataset.py`` holds in its eval or val split (its ``source_inventory.csv``),
and every SoundFont preset that plays the same recordings, so that a model pretrained on the
corpus is still evaluated on sources it never heard.

Usage:
    python scripts/build_pretraining_corpus.py --out /tmp/pretrain_corpus --install \\
        --exclude /tmp/sampled_fsd50k --exclude /tmp/novel_fsd50k       # ~12 hours
    python scripts/build_pretraining_corpus.py --out DIR --hours 2      # a smaller budget
    python scripts/build_pretraining_corpus.py --out DIR --small        # ~2 minutes, for tests
    python scripts/build_pretraining_corpus.py --check                  # are the packages there?

The recipe is ``sampled_dataset/corpus.py`` (sources, exclusions, the budget, decoding and
rendering, the README), on top of the labelled datasets' package discovery, licences and
SoundFont parsing (``sources``), decoding (``audio``) and MIDI rendering (``synthesis``).
Deterministic given ``--seed`` (and the installed package versions, which the README records).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)  # the sampled_dataset package sits next to it
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from sampled_dataset.common import BuildError  # noqa: E402
from sampled_dataset.corpus import (  # noqa: E402
    CORPUS_PACKAGES,
    DEFAULT_HOURS,
    RECORDED,
    RENDERS,
    SMALL_GROUPS,
    SMALL_HOURS,
    SMALL_PACKAGES,
    PresetFilter,
    Row,
    make_tasks,
    midi_files,
    read_exclusions,
    readme_text,
    recorded_source,
    render_sources,
    run_task,
    select,
    write_manifest,
)
from sampled_dataset.sources import ensure_packages  # noqa: E402

__all__ = ["build", "main"]


def build(out: Path, hours: float, seed: int, workers: int, install: bool,
          excludes: list[Path], small: bool, argv: list[str]) -> list[Row]:
    """Build the corpus into ``out`` (must be empty or absent); return the manifest rows."""
    start = time.time()
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"output directory {out} is not empty")
    exclusions = read_exclusions(excludes)
    versions = ensure_packages(install, SMALL_PACKAGES if small else CORPUS_PACKAGES)
    groups = list(SMALL_GROUPS) if small else [s.group for s in RECORDED + RENDERS]
    print("collecting sources...", flush=True)
    fonts = sorted({f for r in RENDERS if r.group in groups for f in r.fonts})
    filter_ = PresetFilter(fonts, exclusions)
    midis = {} if small else midi_files()
    sources = [recorded_source(s, exclusions) for s in RECORDED if s.group in groups]
    sources += render_sources(filter_, midis, groups)
    chosen = select(sources, hours, seed)
    tasks = make_tasks(sources, chosen, filter_, midis, seed)
    planned = sum(i.seconds for items in chosen.values() for i in items) / 3600
    print(f"planned {planned:.2f} h from {len(sources)} source groups in {len(tasks)} tasks; "
          "decoding and rendering...", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(run_task, [(t, out) for t in tasks]))
    else:
        results = [run_task((t, out)) for t in tasks]
    rows = [row for result in results for row in result.rows]
    if len({row.path for row in rows}) != len(rows):
        raise BuildError("two outputs were given the same file name (a bug): see manifest.csv")
    write_manifest(out, rows, versions)
    (out / "README.md").write_text(readme_text(
        rows, results, sources, exclusions, filter_, versions, argv, seed, hours,
        time.time() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory (created; must be empty)")
    parser.add_argument("--hours", type=float, default=None,
                        help=f"hour budget (default {DEFAULT_HOURS:g}; --small: "
                        f"{SMALL_HOURS:g}): recordings first, renders at least a quarter")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        metavar="DATASET_DIR",
                        help="a labelled dataset (build_sampled_dataset.py) whose eval and val "
                        "sources are kept out; repeatable")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--small", action="store_true",
                        help="a tiny build from the packages .ci/run installs, for tests")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel decoding and rendering processes (default: up to 2)")
    parser.add_argument("--install", action="store_true",
                        help="apt-get install the Debian packages that are missing (root)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the Debian packages are installed")
    args = parser.parse_args(argv)
    packages = SMALL_PACKAGES if args.small else CORPUS_PACKAGES
    try:
        if args.check:
            for package, version in ensure_packages(args.install, packages).items():
                print(f"{package} {version}")
            return 0
        if args.out is None:
            parser.error("--out is required")
        hours = args.hours if args.hours is not None else (
            SMALL_HOURS if args.small else DEFAULT_HOURS)
        if hours <= 0:
            parser.error("--hours must be positive")
        start = time.time()
        rows = build(args.out, hours, args.seed, args.workers, args.install, args.exclude,
                     args.small, ["build_pretraining_corpus.py"]
                     + list(argv if argv is not None else sys.argv[1:]))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in args.out.rglob("*.flac"))
    print(f"wrote {len(rows)} files, {sum(r.seconds for r in rows) / 3600:.2f} h "
          f"({size / 1e6:.0f} MB) to {args.out} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
