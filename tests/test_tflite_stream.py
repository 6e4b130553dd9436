"""`tflite/classify.py --stream -`: standard input tagged live by a TFLite file with LiteRT alone.

The shipped `diverse_sampled15`, exported to float32 TFLite once for the module, tags real
recordings (speech, then a guitar chord) piped into the script as WAV (header sizes 0 and
0xFFFFFFFF, as a pipe's writer leaves them) and as raw PCM. Its events are compared with
`keras_dae.streaming.StreamTagger` driven by the Keras model on the same samples at the same
rate. Every run of the script is in a process where importing `tensorflow`, `keras` or
`keras_dae` fails. The comparison is numpy over model outputs whose backends agree
(tests/test_cross_backend.py), so it runs under one backend; exporting needs TensorFlow.
"""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import load_recording

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tflite" / "classify.py"
SR = 16000
HOP = 0.25
ON, OFF = 0.5, 0.3

# Run once, in TensorFlow's run: the export then needs no worker process.
pytestmark = [
    pytest.mark.one_backend("tensorflow"),
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                       or importlib.util.find_spec("ai_edge_litert") is None,
                       reason="exporting needs TensorFlow, and running the file LiteRT"),
]

# The script in a process where TensorFlow, Keras and keras-dae cannot be imported, with
# Ctrl-C raising KeyboardInterrupt even where the test's own process ignores SIGINT (a
# background job of a non-interactive shell, as tests/run.sh starts them).
_RUNNER = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
for name in ("tensorflow", "keras", "keras_dae", "jax", "torch"):
    sys.modules[name] = None
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
""".format(script=str(SCRIPT))


def command(model, *args) -> list[str]:
    return [sys.executable, "-c", _RUNNER, str(model), "--stream", "-", *args]


def run(model, data: bytes, *args) -> subprocess.CompletedProcess:
    return subprocess.run(command(model, *args), input=data, capture_output=True, timeout=120,
                          check=False)


def wav_bytes(audio: np.ndarray, rate: int, subtype="PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def piped(wav: bytes, sizes: int) -> bytes:
    """`wav` with its RIFF and data sizes `sizes` (0, 0xFFFFFFFF), as a writer into a pipe
    leaves them: the script must read the audio to the stream's end."""
    data = bytearray(wav)
    data[4:8] = sizes.to_bytes(4, "little")
    at = data.index(b"data")
    data[at + 4:at + 8] = sizes.to_bytes(4, "little")
    return bytes(data)


def decoded(wav: bytes) -> np.ndarray:
    """The samples a WAV holds, as float32 (16-bit PCM / 32768, what the script reads)."""
    return soundfile.read(io.BytesIO(wav), dtype="float32")[0]


def updates_of(proc) -> list[tuple]:
    """`(kind, time, label, score)` of the script's JSON lines."""
    assert proc.returncode == 0, proc.stderr.decode()
    return [tuple(json.loads(line).values()) for line in proc.stdout.decode().splitlines()]


def library_updates(tagger, audio: np.ndarray, rate: int) -> list[tuple]:
    """The same, from keras_dae.streaming.StreamTagger on the Keras model (0.1 s blocks)."""
    from keras_dae.events import EventOptions
    from keras_dae.streaming import StreamTagger

    stream = StreamTagger(tagger, input_rate=rate, options=EventOptions(on=ON, off=OFF).thresholds_only())
    blocks = (audio[i:i + rate // 10] for i in range(0, len(audio), rate // 10))
    return [(u.kind, u.time, u.label, u.score) for u in stream.run(blocks)]


def unscored(lines) -> list[str]:
    """Text lines without their scores (TFLite's and Keras' differ in float rounding)."""
    return [line.rsplit(" (", 1)[0] for line in lines]


def events(updates) -> list[tuple]:
    """`(label, onset, offset)` of each event, by label and onset."""
    open_, done = {}, []
    for kind, time, label, _ in updates:
        if kind == "onset":
            assert label not in open_
            open_[label] = time
        else:
            done.append((label, open_.pop(label), time))
    assert not open_, f"events left open: {open_}"
    return sorted(done)


@pytest.fixture(scope="module")
def model():
    from keras_dae import zoo

    return zoo.load("diverse_sampled15")


@pytest.fixture(scope="module")
def tflite(model, tmp_path_factory) -> Path:
    from keras_dae import export

    path = tmp_path_factory.mktemp("stream") / "shipped.tflite"
    # No export check: every test below compares the file's events with the Keras model's.
    export.export(model, path, "tflite", check=False)
    return path


@pytest.fixture(scope="module")
def tagger(model):
    from keras_dae.inference import Tagger

    return Tagger(model, hop_seconds=HOP, batch_size=8)


@pytest.fixture(scope="module")
def speech_then_guitar() -> np.ndarray:
    """A real recording at 16 kHz: speech (1.4 s), then a guitar chord (5 s)."""
    from keras_dae.audio import load_audio
    from keras_dae.data import demo_clips

    guitar = load_audio(next(c for c in demo_clips() if "guitar" in c.name), SR)
    return np.concatenate([load_recording("speech_front_center.wav"), guitar])


def test_resampling_carries_across_blocks():
    """Resampled block by block, a stream is what the file path's `load_mono` makes of the
    whole (the same linear interpolation; no click at block edges), down and up."""
    sys.path.insert(0, str(REPO / "tflite"))
    try:
        import classify
    finally:
        sys.path.pop(0)
    audio = load_recording("speech_front_center.wav", 44100)
    for rate_in, rate_out in ((44100, SR), (SR, 44100), (48000, SR)):
        x = audio[: 3 * rate_in // 2]
        n = round(len(x) * rate_out / rate_in)
        whole = np.interp(np.arange(n) * (rate_in / rate_out), np.arange(len(x)), x)
        resample = classify.LinearResampler(rate_in, rate_out)
        cuts = np.cumsum(np.random.default_rng(0).integers(1, 3000, 100))
        parts = [resample(block) for block in np.split(x, cuts[cuts < len(x)])]
        got = np.concatenate([*parts, resample.flush()])
        assert got.shape == (n,)
        np.testing.assert_allclose(got, whole, atol=1e-6)


def test_stream_at_the_models_rate_gives_the_librarys_events(tflite, tagger, speech_then_guitar):
    """16 kHz WAV (header sizes 0): no resampling on either side, so the events are the
    library's: same windows and times (to the millisecond JSON rounds them to); scores
    differ by TFLite's float rounding (float32 exports are held to 1e-3)."""
    wav = wav_bytes(speech_then_guitar, SR)
    got = updates_of(run(tflite, piped(wav, 0), "--on", str(ON), "--off", str(OFF), "--json"))
    want = library_updates(tagger, decoded(wav), SR)
    assert {label for label, *_ in events(want)} >= {"Speech", "Guitar"}
    assert [(k, t, label) for k, t, label, _ in got] == [
        (k, pytest.approx(t, abs=5e-4), label) for k, t, label, _ in want]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], atol=1e-3)
    assert got[0][:3] == ("onset", 0.0, "Speech")
    assert got[-1][1] == pytest.approx(len(speech_then_guitar) / SR, abs=1e-3)  # the end

    # The text lines: EventUpdate.to_text's format, flushed line by line.
    from keras_dae.streaming import EventUpdate

    proc = run(tflite, piped(wav, 0), "--on", str(ON), "--off", str(OFF))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [EventUpdate(*u).to_text() for u in got]


def test_stream_at_another_rate_agrees_within_a_hop(tflite, tagger, speech_then_guitar):
    """44.1 kHz, as WAV (sizes 0xFFFFFFFF), raw 16-bit PCM (--rate) and raw float stereo:
    the three give the same lines, and the events of the library at 44.1 kHz.

    Tolerance: same labels, the same number of events of each, every onset and offset within
    one hop (0.25 s). The script resamples by linear interpolation and the library with soxr's
    low-pass filter (the model was trained on soxr's output), which moves scores by up to
    0.03 here; a score that close to a threshold crosses it one window earlier or later,
    moving that edge by one hop. The recording is the 16 kHz one at 44.1 kHz (soxr), so it
    has nothing above the model's 8 kHz: above that, linear interpolation aliases, and a
    window where speech gives way to the guitar moved by up to 0.46 (Speech 0.45 -> 0.06, a
    spurious Drum_kit 0.52), as it does with soxr's own cubic "QQ" quality (0.47).
    """
    import soxr

    wav = wav_bytes(soxr.resample(speech_then_guitar, SR, 44100, quality="HQ"), 44100)
    audio = decoded(wav)
    options = ("--on", str(ON), "--off", str(OFF), "--json")
    proc = run(tflite, piped(wav, 0xFFFFFFFF), *options)
    got = updates_of(proc)
    want = events(library_updates(tagger, audio, 44100))
    assert {label for label, *_ in want} >= {"Speech", "Guitar"}
    found = events(got)
    assert [label for label, *_ in found] == [label for label, *_ in want]
    for (label, onset, offset), (_, onset_want, offset_want) in zip(found, want, strict=True):
        assert abs(onset - onset_want) <= HOP + 1e-9, (label, onset, onset_want)
        assert abs(offset - offset_want) <= HOP + 1e-9, (label, offset, offset_want)

    pcm = (audio * 32768).astype("<i2").tobytes()
    raw = run(tflite, pcm, "--rate", "44100", *options)
    assert raw.returncode == 0 and raw.stdout == proc.stdout, raw.stderr.decode()
    stereo = np.repeat(audio, 2).astype("<f4").tobytes()
    raw = run(tflite, stereo, "--rate", "44100", "--channels", "2", "--sample-format", "f32le",
              *options)
    assert raw.returncode == 0 and raw.stdout == proc.stdout, raw.stderr.decode()


def test_a_stream_shorter_than_a_window_is_tiled(tflite, tagger, speech_then_guitar):
    audio = decoded(wav_bytes(speech_then_guitar[: SR * 6 // 10], SR))
    pcm = (audio * 32768).astype("<i2").tobytes()
    got = updates_of(run(tflite, pcm, "--rate", str(SR), "--on", str(ON), "--off", str(OFF),
                         "--json"))
    want = library_updates(tagger, audio, SR)
    assert ("offset", 0.6, "Speech") in [u[:3] for u in want]  # at the stream's end
    assert [u[:3] for u in got] == [u[:3] for u in want]


def test_ctrl_c_ends_the_open_events_where_the_stream_stopped(tflite, tagger,
                                                              speech_then_guitar):
    """Raw PCM up to the end of the window of the last update in its first 3 s after which
    an event is open, the stream left open; once the script has printed those updates (so it
    has read every sample), Ctrl-C: it ends the open events there and exits with status 130."""
    from keras_dae.events import EventOptions
    from keras_dae.streaming import StreamTagger

    audio = decoded(wav_bytes(speech_then_guitar[: 3 * SR], SR))
    stream, hop, cut = StreamTagger(tagger, options=EventOptions(on=ON, off=OFF).thresholds_only()), 4000, 0
    open_labels = set()
    for end in range(SR, len(audio) + 1, hop):  # a window ends with each block
        updates = stream.feed(audio[end - hop if end > SR else 0:end])
        for u in updates:
            (open_labels.add if u.kind == "onset" else open_labels.discard)(u.label)
        if updates and open_labels:
            cut = end
    audio = audio[:cut]
    stream = StreamTagger(tagger, options=EventOptions(on=ON, off=OFF).thresholds_only())
    before, after = stream.feed(audio), stream.close()
    assert before and after
    assert all(u.kind == "offset" and u.time == cut / SR for u in after)
    proc = subprocess.Popen(command(tflite, "--rate", str(SR), "--on", str(ON), "--off",
                                    str(OFF)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        proc.stdin.write((audio * 32768).astype("<i2").tobytes())
        proc.stdin.flush()
        lines = [proc.stdout.readline().decode().rstrip("\n") for _ in before]
        assert unscored(lines) == unscored(u.to_text() for u in before)  # as they happened
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == 130, err.decode()
    assert unscored(out.decode().splitlines()) == unscored(u.to_text() for u in after)
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()


def test_a_closed_pipe_ends_quietly(tflite, speech_then_guitar):
    """The reader goes away before the first line (`| head -0`): exit 0, no traceback."""
    proc = subprocess.Popen(command(tflite), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    try:
        proc.stdin.write(wav_bytes(speech_then_guitar, SR))
        proc.stdin.close()
    except BrokenPipeError:  # it stopped reading: fine
        pass
    assert proc.wait(timeout=120) == 0
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "Error" not in err, err


def _truncated_header() -> bytes:
    return wav_bytes(np.zeros(100, np.float32), SR)[:30]


@pytest.mark.parametrize("data, args, message", [
    (b"", (), "standard input is empty"),
    (b"\x00\x01" * 8000, (), "--rate"),  # raw PCM, rate unknown
    (b"\x00\x01" * 8000, ("--rate", "16000", "--sample-format", "s24le"),
     "invalid choice: 's24le'"),
    (b"\x00\x01" * 8000, ("--rate", "0"), "--rate"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", (), "not WAVE audio"),
    ("truncated", (), "ended inside its WAV header"),
    (b"RIFF\xff\xff\xff\xffWAVEfmt \x02\x00\x00\x00\x01\x00data\xff\xff\xff\xff", (),
     "malformed WAV header"),
    (b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff\x00\x00", (), "without a fmt chunk"),
    ("24-bit", (), "24-bit samples"),
    ("header only", (), "holds no audio"),
    (b"\x00\x01" * 8000, ("--rate", "16000", "--on", "0.3", "--off", "0.5"), "--off"),
], ids=["empty", "raw-without-rate", "unknown-sample-format", "rate-0", "riff-not-wave",
        "truncated-header", "short-fmt-chunk", "no-fmt-chunk", "wav-24-bit", "no-samples",
        "off-above-on"])
def test_refusals_exit_2_naming_the_problem(tflite, data, args, message):
    if data == "truncated":
        data = _truncated_header()
    elif data == "24-bit":
        data = wav_bytes(np.zeros(SR, np.float32), SR, subtype="PCM_24")
    elif data == "header only":
        data = piped(wav_bytes(np.zeros(0, np.float32), SR), 0xFFFFFFFF)
    proc = run(tflite, data, *args)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert message in err and "Traceback" not in err, err
    assert proc.stdout == b""
