"""The microphone as a stream of audio blocks, for `keras_dae.streaming.StreamTagger`.

    from keras_dae.inference import Tagger
    from keras_dae.microphone import microphone_blocks
    from keras_dae.streaming import StreamTagger

    rate, blocks = microphone_blocks()            # the default input, at the device's own rate
    for update in StreamTagger(Tagger(hop_seconds=0.25), rate).run(blocks):
        print(update.to_text())                   # until Ctrl-C, which ends the open events

Audio is recorded through PortAudio, with the `sounddevice` package: `pip install
"keras-dae[listen]"`, and the PortAudio library itself where the system does not have it
(`apt install libportaudio2` on Debian and Ubuntu). PortAudio's thread copies each block into
a bounded queue and the iterator hands the blocks on as mono float32 (channels averaged), so
a model slower than the audio costs dropped audio, reported as a warning, and never memory.

What goes wrong is refused with an `InputError` naming the device: sounddevice or PortAudio
missing, no input device (or none matching the one asked for), settings the device refuses,
and a device that disappears or stops delivering audio for `stall_seconds`.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
import warnings
from collections.abc import Iterator

import numpy as np

from keras_dae.validation import InputError, check, positive_int

__all__ = ["FLAGS", "devices_table", "input_device", "input_devices", "microphone_blocks"]

INSTALL_HINT = ('pip install "keras-dae[listen]" (and on Debian or Ubuntu, apt install '
                "libportaudio2)")
WARN_EVERY = 5.0  # seconds between two warnings of dropped audio
CLOSE_WAIT = 2.0  # seconds to wait for a stream to close


def _sounddevice():
    """The `sounddevice` module, or an `InputError` that says how to install it."""
    try:
        import sounddevice
    except ImportError:
        raise InputError(f"listening to a microphone needs sounddevice, not installed: "
                         f"{INSTALL_HINT}") from None
    except OSError as error:  # sounddevice is there, the PortAudio library is not
        raise InputError(f"listening to a microphone needs the PortAudio library ({error}): "
                         f"{INSTALL_HINT}") from None
    return sounddevice


def input_devices() -> list[dict]:
    """PortAudio's input devices: `index`, `name`, `hostapi` (its name), `channels` (inputs),
    `rate` (the default sample rate, Hz) and `default` (the system's default input)."""
    sd = _sounddevice()
    try:
        default = sd.query_devices(kind="input")["index"]  # sounddevice's default, else PortAudio's
    except (sd.PortAudioError, ValueError):
        default = -1  # no default input
    apis = sd.query_hostapis()
    return [{"index": info["index"], "name": info["name"],
             "hostapi": apis[info["hostapi"]]["name"], "channels": info["max_input_channels"],
             "rate": int(round(info["default_samplerate"])), "default": info["index"] == default}
            for info in sd.query_devices() if info["max_input_channels"] > 0]


def devices_table() -> str:
    """The input devices, a line each, the default one marked `*`; or a line saying none."""
    devices = input_devices()
    if not devices:
        return "no input device: PortAudio finds no microphone on this machine"
    return "\n".join(f"{'*' if d['default'] else ' '} {d['index']:>2}  {d['name']} "
                     f"({d['hostapi']}): {d['channels']} channel{'s' * (d['channels'] != 1)}, "
                     f"{d['rate']} Hz" for d in devices)


def input_device(device: int | str | None = None) -> dict:
    """The input device `device` (an `input_devices` entry): the default input for None, the
    device of that index for a number, else the one whose name is `device` or holds it
    (case ignored). Refused (`InputError`) when there is none, or when several match."""
    devices = input_devices()
    if not devices:
        raise InputError("no input device: PortAudio finds no microphone on this machine")
    names = ", ".join(f"{d['index']} {d['name']!r}" for d in devices)
    if device is None:
        found = [d for d in devices if d["default"]] or devices[:1]
    elif isinstance(device, int) or str(device).strip().isdigit():
        found = [d for d in devices if d["index"] == int(device)]
    else:
        wanted = str(device).strip().lower()
        found = ([d for d in devices if d["name"].lower() == wanted]
                 or [d for d in devices if wanted in d["name"].lower()])
    if not found:
        raise InputError(f"no input device {device!r}: the input devices are {names}")
    if len(found) > 1:
        raise InputError(f"input device {device!r} is ambiguous: it matches "
                         f"{', '.join(repr(d['name']) for d in found)}")
    return found[0]


class _ListDevices(argparse.Action):
    """`--list-devices`: prints `devices_table()` and exits, as `--help` does (a refusal:
    `error: ...`, exit status 2)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            print(devices_table())
        except InputError as error:
            parser.exit(2, f"error: {error}\n")
        parser.exit(0)


# The flags of `keras-dae listen` that choose the microphone and how it records (the events'
# flags are `keras_dae.streaming.FLAGS`): (flag, argparse options).
FLAGS = (
    ("--device", {"help": "input device: its index, or a part of its name (default: the "
                  "system's default input; see --list-devices)"}),
    ("--list-devices", {"action": _ListDevices, "help": "list the input devices, then exit"}),
    ("--rate", {"type": positive_int, "help": "sample rate to record at (default: the "
                "device's; the model's rate is reached by resampling)"}),
    ("--channels", {"type": positive_int, "default": 1,
                    "help": "channels to record, averaged to mono (default 1)"}),
)


class _Recorder:
    """What PortAudio's thread and the reading one share: a bounded queue of blocks, and the
    count of what was dropped."""

    def __init__(self, name: str, rate: int, max_blocks: int):
        self.name, self.rate = name, rate
        self.queue: queue.Queue = queue.Queue(max_blocks)
        self.finished = threading.Event()
        self.dropped = 0  # frames dropped because the queue was full
        self.overflows = 0  # PortAudio's input overflows (audio lost before the callback)

    def callback(self, indata, frames, time_info, status) -> None:
        """PortAudio's stream callback: a copy of the block into the queue, never waiting."""
        if status.input_overflow:
            self.overflows += 1
        try:
            self.queue.put_nowait(indata.copy())
        except queue.Full:
            self.dropped += frames

    def blocks(self, stall_seconds: float) -> Iterator[np.ndarray]:
        """The queue's blocks as mono float32, until the stream fails or stalls."""
        last = time.monotonic()
        warned, warned_at = (0, 0), -WARN_EVERY
        while True:
            try:
                data = self.queue.get(timeout=min(stall_seconds, 0.25))
            except queue.Empty:
                if self.finished.is_set():
                    raise InputError(f"input device {self.name!r} stopped (disconnected?)") \
                        from None
                if time.monotonic() - last >= stall_seconds:
                    raise InputError(f"input device {self.name!r}: no audio for "
                                     f"{stall_seconds:g} s (disconnected, or stopped?)") from None
                continue
            last = time.monotonic()
            lost = (self.dropped, self.overflows)
            if lost != warned and last - warned_at >= WARN_EVERY:
                warnings.warn(self._lost_line(), RuntimeWarning, stacklevel=2)
                warned, warned_at = lost, last
            yield data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]

    def _lost_line(self) -> str:
        parts = []
        if self.dropped:
            parts.append(f"{self.dropped / self.rate:.2f} s of audio dropped (tagging is "
                         "slower than the audio arrives)")
        if self.overflows:
            parts.append(f"{self.overflows} input overflow(s) (audio lost by the device)")
        return f"input device {self.name!r}: " + "; ".join(parts) + " so far"


def _close(stream, wait: float) -> None:
    """Closes `stream`, waiting for it at most `wait` seconds: PortAudio's close waits for its
    thread, which a stalled device can leave waiting for data forever."""
    closing = threading.Thread(target=stream.close, kwargs={"ignore_errors": True},
                               name="keras-dae microphone close", daemon=True)
    closing.start()
    closing.join(wait)


def microphone_blocks(device: int | str | None = None, rate: int | None = None,
                      channels: int = 1, block_seconds: float = 0.1, stall_seconds: float = 5.0,
                      buffer_seconds: float = 30.0) -> tuple[int, Iterator[np.ndarray]]:
    """The sample rate of the input `device` (`input_device`: default, index or name) and an
    iterator of its audio as mono float32 blocks of `block_seconds`.

    `rate` defaults to the device's own (`StreamTagger` resamples); `channels` are recorded
    and averaged. The device and settings are checked here (`InputError`); the stream opens
    when the iterator is first read, and closes when it is closed or ends. Blocks wait in a
    queue of at most `buffer_seconds`; what does not fit is dropped, and said in a
    `RuntimeWarning` (at most one every `WARN_EVERY` seconds), as are PortAudio's input
    overflows. The iterator raises `InputError` when the device stops, or sends nothing for
    `stall_seconds`; Ctrl-C (`KeyboardInterrupt`) goes through it, the stream closed (a
    stream that does not close within `CLOSE_WAIT` seconds is left to close on its own).
    """
    for name, value in (("block_seconds", block_seconds), ("stall_seconds", stall_seconds),
                        ("buffer_seconds", buffer_seconds)):
        check(name, value, "positive_float")
    check("channels", channels, "positive_int")
    sd = _sounddevice()
    info = input_device(device)
    rate = info["rate"] if rate is None else check("rate", rate, "positive_int")
    if channels > info["channels"]:
        raise InputError(f"input device {info['name']!r} has {info['channels']} input "
                         f"channel(s), not {channels}")
    try:
        sd.check_input_settings(info["index"], channels, "float32", samplerate=rate)
    except sd.PortAudioError as error:
        raise InputError(f"input device {info['name']!r} refuses {channels} channel(s) at "
                         f"{rate} Hz: {error}") from None
    block = max(1, int(round(block_seconds * rate)))
    recorder = _Recorder(info["name"], rate, max(1, round(buffer_seconds / block_seconds)))

    def blocks() -> Iterator[np.ndarray]:
        stream = None
        try:
            stream = sd.InputStream(rate, block, info["index"], channels, "float32",
                                    latency="high", callback=recorder.callback,
                                    finished_callback=recorder.finished.set)
            stream.start()
        except sd.PortAudioError as error:
            if stream is not None:
                stream.close(ignore_errors=True)
            raise InputError(f"input device {info['name']!r} could not be opened: "
                             f"{error}") from None
        try:
            yield from recorder.blocks(stall_seconds)
        finally:
            _close(stream, CLOSE_WAIT)

    return rate, blocks()
