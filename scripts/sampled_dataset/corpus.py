"""The unlabelled pretraining corpus behind ``scripts/build_pretraining_corpus.py``.

Real audio from Debian packages, cut into 16 kHz mono FLAC files of at most 30 s: recorded
speech prompts, sound themes, sample libraries and game sounds, and MIDI files from Debian
packages rendered with SoundFonts and GUS patches under varied General MIDI programs. What the
labelled datasets (``build_sampled_dataset.py``) put in their eval and val splits is kept
out: ``read_exclusions`` reads their ``source_inventory.csv`` and ``PresetFilter`` extends the
exclusion from their SoundFont presets to every preset that plays the same recordings.

The build runs in three steps: ``plan`` (which sources, which files and renders, within the
hour budget), ``run_task`` (decode or render one batch into FLAC files, in worker processes),
and ``write_readme``.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import hashlib
import math
import re
import struct
import subprocess
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import read_mono, same_recording, trim_silence
from .common import BuildError, rng_for
from .sources import (
    FREEPATS_DIR,
    LICENCE_FALLBACK,
    SOUNDFONTS,
    _sf2_chunks,
    freepats_patch,
    gus_patch_audio,
    licence_of,
    read_copyright,
    sf2_presets,
    sf2_sample_audio,
)
from .synthesis import (
    drum_pattern,
    gm_phrase,
    read_midi,
    render_command,
    write_freepats_config,
    write_midi,
)

RATE = 16000  # Hz, the corpus' sample rate
MAX_FILE_S = 30.0  # longer recordings and renders are cut into equal parts up to this long
MIN_FILE_S = 1.0  # shorter recordings are packed together (per group and licence)
PACK_GAP_S = 0.25  # silence between packed recordings
SILENT_PEAK = 1e-3  # -60 dBFS: a recording or part whose peak is below this is dropped
RENDER_PEAK = 0.89  # -1 dBFS: louder renders are scaled down to this peak
RENDER_SHARE = 0.25  # renders get at least this share of the hour budget
DEFAULT_HOURS = 12.0
SMALL_HOURS = 0.04
PHRASE_S = 12.0  # one phrase per preset and seed ("preset tour" renders)
PHRASES_PER_PRESET = 2
PHRASES_PER_RENDER = 20  # phrases rendered by one FluidSynth/TiMidity++ run
MIDI_VARIANTS = 2  # renders of each MIDI file per SoundFont: near-original and remapped
RECORDED_BATCH = 150  # recorded files per worker task
AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".aiff", ".aif")
# Licences that allow redistributing derived audio; any other stops the build.
FREE_LICENCE = re.compile(r"^(L?GPL|MIT|Expat|BSD|CC0|CC-BY|CC-SA-BY|public-domain|"
                          r"freedoom-license)", re.IGNORECASE)  # Freedoom's is BSD-3-clause


@dataclasses.dataclass(frozen=True)
class RecordedSource:
    """Recorded files of one Debian package under ``root``: one output folder (``group``)."""

    group: str
    package: str
    kind: str  # speech | sound theme | samples | game | music
    root: str
    skip: str = ""  # regex: files (relative to root) not taken
    only: str = ""  # regex: only these files (relative to root) are taken
    licence_files: str = ""  # DEP-5 ``Files:`` pattern whose stanza applies to every file
    licence_by_folder: bool = False  # the stanza whose pattern names the file's top folder


RECORDED: list[RecordedSource] = [
    # Speech: phone prompts of six voices in five languages (8 kHz recordings), letters,
    # syllables, words and descriptions in ~30 languages.
    RecordedSource("asterisk-en", "asterisk-core-sounds-en-wav", "speech",
                   "/usr/share/asterisk/sounds/en_US_f_Allison", licence_files="*"),
    RecordedSource("asterisk-es", "asterisk-core-sounds-es-wav", "speech",
                   "/usr/share/asterisk/sounds/es_MX_f_Allison", licence_files="*"),
    RecordedSource("asterisk-fr", "asterisk-core-sounds-fr-wav", "speech",
                   "/usr/share/asterisk/sounds/fr_CA_f_June", licence_files="fr-*"),
    RecordedSource("asterisk-it", "asterisk-core-sounds-it-wav", "speech",
                   "/usr/share/asterisk/sounds/it_IT_m_Carlo", licence_files="it-*"),
    RecordedSource("asterisk-ru", "asterisk-core-sounds-ru-wav", "speech",
                   "/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU", licence_files="ru-*"),
    RecordedSource("asterisk-it-menardi", "asterisk-prompt-it-menardi-wav", "speech",
                   "/usr/share/asterisk/sounds/it_IT_f_Menardi"),
    RecordedSource("klettres", "klettres-data", "speech", "/usr/share/klettres"),
    RecordedSource("ktuberling", "ktuberling-data", "speech", "/usr/share/ktuberling"),
    RecordedSource("tuxpaint-stamps-speech", "tuxpaint-stamps-default", "speech",
                   "/usr/share/tuxpaint/stamps", only=r"_desc_"),
    # Sound themes.
    RecordedSource("freedesktop", "sound-theme-freedesktop", "sound theme",
                   "/usr/share/sounds/freedesktop"),
    RecordedSource("oxygen", "oxygen-sounds", "sound theme", "/usr/share/sounds"),
    RecordedSource("deepin", "deepin-sound-theme", "sound theme", "/usr/share/sounds/deepin"),
    RecordedSource("yaru", "yaru-theme-sound", "sound theme", "/usr/share/sounds/Yaru"),
    RecordedSource("lomiri", "lomiri-sounds", "sound theme", "/usr/share/sounds/lomiri"),
    # Sample libraries.
    RecordedSource("sonic-pi", "sonic-pi-samples", "samples", "/usr/share/sonic-pi/samples"),
    RecordedSource("hydrogen-data", "hydrogen-data", "samples",
                   "/usr/share/hydrogen/data/drumkits"),
    RecordedSource("hydrogen-drumkits", "hydrogen-drumkits", "samples",
                   "/usr/share/hydrogen/data/drumkits", licence_by_folder=True),
    # Game sounds (effects, and the games' own music where they ship it).
    RecordedSource("tuxpaint-stamps-sounds", "tuxpaint-stamps-default", "game",
                   "/usr/share/tuxpaint/stamps", skip=r"_desc_"),
    RecordedSource("tuxpaint", "tuxpaint-data", "game", "/usr/share/tuxpaint/sounds"),
    RecordedSource("frozen-bubble", "frozen-bubble-data", "game",
                   "/usr/share/games/frozen-bubble"),
    RecordedSource("colobot", "colobot-common-sounds", "game", "/usr/share/games/colobot"),
    RecordedSource("lincity-ng", "lincity-ng-data", "game", "/usr/share/games/lincity-ng"),
    RecordedSource("neverball", "neverball-common", "game", "/usr/share/games/neverball"),
    # Music.
    RecordedSource("asterisk-moh", "asterisk-moh-opsound-wav", "music", "/usr/share/asterisk/moh"),
]
# Packages with MIDI files (``.mid``; Freedoom's music lumps inside its WADs).
MIDI_PACKAGES: dict[str, str] = {
    "openttd-openmsx": "OpenMSX: 31 MIDI tunes for OpenTTD",
    "planetblupi-music-midi": "Planet Blupi: 10 MIDI tunes",
    "freedoom": "Freedoom: 67 MIDI tunes (music lumps of its two WADs)",
}


@dataclasses.dataclass(frozen=True)
class RenderSource:
    """A SoundFont (or the freepats patches, or the AVL drum kits) that renders MIDI: one
    output folder."""

    group: str
    package: str
    fonts: tuple[str, ...]  # ``SOUNDFONTS`` keys, or "freepats"
    melodic: bool  # renders MIDI files' melodic parts and instrument phrases
    drums: bool  # renders drum parts and grooves (on its bank-128 kits, or its only preset)
    midi: bool  # renders MIDI files (else phrases only)


RENDERS: list[RenderSource] = [
    RenderSource("render-fluidr3", "fluid-soundfont-gm", ("fluidr3",), True, True, True),
    RenderSource("render-fluidr3gs", "fluid-soundfont-gs", ("fluidr3gs",), True, True, False),
    RenderSource("render-timgm6mb", "timgm6mb-soundfont", ("timgm6mb",), True, True, True),
    RenderSource("render-freepats", "freepats", ("freepats",), True, False, True),
    RenderSource("render-avldrums", "avldrums.lv2-soundfont", ("blackpearl", "redzeppelin"),
                 False, True, True),
]

CORPUS_PACKAGES: dict[str, str] = {
    "fluidsynth": "FluidSynth, renders MIDI with the SoundFonts",
    "timidity": "TiMidity++, renders MIDI with the freepats patches",
    "fluid-soundfont-gm": "FluidR3 GM SoundFont: sampled instruments",
    "fluid-soundfont-gs": "FluidR3 GS SoundFont: sound-effect variations",
    "timgm6mb-soundfont": "TimGM6mb SoundFont: sampled instruments and drum kits",
    "freepats": "freepats GUS patches: sampled instruments",
    "avldrums.lv2-soundfont": "AVL drum kits (Black Pearl, Red Zeppelin): recorded acoustic kits",
    **MIDI_PACKAGES,
    "asterisk-core-sounds-en-wav": "phone prompts, US English (Allison Smith), 8 kHz",
    "asterisk-core-sounds-es-wav": "phone prompts, Mexican Spanish (Allison Smith), 8 kHz",
    "asterisk-core-sounds-fr-wav": "phone prompts, Canadian French (June Wallack), 8 kHz",
    "asterisk-core-sounds-it-wav": "phone prompts, Italian (Carlo Flora), 8 kHz",
    "asterisk-core-sounds-ru-wav": "phone prompts, Russian, 8 kHz",
    "asterisk-prompt-it-menardi-wav": "phone prompts, Italian (Paola Dal Zot), 8 kHz",
    "klettres-data": "KLettres: letters and syllables, ~20 languages",
    "ktuberling-data": "KTuberling: words, ~25 languages",
    "tuxpaint-stamps-default": "Tux Paint stamps: spoken descriptions (~12 languages), "
    "animals, vehicles, instruments and other sound effects",
    "sound-theme-freedesktop": "freedesktop sound theme",
    "oxygen-sounds": "KDE Oxygen sound theme",
    "deepin-sound-theme": "Deepin sound theme",
    "yaru-theme-sound": "Yaru sound theme",
    "lomiri-sounds": "Lomiri ringtones and notifications",
    "sonic-pi-samples": "Sonic Pi samples: drums, loops, instruments, ambiences",
    "hydrogen-data": "Hydrogen drum kits (GMRockKit, TR808EmulationKit)",
    "hydrogen-drumkits": "Hydrogen drum kits: 14 acoustic, electronic and percussion kits",
    "tuxpaint-data": "Tux Paint tool sounds",
    "frozen-bubble-data": "Frozen Bubble: sound effects and music",
    "colobot-common-sounds": "Colobot: sound effects and music",
    "lincity-ng-data": "LinCity-NG: sound effects and music",
    "neverball-common": "Neverball: sound effects and music",
    "asterisk-moh-opsound-wav": "music on hold: five tracks from opsound.org, 8 kHz",
}
# --small uses only packages that .ci/run installs (no MIDI files: phrases only).
SMALL_GROUPS = ("freedesktop", "sonic-pi", "hydrogen-data", "render-fluidr3",
                "render-timgm6mb", "render-freepats")
SMALL_PACKAGES: dict[str, str] = {
    p: CORPUS_PACKAGES[p] for p in (
        "fluidsynth", "timidity", "fluid-soundfont-gm", "timgm6mb-soundfont", "freepats",
        "sound-theme-freedesktop", "sonic-pi-samples", "hydrogen-data")}
# Register (lowest note, highest note, polyphony) of phrases, by GM family (program // 8).
FAMILY_RANGES = [(36, 96, 4), (60, 96, 2), (48, 96, 2), (36, 84, 4), (40, 84, 4), (28, 55, 1),
                 (40, 84, 2), (36, 84, 4), (48, 84, 4), (48, 82, 1), (48, 84, 1), (55, 91, 1),
                 (48, 84, 2), (48, 84, 4), (48, 84, 3), (48, 72, 1)]


# --- Exclusions --------------------------------------------------------------------------------


@dataclasses.dataclass
class Exclusions:
    """Every member of the eval and val source groups of some labelled datasets."""

    members: set[str]  # file paths and preset keys ("fluidr3:000-002") as the inventory has them
    file_hashes: set[str]  # SHA-1 of the bytes of every excluded file
    datasets: list[tuple[str, int, int]]  # dataset folder, groups excluded, members excluded

    def excludes_file(self, path: Path) -> bool:
        """Whether ``path`` is an excluded member, or a byte-identical copy of one."""
        return (str(path) in self.members or str(path.resolve()) in self.members
                or _sha1(path) in self.file_hashes)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def read_exclusions(dirs: list[Path]) -> Exclusions:
    """The eval and val members of each dataset's ``source_inventory.csv``."""
    members: set[str] = set()
    datasets = []
    for folder in dirs:
        inventory = folder / "source_inventory.csv"
        if not inventory.is_file():
            raise BuildError(
                f"--exclude {folder}: {inventory} not found; --exclude takes a dataset built "
                "by scripts/build_sampled_dataset.py (its source_inventory.csv lists the "
                "sources of each split)")
        with open(inventory, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"source_id", "split", "member"} <= set(rows[0]):
            raise BuildError(f"{inventory} lacks the columns source_id, split, member")
        held_out = [r for r in rows if r["split"] in ("eval", "val")]
        members |= {r["member"] for r in held_out}
        datasets.append((str(folder), len({r["source_id"] for r in held_out}),
                         len({r["member"] for r in held_out})))
    for key in list(members):
        if key.startswith("/"):
            members.add(str(Path(key).resolve()))
    hashes = {_sha1(Path(m)) for m in members if m.startswith("/") and Path(m).is_file()}
    return Exclusions(members, hashes, datasets)


def preset_key(font: str, bank: int, program: int) -> str:
    """A preset as the labelled datasets' inventories name it: ``fluidr3:000-002``."""
    return f"{font}:{bank:03d}-{program:03d}"


class PresetFilter:
    """The presets of each SoundFont (and the freepats patches) a render may play.

    A preset is excluded when (1) its key is an excluded member, (2) it plays a sample of a
    preset excluded by (1) in the same SoundFont, (3) it plays a sample whose data is
    byte-identical to a sample of a preset excluded by (1) in any SoundFont, or (4) it has the
    GM program of a melodic preset excluded by (1) in another SoundFont or freepats and one of
    its samples is the same recording as one of that preset's (``same_recording`` at 4 kHz).
    Drum kits are compared by (1)-(3) only.
    """

    def __init__(self, fonts: list[str], exclusions: Exclusions) -> None:
        self.presets: dict[str, dict[tuple[int, int], str]] = {}  # font -> preset -> name
        self.excluded: dict[str, dict[tuple[int, int], str]] = defaultdict(dict)  # -> reason
        self._samples: dict[str, dict[tuple[int, int], frozenset[int]]] = {}
        self._hashes: dict[str, dict[int, str]] = {}
        self._chunks: dict[str, dict[str, bytes]] = {}
        self._wave_cache: dict[tuple[str, tuple[int, int]], list[np.ndarray]] = {}
        for font in fonts:
            self._load(font)
        self._exclude(exclusions)

    def _load(self, font: str) -> None:
        if font == "freepats":
            self.presets[font], self._samples[font], self._hashes[font] = {}, {}, {}
            for path in sorted((FREEPATS_DIR / "Tone_000").glob("*.pat")):
                program = int(path.name[:3])
                self.presets[font][(0, program)] = path.name
                self._samples[font][(0, program)] = frozenset([program])
                self._hashes[font][program] = _sha1(path)
            return
        path = SOUNDFONTS[font][1]
        presets = sf2_presets(path)
        self.presets[font] = {k: name for k, (name, _) in presets.items()}
        self._samples[font] = {k: samples for k, (_, samples) in presets.items()}
        chunks = _sf2_chunks(path, path.read_bytes())
        self._chunks[font] = chunks
        shdr, smpl = chunks["shdr"], chunks.get("smpl", b"")
        self._hashes[font] = {}
        for i in range(len(shdr) // 46):
            _, start, end, *_ = struct.unpack("<20sIIIII", shdr[46 * i:46 * i + 40])
            self._hashes[font][i] = hashlib.sha1(smpl[2 * start:2 * end]).hexdigest()

    def _waves(self, font: str, key: tuple[int, int]) -> list[np.ndarray]:
        """The recorded waves a preset plays, at 4 kHz (cached)."""
        if (font, key) not in self._wave_cache:
            self._wave_cache[(font, key)] = (
                gus_patch_audio(freepats_patch(key[1])) if font == "freepats"
                else sf2_sample_audio(self._chunks[font], self._samples[font][key]))
        return self._wave_cache[(font, key)]

    def _exclude(self, exclusions: Exclusions) -> None:
        named = {(font, key) for font, presets in self.presets.items() for key in presets
                 if preset_key(font, *key) in exclusions.members}
        for font, key in named:
            self.excluded[font][key] = "in an eval/val split"
        bad_hashes = {self._hashes[f][s] for f, k in named for s in self._samples[f][k]}
        for font, presets in self.presets.items():
            bad_ids = set().union(*[self._samples[f][k] for f, k in named if f == font])
            for key in presets:
                if key in self.excluded[font]:
                    continue
                samples = self._samples[font][key]
                if samples & bad_ids:
                    self.excluded[font][key] = "shares a sample with an eval/val preset"
                elif any(self._hashes[font][s] in bad_hashes for s in samples):
                    self.excluded[font][key] = "holds an eval/val preset's sample data"
        for font, key in sorted(named):
            if key[0] == 128:
                continue
            for other, presets in sorted(self.presets.items()):
                for okey in sorted(presets):
                    if (other == font or okey[0] == 128 or okey[1] != key[1]
                            or okey in self.excluded[other]):
                        continue
                    theirs = self._waves(other, okey)
                    if any(same_recording(a, b) for a in self._waves(font, key)
                           for b in theirs):
                        self.excluded[other][okey] = (
                            f"same recording as eval/val preset {preset_key(font, *key)}")

    def allowed(self, font: str, drums: bool) -> list[tuple[int, int]]:
        """The font's presets a render may play: drum kits (bank 128; for a font with one
        preset, that preset) or melodic instruments and sound effects."""
        keys = [k for k in sorted(self.presets[font]) if k not in self.excluded[font]]
        if len(self.presets[font]) == 1:
            return keys if drums else []
        return [k for k in keys if (k[0] == 128) == drums]


# --- Sources, planning -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a piece of audio comes from, as the manifest records it."""

    source_id: str
    packages: tuple[str, ...]
    licence: str
    copyright: str


@dataclasses.dataclass
class Item:
    """One unit of the budget: a recorded file, or one render (a MIDI file or a phrase)."""

    key: str  # file path; "midi:<font>:<variant>:<midi key>"; "phrase:<font>:<BBB-PPP>:<n>"
    seconds: float
    origin: Origin | None = None  # recorded files
    name: str = ""  # recorded files: the output name (unique in the group), without suffix


@dataclasses.dataclass
class Source:
    """What the budget is shared among: one output folder."""

    group: str
    kind: str
    items: list[Item]
    excluded: int = 0  # files left out because an --exclude dataset holds them in eval/val
    unlicensed: int = 0  # files the package's copyright file gives no free licence for


def package_files(package: str) -> list[Path]:
    """The regular files a Debian package installed (``dpkg -L``)."""
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise BuildError(f"package {package} is not installed (--install)")
    return [Path(line) for line in result.stdout.splitlines() if Path(line).is_file()]


def file_licence(source: RecordedSource, path: Path, stanzas: list) -> tuple[str, str]:
    """(licence, copyright holder) of a recorded file, from its package's copyright file."""
    if source.licence_files:
        for stanza in stanzas:
            if source.licence_files in stanza.patterns:
                return stanza.licence, stanza.copyright
        raise BuildError(f"/usr/share/doc/{source.package}/copyright has no Files: "
                         f"{source.licence_files} stanza")
    if source.licence_by_folder:
        folder = path.relative_to(source.root).parts[0]
        for stanza in stanzas:
            for pattern in stanza.patterns:
                stem = pattern.rpartition("/")[2].removesuffix(".h2drumkit")
                if fnmatch.fnmatch(folder, stem + "*"):
                    return stanza.licence, stanza.copyright
        raise BuildError(f"no licence for {path} in /usr/share/doc/{source.package}/copyright")
    return licence_of(path, source.package, stanzas)


def recorded_source(source: RecordedSource, exclusions: Exclusions) -> Source:
    """The source's files (with durations and licences), less the excluded ones."""
    stanzas = read_copyright(source.package)
    out = Source(source.group, source.kind, [])
    seen, names = set(), set()
    for path in sorted(package_files(source.package)):
        rel = path.as_posix()[len(source.root) + 1:]
        if (not path.as_posix().startswith(source.root + "/")
                or path.suffix.lower() not in AUDIO_SUFFIXES
                or (source.skip and re.search(source.skip, rel))
                or (source.only and not re.search(source.only, rel))
                or path.resolve() in seen):
            continue
        seen.add(path.resolve())
        if exclusions.excludes_file(path):
            out.excluded += 1
            continue
        licence, holder = file_licence(source, path, stanzas)
        if not FREE_LICENCE.match(licence):
            out.unlicensed += 1
            continue
        try:
            seconds = sf.info(str(path)).duration
        except Exception as exc:  # soundfile raises several types
            raise BuildError(f"cannot read {path}: {exc}") from exc
        name = slug(rel.rsplit(".", 1)[0].replace("/", "--"))
        name = name if name not in names else slug(rel.replace("/", "--"))
        names.add(name)
        out.items.append(Item(str(path), seconds,
                              Origin(str(path), (source.package,), licence, holder), name))
    return out


def midi_files() -> dict[str, tuple[str, bytes]]:
    """MIDI key (a path, or ``wad:lump`` for Freedoom) -> (package, MIDI file bytes)."""
    out: dict[str, tuple[str, bytes]] = {}
    for package in MIDI_PACKAGES:
        for path in sorted(package_files(package)):
            if path.suffix.lower() == ".mid":
                out[str(path)] = (package, path.read_bytes())
            elif path.suffix.lower() == ".wad":
                data = path.read_bytes()
                count, table = struct.unpack("<II", data[4:12])
                for i in range(count):
                    pos, size, name = struct.unpack("<II8s", data[table + 16 * i:
                                                                  table + 16 * i + 16])
                    lump = data[pos:pos + size]
                    if lump[:4] == b"MThd":
                        lump_name = name.rstrip(bytes(1)).decode("latin1")
                        out[f"{path}:{lump_name}"] = (package, lump)
    return out


def render_sources(filter_: PresetFilter, midis: dict[str, tuple[str, bytes]],
                   groups: list[str]) -> list[Source]:
    """Every render each SoundFont could make: two phrases per allowed preset, and
    ``MIDI_VARIANTS`` renders of each MIDI file (its drum part only, for drum kits)."""
    lengths = {}
    for key, (_, data) in midis.items():
        events = read_midi(data, key)
        drum_notes = sum(1 for _, p, m in events if p == 2 and m[0] & 0x0F == 9)
        lengths[key] = (events[-1][0] if events else 0.0, drum_notes)
    sources = []
    for render in RENDERS:
        if render.group not in groups:
            continue
        items = []
        for font in render.fonts:
            presets = []
            if render.melodic:
                presets += filter_.allowed(font, drums=False)
            if render.drums:
                presets += filter_.allowed(font, drums=True)
            for bank, program in presets:
                for n in range(PHRASES_PER_PRESET):
                    items.append(Item(f"phrase:{font}:{bank:03d}-{program:03d}:{n}", PHRASE_S))
            if not render.midi:
                continue
            variants = range(MIDI_VARIANTS) if render.melodic else [0]
            for key, (seconds, drum_notes) in sorted(lengths.items()):
                if seconds > 10 and (render.melodic or drum_notes >= 50):
                    items += [Item(f"midi:{font}:{v}:{key}", seconds) for v in variants]
        sources.append(Source(render.group, "rendered MIDI", items))
    return sources


def share_budget(capacities: dict[str, float], budget: float) -> dict[str, float]:
    """Max-min fair shares of ``budget`` (seconds): every source gets an equal share, and a
    source with less than its share gives the rest to the others."""
    shares: dict[str, float] = {}
    left = dict(capacities)
    while left:
        level = budget / len(left)
        small = {k: v for k, v in left.items() if v <= level}
        if not small:
            shares.update({k: level for k in left})
            break
        for k, v in small.items():
            shares[k] = v
            budget -= v
            del left[k]
    return shares


def select(sources: list[Source], hours: float, seed: int) -> dict[str, list[Item]]:
    """The items of each source taken within ``hours``: recordings first (renders get
    whatever they leave, and at least ``RENDER_SHARE``), shared max-min fairly within each
    kind; each source's items in a seeded order until its share is reached."""
    budget = hours * 3600
    recorded = {s.group: sum(i.seconds for i in s.items) for s in sources
                if s.kind != "rendered MIDI"}
    rendered = {s.group: sum(i.seconds for i in s.items) for s in sources
                if s.kind == "rendered MIDI"}
    render_budget = min(sum(rendered.values()),
                        max(budget - sum(recorded.values()), RENDER_SHARE * budget))
    shares = {**share_budget(recorded, budget - render_budget),
              **share_budget(rendered, render_budget)}
    chosen = {}
    for source in sources:
        order = rng_for(seed, "select", source.group).permutation(len(source.items))
        taken, total = [], 0.0
        for index in order:
            if total >= shares[source.group] - 1e-6:
                break
            taken.append(source.items[index])
            total += source.items[index].seconds
        chosen[source.group] = taken
    return chosen


# --- Tasks: decoding and rendering into FLAC files -----------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of ``manifest.csv``."""

    path: str  # relative to the corpus folder
    seconds: float
    origin: Origin


@dataclasses.dataclass
class Task:
    """A batch of work for one worker: recorded files to decode, or renders to make."""

    group: str
    name: str  # unique within the group: names packed files
    items: list[Item]
    seed: int
    presets: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    midis: dict[str, tuple[str, bytes]] = dataclasses.field(default_factory=dict)
    origins: dict[str, Origin] = dataclasses.field(default_factory=dict)  # font -> its origin


@dataclasses.dataclass
class Result:
    rows: list[Row]
    silent: list[str]  # items dropped as near-silent
    too_short: list[str]  # recordings no pack of MIN_FILE_S could take; renders under it


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def cut(x: np.ndarray) -> list[np.ndarray]:
    """``x`` in equal parts of at most ``MAX_FILE_S``; near-silent parts dropped."""
    parts = np.array_split(x, max(1, math.ceil(len(x) / (MAX_FILE_S * RATE))))
    return [p for p in parts if p.size and np.max(np.abs(p)) >= SILENT_PEAK]


def write_pieces(out: Path, group: str, name: str, x: np.ndarray, origin: Origin) -> list[Row]:
    """``x`` written as ``audio/<group>/<name>[-partN].flac`` (16-bit FLAC), cut by ``cut``."""
    pieces = cut(x)
    rows = []
    for n, piece in enumerate(pieces):
        rel = f"audio/{group}/{name}{f'-part{n + 1}' if len(pieces) > 1 else ''}.flac"
        sf.write(out / rel, np.clip(piece, -1.0, 1.0), RATE, subtype="PCM_16", format="FLAC")
        rows.append(Row(rel, len(piece) / RATE, origin))
    return rows


def run_recorded(task: Task, out: Path) -> Result:
    """Decode a batch of recordings: trimmed of silence, cut or packed into FLAC files."""
    rows, silent, packs = [], [], defaultdict(list)
    for item in task.items:
        x = trim_silence(read_mono(item.key, RATE))
        if x.size == 0 or np.max(np.abs(x)) < SILENT_PEAK:
            silent.append(item.key)
        elif len(x) < MIN_FILE_S * RATE:
            packs[(item.origin.licence, item.origin.copyright)].append((item, x))
        else:
            rows += write_pieces(out, task.group, item.name, x, item.origin)
    too_short = []
    gap = np.zeros(int(PACK_GAP_S * RATE), "float32")
    for n, (_, members) in enumerate(sorted(packs.items())):
        batches, current, length = [], [], 0
        for item, x in members:
            if current and length + len(gap) + len(x) > MAX_FILE_S * RATE:
                batches.append(current)
                current, length = [], 0
            current.append((item, x))
            length += len(x) + (len(gap) if len(current) > 1 else 0)
        batches.append(current)
        for k, batch in enumerate(batches):
            audio = np.concatenate([part for _, x in batch for part in (gap, x)][1:])
            if len(audio) < MIN_FILE_S * RATE:
                too_short += [item.key for item, _ in batch]
                continue
            origin = dataclasses.replace(batch[0][0].origin, source_id=";".join(
                item.key for item, _ in batch))
            rows += write_pieces(out, task.group, f"packed-{task.name}-{n}-{k}", audio, origin)
    return Result(rows, silent, too_short)


def remap_midi(events: list[tuple[float, int, bytes]], font: str, melodic: list[tuple[int, int]],
               kits: list[tuple[int, int]], variant: int, rng: np.random.Generator,
               drums_only: bool) -> tuple[list[tuple[float, int, bytes]], list[tuple[int, int]]]:
    """A MIDI file's events with every program mapped to a preset the render may play.

    Variant 0 keeps a part's program where it may be played and otherwise takes one of the
    same GM family (else any); other variants take a random preset, half the time of the
    same family. Drum parts (channel 10) play a random allowed kit, or are dropped when the
    font has none; ``drums_only`` keeps only the drum part, moved to channel 1 (kits with a
    single preset). Bank selects of the file are replaced; returns the events and the presets
    played.
    """
    instruments = [k for k in melodic if k[1] < 112]  # no sound effects in songs
    by_family: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key in instruments:
        by_family[key[1] // 8].append(key)

    def choose(program: int) -> tuple[int, int]:
        family = by_family.get(program // 8) or instruments
        if variant == 0 and (0, program) in instruments:
            return (0, program)
        pool = family if (variant == 0 or rng.random() < 0.5) else instruments
        return pool[int(rng.integers(0, len(pool)))]

    out: list[tuple[float, int, bytes]] = []
    used: set[tuple[int, int]] = set()
    mapping: dict[tuple[int, int], tuple[int, int]] = {}
    kit = kits[int(rng.integers(0, len(kits)))] if kits else None
    started: set[int] = set()
    for seconds, priority, message in events:
        status, channel = message[0] & 0xF0, message[0] & 0x0F
        if status == 0xB0 and message[1] in (0, 32):
            continue  # bank select: ours replace them
        if drums_only:
            if channel != 9 or kit is None:
                continue
            if not started:
                out += [(0.0, 0, bytes([0xB0, 0, kit[0]])), (0.0, 0, bytes([0xC0, kit[1]]))]
                started.add(0)
                used.add(kit)
            if status != 0xC0:
                out.append((seconds, priority, bytes([status]) + message[1:]))
            continue
        if channel == 9:
            if kit is None:
                continue
            if channel not in started:
                out.append((0.0, 0, bytes([0xC9, kit[1]])))
                started.add(channel)
                used.add(kit)
            if status != 0xC0:
                out.append((seconds, priority, message))
            continue
        if not instruments:
            continue
        if status == 0xC0 or (status == 0x90 and channel not in started):
            program = message[1] if status == 0xC0 else 0  # GM: program 1 until changed
            preset = mapping.setdefault((channel, program), choose(program))
            used.add(preset)
            started.add(channel)
            out += [(seconds, 0, bytes([0xB0 | channel, 0, preset[0]])),
                    (seconds, 0, bytes([0xC0 | channel, preset[1]]))]
            if status == 0xC0:
                continue
        out.append((seconds, priority, message))
    return out, sorted(used)


def phrase_events(font: str, key: tuple[int, int], rng: np.random.Generator,
                  one_preset_kit: bool) -> list[tuple[float, int, bytes]]:
    """A ``PHRASE_S`` phrase on one preset: a groove on a drum kit, one note struck again
    every 0.5-3 s on a sound effect (programs 120-127; many are one-shots), else melodies,
    chords, arpeggios or held notes (``gm_phrase``) in the GM family's register."""
    bank, program = key
    if bank == 128 or one_preset_kit:
        channel = 0 if one_preset_kit else 9  # channel 10 plays bank 128 by itself
        events = [(0.0, 0, bytes([0xC0 | channel, program]))]
        if one_preset_kit:
            events.insert(0, (0.0, 0, bytes([0xB0, 0, bank])))
        for t, note, velocity in drum_pattern(rng, PHRASE_S):
            events += [(t, 2, bytes([0x90 | channel, note, velocity])),
                       (min(t + 0.2, PHRASE_S), 1, bytes([0x80 | channel, note, 0]))]
        return events
    events = [(0.0, 0, bytes([0xB0, 0, bank])), (0.0, 0, bytes([0xC0, program]))]
    if program >= 120:
        note, t, notes = int(rng.integers(48, 73)), 0.0, []
        while t < PHRASE_S - 0.5:
            length = min(float(rng.uniform(0.5, 3.0)), PHRASE_S - t)
            notes.append((t, note, int(rng.integers(70, 128)), length))
            t += length
    else:
        notes = gm_phrase(rng, *FAMILY_RANGES[program // 8], PHRASE_S)
    for t, note, velocity, length in notes:
        events += [(t, 2, bytes([0x90, note, velocity])),
                   (min(t + length, PHRASE_S), 1, bytes([0x80, note, 0]))]
    return events


def render(font: str, events: list[tuple[float, int, bytes]], tmp: Path,
           programs: set[int]) -> np.ndarray:
    """``events`` rendered at ``RATE`` by FluidSynth (or TiMidity++ for freepats), mono."""
    mid, wav = tmp / "render.mid", tmp / "render.wav"
    write_midi(mid, events)
    if font == "freepats":
        write_freepats_config(programs, tmp / "freepats.cfg")
    cmd = render_command(font, mid, wav, tmp, rate=RATE)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wav.exists():
        raise BuildError(f"{cmd[0]} failed ({' '.join(cmd)}): {result.stderr[-2000:]}")
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    if rate != RATE:
        raise BuildError(f"{cmd[0]} rendered at {rate} Hz, not {RATE}")
    wav.unlink()
    return audio.mean(axis=1)


def level(x: np.ndarray) -> np.ndarray:
    """A render trimmed of silence and scaled down to ``RENDER_PEAK`` if louder."""
    x = trim_silence(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x * min(1.0, RENDER_PEAK / peak) if peak > 0 else x


def run_render(task: Task, out: Path) -> Result:
    """Render a batch: MIDI files (one FluidSynth/TiMidity++ run each) or phrases (one run
    for all, cut apart)."""
    rows, silent, too_short = [], [], []
    with tempfile.TemporaryDirectory(prefix="corpus_render_") as tmp:
        phrases: list[tuple[str, str, tuple[int, int], float]] = []
        events: list[tuple[float, int, bytes]] = []
        for item in task.items:
            kind, font, which, rest = item.key.split(":", 3)
            rng = rng_for(task.seed, item.key)
            one_kit = len(task.presets[font + "/all"]) == 1
            if kind == "phrase":
                key = (int(which[:3]), int(which[4:]))
                start = len(phrases) * (PHRASE_S + 1.0)
                events += [(start + t, p, m) for t, p, m in phrase_events(font, key, rng,
                                                                          one_kit)]
                phrases.append((item.key, font, key, start))
                continue
            package, data = task.midis[rest]
            remapped, used = remap_midi(read_midi(data, rest), font, task.presets[font],
                                        task.presets[font + "/kits"], int(which), rng, one_kit)
            x = level(render(font, remapped, Path(tmp), {p for _, p in used}))
            origin = combine(task.origins[font], package, task.origins[package],
                             "+".join(f"{b:03d}-{p:03d}" for b, p in used), rest)
            stem, _, lump = Path(rest).name.partition(":")  # "freedoom1.wad:D_E1M1"
            name = slug(f"{stem.rsplit('.', 1)[0]}{'-' + lump if lump else ''}-{font}-v{which}")
            if x.size == 0 or np.max(np.abs(x)) < SILENT_PEAK:
                silent.append(item.key)
            elif len(x) < MIN_FILE_S * RATE:
                too_short.append(item.key)
            else:
                rows += write_pieces(out, task.group, name, x, origin)
        if phrases:
            font = phrases[0][1]
            audio = render(font, events + [(len(phrases) * (PHRASE_S + 1.0), 3,
                                            bytes([0xB0, 121, 0]))], Path(tmp),
                           {key[1] for _, _, key, _ in phrases})
            for item_key, _, key, start in phrases:
                a = int(start * RATE)
                x = level(audio[a:a + int(PHRASE_S * RATE)])
                n = item_key.rsplit(":", 1)[1]
                which = f"{key[0]:03d}-{key[1]:03d}"
                origin = dataclasses.replace(task.origins[font],
                                             source_id=f"{font}:{which} (phrase {n})")
                if x.size == 0 or np.max(np.abs(x)) < SILENT_PEAK:
                    silent.append(item_key)
                elif len(x) < MIN_FILE_S * RATE:
                    too_short.append(item_key)
                else:
                    rows += write_pieces(out, task.group, f"phrase-{font}-{which}-{n}", x,
                                         origin)
    return Result(rows, silent, too_short)


def combine(font: Origin, package: str, midi: Origin, presets: str, midi_key: str) -> Origin:
    """The origin of a MIDI file rendered with a SoundFont: both packages and licences."""
    return Origin(f"{font.source_id}:{presets} < {midi_key}", font.packages + (package,),
                  f"{font.licence}; {midi.licence}", f"{font.copyright}; {midi.copyright}")


def run_task(args: tuple[Task, Path]) -> Result:
    """Run one task (in a worker process)."""
    task, out = args
    (out / "audio" / task.group).mkdir(parents=True, exist_ok=True)
    if task.group.startswith("render-"):
        return run_render(task, out)
    return run_recorded(task, out)


def make_tasks(sources: list[Source], chosen: dict[str, list[Item]], filter_: PresetFilter,
               midis: dict[str, tuple[str, bytes]], seed: int) -> list[Task]:
    """Split the chosen items into worker tasks: recordings in batches, each MIDI render on
    its own, phrases by font in batches."""
    tasks = []
    origins = {}
    for render_source in RENDERS:
        for font in set(render_source.fonts) & set(filter_.presets):
            package = render_source.package
            path = SOUNDFONTS[font][1] if font in SOUNDFONTS else FREEPATS_DIR
            licence, holder = (LICENCE_FALLBACK[package] if package in LICENCE_FALLBACK
                               else licence_of(path, package, read_copyright(package)))
            origins[font] = Origin(font, (package,), licence, holder)
    for package in sorted({package for package, _ in midis.values()}):
        stanzas = read_copyright(package)
        licence, holder = (stanzas[0].licence, stanzas[0].copyright) if stanzas else ("", "")
        origins[package] = Origin(package, (package,), licence, holder)
    for origin in origins.values():
        if not FREE_LICENCE.match(origin.licence):
            raise BuildError(f"{origin.packages[0]}: licence {origin.licence!r} is not known "
                             "to allow redistribution")
    presets = {}
    for font in filter_.presets:
        presets[font] = filter_.allowed(font, drums=False)
        presets[font + "/kits"] = filter_.allowed(font, drums=True)
        presets[font + "/all"] = sorted(filter_.presets[font])
    for source in sources:
        items = sorted(chosen[source.group], key=lambda i: i.key)
        if source.kind != "rendered MIDI":
            order = rng_for(seed, "pack", source.group).permutation(len(items))
            items = [items[i] for i in order]
            for n in range(0, len(items), RECORDED_BATCH):
                tasks.append(Task(source.group, str(n // RECORDED_BATCH),
                                  items[n:n + RECORDED_BATCH], seed))
            continue
        phrases = defaultdict(list)
        for item in items:
            if item.key.startswith("phrase:"):
                phrases[item.key.split(":")[1]].append(item)
            else:
                tasks.append(Task(source.group, item.key, [item], seed, presets,
                                  {item.key.split(":", 3)[3]: midis[item.key.split(":", 3)[3]]},
                                  origins))
        for font, batch in sorted(phrases.items()):
            for n in range(0, len(batch), PHRASES_PER_RENDER):
                tasks.append(Task(source.group, f"{font}-{n}", batch[n:n + PHRASES_PER_RENDER],
                                  seed, presets, {}, origins))
    # Longest first, so that the workers finish together.
    return sorted(tasks, key=lambda t: (-sum(i.seconds for i in t.items), t.group, t.name))


# --- The corpus README -------------------------------------------------------------------------


def write_manifest(out: Path, rows: list[Row], versions: dict[str, str]) -> None:
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "seconds", "source_id", "package", "package_version",
                         "licence", "copyright"])
        for row in sorted(rows, key=lambda r: r.path):
            o = row.origin
            writer.writerow([row.path, f"{row.seconds:.4f}", o.source_id, ";".join(o.packages),
                             ";".join(versions[p] for p in o.packages), o.licence,
                             o.copyright])


def hours_table(rows: list[Row], key) -> list[tuple[str, int, float]]:
    """(name, files, hours) per ``key(row)``, largest first."""
    files: Counter = Counter()
    seconds: Counter = Counter()
    for row in rows:
        files[key(row)] += 1
        seconds[key(row)] += row.seconds
    return sorted(((k, files[k], seconds[k] / 3600) for k in files), key=lambda r: -r[2])


def readme_text(rows: list[Row], results: list[Result], sources: list[Source],
                exclusions: Exclusions, filter_: PresetFilter, versions: dict[str, str],
                argv: list[str], seed: int, hours: float, elapsed: float) -> str:
    """The corpus README: totals, hours per package and kind, licences, exclusions, rules."""
    kind_of = {s.group: s.kind for s in sources}
    total = sum(r.seconds for r in rows)
    lines = [
        "# Unlabelled pretraining corpus",
        "",
        f"Built by `scripts/build_pretraining_corpus.py` (keras-dae) with `{' '.join(argv)}` "
        f"(seed {seed}, budget {hours:g} h) in {elapsed:.0f} s: {len(rows)} files, "
        f"{total / 3600:.2f} hours of 16 kHz mono 16-bit FLAC in `audio/<source group>/`, "
        "each at most 30 s. `manifest.csv` lists every file with its length, source, Debian "
        "package, version, licence and copyright holder.",
        "",
        "## Hours per kind",
        "",
        "| kind | files | hours |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {n} | {h:.2f} |" for k, n, h in hours_table(
        rows, lambda r: kind_of[r.path.split("/")[1]])]
    lines += ["", "## Hours per source group", "",
              "| group | kind | files | hours | recordings left out: eval/val, no free "
              "licence stated |", "|---|---|---|---|---|"]
    by_group = {s.group: s for s in sources}
    lines += [f"| {g} | {kind_of[g]} | {n} | {h:.2f} | {by_group[g].excluded}, "
              f"{by_group[g].unlicensed} |"
              for g, n, h in hours_table(rows, lambda r: r.path.split("/")[1])]
    lines += ["", "## Sources and licences", "",
              "Hours count a render under its SoundFont's package and under its MIDI file's.",
              "", "| Debian package | version | what is used | hours | licence(s) | copyright |",
              "|---|---|---|---|---|---|"]
    licences: dict[str, Counter] = defaultdict(Counter)
    holders: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        parts = zip(row.origin.licence.split("; "), row.origin.copyright.split("; "),
                    strict=True)
        for package, (licence, holder) in zip(row.origin.packages, parts, strict=True):
            licences[package][licence] += 1
            holders[package][holder] += 1
    for package, _, h in hours_table([dataclasses.replace(r, path=p) for r in rows
                                      for p in r.origin.packages], lambda r: r.path):
        lic = ", ".join(k for k, _ in licences[package].most_common())
        holder = "; ".join(k for k, _ in holders[package].most_common(3))
        lines.append(f"| {package} | {versions[package]} | {CORPUS_PACKAGES[package]} | "
                     f"{h:.2f} | {lic} | {holder} |")
    lines += ["", "FluidSynth and TiMidity++ render; their code is not in the corpus. Per-file "
              "licences are in `manifest.csv`; redistributing the corpus means following them.",
              "", "## What was excluded", ""]
    if not exclusions.datasets:
        lines.append("Nothing: no `--exclude` dataset was given.")
    for folder, n_groups, n_members in exclusions.datasets:
        lines.append(f"- `{folder}`: {n_groups} eval/val source groups, {n_members} members.")
    lines += [
        "",
        "Every member of a source group in split eval or val of an `--exclude` dataset's "
        "`source_inventory.csv` is left out. Recorded files are matched by path (as the "
        "inventory names them, and resolved) and by their bytes (a copy elsewhere is left out "
        "too). SoundFont presets are named `font:BBB-PPP` (bank, program) as in the inventory; "
        "a render never plays a preset that is one of them, that plays one of their samples, "
        "that holds one of their samples' data byte for byte in another SoundFont, or that has "
        "the GM program of an excluded instrument in another SoundFont (or freepats) and a "
        "sample that is the same recording (normalised correlation >= 0.8 at 4 kHz). Presets "
        "left out:",
        "",
    ]
    for font, reasons in sorted(filter_.excluded.items()):
        if reasons:
            counts = Counter(reasons.values())
            lines.append(f"- {font}: {len(reasons)} of {len(filter_.presets[font])} ("
                         + "; ".join(f"{n} {why}" for why, n in counts.most_common()) + ")")
    silent = sum(len(r.silent) for r in results)
    short = sum(len(r.too_short) for r in results)
    lines += [
        "",
        "## How files are made",
        "",
        "- Recordings are decoded by libsndfile, their channels averaged, resampled to 16 kHz "
        "(polyphase), and trimmed of leading and trailing silence (below -50 dB of the peak). "
        "Recordings and renders whose peak is below -60 dBFS are dropped (near-silent: "
        f"{silent} in this build). Recordings keep their level.",
        "- Recordings longer than 30 s (and renders) are cut into equal parts of at most "
        "30 s; a part whose peak is below -60 dBFS is dropped. Recordings shorter than 1 s "
        "are packed: concatenated, in a seeded order, with 0.25 s of silence between, into "
        "files of at most 30 s per source group and licence (`packed-*.flac`, whose "
        "`source_id` lists the files). Packs still under 1 s, and renders under 1 s once "
        f"trimmed, are dropped ({short} recordings and renders in this build).",
        "- MIDI files (OpenMSX, Planet Blupi, Freedoom's music lumps) are rendered with each "
        "SoundFont twice: variant 0 keeps each part's GM program where the SoundFont may play "
        "it (else one of the same family), variant 1 maps each part to a random allowed "
        "instrument (half the time of the same family). Drum parts play an allowed drum kit, "
        "or are dropped where none is allowed (FluidR3's kits are all eval/val sources when "
        "the default sampled dataset is excluded; freepats renders have no drums). The AVL "
        "kits render the files' drum parts alone. FluidSynth: reverb and chorus off; "
        "TiMidity++ for freepats. Renders louder than -1 dBFS are scaled down to it.",
        f"- Phrases: {PHRASES_PER_PRESET} phrases of {PHRASE_S:g} s on every allowed preset "
        "(random melodies, chords, arpeggios or held notes in the instrument family's "
        "register, as in the labelled datasets; grooves on drum kits; one note struck again "
        "every 0.5-3 s on sound effects).",
        "- The hour budget: recordings first; renders get what recordings leave, and at least "
        f"{RENDER_SHARE:.0%} of it. Within recordings and within renders the budget is shared "
        "max-min fairly among source groups (a group with less than its share gives the rest "
        "to the others); a group's files and renders are taken in a seeded order until its "
        "share is reached.",
        "",
        "Deterministic given `--seed` and the installed package versions (above).",
    ]
    return "\n".join(lines) + "\n"
