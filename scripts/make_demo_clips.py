#!/usr/bin/env python3
"""Make the demo clips of `keras-dae demo` (keras_dae/data/demo/) from Debian packages.

Every clip is a real recording from a Debian 12 package that `build_sampled_dataset.py` also
reads, taken from a source that its default build (`--seed 0`) puts in the eval or val split,
so the shipped preset never trained on it. Clips are mono, 16 kHz (the model's rate), OGG
Vorbis, at most 5 s. Sources and licences: keras_dae/data/demo/README.md.

    python scripts/make_demo_clips.py [--out keras_dae/data/demo]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_dae.audio import load_audio  # noqa: E402

SR = 16000
KLETTRES_CS = Path("/usr/share/klettres/cs/alpha")
SONIC_PI = Path("/usr/share/sonic-pi/samples")
TUXPAINT = Path("/usr/share/tuxpaint/stamps/animals")


def speech_czech_letters() -> np.ndarray:
    """Five Czech letters read by one speaker (KLettres, eval split), 0.15 s apart."""
    parts = []
    for i in range(5):
        parts += [load_audio(KLETTRES_CS / f"a-{i}.ogg", SR), np.zeros(int(0.15 * SR), "f4")]
    return np.concatenate(parts[:-1])


CLIPS = {
    "speech_czech_letters.ogg": speech_czech_letters,
    # A strummed E minor 9 chord on a guitar (eval split): its strummed part, 4.5-9.5 s.
    "guitar_em9.ogg": lambda: load_audio(SONIC_PI / "guit_em9.flac", SR)[int(4.5 * SR):int(9.5 * SR)],
    # A drum break (val split), whole.
    "drums_amen_break.ogg": lambda: load_audio(SONIC_PI / "loop_amen.flac", SR),
    # A great blue heron calling in flight (eval split), whole.
    "heron_flying.ogg": lambda: load_audio(TUXPAINT / "birds/heron_greatblue_flying.ogg", SR),
    # A dog barking (eval split), whole: under 1 s, so the model sees it tiled to 1 s.
    "dog_bark.ogg": lambda: load_audio(TUXPAINT / "mammals/dogs/dog.ogg", SR),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                             / "keras_dae" / "data" / "demo"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in CLIPS.items():
        audio = make()
        assert len(audio) <= 5 * SR, (name, len(audio) / SR)
        sf.write(out / name, audio, SR, format="OGG", subtype="VORBIS")
        print(f"{out / name}: {len(audio) / SR:.2f} s, {(out / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
