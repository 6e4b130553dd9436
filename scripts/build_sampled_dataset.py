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

Usage:
    python scripts/build_sampled_dataset.py --out /tmp/sampled_fsd50k [--install] [--seed 0]
    python scripts/build_sampled_dataset.py --out DIR --small      # 60 clips, for tests
    python scripts/build_sampled_dataset.py --check                # are the packages there?

Runs in about 20 s for the default 1,500 clips on 2 CPU cores. Deterministic given
``--seed`` (and the installed package versions, which the README records).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import fnmatch
import gzip
import hashlib
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

SAMPLE_RATE = 44100
MIN_DURATION_S = 0.5
MAX_DURATION_S = 4.0
MIXTURE_PROBABILITY = 0.3
SPLIT_FRACTIONS = {"train": 2 / 3, "val": 2 / 15, "eval": 1 / 5}  # of clips
GROUP_FRACTIONS = {"val": 0.13, "eval": 0.2}  # of each class's source groups; rest train
SMALL_N_CLIPS = 60
DEFAULT_N_CLIPS = 1500
SF2_PATH = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SLOTS_PER_RENDER = 60  # FluidSynth renders this many components per MIDI file
SLOT_GAP_S = 1.0

# Debian packages the build reads, and what each provides.
PACKAGES: dict[str, str] = {
    "fluidsynth": "FluidSynth, renders MIDI with the soundfont",
    "fluid-soundfont-gm": "FluidR3 GM soundfont: sampled instruments and drum kits",
    "sonic-pi-samples": "Sonic Pi samples: tabla strokes, drum kits and breaks, guitar, crow",
    "hydrogen-data": "Hydrogen drum kits (GMRockKit, TR808EmulationKit)",
    "sound-theme-freedesktop": "recorded English speech (ALSA channel announcements)",
    "klettres-data": "KLettres: recorded letters and syllables in ~20 languages",
    "ktuberling-data": "KTuberling: recorded words in ~20 languages",
    "tuxpaint-stamps-default": "Tux Paint stamps: recorded animal sounds, instrument "
    "recordings, spoken descriptions in ~12 languages",
}
# Licence summaries for packages whose copyright file is not machine-readable (DEP-5).
LICENCE_FALLBACK = {"fluid-soundfont-gm": ("MIT", "Frank Wen and contributors (FluidR3)")}

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

# FluidR3 GM presets per class: (bank, program, lowest note, highest note, max polyphony).
# Only presets that are clearly that AudioSet class (e.g. no accordion under Organ, no synth
# bass under Bass guitar, no celesta or tubular bells under Mallet percussion).
GM_PRESETS: dict[str, list[tuple[int, int, int, int, int]]] = {
    "Piano": [(0, p, 33, 96, 4) for p in range(6)] + [(8, 4, 33, 96, 4), (8, 5, 33, 96, 4)],
    "Organ": [(0, p, 36, 88, 4) for p in range(16, 21)]
    + [(8, 16, 36, 88, 4), (8, 17, 36, 88, 4), (8, 19, 36, 88, 4)],
    "Guitar": [(0, 24, 40, 84, 4), (0, 25, 40, 84, 4), (0, 26, 40, 84, 3), (0, 27, 40, 84, 4),
               (0, 28, 40, 76, 3), (0, 29, 40, 84, 3), (0, 30, 40, 84, 3), (0, 31, 52, 88, 2),
               (8, 25, 40, 84, 4), (8, 26, 40, 84, 2)],
    "Bass_guitar": [(0, p, 28, 60, 1) for p in range(33, 38)],
    "Bowed_string_instrument": [(0, 40, 55, 93, 2), (8, 40, 55, 93, 2), (0, 41, 48, 84, 2),
                                (0, 42, 36, 72, 2), (0, 43, 28, 60, 1), (0, 44, 40, 84, 3),
                                (0, 45, 40, 84, 3), (0, 48, 36, 84, 4), (0, 49, 36, 84, 4),
                                (0, 110, 55, 93, 2)],
    "Brass_instrument": [(0, 56, 55, 82, 1), (0, 57, 40, 72, 1), (0, 58, 28, 58, 1),
                         (0, 59, 55, 82, 1), (0, 60, 41, 77, 2), (0, 61, 41, 80, 4),
                         (8, 61, 41, 80, 4)],
    "Wind_instrument_and_woodwind_instrument": [
        (0, 64, 56, 87, 1), (0, 65, 49, 80, 1), (0, 66, 44, 75, 1), (0, 67, 36, 68, 1),
        (0, 68, 58, 91, 1), (0, 69, 52, 81, 1), (0, 70, 34, 72, 1), (0, 71, 50, 91, 1)],
    "Flute": [(0, 72, 74, 102, 1), (0, 73, 60, 96, 1), (0, 74, 60, 91, 1), (0, 75, 60, 91, 1),
              (0, 77, 55, 84, 1), (0, 79, 60, 86, 1)],
    "Mallet_percussion": [(0, 9, 79, 108, 2), (0, 11, 53, 89, 3), (0, 12, 45, 96, 3),
                          (0, 13, 65, 108, 2), (0, 114, 55, 84, 3)],
    "Synthesizer": [(0, p, 48, 84, 2) for p in range(80, 88)] + [(8, 80, 48, 84, 1)]
    + [(0, p, 36, 84, 4) for p in range(88, 96)],
    "Bird": [(0, 123, 60, 84, 1)],
}
GM_DRUM_BANK = 128

# Sample-based drum kits: GM note roles -> files (names matched case-insensitively).
DRUM_ROLES = {35: "kick", 36: "kick", 38: "snare", 40: "snare", 42: "hat_closed",
              44: "hat_pedal", 46: "hat_open", 51: "ride", 49: "crash", 57: "crash",
              41: "tom", 43: "tom", 45: "tom", 47: "tom", 48: "tom", 50: "tom"}
ROLE_FALLBACK = {"hat_pedal": ["hat_closed"], "hat_open": ["hat_closed"],
                 "ride": ["hat_closed"], "crash": ["ride", "hat_open"],
                 "hat_closed": ["ride", "hat_pedal"], "tom": []}
VELOCITY_LAYERS = {"softest": 0, "soft": 1, "med": 2, "hard": 3, "hardest": 4}


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


# --- Debian packages ------------------------------------------------------------------------


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each Debian package, or None where it is not installed."""
    if shutil.which("dpkg-query") is None:
        raise BuildError(
            "dpkg-query not found: this script needs a Debian/Ubuntu system with the packages "
            + " ".join(PACKAGES))
    versions: dict[str, str | None] = {}
    for package in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}\t${Version}", package],
            capture_output=True, text=True, check=False)
        status, _, version = result.stdout.partition("\t")
        versions[package] = version.strip() if result.returncode == 0 and status.startswith(
            "ii") else None
    return versions


def install_command(packages: Sequence[str]) -> str:
    """The apt-get line (run as root) that installs ``packages``."""
    return ("apt-get update && env DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends " + " ".join(packages))


def ensure_packages(install: bool) -> dict[str, str]:
    """Check (and with ``install``, apt-get install) every package; return their versions."""
    versions = package_versions(PACKAGES)
    missing = [p for p, v in versions.items() if v is None]
    if missing and install:
        prefix = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
        if prefix is None:
            raise BuildError("--install needs root (or sudo) to run apt-get")
        print(f"installing Debian packages: {' '.join(missing)}", flush=True)
        apt = prefix + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
        for args in (["update", "-q"], ["install", "-y", "-q", "--no-install-recommends",
                                        *missing]):
            if subprocess.run(apt + args, check=False).returncode != 0:
                raise BuildError(f"{' '.join(apt + args)} failed (see its output above)")
        versions = package_versions(PACKAGES)
        missing = [p for p, v in versions.items() if v is None]
    if missing:
        raise BuildError(
            "missing Debian package(s): " + ", ".join(f"{p} ({PACKAGES[p]})" for p in missing)
            + ". Run this script with --install (as root), or: " + install_command(missing))
    if shutil.which("fluidsynth") is None:
        raise BuildError("the fluidsynth binary is not on PATH although package fluidsynth is "
                         "installed")
    if not SF2_PATH.is_file():
        raise BuildError(f"{SF2_PATH} not found (package fluid-soundfont-gm)")
    return {p: v for p, v in versions.items() if v is not None}


@dataclasses.dataclass
class CopyrightStanza:
    patterns: list[str]
    licence: str
    copyright: str


def read_copyright(package: str) -> list[CopyrightStanza]:
    """The ``Files:`` stanzas of a package's machine-readable (DEP-5) copyright file."""
    path = Path("/usr/share/doc") / package / "copyright"
    if not path.exists():
        return []
    text = path.read_bytes()
    if text[:2] == b"\x1f\x8b":
        text = gzip.decompress(text)
    stanzas: list[CopyrightStanza] = []
    for block in re.split(r"\n\s*\n", text.decode("utf-8", "replace")):
        fields: dict[str, str] = {}
        current = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and current:
                fields[current] += " " + line.strip()
            elif ":" in line:
                current, _, value = line.partition(":")
                current = current.strip().lower()
                fields[current] = value.strip()
        if "files" in fields and "license" in fields:
            stanzas.append(CopyrightStanza(
                fields["files"].split(), fields["license"].split()[0] if fields["license"]
                else "", re.sub(r"\s+", " ", fields.get("copyright", ""))))
    return stanzas


def licence_of(path: Path, package: str, stanzas: list[CopyrightStanza]) -> tuple[str, str]:
    """(licence, copyright holder) of an installed file, from its package's DEP-5 stanzas.

    A stanza pattern matches when its file-name part matches the file's name and its last
    directory (if any) is the file's parent directory name; the last matching stanza wins,
    as in DEP-5.
    """
    found = LICENCE_FALLBACK.get(package, (f"see /usr/share/doc/{package}/copyright", ""))
    for stanza in stanzas:
        for pattern in stanza.patterns:
            head, _, tail = pattern.rpartition("/")
            if pattern == "*" or (fnmatch.fnmatch(path.name, tail) and (
                    not head or head.rsplit("/", 1)[-1] == path.parent.name)):
                found = (stanza.licence, stanza.copyright)
    return found


# --- SoundFont parsing ----------------------------------------------------------------------


def sf2_presets(path: Path) -> dict[tuple[int, int], tuple[str, frozenset[int]]]:
    """Map (bank, program) -> (preset name, ids of every sample the preset can play).

    Reads the SF2 ``pdta`` chunks directly (phdr/pbag/pgen -> inst/ibag/igen -> samples), so
    presets that share recorded samples can be kept in one split.
    """
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise BuildError(f"{path} is not a SoundFont 2 file")
    chunks: dict[str, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"LIST" and data[pos + 8:pos + 12] == b"pdta":
            sub, end = pos + 12, pos + 8 + size
            while sub + 8 <= end:
                sid, ssize = data[sub:sub + 4], struct.unpack("<I", data[sub + 4:sub + 8])[0]
                chunks[sid.decode("latin1")] = data[sub + 8:sub + 8 + ssize]
                sub += 8 + ssize + (ssize & 1)
        pos += 8 + size + (size & 1)
    if not {"phdr", "pbag", "pgen", "inst", "ibag", "igen"} <= set(chunks):
        raise BuildError(f"{path}: SoundFont preset data (pdta) is incomplete")

    def records(name: str, size: int, fmt: str) -> list[tuple]:
        blob = chunks[name]
        return [struct.unpack(fmt, blob[i:i + size]) for i in range(0, len(blob), size)]

    phdr = records("phdr", 38, "<20sHHHIII")
    pbag = records("pbag", 4, "<HH")
    pgen = records("pgen", 4, "<HH")
    inst = records("inst", 22, "<20sH")
    ibag = records("ibag", 4, "<HH")
    igen = records("igen", 4, "<HH")

    def generator_values(bags: list, gens: list, start: int, end: int, oper: int) -> set[int]:
        return {gens[g][1] for b in range(start, end) for g in range(bags[b][0], bags[b + 1][0])
                if gens[g][0] == oper}

    presets = {}
    for k in range(len(phdr) - 1):
        name, program, bank, bag = phdr[k][:4]
        instruments = generator_values(pbag, pgen, bag, phdr[k + 1][3], 41)  # 41: instrument
        samples = set()
        for i in instruments:
            samples |= generator_values(ibag, igen, inst[i][1], inst[i + 1][1], 53)  # sampleID
        presets[(bank, program)] = (name.split(b"\0")[0].decode("latin1").strip(),
                                    frozenset(samples))
    return presets


# --- Source inventory -----------------------------------------------------------------------


@dataclasses.dataclass
class Member:
    """One source item: an audio file, or a FluidR3 preset."""

    key: str  # file path, or "fluidr3:BBB-PPP" (bank, program)
    package: str
    licence: str
    copyright: str
    role: str = ""  # drum-kit role, tabla bol, speech language...
    note_range: tuple[int, int, int] = (60, 72, 1)  # GM presets: low, high, max polyphony


@dataclasses.dataclass
class Group:
    """The unit of the split: sources that share material (a preset family, a kit, a voice)."""

    id: str
    label: str  # the class this group is a source of (leaf label)
    kind: str  # gm | gm_drums | kit | strokes | speech | events | crop | loop
    members: list[Member]
    split: str = ""


def _files(pattern: str, package: str, minimum: int) -> list[Path]:
    paths = sorted(Path("/").glob(pattern.lstrip("/")))
    if len(paths) < minimum:
        raise BuildError(f"expected at least {minimum} files matching {pattern} from package "
                         f"{package}, found {len(paths)}; is {package} installed (--install)?")
    return paths


class Inventory:
    """Discovers every source on this machine and groups it for the split."""

    def __init__(self) -> None:
        self.copyrights = {p: read_copyright(p) for p in PACKAGES}
        self.groups: dict[str, Group] = {}

    def member(self, path: Path, package: str, role: str = "") -> Member:
        if not path.is_file():
            raise BuildError(f"{path} not found (package {package})")
        licence, holder = licence_of(path, package, self.copyrights[package])
        return Member(str(path), package, licence, holder, role)

    def add(self, group: Group) -> None:
        if group.id in self.groups:
            raise BuildError(f"duplicate source group {group.id}")
        self.groups[group.id] = group

    # FluidR3 ------------------------------------------------------------------------------
    def add_fluidr3(self) -> None:
        presets = sf2_presets(SF2_PATH)
        licence, holder = LICENCE_FALLBACK["fluid-soundfont-gm"]
        uf = UnionFind()
        owners: dict[tuple[int, int], str] = {}
        by_sample: dict[int, tuple[int, int]] = {}
        for label, table in GM_PRESETS.items():
            for bank, program, *_ in table:
                if (bank, program) not in presets:
                    raise BuildError(f"{SF2_PATH}: no preset bank {bank} program {program}")
                owners[(bank, program)] = label
                uf.find((bank, program))
                for sample in presets[(bank, program)][1]:
                    if sample in by_sample:
                        uf.union((bank, program), by_sample[sample])
                    by_sample.setdefault(sample, (bank, program))
        components: dict[object, list[tuple[int, int]]] = defaultdict(list)
        for key in owners:
            components[uf.find(key)].append(key)
        for keys in components.values():
            labels = {owners[k] for k in keys}
            if len(labels) > 1:
                raise BuildError(f"FluidR3 presets {keys} share samples across classes {labels}")
            label = labels.pop()
            ranges = {(b, p): (lo, hi, poly) for b, p, lo, hi, poly in GM_PRESETS[label]}
            members = [Member(f"fluidr3:{b:03d}-{p:03d}", "fluid-soundfont-gm", licence, holder,
                              presets[(b, p)][0], ranges[(b, p)]) for b, p in sorted(keys)]
            gid = "fluidr3:" + "+".join(f"{b:03d}-{p:03d}" for b, p in sorted(keys))
            self.add(Group(gid, label, "gm", members))
        kits = sorted(k for k in presets if k[0] == GM_DRUM_BANK)
        if not kits:
            raise BuildError(f"{SF2_PATH}: no drum kits (bank 128)")
        # All FluidR3 kits share most of their samples, so they are one source group.
        self.add(Group("fluidr3:drum-kits", "Drum_kit", "gm_drums", [
            Member(f"fluidr3:{b:03d}-{p:03d}", "fluid-soundfont-gm", licence, holder,
                   presets[(b, p)][0])
            for b, p in kits]))

    # Drum kits from samples ---------------------------------------------------------------
    def add_drum_kits(self) -> None:
        def role_of(name: str) -> str:
            n = name.lower()
            for role, words in [("hat_pedal", ["hatpedal", "hat_pedal", "cymbal_pedal"]),
                                ("hat_open", ["hatopen", "hat_open", "hatsemiopen",
                                              "cymbal_open"]),
                                ("hat_closed", ["hatclosed", "hat_closed", "cymbal_closed"]),
                                ("ride", ["ride"]), ("crash", ["crash", "splash",
                                                               "cymbal_hard", "cymbal_soft",
                                                               "808_cymbal", "elec_cymbal"]),
                                ("kick", ["kick", "bd_", "drum_bass"]),
                                ("snare", ["snare", "sn_"]), ("tom", ["tom"])]:
                if any(w in n for w in words):
                    return role
            return ""

        kits = {
            "hydrogen-data:GMRockKit": ("hydrogen-data", _files(
                "/usr/share/hydrogen/data/drumkits/GMRockKit/*.wav", "hydrogen-data", 60)),
            "hydrogen-data:TR808EmulationKit": ("hydrogen-data", _files(
                "/usr/share/hydrogen/data/drumkits/TR808EmulationKit/*.flac", "hydrogen-data",
                12)),
            "sonic-pi-samples:acoustic-kit": ("sonic-pi-samples", _files(
                "/usr/share/sonic-pi/samples/drum_*.flac", "sonic-pi-samples", 15)),
            "sonic-pi-samples:electronic-kit": ("sonic-pi-samples", [
                p for p in _files("/usr/share/sonic-pi/samples/*.flac", "sonic-pi-samples", 50)
                if re.match(r"(bd_|sn_|elec_(hi_|lo_|mid_)?snare|elec_(soft|hollow)_kick|"
                            r"elec_cymbal|elec_fuzz_tom)", p.name)]),
        }
        for gid, (package, paths) in kits.items():
            members = [self.member(p, package, role_of(p.name)) for p in paths
                       if role_of(p.name) and "drum_roll" not in p.name]
            roles = {m.role for m in members}
            if not {"kick", "snare"} <= roles:
                raise BuildError(f"drum kit {gid} lacks kick or snare samples: {sorted(roles)}")
            self.add(Group(gid, "Drum_kit", "kit", members))
        sp = Path("/usr/share/sonic-pi/samples")
        self.add(Group("sonic-pi-samples:amen-break", "Drum_kit", "loop", [
            self.member(sp / "loop_amen.flac", "sonic-pi-samples"),
            self.member(sp / "loop_amen_full.flac", "sonic-pi-samples")]))
        self.add(Group("sonic-pi-samples:loop_breakbeat", "Drum_kit", "loop",
                       [self.member(sp / "loop_breakbeat.flac", "sonic-pi-samples")]))
        tp = Path("/usr/share/tuxpaint/stamps/hobbies/music/percussion/drumkit.ogg")
        self.add(Group("tuxpaint-stamps-default:drumkit", "Drum_kit", "crop",
                       [self.member(tp, "tuxpaint-stamps-default")]))

    # Tabla, recorded instruments ------------------------------------------------------------
    def add_tabla_and_instruments(self) -> None:
        sp = Path("/usr/share/sonic-pi/samples")
        strokes: dict[str, list[Path]] = defaultdict(list)
        for path in _files(str(sp / "tabla_*.flac"), "sonic-pi-samples", 20):
            bol = re.sub(r"\d+$", "", path.stem[len("tabla_"):]).split("_")[0]
            strokes[bol].append(path)
        for bol, paths in sorted(strokes.items()):
            self.add(Group(f"sonic-pi-samples:tabla-{bol}", "Tabla", "strokes",
                           [self.member(p, "sonic-pi-samples", bol) for p in paths]))
        self.add(Group("sonic-pi-samples:loop_tabla", "Tabla", "loop",
                       [self.member(sp / "loop_tabla.flac", "sonic-pi-samples")]))
        # Guitar recordings, grouped by recordist (from the copyright file).
        by_holder: dict[str, list[Member]] = defaultdict(list)
        for path in _files(str(sp / "guit_*.flac"), "sonic-pi-samples", 4):
            m = self.member(path, "sonic-pi-samples")
            by_holder[re.sub(r"^\d{4}\s+", "", m.copyright) or path.stem].append(m)
        for holder, members in sorted(by_holder.items()):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", holder).strip("-")
            self.add(Group(f"sonic-pi-samples:guitar-{slug}", "Guitar", "crop", members))
        tp = Path("/usr/share/tuxpaint/stamps/hobbies/music")
        for rel, label in [("string/cello.ogg", "Bowed_string_instrument"),
                           ("string/violin.ogg", "Bowed_string_instrument"),
                           ("wind/bassoon.ogg", "Wind_instrument_and_woodwind_instrument")]:
            self.add(Group(f"tuxpaint-stamps-default:{rel}", label, "crop",
                           [self.member(tp / rel, "tuxpaint-stamps-default")]))

    # Animals and birds ----------------------------------------------------------------------
    def add_animals(self) -> None:
        root = Path("/usr/share/tuxpaint/stamps/animals")
        # Wild birds only: AudioSet puts ducks, geese, chickens and turkeys under Fowl
        # (Livestock), not under Bird; they are Animal here.
        fowl = {"drake", "duck", "gander", "hen", "rooster", "turkey"}
        paths = [p for p in _files(str(root / "**" / "*.ogg"), "tuxpaint-stamps-default", 40)
                 if "_desc" not in p.name]
        for path in paths:
            rel = path.relative_to(root).as_posix()
            is_bird = rel.startswith("birds/") and path.stem not in fowl
            self.add(Group(f"tuxpaint-stamps-default:animals/{rel}",
                           "Bird" if is_bird else "Animal", "events",
                           [self.member(path, "tuxpaint-stamps-default")]))
        crow = Path("/usr/share/sonic-pi/samples/misc_crow.flac")
        self.add(Group("sonic-pi-samples:misc_crow", "Bird", "events",
                       [self.member(crow, "sonic-pi-samples")]))

    # Speech -----------------------------------------------------------------------------------
    def add_speech(self) -> None:
        """Speech grouped by language across packages (one or a few speakers per language),
        so no voice is in two splits."""

        def language(code: str) -> str:
            base = re.split(r"[@_]", code)[0].lower()
            return {"nb": "no", "nn": "no"}.get(base, base)

        by_language: dict[str, list[Member]] = defaultdict(list)
        for path in _files("/usr/share/sounds/freedesktop/stereo/audio-channel-*.oga",
                           "sound-theme-freedesktop", 8):
            by_language["en"].append(self.member(path, "sound-theme-freedesktop", "en"))
        for path in _files("/usr/share/klettres/*/*/*.ogg", "klettres-data", 500):
            code = path.parent.parent.name
            by_language[language(code)].append(self.member(path, "klettres-data", code))
        for path in _files("/usr/share/ktuberling/sounds/*/*.*", "ktuberling-data", 500):
            if path.suffix not in (".ogg", ".wav"):
                continue
            code = path.parent.name
            by_language[language(code)].append(self.member(path, "ktuberling-data", code))
        for path in _files("/usr/share/tuxpaint/stamps/**/*_desc_*.ogg",
                           "tuxpaint-stamps-default", 500):
            match = re.search(r"_desc_([A-Za-z]{2,3}(?:_[A-Za-z]{2})?)\.ogg$", path.name)
            if match:
                code = match.group(1)
                by_language[language(code)].append(
                    self.member(path, "tuxpaint-stamps-default", code))
        for lang, members in sorted(by_language.items()):
            if len(members) >= 5:
                self.add(Group(f"speech:{lang}", "Speech", "speech", members))

    # Silent files, and groups that share identical audio ----------------------------------------
    def drop_silent(self, cache: AudioCache) -> list[str]:
        """Remove recordings that decode to silence (a few Tux Paint files are empty).

        Speech files are not decoded here (there are thousands): silent ones are skipped
        when rendering.
        """
        dropped = []
        for gid, group in list(self.groups.items()):
            if group.kind.startswith("gm") or group.kind == "speech":
                continue
            group.members = [m for m in group.members if cache.get(m.key).size]
            if not group.members:
                dropped.append(gid)
                del self.groups[gid]
        return dropped

    def merge_identical_files(self, cache: AudioCache) -> None:
        """Groups of a class holding identical audio are merged (so they share a split).

        Recordings are compared by their decoded samples (Ogg files with equal audio differ
        in bytes), speech files by their bytes.
        """
        uf = UnionFind()
        seen: dict[tuple[str, str], str] = {}
        for gid, group in self.groups.items():
            uf.find(gid)
            for m in group.members:
                if m.key.startswith("fluidr3:"):
                    continue
                blob = (Path(m.key).read_bytes() if group.kind == "speech"
                        else cache.get(m.key).tobytes())
                digest = hashlib.sha1(blob).hexdigest()
                key = (group.label, digest)
                if key in seen:
                    uf.union(gid, seen[key])
                seen.setdefault(key, gid)
        # Also the same recording cut or scaled differently (Tux Paint's camel and
        # dromedary; a Sonic Pi kick inside a Sonic Pi breakbeat): see same_recording.
        by_family: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
        for gid, group in self.groups.items():
            if group.kind.startswith("gm") or group.kind == "speech":
                continue
            family = "Animal" if group.label in ("Bird", "Animal") else group.label
            for m in group.members:
                x = cache.get(m.key)
                by_family[family].append(
                    (gid, scipy.signal.resample_poly(x, 40, 441).astype("float32")))
        for items in by_family.values():
            for i, (gid_a, a) in enumerate(items):
                for gid_b, b in items[i + 1:]:
                    if uf.find(gid_a) != uf.find(gid_b) and same_recording(a, b):
                        uf.union(gid_a, gid_b)
        merged: dict[object, list[str]] = defaultdict(list)
        for gid in self.groups:
            merged[uf.find(gid)].append(gid)
        for gids in merged.values():
            if len(gids) > 1:
                groups = [self.groups.pop(g) for g in sorted(gids)]
                kinds = {g.kind for g in groups}
                self.add(Group("+".join(sorted(gids)), groups[0].label, groups[0].kind
                               if len(kinds) == 1 else "events",
                               [m for g in groups for m in g.members]))

    def build(self, cache: AudioCache) -> dict[str, Group]:
        """Collect every source, drop silent files, merge groups sharing audio."""
        self.add_fluidr3()
        self.add_drum_kits()
        self.add_tabla_and_instruments()
        self.add_animals()
        self.add_speech()
        dropped = self.drop_silent(cache)
        if dropped:
            print(f"skipped silent recordings: {', '.join(dropped)}", flush=True)
        self.merge_identical_files(cache)
        return self.groups


def assign_splits(groups: dict[str, Group], seed: int) -> None:
    """Partition each class's source groups into train, val and eval (seeded shuffle)."""
    by_label: dict[str, list[Group]] = defaultdict(list)
    for group in groups.values():
        by_label[group.label].append(group)
    for label, members in sorted(by_label.items()):
        members.sort(key=lambda g: g.id)
        order = rng_for(seed, "split", label).permutation(len(members))
        n = len(members)
        if n < 3:
            raise BuildError(f"class {label} has only {n} source groups; need 3 for the split")
        n_eval = max(1, round(n * GROUP_FRACTIONS["eval"]))
        n_val = max(1, round(n * GROUP_FRACTIONS["val"]))
        for rank, index in enumerate(order):
            members[index].split = ("eval" if rank < n_eval else
                                    "val" if rank < n_eval + n_val else "train")


# --- Audio helpers ------------------------------------------------------------------------------


class AudioCache:
    """Decoded recordings: mono float32 at 44.1 kHz, leading/trailing silence trimmed."""

    def __init__(self) -> None:
        self.audio: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        if path not in self.audio:
            try:
                data, rate = sf.read(path, dtype="float32", always_2d=True)
            except Exception as exc:  # soundfile raises several types
                raise BuildError(f"cannot decode {path}: {exc}") from exc
            x = data.mean(axis=1)
            if rate != SAMPLE_RATE:
                g = math.gcd(rate, SAMPLE_RATE)
                x = scipy.signal.resample_poly(x, SAMPLE_RATE // g, rate // g).astype("float32")
            self.audio[path] = trim_silence(x)
        return self.audio[path]


def trim_silence(x: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """Cut leading and trailing samples below ``floor_db`` of the peak; empty if silent."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak < 1e-4:
        return np.zeros(0, "float32")
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (floor_db / 20))
    return x[max(0, loud[0] - 220): loud[-1] + 1].astype("float32")


def same_recording(a: np.ndarray, b: np.ndarray, threshold: float = 0.8,
                   min_overlap: int = 2000) -> bool:
    """Whether two signals contain the same recording (cut, shifted or scaled differently).

    True when, at some lag, the normalised correlation over an overlap of at least
    ``min_overlap`` samples is at least ``threshold``. On Tux Paint's animals at 4 kHz (0.5 s
    overlap), copies score 0.88-1.0 and different recordings at most 0.6. Signals shorter
    than ``min_overlap`` are never matched: short one-shots (kicks, toms, tabla strokes)
    are damped sinusoids that correlate whatever their source.
    """
    if min(len(a), len(b)) < min_overlap:
        return False
    dots = scipy.signal.fftconvolve(b, a[::-1], mode="full")
    shift = np.arange(len(dots)) - (len(a) - 1)  # b index minus a index
    start_a, start_b = np.maximum(0, -shift), np.maximum(0, shift)
    length = np.minimum(len(a) - start_a, len(b) - start_b)
    cum_a = np.concatenate([[0.0], np.cumsum(a.astype("float64") ** 2)])
    cum_b = np.concatenate([[0.0], np.cumsum(b.astype("float64") ** 2)])
    energy_a = cum_a[start_a + length] - cum_a[start_a]
    energy_b = cum_b[start_b + length] - cum_b[start_b]
    ok = ((length >= min_overlap) & (energy_a > 1e-4 * cum_a[-1])
          & (energy_b > 1e-4 * cum_b[-1]))
    if not np.any(ok):
        return False
    return bool(np.max(dots[ok] / np.sqrt(energy_a[ok] * energy_b[ok])) >= threshold)


def active_rms(x: np.ndarray, frame: int = 1024) -> float:
    """RMS over the frames within 30 dB of the loudest frame (level of the sound itself)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0
    power = np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1)
    top = power.max()
    return float(np.sqrt(np.mean(power[power >= top * 1e-3]))) if top > 0 else 0.0


def fade(x: np.ndarray, seconds: float = 0.008) -> np.ndarray:
    n = min(len(x) // 2, int(seconds * SAMPLE_RATE))
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype="float32")
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def add_at(out: np.ndarray, x: np.ndarray, start: int, gain: float = 1.0) -> None:
    if start >= len(out) or start + len(x) <= 0:
        return
    a, b = max(0, start), min(len(out), start + len(x))
    out[a:b] += gain * x[a - start:b - start]


def room_reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room (exponentially decaying noise), mixed with the dry."""
    rt60 = rng.uniform(0.2, 0.8)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir = (ir / np.sqrt(np.sum(ir ** 2))).astype("float32")
    wet = scipy.signal.fftconvolve(x, ir)[: len(x)].astype("float32")
    mix = rng.uniform(0.1, 0.35)
    dry_rms, wet_rms = active_rms(x), active_rms(wet)
    if wet_rms > 0:
        wet *= dry_rms / wet_rms
    return (1 - mix) * x + mix * wet


def crop_loud(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """A random ``n``-sample segment of ``x``, preferring segments that are not quiet."""
    if len(x) <= n:
        return x
    best, best_rms = 0, -1.0
    for _ in range(8):
        start = int(rng.integers(0, len(x) - n + 1))
        rms = active_rms(x[start:start + n])
        if rms > best_rms:
            best, best_rms = start, rms
        if rms > 0.3 * active_rms(x):
            break
    return x[best:best + n]


# --- MIDI ----------------------------------------------------------------------------------------


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, events: list[tuple[float, int, bytes]]) -> None:
    """Write a type-0 standard MIDI file; events are (seconds, priority, message bytes)."""
    division, tempo = 1000, 500000  # 1 tick = 0.5 ms
    track = bytearray(b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big"))
    last = 0
    for seconds, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        tick = int(round(seconds * 1e6 / tempo * division))
        track += _vlq(tick - last) + message
        last = tick
    track += b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, division) + b"MTrk"
                     + struct.pack(">I", len(track)) + bytes(track))


def gm_phrase(rng: np.random.Generator, low: int, high: int, max_poly: int,
              duration: float) -> list[tuple[float, int, int, float]]:
    """Random musical notes (onset s, MIDI note, velocity, length s) within ``duration``.

    Modes: a melody (random walk), block chords, arpeggios, or one or two sustained notes;
    tempo, articulation, register and dynamics vary per phrase.
    """
    modes = ["melody", "sustain"] + (["chords", "arpeggio"] if max_poly > 1 else [])
    weights = [0.45, 0.2, 0.2, 0.15][: len(modes)]
    mode = rng.choice(modes, p=np.asarray(weights) / sum(weights))
    base_velocity = rng.uniform(45, 120)
    span_low = int(rng.integers(low, max(low + 1, high - 11)))
    span_high = min(high, span_low + int(rng.integers(12, 25)))
    ioi = rng.uniform(0.12, 0.6)
    legato = rng.uniform(0.5, 1.1)
    t = float(rng.uniform(0.0, 0.12))
    notes: list[tuple[float, int, int, float]] = []
    pitch = int(rng.integers(span_low, span_high + 1))

    def velocity() -> int:
        return int(np.clip(base_velocity + rng.normal(0, 10), 20, 127))

    while t < duration - 0.05:
        if mode == "sustain":
            length = rng.uniform(0.6, 1.0) * (duration - t)
            for k in range(int(rng.integers(1, max_poly + 1))):
                notes.append((t, min(span_high, pitch + [0, 7, 4, 12][k]), velocity(), length))
            t += length + rng.uniform(0.05, 0.3)
            pitch = int(rng.integers(span_low, span_high + 1))
        elif mode == "chords":
            root = int(rng.integers(span_low, max(span_low + 1, span_high - 7)))
            shape = [[0, 4, 7], [0, 3, 7], [0, 4, 7, 11], [0, 5, 7], [0, 3, 7, 10]][
                int(rng.integers(0, 5))][:max_poly]
            length = ioi * rng.uniform(1.5, 4.0)
            strum = rng.uniform(0.0, 0.03)
            for k, step in enumerate(shape):
                notes.append((t + k * strum, root + step, velocity(), length * legato))
            t += length
        elif mode == "arpeggio":
            root = int(rng.integers(span_low, max(span_low + 1, span_high - 12)))
            shape = [0, 4, 7, 12, 7, 4] if rng.random() < 0.5 else [0, 3, 7, 12, 7, 3]
            for step in shape:
                if t >= duration - 0.05:
                    break
                notes.append((t, root + step, velocity(), ioi * rng.uniform(1.0, 2.5)))
                t += ioi * rng.uniform(0.9, 1.1)
        else:  # melody
            notes.append((t, pitch, velocity(), ioi * legato * rng.uniform(0.8, 1.5)))
            pitch = int(np.clip(pitch + rng.choice([-7, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7]),
                                span_low, span_high))
            t += ioi * rng.choice([0.5, 1.0, 1.0, 1.0, 2.0])
    return [(on, int(np.clip(n, 0, 127)), v, length) for on, n, v, length in notes
            if on < duration]


def drum_pattern(rng: np.random.Generator, duration: float) -> list[tuple[float, int, int]]:
    """A drum-kit groove: (onset s, GM drum note, velocity) with fills, crashes and swing."""
    bpm = rng.uniform(70, 170)
    step = 60.0 / bpm / 4
    swing = rng.uniform(0.0, 0.12)
    hats = rng.choice(["eighths", "sixteenths", "ride", "quarters"], p=[0.45, 0.2, 0.2, 0.15])
    extra_kicks = [s for s in (3, 6, 10, 11, 14) if rng.random() < 0.3]
    kick_note = 36 if rng.random() < 0.7 else 35
    snare_note = 38 if rng.random() < 0.8 else 40
    start = float(rng.uniform(0.0, 0.1))
    events = []
    n_steps = int((duration - start) / step) + 1
    for i in range(n_steps):
        s = i % 16
        t = start + i * step + (swing * step if s % 2 else 0.0) + rng.normal(0, 0.004)
        if t >= duration or t < 0:
            continue
        last_bar_fill = (i // 16 == (n_steps - 1) // 16 and s >= 12 and n_steps > 16
                         and rng.random() < 0.35)

        def hit(note: int, vel: float, t: float = t) -> None:
            events.append((t, note, int(np.clip(vel + rng.normal(0, 8), 15, 127))))

        if s in (0, 8) or s in extra_kicks:
            hit(kick_note, 110 if s == 0 else 95)
        if s in (4, 12):
            hit(snare_note, 105)
        elif rng.random() < 0.06:
            hit(snare_note, 40)  # ghost note
        if last_bar_fill:
            hit([50, 48, 47, 45, 43, 41][min(5, s - 12 + int(rng.integers(0, 3)))], 100)
        elif hats == "ride" and s % 2 == 0:
            hit(51, 85 if s % 4 == 0 else 65)
        elif hats == "eighths" and s % 2 == 0:
            hit(46 if (s == 14 and rng.random() < 0.3) else 42, 90 if s % 4 == 0 else 65)
        elif hats == "sixteenths":
            hit(42, 85 if s % 4 == 0 else 55)
        elif hats == "quarters" and s % 4 == 0:
            hit(44 if rng.random() < 0.3 else 42, 80)
        if i == 0 and rng.random() < 0.4:
            hit(49 if rng.random() < 0.7 else 57, 110)
    return events


# --- Planning ------------------------------------------------------------------------------


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


def label_with_parents(label: str) -> list[str]:
    out = [label]
    while out[-1] in PARENTS:
        out.append(PARENTS[out[-1]])
    return out


def split_counts(n_clips: int) -> dict[str, int]:
    n_train = round(n_clips * SPLIT_FRACTIONS["train"])
    n_val = round(n_clips * SPLIT_FRACTIONS["val"])
    return {"train": n_train, "val": n_val, "eval": n_clips - n_train - n_val}


def plan_clips(groups: dict[str, Group], n_clips: int, seed: int) -> list[Clip]:
    """Decide every clip: split, duration, classes, source groups, mixing gains."""
    labels = [label for label, _ in CLASSES]
    by_split_label: dict[tuple[str, str], list[str]] = defaultdict(list)
    for gid, group in sorted(groups.items()):
        by_split_label[(group.split, group.label)].append(gid)
    for split in SPLIT_FRACTIONS:
        for label in labels:
            if not by_split_label[(split, label)]:
                raise BuildError(f"class {label} has no source group in split {split}")
    rng = rng_for(seed, "plan")
    counts = split_counts(n_clips)
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
            if rng.random() < MIXTURE_PROBABILITY:
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


# --- Rendering -----------------------------------------------------------------------------


def gm_events(comp: Component, groups: dict[str, Group]) -> list[tuple[float, int, bytes]]:
    """MIDI events (relative to the component's start) for a FluidR3 component."""
    rng = np.random.default_rng(comp.seed)
    group = groups[comp.groups[0]]
    member = group.members[int(rng.integers(0, len(group.members)))]
    bank, program = member.key.split(":")[1].split("-")
    comp.detail["members"] = [member.key]
    events: list[tuple[float, int, bytes]] = []
    end = comp.duration
    if group.kind == "gm_drums":
        ch = 9
        events.append((0.0, 0, bytes([0xB0 | ch, 121, 0])))
        events.append((0.0, 0, bytes([0xC0 | ch, int(program)])))
        for t, note, vel in drum_pattern(rng, comp.duration):
            events.append((t, 2, bytes([0x90 | ch, note, vel])))
            events.append((min(t + 0.2, end), 1, bytes([0x80 | ch, note, 0])))
    else:
        ch = 0
        low, high, poly = member.note_range
        events += [(0.0, 0, bytes([0xB0 | ch, 121, 0])),  # reset controllers
                   (0.0, 0, bytes([0xB0 | ch, 0, int(bank)])),  # bank select
                   (0.0, 0, bytes([0xC0 | ch, int(program)]))]
        for t, note, vel, length in gm_phrase(rng, low, high, poly, comp.duration):
            events.append((t, 2, bytes([0x90 | ch, note, vel])))
            events.append((min(t + length, end), 1, bytes([0x80 | ch, note, 0])))
    events += [(end, 3, bytes([0xB0 | ch, 123, 0])), (end, 3, bytes([0xB0 | ch, 120, 0]))]
    return events


def render_fluidsynth(components: list[Component], groups: dict[str, Group], workers: int,
                      tmp: Path) -> None:
    """Render all FluidR3 components with FluidSynth (in chunks, in parallel)."""
    chunks = [components[i:i + SLOTS_PER_RENDER]
              for i in range(0, len(components), SLOTS_PER_RENDER)]

    def render(chunk_index: int) -> None:
        chunk = chunks[chunk_index]
        events, starts, t = [], [], 0.0
        for comp in chunk:
            starts.append(t)
            events += [(t + et, prio, msg) for et, prio, msg in gm_events(comp, groups)]
            t += comp.duration + SLOT_GAP_S
        events.append((t, 3, bytes([0xB0, 121, 0])))  # keeps the file running to the end
        mid, wav = tmp / f"chunk{chunk_index:04d}.mid", tmp / f"chunk{chunk_index:04d}.wav"
        write_midi(mid, events)
        cmd = ["fluidsynth", "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", "0.4",
               "-r", str(SAMPLE_RATE), "-O", "float", "-T", "wav", "-F", str(wav),
               "-o", "synth.cpu-cores=1", str(SF2_PATH), str(mid)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wav.exists():
            raise BuildError(f"fluidsynth failed ({' '.join(cmd)}): {result.stderr[-2000:]}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        for comp, start in zip(chunk, starts, strict=True):
            a = int(round(start * rate))
            n = int(round(comp.duration * rate))
            seg = np.zeros(n, "float32")
            piece = audio[a:a + n]
            seg[:len(piece)] = piece
            comp.audio = seg
        wav.unlink()
        mid.unlink()

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(render, range(len(chunks))))


def render_kit(rng: np.random.Generator, group: Group, n: int, cache: AudioCache,
               detail: dict) -> np.ndarray:
    by_role: dict[str, list[Member]] = defaultdict(list)
    for m in group.members:
        by_role[m.role].append(m)
    toms: dict[str, list[Member]] = defaultdict(list)  # drum name -> velocity layers
    for m in by_role.get("tom", []):
        toms[Path(m.key).stem.rsplit("-", 1)[0]].append(m)

    def tom_height(name: str) -> int:  # 0 low/floor, 1 mid, 2 high
        n = name.lower()
        return 0 if ("floor" in n or "lo" in n) else 1 if ("mid" in n or "2" in n) else 2 if (
            "hi" in n or "1" in n) else 1

    out = np.zeros(n, "float32")
    used = set()
    for t, note, vel in drum_pattern(rng, n / SAMPLE_RATE):
        role = DRUM_ROLES.get(note, "")
        candidates = by_role.get(role, [])
        for alt in ROLE_FALLBACK.get(role, []):
            candidates = candidates or by_role.get(alt, [])
        if role == "tom" and toms:
            want_height = 0 if note <= 43 else 1 if note <= 47 else 2
            name = min(sorted(toms), key=lambda k: abs(tom_height(k) - want_height))
            candidates = toms[name]
        if not candidates:
            continue
        layered = [(VELOCITY_LAYERS.get(Path(m.key).stem.rsplit("-", 1)[-1].lower()), m)
                   for m in candidates]
        if all(rank is not None for rank, _ in layered):
            want = vel / 128 * 5
            best = min(abs(rank + 0.5 - want) for rank, _ in layered)
            candidates = [m for rank, m in layered if abs(rank + 0.5 - want) == best]
            gain = 1.0
        else:
            gain = (vel / 127) ** 1.5
        member = candidates[int(rng.integers(0, len(candidates)))]
        used.add(member.key)
        add_at(out, cache.get(member.key), int(t * SAMPLE_RATE), gain)
    detail["members"] = sorted(used)
    return out


def render_recorded(comp: Component, groups: dict[str, Group], cache: AudioCache) -> np.ndarray:
    """Render a component made from recorded files (kits, strokes, speech, animals...)."""
    rng = np.random.default_rng(comp.seed)
    n = int(round(comp.duration * SAMPLE_RATE))
    out = np.zeros(n, "float32")
    group = groups[comp.groups[0]]
    members = [m for gid in comp.groups for m in groups[gid].members]
    used: list[str] = []
    if group.kind == "kit":
        return render_kit(rng, group, n, cache, comp.detail)
    if group.kind == "strokes":  # tabla: strokes of the chosen bols at a steady pulse
        ioi = rng.uniform(0.1, 0.35)
        t = rng.uniform(0.0, 0.08)
        while t < comp.duration - 0.03:
            m = members[int(rng.integers(0, len(members)))]
            used.append(m.key)
            add_at(out, cache.get(m.key), int(t * SAMPLE_RATE), 10 ** (rng.uniform(-9, 0) / 20))
            t += ioi * rng.choice([0.5, 1.0, 1.0, 2.0]) * rng.uniform(0.95, 1.05)
    elif group.kind in ("speech", "events"):  # utterances or calls in a row, with pauses
        gap = (0.03, 0.35) if group.kind == "speech" else (0.1, 0.8)
        t = rng.uniform(0.0, 0.15) * comp.duration
        max_events = 12 if group.kind == "speech" else 3
        attempts = 0
        while t < comp.duration - 0.1 and len(used) < max_events and attempts < 50:
            attempts += 1
            m = members[int(rng.integers(0, len(members)))]
            x = cache.get(m.key)
            if x.size == 0:  # a silent file
                continue
            remaining = n - int(t * SAMPLE_RATE)
            if len(x) > remaining and not used:
                x = crop_loud(rng, x, remaining)
            used.append(m.key)
            add_at(out, x, int(t * SAMPLE_RATE), 10 ** (rng.uniform(-4, 0) / 20))
            t += len(x) / SAMPLE_RATE + rng.uniform(*gap)
    elif group.kind == "loop":  # a drum loop, tiled, from a random point
        m = members[int(rng.integers(0, len(members)))]
        x = cache.get(m.key)
        used.append(m.key)
        tiled = np.tile(x, int(math.ceil((n + len(x)) / len(x))))
        start = int(rng.integers(0, len(x)))
        out[:] = tiled[start:start + n]
    else:  # crop: a segment of a longer recording
        m = members[int(rng.integers(0, len(members)))]
        x = crop_loud(rng, cache.get(m.key), n)
        used.append(m.key)
        add_at(out, x, int(rng.integers(0, n - len(x) + 1)) if len(x) < n else 0)
    comp.detail["members"] = sorted(set(used))
    return out


def finish_component(comp: Component) -> np.ndarray:
    """Reverb (sometimes), fades, and level normalisation to unit active RMS."""
    assert comp.audio is not None
    x = comp.audio.astype("float32")
    rng = np.random.default_rng([comp.seed, 1])
    if comp.reverb:
        x = room_reverb(x, rng)
    x = fade(x)
    rms = active_rms(x)
    if rms < 1e-5 or np.max(np.abs(x)) < 1e-4:
        raise BuildError(f"component {comp.label} from {comp.groups} "
                         f"({comp.detail.get('members')}) rendered silent")
    return x / rms


def mix_clip(clip: Clip) -> np.ndarray:
    n = int(round(clip.duration * SAMPLE_RATE))
    out = np.zeros(n, "float32")
    for comp in clip.components:
        add_at(out, finish_component(comp), int(round(comp.onset * SAMPLE_RATE)),
               10 ** (comp.gain_db / 20))
    peak = float(np.max(np.abs(out)))
    return out * (10 ** (clip.peak_db / 20) / peak)


# --- Output --------------------------------------------------------------------------------


def write_outputs(out: Path, clips: list[Clip], groups: dict[str, Group],
                  versions: dict[str, str], seed: int, n_clips: int, elapsed: float,
                  argv: list[str]) -> None:
    gt = out / "FSD50K.ground_truth"
    with open(gt / "vocabulary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for index, (label, mid) in enumerate(CLASSES):
            writer.writerow([index, label, mid])
    dev = sorted((c for c in clips if c.split != "eval"), key=lambda c: c.fname)
    ev = sorted((c for c in clips if c.split == "eval"), key=lambda c: c.fname)
    with open(gt / "dev.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels", "mids", "split"])
        for c in dev:
            writer.writerow([c.fname, ",".join(c.labels), ",".join(MIDS[x] for x in c.labels),
                             c.split])
    with open(gt / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels", "mids"])
        for c in ev:
            writer.writerow([c.fname, ",".join(c.labels), ",".join(MIDS[x] for x in c.labels)])
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
        readme_text(clips, groups, versions, seed, n_clips, elapsed, argv))


def readme_text(clips: list[Clip], groups: dict[str, Group], versions: dict[str, str],
                seed: int, n_clips: int, elapsed: float, argv: list[str]) -> str:
    splits = list(SPLIT_FRACTIONS)
    lines = [
        "# Sampled FSD50K-format dataset",
        "",
        "Generated by `scripts/build_sampled_dataset.py` (keras-dae) with "
        f"`{' '.join(argv)}` (seed {seed}, {n_clips} clips) in {elapsed:.0f} s. "
        "Every sound is a real recording or a sampled instrument from a Debian package; "
        "clips are 0.5-4 s, 44.1 kHz mono 16-bit WAV, in FSD50K's layout and CSV formats.",
        "",
        "Splits are by source: each source group (a FluidR3 preset, or the presets sharing a "
        "sample; a drum kit; a recorded file; all speech in one language) is in exactly one of "
        "train, val and eval (`source_inventory.csv`), so eval measures generalisation to "
        "unseen instruments, kits, recordings and voices. `sources.csv` maps each clip to its "
        "source groups and files.",
        "",
        "## Classes",
        "",
        "| index | label | AudioSet id | train | val | eval | source groups (train/val/eval) |",
        "|---|---|---|---|---|---|---|",
    ]
    label_counts = {s: Counter(x for c in clips if c.split == s for x in c.labels)
                    for s in splits}
    group_counts = {s: Counter(g.label for g in groups.values() if g.split == s)
                    for s in splits}
    for index, (label, mid) in enumerate(CLASSES):
        lines.append(f"| {index} | {label} | {mid} | "
                     + " | ".join(str(label_counts[s][label]) for s in splits) + " | "
                     + "/".join(str(group_counts[s][label]) for s in splits) + " |")
    lines += [
        "",
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
        "- Each clip has one class drawn in balanced rounds; with probability "
        f"{MIXTURE_PROBABILITY} a second class (sharing no label with the first) is mixed in "
        "over a random part of the clip at -8 to +2 dB, and the labels are the union.",
        "- FluidR3 instruments: random melodies, chords, arpeggios or held notes in the "
        "instrument's register, random tempo, articulation and velocity, rendered by "
        "FluidSynth (reverb and chorus off). FluidR3 and sample-based drum kits: random grooves "
        "(70-170 BPM, swing, fills, crashes). Tabla: strokes of 1-3 bols at a steady pulse. "
        "Speech: utterances of one language in a row. Animals and birds: 1-3 calls. Longer "
        "recordings and drum loops: a random segment.",
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
    for package, what in PACKAGES.items():
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
    for label, _ in CLASSES:
        lines.append(f"- **{label}**")
        for s in splits:
            ids = sorted(g.id for g in groups.values() if g.label == label and g.split == s)
            lines.append(f"  - {s}: " + ", ".join(f"`{i}`" for i in ids))
    return "\n".join(lines) + "\n"


# --- Main ------------------------------------------------------------------------------------


def build(out: Path, n_clips: int, seed: int, workers: int, install: bool,
          argv: list[str]) -> list[Clip]:
    """Build the dataset into ``out`` (must be empty or absent); return the clips."""
    start = time.time()
    if n_clips < len(CLASSES):
        raise BuildError(f"--n-clips must be at least {len(CLASSES)} (got {n_clips})")
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"output directory {out} is not empty")
    versions = ensure_packages(install)
    print("collecting sources...", flush=True)
    cache = AudioCache()
    groups = Inventory().build(cache)
    assign_splits(groups, seed)
    clips = plan_clips(groups, n_clips, seed)
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
    write_outputs(out, clips, groups, versions, seed, n_clips, time.time() - start, argv)
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory (created; must be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--n-clips", type=int, default=None,
                        help=f"number of clips (default {DEFAULT_N_CLIPS}: 2/3 train, "
                        "2/15 val, 1/5 eval)")
    parser.add_argument("--small", action="store_true",
                        help=f"{SMALL_N_CLIPS} clips, for tests")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel FluidSynth renders (default: up to 2)")
    parser.add_argument("--install", action="store_true",
                        help="apt-get install the Debian packages that are missing (root)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the Debian packages are installed")
    args = parser.parse_args(argv)
    try:
        if args.check:
            versions = ensure_packages(args.install)
            for package, version in versions.items():
                print(f"{package} {version}")
            return 0
        if args.out is None:
            parser.error("--out is required")
        if args.small and args.n_clips is not None:
            parser.error("--small and --n-clips are exclusive")
        n_clips = SMALL_N_CLIPS if args.small else (args.n_clips or DEFAULT_N_CLIPS)
        start = time.time()
        clips = build(args.out, n_clips, args.seed, args.workers, args.install,
                      ["build_sampled_dataset.py"] + list(argv if argv is not None
                                                          else sys.argv[1:]))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = Counter(c.split for c in clips)
    print(f"wrote {len(clips)} clips ({dict(counts)}) to {args.out} in "
          f"{time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
