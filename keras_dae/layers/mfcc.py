"""Mel-frequency cepstral coefficients, matching `librosa.feature.mfcc`."""

from __future__ import annotations

import numpy as np
import scipy.fft
from keras import ops

from keras_dae.layers import signal
from keras_dae.layers.log_mel_spectrogram import LogMelSpectrogram
from keras_dae.serialization import register
from keras_dae.validation import InputError

DCT_TYPES = (1, 2, 3, 4)
DCT_NORMS = (None, "ortho")


def dct_matrix(
    n_mels: int, n_mfcc: int, dct_type: int = 2, norm: str | None = "ortho", lifter: float = 0.0
) -> np.ndarray:
    """`(n_mels, n_mfcc)` matrix `D` with `x @ D == scipy.fft.dct(x, type, norm)[..., :n_mfcc]`.

    Liftering (`lifter > 0`) is folded into the columns, as in `librosa.feature.mfcc`:
    coefficient `n` (from 0) is scaled by `1 + lifter / 2 * sin(pi * (n + 1) / lifter)`.
    """
    basis = scipy.fft.dct(np.eye(n_mels), type=dct_type, norm=norm, axis=-1)[:, :n_mfcc]
    if lifter > 0:
        lift = 1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(1, 1 + n_mfcc) / lifter)
        basis = basis * lift[None, :]
    return basis


@register
class MFCC(LogMelSpectrogram):
    """MFCCs: `librosa.feature.mfcc(y=y, sr=sample_rate, ...)`, frames first.

    The log-mel spectrogram of `LogMelSpectrogram` (`power_to_db` with `top_db=80` taken per
    example) followed by a discrete cosine transform over the mel axis, kept to the first
    `n_mfcc` coefficients, and optional liftering. The DCT (and the lifter) is one constant
    `(n_mels, n_mfcc)` matrix built with `scipy.fft.dct` from the config, so the whole layer is
    matrix products and elementwise ops (no FFT unless `dft_mode="fft"`).

    Input `(batch, samples)` float waveform; output `(batch, frames, n_mfcc)` float32 with
    `frames = 1 + samples // hop_length` when `center=True`.

    Naming follows `librosa.feature.mfcc`: `norm` is the normalisation of the *DCT* (None or
    `"ortho"`), and `mel_norm` that of the mel filters (what `LogMelSpectrogram` and
    `librosa.filters.mel` call `norm`). So `MFCC(norm=None)` changes the DCT, not the filters;
    `get_config()` stores both under these names.

    Args:
        n_mfcc: number of coefficients kept, `<= n_mels` (librosa silently returns `n_mels`
            coefficients when asked for more; this layer raises ValueError).
        dct_type: DCT type, 1, 2 (default), 3 or 4 (as `scipy.fft.dct`).
        norm: DCT normalisation, `"ortho"` (default) or None.
        lifter: liftering coefficient (>= 0); 0 disables liftering.
        mel_norm: mel filter normalisation, `"slaney"` (area), a number for the p-norm, or None.
        n_mels: number of mel bands (default 128, librosa's).
        **kwargs: the other arguments of `LogMelSpectrogram` (`fmin`, `fmax`, `htk`, `power`,
            `ref`, `amin`, `top_db`) and of `SpectrogramFrontend` (`sample_rate`, `n_fft`,
            `hop_length`, `win_length`, `window`, `center`, `pad_mode`, `dft_mode`).

    Examples:
        >>> layer = MFCC(sample_rate=16000, n_mfcc=13, n_mels=40)
        >>> tuple(layer(np.zeros((2, 16000), "float32")).shape)
        (2, 101, 13)
    """

    def __init__(
        self,
        n_mfcc: int = 20,
        dct_type: int = 2,
        norm: str | None = "ortho",
        lifter: float = 0.0,
        mel_norm="slaney",
        n_mels: int = 128,
        **kwargs,
    ):
        # The parent reads `norm` as the mel filter normalisation.
        super().__init__(n_mels=n_mels, norm=mel_norm, **kwargs)
        signal.check_positive_int("n_mfcc", n_mfcc)
        if n_mfcc > self.n_mels:
            raise InputError(f"`n_mfcc` ({n_mfcc}) must be <= `n_mels` ({self.n_mels}).")
        if isinstance(dct_type, bool) or dct_type not in DCT_TYPES:
            raise InputError(f"`dct_type` must be one of {list(DCT_TYPES)}, got {dct_type!r}.")
        if dct_type == 1 and self.n_mels < 2:
            raise InputError("`dct_type` 1 needs `n_mels` >= 2.")
        signal.check_choice("norm", norm, DCT_NORMS)
        if isinstance(lifter, bool) or not isinstance(lifter, (int, float, np.number)):
            raise InputError(f"`lifter` must be a non-negative number, got {lifter!r}.")
        if not lifter >= 0:
            raise InputError(f"`lifter` must be a non-negative number, got {lifter!r}.")
        self.n_mfcc = int(n_mfcc)
        self.dct_type = int(dct_type)
        self.mel_norm = mel_norm
        self.norm = norm  # From here on `norm` is the DCT's, as in librosa.feature.mfcc.
        self.lifter = float(lifter)
        # (n_mels, n_mfcc): DCT and lifter in one constant, rebuilt from the config.
        self._dct_basis = dct_matrix(
            self.n_mels, self.n_mfcc, self.dct_type, self.norm, self.lifter
        ).astype(np.float32)
        self._dct_basis_tensor = signal.constant(self._dct_basis)

    @property
    def num_features(self) -> int:
        return self.n_mfcc

    def frontend_call(self, waveform):
        log_mel = super().frontend_call(waveform)
        return ops.matmul(log_mel, self._dct_basis_tensor)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_mfcc": self.n_mfcc,
                "dct_type": self.dct_type,
                "norm": self.norm,
                "lifter": self.lifter,
                "mel_norm": self.mel_norm,
            }
        )
        return config
