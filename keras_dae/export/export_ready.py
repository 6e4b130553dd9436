"""The export-ready model: the same classifier, its front ends set for a target format.

Every front end is a plain Keras layer, so an exported graph is the model's own graph. The
only settings that matter for export are how spectra compute their DFT (`dft_mode`): "fft"
lowers to an FFT (TFLite's RFFT2D builtin; ONNX has no real FFT that tf2onnx emits), and
"matmul" to a product with a constant real DFT matrix, which every format runs. The model is
rebuilt from its own config with those settings (`keras_dae.models.derived_model`, which
copies every variable as loading does), and the copy is checked against the original.
"""

from __future__ import annotations

import copy

import numpy as np

from keras_dae.layers import signal

# Largest difference in probabilities allowed between the original and its export-ready
# copy. The two DFT modes agree to float32 rounding, which a trained model can amplify to
# ~1e-3 (its top spectral-contrast band sits near float32 FFT noise; the Keras model on
# PyTorch differs from itself on TensorFlow as much). A wrong weight copy shows as 1e-1.
EXPORT_READY_ATOL = 2e-3


# Where the pitch trackers change DFT mode, a YIN decision flipping on one frame of the probe
# audio may move a probability by about 1e-2; a wrong weight copy is still off by 1e-1.
PITCH_MODE_ATOL = 3e-2


class ExportError(RuntimeError):
    """An export failed or produced an artifact that does not compute what the model does."""


def with_dft_mode(config, dft_mode: str, pitch_dft_mode: str | None = None):
    """A deep copy of a serialized Keras config with every `dft_mode` set to `dft_mode`,
    except `PitchTracker`'s, set to `pitch_dft_mode` (default: `dft_mode`)."""
    signal.check_choice("dft_mode", dft_mode, signal.DFT_MODES)
    pitch_dft_mode = pitch_dft_mode or dft_mode
    signal.check_choice("pitch_dft_mode", pitch_dft_mode, signal.DFT_MODES)
    config = copy.deepcopy(config)

    def visit(node, mode=dft_mode):
        if isinstance(node, dict):
            if node.get("class_name") == "PitchTracker":
                mode = pitch_dft_mode
            if "dft_mode" in node:
                node["dft_mode"] = mode
            for value in node.values():
                visit(value, mode)
        elif isinstance(node, list):
            for value in node:
                visit(value, mode)

    visit(config)
    return config


def probe_audio(sample_rate: int, seconds: float = 1.0, count: int = 4) -> np.ndarray:
    """A fixed batch of `count` 1 s windows of real and synthetic audio, float32.

    The bundled speech recording (its start and its end), a logarithmic chirp and white
    noise at a low level: enough variety to exercise every front end, deterministic so that
    checks are repeatable.
    """
    from keras_dae.audio import load_audio
    from keras_dae.data.bundled import bundled_clip_path

    n = int(round(seconds * sample_rate))
    speech = np.resize(load_audio(bundled_clip_path(), sample_rate), 2 * n)
    t = np.arange(n) / sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * 60.0 * (np.exp(t * np.log(4000 / 60.0)) - 1)
                         / np.log(4000 / 60.0))
    noise = 0.02 * np.random.default_rng(0).standard_normal(n)
    windows = [speech[:n], speech[-n:], chirp, noise]
    return np.stack([windows[i % len(windows)] for i in range(count)]).astype(np.float32)


def max_abs_diff(a: dict, b: dict, keys=None) -> dict[str, float]:
    """Largest absolute difference per output name between two dicts of arrays."""
    keys = keys or [k for k in a if k in b]
    return {k: float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
            for k in keys}


def export_ready_model(model, dft_mode: str = "matmul", check: bool = True,
                       atol: float = EXPORT_READY_ATOL, pitch_dft_mode: str = "matmul"):
    """Returns a copy of the `DiverseClassifier` `model` whose spectra use `dft_mode` and
    whose YIN pitch trackers use `pitch_dft_mode`.

    YIN is kept apart because it is discontinuous: it picks one trough of a difference
    function, and where two troughs nearly tie, float32 rounding of another DFT algorithm can
    pick the other one for a frame (after an FFT instead of the matrix product, 0.2% of the
    sampled dataset's eval windows moved a probability by up to 7e-3). Spectra are
    continuous, so their DFT mode changes probabilities only at rounding level.

    The copy has the same weights, class names and AudioSet ids. With `check`, it is run next
    to the original on `probe_audio` and an `ExportError` is raised when any probability
    differs by more than `atol` (or `PITCH_MODE_ATOL`, where the pitch mode changes).
    """
    from keras_dae.layers import PitchTracker
    from keras_dae.models import DiverseClassifier
    from keras_dae.models.derived import derived_model

    if not isinstance(model, DiverseClassifier):
        raise TypeError(f"export_ready_model() takes a DiverseClassifier, got "
                        f"{type(model).__name__}.")
    pitch_modes = {f.dft_mode for fs in model.featurizer.streams.values() for f in fs
                   if isinstance(f, PitchTracker)}
    if pitch_modes - {pitch_dft_mode}:
        atol = max(atol, PITCH_MODE_ATOL)
    ready = derived_model(model, lambda config: with_dft_mode(config, dft_mode, pitch_dft_mode))
    if check:
        x = probe_audio(model.sample_rate)
        expected = model.predict(x, verbose=0)
        got = ready.predict(x, verbose=0)
        # Bounded: the probabilities. (The embedding is unbounded in scale; it follows.)
        diff = max_abs_diff(expected, got, [k for k in expected if k != "embedding"])
        worst = max(diff, key=diff.get)
        if diff[worst] > atol:
            raise ExportError(f"the export-ready copy (dft_mode={dft_mode!r}) differs from the "
                              f"model: output {worst!r} by {diff[worst]:.3g} > {atol}")
    return ready
