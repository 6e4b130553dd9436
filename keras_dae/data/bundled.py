"""The real recordings that ship inside the package (`keras_dae/data/`; sources and licences
in `keras_dae/data/demo/README.md`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# A man saying "front center" (GPL-2): what `keras-dae frontends` shows by default, and the
# speech an export's parity check runs on.
BUNDLED_CLIP = "speech_front_center.wav"
# What `keras-dae demo` tags, in the order it shows them: recordings the shipped preset's
# training data kept out of training (its eval and val splits).
DEMO_CLIPS = (
    "speech_czech_letters.ogg",
    "guitar_em9.ogg",
    "drums_amen_break.ogg",
    "heron_flying.ogg",
    "dog_bark.ogg",
)


def bundled_clip_path() -> Path:
    """The bundled speech recording (`BUNDLED_CLIP`)."""
    return Path(str(resources.files("keras_dae") / "data" / BUNDLED_CLIP))


def demo_clips() -> list[Path]:
    """The bundled demo recordings (`DEMO_CLIPS`), in the order the demo shows them."""
    folder = resources.files("keras_dae") / "data" / "demo"
    return [Path(str(folder / name)) for name in DEMO_CLIPS]
