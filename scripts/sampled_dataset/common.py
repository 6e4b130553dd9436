"""What every part of the build shares: the vocabularies, the split sizes, seeds, errors."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

SAMPLE_RATE = 44100
SPLIT_FRACTIONS = {"train": 2 / 3, "val": 2 / 15, "eval": 1 / 5}  # of clips

# --- Vocabulary -------------------------------------------------------------------------------
# FSD50K-style names (AudioSet names, spaces -> "_", ", " -> "_and_") and AudioSet ids, each
# checked against the AudioSet ontology (github.com/audioset/ontology, ontology.json).
CLASSES: list[tuple[str, str]] = [
    ("Piano", "/m/05r5c"),
    ("Organ", "/m/013y1f"),
    ("Guitar", "/m/0342h"),
    ("Bass_guitar", "/m/018vs"),
    ("Bowed_string_instrument", "/m/0l14_3"),
    ("Brass_instrument", "/m/01kcd"),
    ("Wind_instrument_and_woodwind_instrument", "/m/085jw"),
    ("Flute", "/m/0l14j_"),
    ("Mallet_percussion", "/m/0j45pbj"),
    ("Synthesizer", "/m/0l14qv"),
    ("Drum_kit", "/m/02hnl"),
    ("Tabla", "/m/01p970"),
    ("Speech", "/m/09x0r"),
    ("Bird", "/m/015p6"),
    ("Animal", "/m/0jbk"),
]
MIDS = dict(CLASSES)
# AudioSet ancestors that are also in the vocabulary: as in FSD50K, a clip of a class also
# carries these labels (Bass guitar < Guitar, Flute < Woodwind, Bird < Wild animals < Animal).
PARENTS = {
    "Bass_guitar": "Guitar",
    "Flute": "Wind_instrument_and_woodwind_instrument",
    "Bird": "Animal",
}


# A second vocabulary, for measuring fine-tuning: sounds the default classes do not cover.
# None is one of the 15 classes above or an AudioSet ancestor or descendant of one (Choir is
# under Singing, Sitar beside Guitar under Plucked string instrument, Harpsichord beside Piano
# and Organ under Keyboard), and none has an ancestor among the others, so clips carry one
# label each. Every source is new too: no file or FluidR3 sample of the default build is used.
NOVEL_CLASSES: list[tuple[str, str]] = [
    ("Accordion", "/m/0mkg"),
    ("Harpsichord", "/m/03q5t"),
    ("Sitar", "/m/0jtg0"),
    ("Choir", "/m/0l14jd"),
    ("Bell", "/m/0395lw"),
    ("Water", "/m/0838f"),
    ("Door", "/m/02dgv"),
    ("Vehicle", "/m/07yv9"),
]


def label_with_parents(label: str) -> list[str]:
    """``label`` followed by its ancestors in the vocabulary (``PARENTS``)."""
    out = [label]
    while out[-1] in PARENTS:
        out.append(PARENTS[out[-1]])
    return out


@dataclasses.dataclass(frozen=True)
class ClassSet:
    """A vocabulary and how its dataset is sized and mixed (``--classes``)."""

    name: str
    classes: list[tuple[str, str]]
    split_fractions: dict[str, float]  # of clips
    default_n_clips: int
    small_n_clips: int
    mixtures: bool  # whether a second class is sometimes mixed in

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.classes]

    @property
    def mids(self) -> dict[str, str]:
        return dict(self.classes)


CLASS_SETS: dict[str, ClassSet] = {
    "default": ClassSet("default", CLASSES, SPLIT_FRACTIONS, 1500, 60, True),
    # 50 train, 15 val and 20 eval clips per class at the default size; one class a clip.
    "novel": ClassSet("novel", NOVEL_CLASSES,
                      {"train": 10 / 17, "val": 3 / 17, "eval": 4 / 17}, 680, 68, False),
}
DEFAULT = CLASS_SETS["default"]


class BuildError(RuntimeError):
    """A problem that stops the build; the message says what is wrong and how to fix it."""


# --- Small utilities ------------------------------------------------------------------------


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from any parts, stable across Python runs (unlike ``hash``)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode()) & 0xFFFFFFFF


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """An independent random generator for one purpose, derived from the global seed."""
    return np.random.default_rng([seed, stable_seed(*parts)])


class UnionFind:
    """Disjoint sets over hashable keys."""

    def __init__(self) -> None:
        self.parent: dict[object, object] = {}

    def find(self, key: object) -> object:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: object, b: object) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb, key=str)] = min(ra, rb, key=str)
