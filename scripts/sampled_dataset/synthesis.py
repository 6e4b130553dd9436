"""Turning planned clips into audio: MIDI phrases and grooves rendered with FluidSynth,
recorded files arranged into kits, strokes, utterances and calls, then reverb, levels and
the mix."""

from __future__ import annotations

import concurrent.futures
import math
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import AudioCache, active_rms, add_at, crop_loud, fade, room_reverb
from .common import SAMPLE_RATE, BuildError
from .planning import Clip, Component
from .sources import FREEPATS_DIR, SOUNDFONTS, Group, Member, freepats_patch

SLOTS_PER_RENDER = 60  # FluidSynth renders this many components per MIDI file
SLOT_GAP_S = 1.0

# Sample-based drum kits: GM note roles -> files (names matched case-insensitively).
DRUM_ROLES = {35: "kick", 36: "kick", 38: "snare", 40: "snare", 42: "hat_closed",
              44: "hat_pedal", 46: "hat_open", 51: "ride", 49: "crash", 57: "crash",
              41: "tom", 43: "tom", 45: "tom", 47: "tom", 48: "tom", 50: "tom"}
ROLE_FALLBACK = {"hat_pedal": ["hat_closed"], "hat_open": ["hat_closed"],
                 "ride": ["hat_closed"], "crash": ["ride", "hat_open"],
                 "hat_closed": ["ride", "hat_pedal"], "tom": []}
VELOCITY_LAYERS = {"softest": 0, "soft": 1, "med": 2, "hard": 3, "hardest": 4}


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


def _read_varlen(data: bytes, pos: int) -> tuple[int, int]:
    """A MIDI variable-length quantity at ``pos``: (its value, the position after it)."""
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos


def read_midi(data: bytes, name: str = "MIDI file") -> list[tuple[float, int, bytes]]:
    """The channel messages of a standard MIDI file (type 0 or 1), as ``write_midi`` takes
    them: (seconds, priority, message bytes), priority 0 for controllers and program changes,
    1 for note-offs (and note-ons of velocity 0), 2 for note-ons.

    Tempo changes are applied (from any track); other meta events and system-exclusive
    messages are dropped. ``name`` names the file in errors.
    """
    if data[:4] != b"MThd":
        raise BuildError(f"{name} is not a standard MIDI file")
    _, n_tracks, division = struct.unpack(">HHH", data[8:14])
    if division & 0x8000:
        raise BuildError(f"{name}: SMPTE time division is not supported")
    pos = 8 + struct.unpack(">I", data[4:8])[0]
    timed: list[tuple[int, int, int, bytes]] = []  # tick, order, priority, message
    tempos: list[tuple[int, int]] = [(0, 500000)]  # tick, microseconds per quarter note
    for _ in range(n_tracks):
        if data[pos:pos + 4] != b"MTrk":
            raise BuildError(f"{name}: malformed track at byte {pos}")
        end = pos + 8 + struct.unpack(">I", data[pos + 4:pos + 8])[0]
        pos, tick, status = pos + 8, 0, 0
        while pos < end:
            delta, pos = _read_varlen(data, pos)
            tick += delta
            if data[pos] & 0x80:
                status = data[pos]
                pos += 1
            if status == 0xFF:  # meta event: type, length, data
                kind = data[pos]
                length, pos = _read_varlen(data, pos + 1)
                if kind == 0x51:
                    tempos.append((tick, int.from_bytes(data[pos:pos + 3], "big")))
                pos += length
                status = 0
            elif status in (0xF0, 0xF7):  # system exclusive: length, data
                length, pos = _read_varlen(data, pos)
                pos += length
                status = 0
            elif status >= 0x80:
                size = 1 if status & 0xF0 in (0xC0, 0xD0) else 2
                message = bytes([status]) + data[pos:pos + size]
                pos += size
                kind = status & 0xF0
                priority = (2 if kind == 0x90 and message[2] > 0 else
                            1 if kind in (0x80, 0x90) else 0)
                timed.append((tick, len(timed), priority, message))
            else:
                raise BuildError(f"{name}: data byte without a status at byte {pos}")
        pos = end
    tempos.sort()
    events = []
    for tick, _, priority, message in sorted(timed):
        seconds, last_tick, last_tempo = 0.0, 0, tempos[0][1]
        for change_tick, tempo in tempos[1:]:
            if change_tick > tick:
                break
            seconds += (change_tick - last_tick) * last_tempo / division / 1e6
            last_tick, last_tempo = change_tick, tempo
        events.append((seconds + (tick - last_tick) * last_tempo / division / 1e6, priority,
                       message))
    return events


def gm_phrase(rng: np.random.Generator, low: int, high: int, max_poly: int,
              duration: float) -> list[tuple[float, int, int, float]]:
    """Random musical notes (onset s, MIDI note, velocity, length s) within ``duration``.

    Modes: a melody (random walk), block chords, arpeggios, or one or two sustained notes;
    tempo, articulation, register and dynamics vary per phrase.
    """
    if low == high:  # a sound effect: one note, held to the end
        start = float(rng.uniform(0.0, 0.12))
        return [(start, low, int(rng.uniform(70, 127)), duration - start)]
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


def preset_source(comp: Component, groups: dict[str, Group]) -> str:
    """The SoundFont (``SOUNDFONTS`` key) or "freepats" of the preset ``gm_events`` picks."""
    group = groups[comp.groups[0]]
    member = group.members[int(np.random.default_rng(comp.seed).integers(
        0, len(group.members)))]
    return member.key.split(":")[0]


def write_freepats_config(programs: set[int], path: Path) -> None:
    """A TiMidity++ configuration naming the freepats patch of each GM program played.

    TiMidity++ also reads its system configuration, but the programs named here take
    precedence over it, and only these programs are played."""
    path.write_text(f"dir {FREEPATS_DIR}\nbank 0\n" + "".join(
        f"{p} Tone_000/{freepats_patch(p).name}\n" for p in sorted(programs)))


def render_command(font: str, mid: Path, wav: Path, tmp: Path,
                   rate: int = SAMPLE_RATE) -> list[str]:
    """The command that renders ``mid`` to ``wav`` at ``rate`` Hz with a SoundFont, or with
    the freepats (configured by ``write_freepats_config`` in ``tmp``)."""
    if font == "freepats":
        return ["timidity", "-c", str(tmp / "freepats.cfg"), "-Ow", "--output-mono", "-s",
                str(rate), "--preserve-silence", "-EFreverb=d", "-EFchorus=d",
                "-o", str(wav), str(mid)]
    return ["fluidsynth", "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", "0.4",
            "-r", str(rate), "-O", "float", "-T", "wav", "-F", str(wav),
            "-o", "synth.cpu-cores=1", str(SOUNDFONTS[font][1]), str(mid)]


def render_fluidsynth(components: list[Component], groups: dict[str, Group], workers: int,
                      tmp: Path) -> None:
    """Render all preset components (in chunks, in parallel): SoundFonts with FluidSynth,
    freepats patches with TiMidity++."""
    by_font: dict[str, list[Component]] = defaultdict(list)
    for comp in components:
        by_font[preset_source(comp, groups)].append(comp)
    if "freepats" in by_font:
        write_freepats_config({int(m.key.split("-")[1]) for g in groups.values()
                               for m in g.members if m.key.startswith("freepats:")},
                              tmp / "freepats.cfg")
    chunks = [(font, comps[i:i + SLOTS_PER_RENDER]) for font, comps in sorted(by_font.items())
              for i in range(0, len(comps), SLOTS_PER_RENDER)]

    def render(chunk_index: int) -> None:
        font, chunk = chunks[chunk_index]
        events, starts, t = [], [], 0.0
        for comp in chunk:
            starts.append(t)
            events += [(t + et, prio, msg) for et, prio, msg in gm_events(comp, groups)]
            t += comp.duration + SLOT_GAP_S
        events.append((t, 3, bytes([0xB0, 121, 0])))  # keeps the file running to the end
        mid, wav = tmp / f"chunk{chunk_index:04d}.mid", tmp / f"chunk{chunk_index:04d}.wav"
        write_midi(mid, events)
        cmd = render_command(font, mid, wav, tmp)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wav.exists():
            raise BuildError(f"{cmd[0]} failed ({' '.join(cmd)}): {result.stderr[-2000:]}")
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
