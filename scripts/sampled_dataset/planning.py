"""The plan of every clip: split, duration, classes, source groups and mixing gains."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from .common import DEFAULT, SPLIT_FRACTIONS, BuildError, ClassSet, label_with_parents, rng_for
from .sources import Group

MIN_DURATION_S = 0.5
MAX_DURATION_S = 4.0
MIXTURE_PROBABILITY = 0.3



@dataclasses.dataclass
class Component:
    """One source's contribution to a clip."""

    label: str
    groups: list[str]
    duration: float  # seconds of this component
    onset: float  # seconds into the clip
    gain_db: float  # relative to the clip's primary component
    seed: int
    reverb: bool
    detail: dict = dataclasses.field(default_factory=dict)  # e.g. GM preset, chosen files
    audio: np.ndarray | None = None


@dataclasses.dataclass
class Clip:
    index: int
    split: str
    fname: int
    duration: float
    peak_db: float
    components: list[Component]

    @property
    def labels(self) -> list[str]:
        out: list[str] = []
        for comp in self.components:
            for label in label_with_parents(comp.label):
                if label not in out:
                    out.append(label)
        return out



def split_counts(n_clips: int, fractions: dict[str, float] = SPLIT_FRACTIONS) -> dict[str, int]:
    n_train = round(n_clips * fractions["train"])
    n_val = round(n_clips * fractions["val"])
    return {"train": n_train, "val": n_val, "eval": n_clips - n_train - n_val}


def plan_clips(groups: dict[str, Group], n_clips: int, seed: int,
               class_set: ClassSet = DEFAULT) -> list[Clip]:
    """Decide every clip: split, duration, classes, source groups, mixing gains."""
    labels = class_set.labels
    by_split_label: dict[tuple[str, str], list[str]] = defaultdict(list)
    for gid, group in sorted(groups.items()):
        by_split_label[(group.split, group.label)].append(gid)
    for split in SPLIT_FRACTIONS:
        for label in labels:
            if not by_split_label[(split, label)]:
                raise BuildError(f"class {label} has no source group in split {split}")
    rng = rng_for(seed, "plan")
    counts = split_counts(n_clips, class_set.split_fractions)
    fnames = rng.choice(np.arange(10000, 400000), size=n_clips, replace=False)
    clips: list[Clip] = []
    for split, count in counts.items():
        primaries: list[str] = []
        while len(primaries) < count:  # balanced: each class once per round, shuffled
            primaries += list(rng.permutation(labels))
        for label in primaries[:count]:
            index = len(clips)
            duration = float(rng.uniform(MIN_DURATION_S, MAX_DURATION_S))
            chosen = [label]
            if class_set.mixtures and rng.random() < MIXTURE_PROBABILITY:
                own = set(label_with_parents(label))
                others = [o for o in labels if not own & set(label_with_parents(o))]
                chosen.append(str(rng.choice(others)))
            components = []
            for k, comp_label in enumerate(chosen):
                pool = by_split_label[(split, comp_label)]
                gids = [str(rng.choice(pool))]
                if groups[gids[0]].kind == "strokes":  # tabla: strokes of 1-3 bols
                    more = [g for g in pool if g != gids[0] and groups[g].kind == "strokes"]
                    n_more = min(len(more), int(rng.integers(0, 3)))
                    gids += [str(g) for g in rng.choice(more, size=n_more, replace=False)]
                if k == 0:
                    comp_duration, onset, gain = duration, 0.0, 0.0
                else:
                    comp_duration = float(rng.uniform(min(duration, MIN_DURATION_S), duration))
                    onset = float(rng.uniform(0.0, duration - comp_duration))
                    gain = float(rng.uniform(-8.0, 2.0))
                components.append(Component(
                    comp_label, gids, comp_duration, onset, gain,
                    int(rng.integers(0, 2**31 - 1)), bool(rng.random() < 0.3)))
            clips.append(Clip(index, split, int(fnames[index]), duration,
                              float(rng.uniform(-18.0, -1.0)), components))
    return clips
