"""Runs every front end on one clip and draws them: what `keras-dae frontends` shows."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_dae import atomic, layers


def default_frontends(sample_rate: int = 16000) -> dict:
    """One instance of each front end with its default configuration."""
    return {
        "LogMelSpectrogram": layers.LogMelSpectrogram(sample_rate=sample_rate, n_mels=64),
        "ConstantQTransform": layers.ConstantQTransform(sample_rate=sample_rate, to_db=True),
        "PitchTracker": layers.PitchTracker(sample_rate=sample_rate),
        "MFCC": layers.MFCC(sample_rate=sample_rate),
        "SpectralDescriptors": layers.SpectralDescriptors(sample_rate=sample_rate),
        "LearnedFilterbank": layers.LearnedFilterbank(sample_rate=sample_rate),
        "Neuralogram": layers.Neuralogram(sample_rate=sample_rate),
    }


def compute_frontends(waveform: np.ndarray, sample_rate: int = 16000) -> dict[str, np.ndarray]:
    """Name -> `(frames, features)` float32 array for a mono waveform."""
    batch = np.asarray(waveform, np.float32)[None]
    return {
        name: np.asarray(ops.convert_to_numpy(layer(batch)))[0]
        for name, layer in default_frontends(sample_rate).items()
    }


def frontends_table(features: dict[str, np.ndarray]) -> str:
    """Each front end's output shape and range, one line each under a header."""
    lines = [f"{'front end':<22} {'output (frames, features)':<27} {'min':>9} {'max':>9}"]
    lines += [f"{name:<22} {str(values.shape):<27} {np.min(values):9.2f} {np.max(values):9.2f}"
              for name, values in features.items()]
    return "\n".join(lines)


def plot_frontends(waveform, sample_rate, features, path, title=""):
    """Waveform on top, then one panel per front end, on a shared time axis. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = len(waveform) / sample_rate
    fig, axes = plt.subplots(
        len(features) + 1, 1, figsize=(10, 2.0 * (len(features) + 1)), sharex=True,
        constrained_layout=True,
    )
    axes[0].plot(np.arange(len(waveform)) / sample_rate, waveform, lw=0.5, color="0.2")
    axes[0].set_ylabel("waveform")
    axes[0].set_title(title)
    for ax, (name, values) in zip(axes[1:], features.items(), strict=True):
        extent = (0.0, duration, 0, values.shape[1])
        if name == "PitchTracker":
            times = np.linspace(0, duration, len(values))
            voiced = values[:, 1] > 0.5
            ax.plot(times, np.where(voiced, values[:, 0], np.nan), ".", ms=3, label="f0 (Hz)")
            ax.set_ylabel("PitchTracker\nf0 (Hz), voiced", fontsize=8)
            continue
        shown = values
        if name in ("SpectralDescriptors", "MFCC", "Neuralogram"):
            # Unlike spectra, each column has its own unit: standardise per feature.
            shown = (values - values.mean(0)) / (values.std(0) + 1e-8)
        ax.imshow(shown.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
        note = " (untrained)" if name == "Neuralogram" else ""
        ax.set_ylabel(f"{name}{note}\n({values.shape[1]} features)", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path
