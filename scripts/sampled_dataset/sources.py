"""Which sounds the dataset uses: the Debian packages, how their files are found, grouped
and licensed, and the source-disjoint split of those groups.

To add a source, add its package to ``PACKAGES`` and an ``Inventory.add_*`` method that
creates its ``Group``s (one group per unit that must stay in one split), then call it from
``Inventory.build``. The ``novel`` class set (``--classes novel``) has its own packages
(``NOVEL_PACKAGES``), instrument presets (``NOVEL_PRESETS``) and recordings
(``NOVEL_RECORDINGS``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .audio import AudioCache, resample, same_recording
from .common import DEFAULT, BuildError, ClassSet, UnionFind, rng_for

GROUP_FRACTIONS = {"val": 0.13, "eval": 0.2}  # of each class's source groups; rest train
SF2_PATH = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

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
# Debian packages of the ``novel`` class set. MuseScore General and FluidR3Mono are not
# used: their samples of these instruments are FluidR3's; nor csound-soundfont (sf_GMbank),
# whose samples are mostly TimGM6mb's; nor opl3-soundfont (FM synthesis, not recordings).
NOVEL_PACKAGES: dict[str, str] = {
    "fluidsynth": "FluidSynth, renders MIDI with the SoundFonts",
    "fluid-soundfont-gm": "FluidR3 GM soundfont: accordions, harpsichords, sitar, choir and "
    "voices, bells, seashore, helicopter",
    "fluid-soundfont-gs": "FluidR3 GS sound effects: rain, stream, bubbles, door creak and "
    "slam, wind chimes, car, train, jet plane",
    "timgm6mb-soundfont": "TimGM6mb soundfont: accordion, bandoneon, harpsichord, sitar, "
    "choir, voices, bells, seashore, helicopter",
    "timidity": "TiMidity++, renders MIDI with the freepats patches",
    "freepats": "freepats GUS patches: accordions, harpsichord, sitar, voices, tubular bells, "
    "seashore, helicopter",
    "sonic-pi-samples": "Sonic Pi samples: two bell recordings, a door, a choir",
}
PACKAGE_SETS = {"default": PACKAGES, "novel": NOVEL_PACKAGES}
# Licence summaries for packages whose copyright file is not machine-readable (DEP-5).
LICENCE_FALLBACK = {"fluid-soundfont-gm": ("MIT", "Frank Wen and contributors (FluidR3)"),
                    "fluid-soundfont-gs": ("MIT", "Frank Wen and contributors (FluidR3)"),
                    "freepats": ("GPL-2+", "Free Software Foundation, freepats contributors "
                                 "(with an exception for compositions using the patches)"),
                    "asterisk-moh-opsound-wav": (
                        "CC-BY-SA-3.0", "2008-2009 Paul Shuler (Macroform), Manolo Camp, "
                        "Reno Project")}
# SoundFonts by the prefix of their members' keys ("timgm6mb:000-046"): package and file.
SOUNDFONTS: dict[str, tuple[str, Path]] = {
    "fluidr3": ("fluid-soundfont-gm", SF2_PATH),
    "fluidr3gs": ("fluid-soundfont-gs", Path("/usr/share/sounds/sf2/FluidR3_GS.sf2")),
    "timgm6mb": ("timgm6mb-soundfont", Path("/usr/share/sounds/sf2/TimGM6mb.sf2")),
    # AVL drum kits (recorded acoustic kits, one preset each: bank 0 program 0); only the
    # pretraining corpus renders them.
    "blackpearl": ("avldrums.lv2-soundfont", Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2")),
    "redzeppelin": ("avldrums.lv2-soundfont",
                    Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2")),
}
FREEPATS_DIR = Path("/usr/share/midi/freepats")  # GUS patches, rendered by TiMidity++

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

# The novel class set's instruments: (SoundFont or "freepats", bank, program, lowest note,
# highest note, max polyphony); a single note (lowest == highest) is a sound effect, held
# for the whole clip. Each preset is a source group, merged with the presets of its SoundFont
# that share a sample and with any preset or recording of its class that holds the same
# recording (freepats' Voice Oohs is FluidR3's, TimGM6mb's choir has a FluidR3 sample, all
# three seashores are one recording). Left out for want of three independent sources: Harp
# (freepats' harp is FluidR3's recording, so FluidR3 and TimGM6mb only), Timpani and Wood
# block (FluidR3's samples are in the FluidR3 drum kits the default set uses), Bagpipes,
# Harmonica, Banjo (FluidR3 and TimGM6mb only), Mandolin and Ukulele (FluidR3's are its
# guitar samples), Applause (FluidR3 and TimGM6mb only), Steel drums (Mallet percussion).
NOVEL_PRESETS: dict[str, list[tuple[str, int, int, int, int, int]]] = {
    "Accordion": [("fluidr3", 0, 21, 53, 89, 3), ("fluidr3", 0, 23, 53, 89, 3),
                  ("fluidr3", 8, 21, 53, 89, 3), ("timgm6mb", 0, 21, 53, 89, 3),
                  ("timgm6mb", 0, 23, 53, 89, 3), ("freepats", 0, 21, 53, 89, 3),
                  ("freepats", 0, 23, 53, 89, 3)],
    "Harpsichord": [("fluidr3", 0, 6, 41, 89, 4), ("fluidr3", 8, 6, 41, 89, 4),
                    ("timgm6mb", 0, 6, 41, 89, 4), ("freepats", 0, 6, 41, 89, 4)],
    "Sitar": [("fluidr3", 0, 104, 48, 79, 2), ("timgm6mb", 0, 104, 48, 79, 2),
              ("freepats", 0, 104, 48, 79, 2)],
    "Choir": [("fluidr3", 0, 52, 48, 79, 4), ("fluidr3", 0, 53, 48, 79, 4),
              ("timgm6mb", 0, 52, 48, 79, 4), ("timgm6mb", 0, 53, 48, 79, 4),
              ("freepats", 0, 53, 48, 79, 4)],
    "Bell": [("fluidr3", 0, 14, 60, 79, 2), ("fluidr3", 8, 14, 60, 79, 2),
             ("fluidr3", 0, 112, 72, 96, 2), ("timgm6mb", 0, 14, 60, 79, 2),
             ("timgm6mb", 0, 112, 72, 96, 2), ("freepats", 0, 14, 60, 79, 2),
             ("fluidr3gs", 5, 124, 60, 60, 1)],
    "Water": [("fluidr3", 0, 122, 60, 60, 1), ("timgm6mb", 0, 122, 60, 60, 1),
              ("freepats", 0, 122, 60, 60, 1), ("fluidr3gs", 1, 122, 60, 60, 1),
              ("fluidr3gs", 4, 122, 60, 60, 1), ("fluidr3gs", 5, 122, 60, 60, 1)],
    "Door": [("fluidr3gs", 2, 124, 60, 60, 1), ("fluidr3gs", 3, 124, 60, 60, 1)],
    "Vehicle": [("fluidr3", 0, 125, 60, 60, 1), ("timgm6mb", 0, 125, 60, 60, 1),
                ("freepats", 0, 125, 60, 60, 1), ("fluidr3gs", 1, 125, 60, 60, 1),
                ("fluidr3gs", 2, 125, 60, 60, 1), ("fluidr3gs", 3, 125, 60, 60, 1),
                ("fluidr3gs", 6, 125, 60, 60, 1), ("fluidr3gs", 7, 125, 60, 60, 1)],
}
# The novel class set's recordings: label -> [(package, file, kind)].
NOVEL_RECORDINGS: dict[str, list[tuple[str, str, str]]] = {
    "Bell": [("sonic-pi-samples", "/usr/share/sonic-pi/samples/perc_bell.flac", "events"),
             ("sonic-pi-samples", "/usr/share/sonic-pi/samples/perc_bell2.flac", "events")],
    "Choir": [("sonic-pi-samples", "/usr/share/sonic-pi/samples/ambi_choir.flac", "crop")],
    "Door": [("sonic-pi-samples", "/usr/share/sonic-pi/samples/perc_door.flac", "events")],
}

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


def ensure_packages(install: bool, packages: dict[str, str] | None = None) -> dict[str, str]:
    """Check (and with ``install``, apt-get install) every package (default: ``PACKAGES``);
    return their versions."""
    if packages is None:
        packages = PACKAGES
    versions = package_versions(packages)
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
        versions = package_versions(packages)
        missing = [p for p, v in versions.items() if v is None]
    if missing:
        raise BuildError(
            "missing Debian package(s): " + ", ".join(f"{p} ({packages[p]})" for p in missing)
            + ". Run this script with --install (as root), or: " + install_command(missing))
    for program in ("fluidsynth", "timidity"):
        if program in packages and shutil.which(program) is None:
            raise BuildError(f"the {program} binary is not on PATH although package {program} "
                             "is installed")
    for package, path in SOUNDFONTS.values():
        if package in packages and not path.is_file():
            raise BuildError(f"{path} not found (package {package})")
    if "freepats" in packages and not FREEPATS_DIR.is_dir():
        raise BuildError(f"{FREEPATS_DIR} not found (package freepats)")
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


def _sf2_chunks(path: Path, data: bytes) -> dict[str, bytes]:
    """The sub-chunks of an SF2 file's ``sdta`` and ``pdta`` lists, by id."""
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise BuildError(f"{path} is not a SoundFont 2 file")
    chunks: dict[str, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"LIST" and data[pos + 8:pos + 12] in (b"pdta", b"sdta"):
            sub, end = pos + 12, pos + 8 + size
            while sub + 8 <= end:
                sid, ssize = data[sub:sub + 4], struct.unpack("<I", data[sub + 4:sub + 8])[0]
                chunks[sid.decode("latin1")] = data[sub + 8:sub + 8 + ssize]
                sub += 8 + ssize + (ssize & 1)
        step = 8 + size + (size & 1)
        if size & 1 and data[pos + step:pos + step + 4] not in (b"LIST", b""):
            step -= 1  # some writers (MuseScore's sf3) leave an odd chunk unpadded
        pos += step
    if not {"phdr", "pbag", "pgen", "inst", "ibag", "igen"} <= set(chunks):
        raise BuildError(f"{path}: SoundFont preset data (pdta) is incomplete")
    return chunks


def sf2_presets(path: Path) -> dict[tuple[int, int], tuple[str, frozenset[int]]]:
    """Map (bank, program) -> (preset name, ids of every sample the preset can play).

    Reads the SF2 ``pdta`` chunks directly (phdr/pbag/pgen -> inst/ibag/igen -> samples), so
    presets that share recorded samples can be kept in one split.
    """
    chunks = _sf2_chunks(path, path.read_bytes())

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


def _at_4khz(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` resampled to 4 kHz, the rate ``same_recording`` compares at."""
    return resample(x, int(rate), 4000)


def sf2_sample_audio(chunks: dict[str, bytes], sample_ids: Iterable[int]) -> list[np.ndarray]:
    """The 16-bit samples ``sample_ids`` of an SF2 file (its ``_sf2_chunks``), mono float32
    at 4 kHz."""
    shdr, smpl = chunks["shdr"], chunks.get("smpl", b"")
    out = []
    for i in sorted(sample_ids):
        _, start, end, _, _, rate = struct.unpack("<20sIIIII", shdr[46 * i:46 * i + 40])
        x = np.frombuffer(smpl[2 * start:2 * end], "<i2").astype("float32") / 32768
        out.append(_at_4khz(x, rate))
    return out


def gus_patch_audio(path: Path) -> list[np.ndarray]:
    """The waves of a Gravis UltraSound patch (.pat, as in freepats), mono float32 at 4 kHz."""
    data = path.read_bytes()
    if not data.startswith(b"GF1PATCH"):
        raise BuildError(f"{path} is not a GUS patch")
    pos, out = 239, []  # after the patch, instrument and layer headers
    for _ in range(data[198]):  # the layer's number of waves
        length, rate = struct.unpack("<I", data[pos + 8:pos + 12])[0], struct.unpack(
            "<H", data[pos + 20:pos + 22])[0]
        modes = data[pos + 55]  # bit 0: 16-bit, bit 1: unsigned
        raw = data[pos + 96:pos + 96 + length]
        if modes & 1:
            x = np.frombuffer(raw, "<u2" if modes & 2 else "<i2").astype("float32") / 32768
        else:
            x = np.frombuffer(raw, "u1" if modes & 2 else "i1").astype("float32") / 128
        out.append(_at_4khz(x - 1.0 if modes & 2 else x, rate))
        pos += 96 + length
    return out


def freepats_patch(program: int) -> Path:
    """The freepats patch file of a General MIDI program (bank 0)."""
    paths = sorted((FREEPATS_DIR / "Tone_000").glob(f"{program:03d}_*.pat"))
    if len(paths) != 1:
        raise BuildError(f"expected one freepats patch for GM program {program} in "
                         f"{FREEPATS_DIR / 'Tone_000'}, found {len(paths)}; is freepats installed?")
    return paths[0]


# --- Source inventory -----------------------------------------------------------------------


def sample_sharing_groups(presets: dict, keys) -> list[list[tuple[int, int]]]:
    """The presets `keys` (of `sf2_presets`' `presets`) grouped by the samples they share,
    transitively: presets that play a common sample are one source. Groups come in the order
    of their first key, each in `keys`' order."""
    uf = UnionFind()
    by_sample: dict[int, tuple[int, int]] = {}
    keys = list(keys)
    for key in keys:
        uf.find(key)
        for sample in presets[key][1]:
            if sample in by_sample:
                uf.union(key, by_sample[sample])
            by_sample.setdefault(sample, key)
    components: dict[object, list[tuple[int, int]]] = defaultdict(list)
    for key in keys:
        components[uf.find(key)].append(key)
    return list(components.values())


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
    """Discovers every source of a class set on this machine and groups it for the split."""

    def __init__(self, class_set: ClassSet = DEFAULT) -> None:
        self.class_set = class_set
        self.copyrights = {p: read_copyright(p) for p in PACKAGE_SETS[class_set.name]}
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
        owners: dict[tuple[int, int], str] = {}
        for label, table in GM_PRESETS.items():
            for bank, program, *_ in table:
                if (bank, program) not in presets:
                    raise BuildError(f"{SF2_PATH}: no preset bank {bank} program {program}")
                owners[(bank, program)] = label
        for keys in sample_sharing_groups(presets, owners):
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
                    (gid, _at_4khz(x, 44100)))
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

    # The novel class set ---------------------------------------------------------------------
    def add_novel_presets(self) -> None:
        """Soundfont and freepats presets: one group per preset, merged with the presets of its
        SoundFont that share a sample. FluidR3 presets sharing a sample with a preset or drum
        kit of the default class set are refused, so the two datasets share no source."""
        by_font: dict[str, list[tuple[str, int, int, int, int, int]]] = defaultdict(list)
        for label, table in NOVEL_PRESETS.items():
            for font, bank, program, lo, hi, poly in table:
                by_font[font].append((label, bank, program, lo, hi, poly))
        for font, table in sorted(by_font.items()):
            if font == "freepats":
                licence, holder = LICENCE_FALLBACK["freepats"]
                for label, bank, program, lo, hi, poly in table:
                    path = freepats_patch(program)
                    key = f"freepats:{bank:03d}-{program:03d}"
                    self.add(Group(key, label, "gm", [Member(key, "freepats", licence, holder,
                                                             path.name, (lo, hi, poly))]))
                continue
            package, path = SOUNDFONTS[font]
            presets = sf2_presets(path)
            licence, holder = licence_of(path, package, self.copyrights[package])
            reserved: set[int] = set()
            if font == "fluidr3":  # every sample the default class set can play
                for rows in GM_PRESETS.values():
                    for b, p, *_ in rows:
                        reserved |= presets[(b, p)][1]
                for (b, _), (_, samples) in presets.items():
                    if b == GM_DRUM_BANK:
                        reserved |= samples
            owners: dict[tuple[int, int], tuple[str, tuple[int, int, int]]] = {}
            for label, bank, program, lo, hi, poly in table:
                if (bank, program) not in presets:
                    raise BuildError(f"{path}: no preset bank {bank} program {program}")
                if presets[(bank, program)][1] & reserved:
                    raise BuildError(f"{path}: preset {bank}-{program} ({label}) shares samples "
                                     "with the default class set's presets or drum kits")
                owners[(bank, program)] = (label, (lo, hi, poly))
            for keys in sample_sharing_groups(presets, owners):
                labels = {owners[k][0] for k in keys}
                if len(labels) > 1:
                    raise BuildError(f"{path}: presets {keys} share samples across classes "
                                     f"{labels}")
                members = [Member(f"{font}:{b:03d}-{p:03d}", package, licence, holder,
                                  presets[(b, p)][0], owners[(b, p)][1]) for b, p in sorted(keys)]
                gid = f"{font}:" + "+".join(f"{b:03d}-{p:03d}" for b, p in sorted(keys))
                self.add(Group(gid, labels.pop(), "gm", members))

    def add_novel_recordings(self) -> None:
        for label, rows in NOVEL_RECORDINGS.items():
            for package, file, kind in rows:
                path = Path(file)
                self.add(Group(f"{package}:{path.stem}", label, kind,
                               [self.member(path, package)]))

    def member_audio(self, member: Member, cache: AudioCache) -> list[np.ndarray]:
        """A member's recorded waves at 4 kHz: a file, or the samples of a preset."""
        font, _, preset = member.key.partition(":")
        if font == "freepats":
            return gus_patch_audio(freepats_patch(int(preset.split("-")[1])))
        if font in SOUNDFONTS:
            path = SOUNDFONTS[font][1]
            if path not in self._fonts:
                self._fonts[path] = (sf2_presets(path), _sf2_chunks(path, path.read_bytes()))
            presets, chunks = self._fonts[path]
            bank, program = (int(v) for v in preset.split("-"))
            return sf2_sample_audio(chunks, presets[(bank, program)][1])
        return [_at_4khz(cache.get(member.key), 44100)]

    def merge_same_recordings(self, cache: AudioCache) -> None:
        """Groups of a class holding the same recording, in whatever SoundFont, patch set or
        file, are merged (so they share a split); see ``same_recording``."""
        self._fonts: dict[Path, tuple[dict, dict]] = {}
        audio = {gid: [x for m in g.members for x in self.member_audio(m, cache)]
                 for gid, g in self.groups.items()}
        uf = UnionFind()
        gids = sorted(self.groups)
        for i, a in enumerate(gids):
            uf.find(a)
            for b in gids[i + 1:]:
                if self.groups[a].label != self.groups[b].label or uf.find(a) == uf.find(b):
                    continue
                if any(same_recording(x, y) for x in audio[a] for y in audio[b]):
                    uf.union(a, b)
        merged: dict[object, list[str]] = defaultdict(list)
        for gid in gids:
            merged[uf.find(gid)].append(gid)
        for parts in merged.values():
            if len(parts) > 1:
                groups = [self.groups.pop(g) for g in parts]
                if len({g.kind == "gm" for g in groups}) > 1:
                    raise BuildError(f"sources {parts} hold the same recording but are rendered "
                                     "differently (presets and recordings); leave one out")
                self.add(Group("+".join(parts), groups[0].label, groups[0].kind,
                               [m for g in groups for m in g.members]))

    def build(self, cache: AudioCache) -> dict[str, Group]:
        """Collect every source, drop silent files, merge groups sharing audio."""
        if self.class_set.name == "novel":
            self.add_novel_presets()
            self.add_novel_recordings()
            dropped = self.drop_silent(cache)
            if dropped:
                print(f"skipped silent recordings: {', '.join(dropped)}", flush=True)
            self.merge_same_recordings(cache)
            return self.groups
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
