"""Computes every front-end case on the backend in KERAS_BACKEND and saves the results.

Usage: KERAS_BACKEND=jax python tests/backend_outputs.py OUT_DIR
Writes OUT_DIR/outputs.npz (one array per case) and OUT_DIR/frontends.keras (a model holding
all the front ends, with outputs in CASES order), for test_cross_backend.py to compare.
"""

import sys
from pathlib import Path

import keras
import numpy as np
from frontend_cases import CASES, build_case


def all_frontends_model(layers_and_inputs) -> keras.Model:
    inputs = keras.Input(shape=(16000,), name="waveform")
    outputs = {name: layer(inputs) for name, (layer, _) in layers_and_inputs.items()}
    return keras.Model(inputs, outputs)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built = {name: build_case(name) for name in CASES}
    results = {
        name: keras.ops.convert_to_numpy(layer(waveform)) for name, (layer, waveform) in built.items()
    }
    np.savez(out / "outputs.npz", **results)
    all_frontends_model(built).save(out / "frontends.keras")
    save_tiny_preset(out / "preset")
    np.savez(out / "shipped_outputs.npz", **shipped_preset_outputs())


def shipped_preset_outputs() -> dict:
    """The shipped `diverse_sampled15` preset's outputs on a real recording (1 s chunks)."""
    from conftest import load_recording

    from keras_dae import zoo
    from keras_dae.data import chunk_waveform

    model = zoo.load("diverse_sampled15")
    chunks = chunk_waveform(load_recording("speech_front_center.wav"), 16000, 1.0, 0.5)
    return model.predict(chunks, verbose=0)


TINY_CLASSES = ["Speech", "Dog", "Bird"]
TINY_MIDS = ["/m/09x0r", "/m/0bt9lr", ""]


def save_tiny_preset(directory: Path) -> None:
    """The tiny preset with deterministic weights and named classes, the same model as a
    `.keras` file beside it, and its outputs on this backend."""
    from keras_dae import zoo
    from keras_dae.models import DiverseClassifier

    model = DiverseClassifier.from_preset("diverse_tiny", load_weights=False,
                                          class_names=TINY_CLASSES, class_mids=TINY_MIDS)
    rng = np.random.default_rng(0)
    for tower in model.backbone.towers.values():  # non-trivial feature statistics
        tower.normalization.adapt(rng.standard_normal((4, 8, tower.normalization.mean.shape[-1])))
    for w in model.trainable_weights:  # not the normalisation statistics
        w.assign((0.1 * rng.standard_normal(w.shape)).astype("float32"))
    zoo.save(model, directory)
    model.save(directory.parent / "classifier.keras")
    waveform = build_case("log_mel")[1]
    outputs = model.predict(waveform, verbose=0)
    np.savez(directory.parent / "preset_outputs.npz", **outputs)


if __name__ == "__main__":
    main(sys.argv[1])
