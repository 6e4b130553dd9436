"""Cross-validation folds of a sampled dataset's dev split, by source group.

    python scripts/source_folds.py --data /tmp/sampled_fsd50k --out /tmp/sampled_folds

The sampled dataset's official validation split holds one source group (one instrument,
kit, recording or voice) for most classes, so a validation score says how a model does on
about twenty sources, and two settings' order on it often differs from their order on eval.
This script makes `--folds` datasets in the same layout whose validation splits partition the
dev sources: fold 0 is the official split (its validation groups), and the training groups of
each class are shared out over folds 1 .. K-1, the largest first, each to the fold with the
fewest of that class's clips. In fold k a dev clip is validation if all its sources are in
fold k, training if none is, and left out otherwise (a mixture of sources in two folds).
The eval split is the original's in every fold, and is never used to choose.

Each fold is `OUT/fold<k>/`, an FSD50K-layout directory that links to the original audio,
with `dev.csv` and `sources.csv` rewritten; any benchmark takes it as `--data`. Averaging a
setting's validation mAP over the folds scores it on every dev source.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections import Counter, defaultdict
from pathlib import Path

GROUND_TRUTH = "FSD50K.ground_truth"
AUDIO = ("FSD50K.dev_audio", "FSD50K.eval_audio")


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fold_of_groups(sources: list[dict], group_class: dict[str, str], folds: int) -> dict:
    """Each dev source group's fold: 0 for the official validation groups; the training
    groups of each class over folds 1 .. folds-1, the largest first, each to the fold with
    the fewest of that class's clips so far (ties to the lower fold)."""
    clips = Counter(g for row in sources if row["split"] != "eval"
                    for g in row["source_ids"].split(";"))
    split_of = {g: row["split"] for row in sources for g in row["source_ids"].split(";")}
    fold = {g: 0 for g in clips if split_of[g] == "val"}
    by_class = defaultdict(list)
    for group in clips:
        if split_of[group] == "train":
            by_class[group_class[group]].append(group)
    for groups in by_class.values():
        load = [0] * folds
        for group in sorted(groups, key=lambda g: (-clips[g], g)):
            k = min(range(1, folds), key=lambda i: (load[i], i))
            fold[group] = k
            load[k] += clips[group]
    return fold


def write_fold(data: Path, out: Path, k: int, fold: dict, sources: list[dict]) -> dict:
    """`out`: fold `k` of `data` (audio linked, ground truth rewritten); returns its counts."""
    (out / GROUND_TRUTH).mkdir(parents=True)
    for folder in AUDIO:
        (out / folder).symlink_to((data / folder).resolve(), target_is_directory=True)
    for name in ("eval.csv", "vocabulary.csv"):
        shutil.copy(data / GROUND_TRUTH / name, out / GROUND_TRUTH / name)
    split = {}
    for row in sources:
        if row["split"] == "eval":
            split[row["fname"]] = "eval"
            continue
        in_fold = [fold[g] == k for g in row["source_ids"].split(";")]
        split[row["fname"]] = "val" if all(in_fold) else "train" if not any(in_fold) else None
    dev = read_rows(data / GROUND_TRUTH / "dev.csv")
    kept = [dict(row, split=split[row["fname"]]) for row in dev if split[row["fname"]]]
    write_rows(out / GROUND_TRUTH / "dev.csv", kept, list(dev[0]))
    write_rows(out / "sources.csv", [dict(row, split=split[row["fname"]]) for row in sources
                                     if split[row["fname"]]], list(sources[0]))
    counts = Counter(row["split"] for row in kept)
    return {"fold": k, "train": counts["train"], "val": counts["val"],
            "left_out": len(dev) - len(kept),
            "val_groups": sum(1 for f in fold.values() if f == k)}


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="a dataset from build_sampled_dataset.py")
    parser.add_argument("--out", type=Path, required=True, help="empty or absent directory")
    parser.add_argument("--folds", type=int, default=3, help="at least 2 (default 3)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: at least 2")
    if not (args.data / "sources.csv").is_file():
        parser.error(f"{args.data}: no sources.csv (not a dataset from "
                     "build_sampled_dataset.py)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    sources = read_rows(args.data / "sources.csv")
    group_class = {row["source_id"]: row["class"]
                   for row in read_rows(args.data / "source_inventory.csv")}
    fold = fold_of_groups(sources, group_class, args.folds)
    for k in range(args.folds):
        counts = write_fold(args.data, args.out / f"fold{k}", k, fold, sources)
        print(", ".join(f"{key} {value}" for key, value in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
