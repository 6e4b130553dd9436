"""`keras-dae listen` and `keras_dae.microphone`: PortAudio capturing a real recording.

There is no sound card here, so the tests give PortAudio one through ALSA: a configuration of
their own (ALSA_CONFIG_PATH, in the test's tmp dir) defines a capture device whose samples
ALSA's `file` plugin reads from a named pipe the test writes a recording to (float32, the
format PortAudio asks for, so that no conversion plugin sits in between). PortAudio reads the
ALSA configuration when it loads, so each capture runs in a process of its own, as the command
line does. A machine without sounddevice, the PortAudio library or ALSA skips those tests,
saying which; the queue between PortAudio's thread and the reader is tested without them too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import load_recording

from keras_dae.validation import InputError

# The microphone is no Keras code, and the model's events do not depend on the backend
# (test_cross_backend): tests/run.sh runs these once, in TensorFlow's run. (In PyTorch's run,
# beside the two others, the command test took 213 s in one timed run, against 70-90 s here.)
pytestmark = pytest.mark.one_backend("tensorflow")

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "kdae_test_mic"
BLOCK_SECONDS = 0.1  # microphone_blocks' default


def alsa_config(tmp_path: Path, infile: Path) -> Path:
    """An ALSA configuration with one capture device, `kdae_test_mic`, also named `default`
    (PortAudio 19.6 aborts on an ALSA device list without a `default`), reading `infile`."""
    device = (f'{{ type file; slave.pcm {{ type null }}; file "/dev/null"; infile "{infile}"; '
              'format "raw" }')
    path = tmp_path / "asound.conf"
    path.write_text(f"pcm.{DEVICE} {device}\npcm.default {device}\n")
    return path


def run_python(code: str, config: Path | None, *args, timeout=120, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if config is not None:
        env["ALSA_CONFIG_PATH"] = str(config)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def listen(config: Path | None, *args, timeout=120):
    """`keras-dae listen ARGS` in a process of its own, under the ALSA configuration `config`."""
    code = "import sys\nfrom keras_dae.cli import main\nsys.exit(main(sys.argv[1:]))"
    return run_python(code, config, "listen", *args, timeout=timeout)


_PROBE = """
import json, sys
import sounddevice as sd
print(json.dumps({"hostapis": [api["name"] for api in sd.query_hostapis()],
                  "rate": sd.query_devices(sys.argv[1])["default_samplerate"]}))
"""


@pytest.fixture(scope="module")
def device_rate(tmp_path_factory) -> int:
    """The test device's default sample rate, once PortAudio is seen to list it; else skip,
    naming what is missing."""
    if sys.platform != "linux" or not hasattr(os, "mkfifo"):
        pytest.skip("the test microphone is an ALSA device: Linux only")
    tmp = tmp_path_factory.mktemp("alsa_probe")
    (tmp / "silence.raw").write_bytes(bytes(4096))
    probe = run_python(_PROBE, alsa_config(tmp, tmp / "silence.raw"), DEVICE, timeout=60)
    if "No module named 'sounddevice'" in probe.stderr:
        pytest.skip('sounddevice is not installed (pip install "keras-dae[listen]")')
    if "PortAudio library not found" in probe.stderr:
        pytest.skip("the PortAudio library is not installed (apt install libportaudio2)")
    if probe.returncode != 0:
        pytest.skip(f"PortAudio does not list the test's ALSA device: {probe.stderr[-300:]}")
    found = json.loads(probe.stdout)
    if "ALSA" not in found["hostapis"]:
        pytest.skip(f"this PortAudio has no ALSA host API (only {found['hostapis']})")
    return int(round(found["rate"]))


class PipeMicrophone:
    """The test device, fed through a named pipe: what `fill` writes is what it records, as
    `channels` float32 samples a frame.

    ALSA's file plugin reads the pipe as fast as it can, in pieces of its own size, and takes a
    short read for a whole piece: so the whole recording waits in the pipe before the device
    opens, and once it is read the device has nothing more to say (it stalls)."""

    def __init__(self, tmp_path: Path):
        import fcntl

        self.fifo = tmp_path / "microphone.fifo"
        os.mkfifo(self.fifo)
        self.config = alsa_config(tmp_path, self.fifo)
        # Held open for reading and writing: the device opens without waiting for a writer,
        # and reading the empty pipe waits, as a microphone between two blocks, for ever.
        self.fd = os.open(self.fifo, os.O_RDWR)
        self.size = fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, 1 << 20)

    def fill(self, frames: np.ndarray) -> None:
        data = np.ascontiguousarray(frames, "<f4").tobytes()
        assert len(data) <= self.size, "the recording does not fit in the pipe"
        assert os.write(self.fd, data) == len(data)

    def close(self) -> None:
        os.close(self.fd)


def whole_blocks(audio: np.ndarray, rate: int) -> np.ndarray:
    block = int(round(BLOCK_SECONDS * rate))
    return np.pad(audio, [(0, -len(audio) % block)] + [(0, 0)] * (audio.ndim - 1))


_RECORD = textwrap.dedent("""
    import json, sys, time, warnings
    import numpy as np
    from keras_dae.microphone import microphone_blocks
    from keras_dae.validation import InputError

    out, device, channels, stall, buffer_seconds, pause, limit = json.loads(sys.argv[1])
    rate, blocks = microphone_blocks(device, channels=channels, stall_seconds=stall,
                                     buffer_seconds=buffer_seconds)
    got, error = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for block in blocks:
                got.append(block)
                time.sleep(pause)
                if len(got) == limit:
                    break
        except InputError as refusal:
            error = str(refusal)
        blocks.close()
    np.save(out, np.concatenate(got))
    print(json.dumps({"rate": rate, "error": error, "sizes": [b.size for b in got],
                      "dtypes": sorted({str(b.dtype) for b in got}),
                      "warnings": [str(w.message) for w in caught]}))
""")


def record(config, out, device, channels, stall=5.0, buffer_seconds=30.0, pause=0.0,
           limit=10_000):
    done = run_python(_RECORD, config, json.dumps([str(out), device, channels, stall,
                                                   buffer_seconds, pause, limit]), timeout=90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), np.load(out)


def stereo_recording(rate: int) -> np.ndarray:
    """Speech on the left, the same speech backwards and quieter on the right."""
    speech = load_recording("speech_front_center.wav", rate) * 0.9
    return whole_blocks(np.stack([speech, 0.5 * speech[::-1]], axis=1), rate)


def test_microphone_blocks_are_the_recording_until_the_device_stalls(device_rate, tmp_path):
    """A stereo recording through PortAudio: the blocks are its frames averaged to mono,
    bit for bit, in blocks of 0.1 s at the device's rate; when the pipe runs dry the iterator
    refuses, naming the device, and the process ends though PortAudio's thread still waits."""
    mic = PipeMicrophone(tmp_path)
    try:
        frames = stereo_recording(device_rate)
        mic.fill(frames)
        start = time.monotonic()
        found, got = record(mic.config, tmp_path / "got.npy", "KDAE_TEST", 2, stall=1.0)
    finally:
        mic.close()
    assert found["rate"] == device_rate
    assert found["dtypes"] == ["float32"]
    assert set(found["sizes"]) == {int(round(BLOCK_SECONDS * device_rate))}
    np.testing.assert_array_equal(got, frames.mean(axis=1, dtype=np.float32))
    assert found["error"] == (f"input device '{DEVICE}': no audio for 1 s (disconnected, or "
                              "stopped?)")
    assert found["warnings"] == []
    assert time.monotonic() - start < 60


def test_a_reader_too_slow_drops_audio_with_a_warning(device_rate, tmp_path):
    """A device that delivers faster than the blocks are read (a plain file: no waiting),
    into a queue of 0.3 s: the first blocks are the recording's, later ones are dropped and
    said in a warning naming the device, and nothing fails."""
    frames = stereo_recording(device_rate)
    (tmp_path / "recording.raw").write_bytes(np.ascontiguousarray(frames, "<f4").tobytes())
    config = alsa_config(tmp_path, tmp_path / "recording.raw")
    found, got = record(config, tmp_path / "got.npy", DEVICE, 2, buffer_seconds=0.3,
                        pause=0.2, limit=6)
    assert found["error"] is None and len(found["sizes"]) == 6
    block = found["sizes"][0]
    np.testing.assert_array_equal(got[:3 * block],
                                  frames[:3 * block].mean(axis=1, dtype=np.float32))
    assert found["warnings"], "no warning of the dropped audio"
    assert all(w.startswith(f"input device '{DEVICE}': ") and "s of audio dropped" in w
               for w in found["warnings"])
    assert len(found["warnings"]) == 1  # at most one every WARN_EVERY (5) seconds


def test_list_devices_and_refusals(device_rate, tmp_path):
    """--list-devices lists the test device (the default, marked *) with its rate; a device
    that is not there, or no input device at all, is one line and exit status 2, before any
    model loads."""
    (tmp_path / "silence.raw").write_bytes(bytes(4096))
    config = alsa_config(tmp_path, tmp_path / "silence.raw")
    shown = listen(config, "--list-devices")
    assert shown.returncode == 0, shown.stderr
    assert f"{DEVICE} (ALSA): " in shown.stdout and f"{device_rate} Hz" in shown.stdout
    assert any(line.startswith("*") and "default" in line for line in shown.stdout.splitlines())

    missing = listen(config, "--device", "usb headset")
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: no input device 'usb headset': the input devices "
                                     f"are 0 '{DEVICE}', 1 'default'")
    too_many = listen(config, "--device", DEVICE, "--channels", "999")
    assert too_many.returncode == 2 and f"'{DEVICE}' has 128 input channel(s), not 999" in \
        too_many.stderr

    # ALSA with no card: its default device names one that is not there.
    none = tmp_path / "none.conf"
    none.write_text("pcm.default { type hw; card 7 }\n")
    nothing = listen(none)
    assert nothing.returncode == 2
    assert nothing.stderr == ("error: no input device: PortAudio finds no microphone on this "
                              "machine\n")
    assert listen(none, "--list-devices").stdout == ("no input device: PortAudio finds no "
                                                    "microphone on this machine\n")


def test_without_sounddevice_the_refusal_says_what_to_install():
    """sounddevice missing (its import refused) or the PortAudio library missing (sounddevice
    cannot find it): exit status 2 and how to install them, with no traceback."""
    blocked = run_python("import sys\nsys.modules['sounddevice'] = None\n"
                         "from keras_dae.cli import main\nsys.exit(main(['listen']))", None)
    assert blocked.returncode == 2
    assert blocked.stderr == ('error: listening to a microphone needs sounddevice, not '
                              'installed: pip install "keras-dae[listen]" (and on Debian or '
                              'Ubuntu, apt install libportaudio2)\n')


def test_without_portaudio_the_refusal_says_what_to_install(device_rate):
    no_library = run_python("import ctypes.util, sys\n"
                            "ctypes.util.find_library = lambda name: None\n"
                            "from keras_dae.cli import main\nsys.exit(main(['listen']))", None)
    assert no_library.returncode == 2, no_library.stderr
    assert no_library.stderr.startswith("error: listening to a microphone needs the PortAudio "
                                        "library (")
    assert 'pip install "keras-dae[listen]"' in no_library.stderr
    assert "apt install libportaudio2" in no_library.stderr
    assert "Traceback" not in no_library.stderr


# -- the command line on a recording: its events are StreamTagger's on the same audio ----------

# `keras-dae listen` with Ctrl-C raising KeyboardInterrupt even where this process ignores
# SIGINT (a background job of a non-interactive shell, as tests/run.sh starts them).
_LISTEN = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from keras_dae.cli import main
    sys.exit(main(["listen", *sys.argv[1:]]))
""")


def test_listen_prints_the_events_of_what_the_microphone_hears(device_rate, tmp_path):
    """Speech then a guitar, then silence, recorded from the default device at 16 kHz: `listen
    --json` prints StreamTagger's updates on the same audio (in blocks of 0.1 s) as they
    happen, the same events within one hop; Ctrl-C ends it with status 130, no traceback."""
    from keras_dae.audio import load_audio
    from keras_dae.data import demo_clips
    from keras_dae.events import EventOptions
    from keras_dae.inference import Tagger
    from keras_dae.streaming import StreamTagger

    rate, block = 16000, 1600
    audio = np.concatenate([load_recording("speech_front_center.wav", rate),
                            load_audio(demo_clips()[1], rate), np.zeros(2 * rate)]) * 0.9
    audio = whole_blocks(audio.astype(np.float32), rate)
    stream = StreamTagger(Tagger("diverse_sampled15", hop_seconds=0.25, batch_size=8),
                          input_rate=rate,
                          options=EventOptions(on=0.3, off=0.3).thresholds_only())
    expected = [u for start in range(0, audio.size, block)
                for u in stream.feed(audio[start:start + block])]
    assert not stream.close(), "an event still open at the recording's end"
    assert {u.label for u in expected} >= {"Speech", "Guitar"}

    mic = PipeMicrophone(tmp_path)
    mic.fill(audio)  # 16 kHz mono: 9 s fit in the pipe
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALSA_CONFIG_PATH": str(mic.config)}
    proc = subprocess.Popen([sys.executable, "-c", _LISTEN, "--json", "--rate", str(rate),
                             "--batch-size", "8", "--model", "diverse_sampled15", "--on", "0.3",
                             "--off", "0.3", "--median", "0", "--min-gap", "0",
                             "--min-duration", "0"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, errors = [], []
    readers = [threading.Thread(target=lambda f=f, out=out: out.extend(f), daemon=True)
               for f, out in ((proc.stdout, lines), (proc.stderr, errors))]
    try:
        for thread in readers:
            thread.start()
        deadline = time.monotonic() + 300
        while len(lines) < len(expected) and proc.poll() is None:
            assert time.monotonic() < deadline, f"got {lines}, stderr {errors}"
            time.sleep(0.1)
        time.sleep(1.0)  # nothing more comes of the silence (the device stalls after 5 s)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
        mic.close()
        for thread in readers:
            thread.join(10)
    err = "".join(errors)
    assert rc == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    got = [json.loads(line) for line in lines]
    assert [(u["kind"], u["label"]) for u in got] == [(u.kind, u.label) for u in expected]
    np.testing.assert_allclose([u["time"] for u in got], [u.time for u in expected], atol=0.25)


# -- the queue between PortAudio's thread and the reader, without PortAudio ---------------------


def test_the_queue_hands_on_mono_blocks_warns_of_dropped_ones_and_notices_a_stall():
    """`_Recorder` driven as PortAudio drives it, from a thread of its own, with a real
    recording's stereo blocks: mono float32 out (the channels' mean), the blocks that found the
    queue full dropped and said once in a warning (with PortAudio's input overflows), and an
    `InputError` naming the device once no block came for `stall_seconds`."""
    from keras_dae.microphone import _Recorder

    rate, block = 16000, 1600
    speech = load_recording("speech_front_center.wav", rate)
    frames = whole_blocks(np.stack([speech, -0.5 * speech], axis=1), rate).astype(np.float32)
    blocks = [frames[i:i + block] for i in range(0, len(frames), block)]
    recorder = _Recorder("USB mic", rate, max_blocks=4)
    ok, overflow = types.SimpleNamespace(input_overflow=False), types.SimpleNamespace(
        input_overflow=True)

    def portaudio(chunks, status=ok):
        for chunk in chunks:
            recorder.callback(chunk, len(chunk), None, status)

    feeder = threading.Thread(target=portaudio, args=(blocks[:6],))
    feeder.start()
    feeder.join()  # 6 blocks into a queue of 4: the last 2 dropped
    portaudio(blocks[6:7], overflow)  # dropped too, and an overflow
    reader = recorder.blocks(stall_seconds=0.5)
    with pytest.warns(RuntimeWarning) as caught:
        got = [next(reader) for _ in range(4)]
    assert [str(w.message) for w in caught] == [
        "input device 'USB mic': 0.30 s of audio dropped (tagging is slower than the audio "
        "arrives); 1 input overflow(s) (audio lost by the device) so far"]
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in got)
    np.testing.assert_array_equal(np.concatenate(got),
                                  frames[:4 * block].mean(axis=1, dtype=np.float32))
    threading.Thread(target=portaudio, args=(blocks[7:9],)).start()
    np.testing.assert_array_equal(next(reader), blocks[7].mean(axis=1, dtype=np.float32))
    next(reader)
    start = time.monotonic()
    with pytest.raises(InputError, match=r"^input device 'USB mic': no audio for 0.5 s"):
        next(reader)
    assert 0.5 <= time.monotonic() - start < 5
    mono = _Recorder("mono", rate, max_blocks=2)
    mono.callback(frames[:block, :1], block, None, ok)
    np.testing.assert_array_equal(next(mono.blocks(1.0)), frames[:block, 0])
    mono.finished.set()  # PortAudio ended the stream (a device unplugged)
    with pytest.raises(InputError, match="input device 'mono' stopped"):
        next(mono.blocks(1.0))
