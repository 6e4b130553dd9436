"""The bad-input corpus and what keras-dae must do with each file, for every entry point.

    from bad_inputs import CASES, make_corpus, check_decoded, check_refusal

    paths = make_corpus(tmp_path)              # name -> path (copies + files made now)
    for case in CASES:                         # or in_process_cases(): see PRIVILEGED
        if case.ok:      check_decoded(case, load_audio(paths[case.name], 16000))
        else:            check_refusal(case, paths[case.name], message_of_the_refusal)

Each case is either "ok" (decoded: resampled, downmixed, padded or chunked as needed; the
table gives the length at 16 kHz and the range of the peak) or "refused" (the table gives a
phrase the one-line refusal must contain; the refusal must also name the file). The same
table serves `load_audio`, the streaming reader, the dataset loader, `evaluate`, `train`, and
(for the lead to hook in) `predict` / `embed`: an entry point given a refused file must say
so in one line naming the file, exit non-zero when it was the only file, and skip and count
it in a batch.

Committed files live in `tests/data/bad/` (written by `scripts/make_bad_audio.py`); the others
are made by `make_corpus` at test time: the 1-hour clip (only with `include_slow=True`), an
unreadable file (chmod 000), a directory named like a file, a missing file, a broken link and
a FIFO.

Root: chmod 000 does not stop root from reading. `PRIVILEGED` is true when this process reads
a chmod-000 file anyway; the "unreadable" case then cannot be refused in this process, so
`in_process_cases()` leaves it out, and `run_unprivileged` runs code in a subprocess that
drops to an unprivileged user (after its imports) so the refusal is still tested for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16000
BAD_DIR = Path(__file__).parent / "data" / "bad"
REPO = Path(__file__).resolve().parent.parent
HOUR_SECONDS = 3600.0
HOUR_RATE = 22050


@dataclass(frozen=True)
class Case:
    """One file of the corpus and the outcome it must have.

    Attributes:
        name: the case's id.
        file: its file name (in `tests/data/bad/`, or made by `make_corpus`).
        refused: a phrase of the expected one-line refusal; None when the file must decode.
        samples: ok cases: the decoded length at 16 kHz.
        peak: ok cases: (low, high) bounds of the decoded audio's largest magnitude.
        made_at_test_time: not committed; `make_corpus` makes it.
        slow: only with `make_corpus(..., include_slow=True)` (the hour).
        in_dataset: whether it can be a dataset's file (a missing file is left out by the
            dataset readers themselves, before any loader sees it).
        kind: `keras_dae.audio.problem_kind` of the refusal (the summary's word for it).
    """

    name: str
    file: str
    refused: str | None = None
    samples: int | None = None
    peak: tuple[float, float] | None = None
    made_at_test_time: bool = False
    slow: bool = False
    in_dataset: bool = True
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None


def _ok(name, file, seconds, peak, **kw):
    return Case(name, file, samples=int(round(seconds * SR)), peak=peak, **kw)


def _refused(name, file, phrase, kind, **kw):
    return Case(name, file, refused=phrase, kind=kind, **kw)


CASES: list[Case] = [
    # Broken files: refused.
    _refused("empty", "empty.wav", "empty file (0 bytes)", "empty file"),
    _refused("truncated_header", "truncated_header.wav", "truncated WAV header", "truncated"),
    _refused("truncated_body", "truncated_body.wav",
             "truncated WAV: the header announces 16000 frames, the file holds 5000",
             "truncated"),
    _refused("header_only", "header_only.wav", "contains no samples", "no samples"),
    _refused("text", "text.wav", "a text file, not audio", "not audio"),
    _refused("random_bytes", "random_bytes.wav", "not readable as audio", "not audio"),
    _refused("unsupported_container", "container.m4a",
             "unsupported format: an MP4/M4A container", "unsupported format"),
    # Samples: NaN/Inf refused (not repaired); silence, clipping, beyond full scale decoded.
    _refused("nan", "nan.wav", "NaN or infinite samples (the first at 0.250000 s)",
             "NaN or infinite samples"),
    _refused("inf", "inf.wav", "NaN or infinite samples (the first at 0.006250 s)",
             "NaN or infinite samples"),
    _ok("silence", "silence.wav", 1.0, (0.0, 0.0)),
    _ok("clipped_noise", "clipped_noise.wav", 1.0, (0.999, 1.0)),
    _ok("float_over_full_scale", "float_over_full_scale.wav", 0.5, (1.0, 1.0)),  # clipped
    # Channels, rates and sample formats: downmixed, resampled, converted.
    _ok("stereo", "stereo.wav", 0.5, (0.3, 0.4)),  # mean of 0.5 and 0.25 tones
    _ok("six_channel", "six_channel.wav", 0.5, (0.2, 0.4)),
    _ok("rate_8k", "rate_8k.wav", 0.5, (0.45, 0.55)),
    _ok("rate_44k1", "rate_44k1.wav", 0.5, (0.45, 0.55)),
    _ok("rate_96k", "rate_96k.wav", 0.5, (0.45, 0.55)),
    _ok("pcm_u8", "pcm_u8.wav", 0.5, (0.45, 0.55)),
    _ok("pcm_24", "pcm_24.wav", 0.5, (0.45, 0.55)),
    _ok("float32", "float32.wav", 0.5, (0.45, 0.55)),
    # Lengths: padded or tiled to a chunk downstream; the hour is streamed.
    _ok("one_ms", "one_ms.wav", 0.001, (0.3, 0.55)),
    _ok("tenth_second", "tenth_second.wav", 0.1, (0.45, 0.55)),
    _ok("hour", "hour.wav", HOUR_SECONDS, (0.25, 0.4), made_at_test_time=True, slow=True),
    # Names.
    _ok("spaces_in_name", "name with spaces.wav", 0.5, (0.45, 0.55)),
    _ok("non_ascii_name", "ñandú 鳥の声 – çà.wav", 0.5, (0.45, 0.55)),
    # The file system: made at test time.
    _refused("unreadable", "unreadable.wav", "permission denied", "permission denied",
             made_at_test_time=True),
    _refused("directory", "directory.wav", "is a directory", "directory",
             made_at_test_time=True),
    _refused("missing", "missing.wav", "no such file", "missing", made_at_test_time=True,
             in_dataset=False),
    _refused("broken_link", "broken_link.wav", "no such file (a broken symbolic link)",
             "missing", made_at_test_time=True, in_dataset=False),
    _refused("fifo", "fifo.wav", "not a regular file", "not a regular file",
             made_at_test_time=True),
]
BY_NAME = {case.name: case for case in CASES}


def _reads_despite_permissions() -> bool:
    """Whether this process reads a chmod-000 file (root, or CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as directory:
        probe = Path(directory) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
            return True
        except PermissionError:
            return False
        finally:
            probe.chmod(0o600)


PRIVILEGED = _reads_despite_permissions()
PRIVILEGED_REASON = ("running with root privileges: chmod 000 does not stop this process "
                     "from reading, so the unreadable case is tested by run_unprivileged")


def in_process_cases(include_slow: bool = False) -> list[Case]:
    """The cases whose outcome holds in this process (all but "unreadable" under root)."""
    return [c for c in CASES if (include_slow or not c.slow)
            and not (PRIVILEGED and c.name == "unreadable")]


def _script():
    spec = importlib.util.spec_from_file_location("make_bad_audio",
                                                  REPO / "scripts" / "make_bad_audio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_hour(path: Path) -> Path:
    """The 1-hour clip (22,050 Hz mono 16-bit WAV, 159 MB), made once per path."""
    if not path.is_file():
        _script().write_long_clip(path, HOUR_SECONDS, HOUR_RATE)
    return path


def make_corpus(directory: Path, include_slow: bool = False,
                cases: list[Case] | None = None) -> dict[str, Path]:
    """Puts every case's file in `directory` (copies of the committed ones, the others made
    now, world-readable directory so an unprivileged subprocess can use it); returns
    name -> path. The hour only with `include_slow`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)
    paths = {}
    for case in cases or CASES:
        if case.slow and not include_slow:
            continue
        path = directory / case.file
        paths[case.name] = path
        if path.exists() or path.is_symlink():
            continue
        if not case.made_at_test_time:
            shutil.copyfile(BAD_DIR / case.file, path)
            path.chmod(0o644)
        elif case.name == "hour":
            write_hour(path)
        elif case.name == "unreadable":
            shutil.copyfile(BAD_DIR / "tenth_second.wav", path)
            path.chmod(0)
        elif case.name == "directory":
            path.mkdir()
        elif case.name == "broken_link":
            path.symlink_to(directory / "nothing-here.wav")
        elif case.name == "fifo":
            os.mkfifo(path)
        elif case.name != "missing":
            raise AssertionError(f"no recipe for {case.name}")
    return paths


def check_decoded(case: Case, waveform: np.ndarray) -> None:
    """Asserts an ok case's decoded 16 kHz waveform: mono float32, length, finite, peak."""
    assert case.ok, case
    waveform = np.asarray(waveform)
    assert waveform.dtype == np.float32 and waveform.ndim == 1, (case.name, waveform.shape)
    assert waveform.size == case.samples, (case.name, waveform.size, case.samples)
    assert np.isfinite(waveform).all(), case.name
    peak = float(np.abs(waveform).max())
    low, high = case.peak
    assert low <= peak <= high, (case.name, peak, case.peak)


def check_refusal(case: Case, path: Path, message: str) -> None:
    """Asserts a refused case's message: one line, names the file, says the problem."""
    assert not case.ok, case
    message = str(message)
    assert "\n" not in message.strip(), f"{case.name}: not one line: {message!r}"
    assert str(path) in message or path.name in message, f"{case.name}: no file: {message!r}"
    assert case.refused in message, f"{case.name}: {case.refused!r} not in {message!r}"
    assert "Traceback" not in message


def run_unprivileged(code: str, timeout: float = 600.0, **env) -> subprocess.CompletedProcess:
    """Runs `code` in a Python subprocess that first executes its own lines up to the line
    `# --- drop privileges ---` (imports, warm-up), then switches to uid/gid 65534 (nobody)
    when running as root, then runs the rest. Returns the completed process (text output).

    Only meaningful when `PRIVILEGED`; raises RuntimeError when the switch is impossible.
    """
    marker = "# --- drop privileges ---"
    if marker not in code:
        raise ValueError(f"code must hold the line {marker!r}")
    before, after = code.split(marker, 1)
    program = (before + "\nimport os\nif os.getuid() == 0:\n    os.setgroups([])\n"
               "    os.setgid(65534)\n    os.setuid(65534)\n" + after)
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def json_line(text: str) -> dict:
    """The last line of `text` that is a JSON object (for subprocess results)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in {text[-2000:]!r}")
