"""Clip-level multi-label tagging metrics: mAP, ROC AUC and d', lwlrap, chunk aggregation;
the effective rank of embeddings (`effective_rank`), which tells a collapsed self-supervised
embedding without labels, and the share of a tower's frames' variance that lies along time
(`temporal_share`), which tells a tower that has averaged time away.

Everything here is numpy (plus `scipy.stats` for ranks and the normal quantile): arrays in,
Python floats or numpy arrays out, no Keras and no backend. Conventions shared by every
function:

- `targets`: `(n_clips, n_classes)` multi-hot ground truth, every value 0 or 1 (bool, int or
  float arrays are accepted).
- `scores`: `(n_clips, n_classes)` real-valued scores, higher meaning more confident (usually
  sigmoid probabilities in [0, 1]; only their order matters). Every metric is rank-based.
- Bad input (shape mismatch, a non-2-D array, no clips or no classes, a target other than
  0/1, a NaN or infinite score) raises `ValueError` naming the argument and the problem.

The definitions follow the FSD50K / AudioSet evaluation protocol: macro mAP is the mean over
classes of scikit-learn's `average_precision_score` (computed here, vectorised, with the same
tie handling), d' is `sqrt(2) * Phi^-1(mean AUC)`, and lwlrap is the DCASE 2019 Task 2
(Freesound Audio Tagging) label-weighted label-ranking average precision.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import scipy.stats

from keras_dae.validation import InputError

__all__ = [
    "aggregate_chunks",
    "clip_mean_average_precision",
    "average_precision_per_class",
    "d_prime",
    "effective_rank",
    "lwlrap",
    "mean_average_precision",
    "roc_auc_per_class",
    "tagging_report",
    "temporal_share",
]


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    try:
        array = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: not a numeric array ({error})") from None
    if array.ndim != 2:
        raise InputError(
            f"{name}: expected a 2-D array (n_clips, n_classes), got shape {array.shape}"
            + ("; for a single class pass x[:, None]" if array.ndim == 1 else "")
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(
            f"{name}: empty input, shape {array.shape} (need at least one clip and one class)"
        )
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int((~finite).sum()) - n_nan
        clip, label = np.argwhere(~finite)[0]
        raise InputError(
            f"{name}: {n_nan} NaN and {n_inf} infinite values (first at clip {clip}, class "
            f"{label}); every score must be finite"
        )
    return array


def _validate(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts `(targets, scores)`; returns `(bool targets, float64 scores)`."""
    scores = _as_scores(scores)
    try:
        raw = np.asarray(targets)
    except (TypeError, ValueError) as error:
        raise InputError(f"targets: not an array ({error})") from None
    if not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.number)):
        raise InputError(f"targets: must be a numeric or bool array of 0/1, got dtype {raw.dtype}")
    if raw.shape != scores.shape:
        raise InputError(
            f"targets and scores: shape mismatch, targets {raw.shape} vs scores {scores.shape} "
            "(both must be (n_clips, n_classes))"
        )
    binary = (raw == 0) | (raw == 1)
    if not binary.all():
        clip, label = np.argwhere(~binary)[0]
        raise InputError(
            f"targets: must be multi-hot 0/1; {int((~binary).sum())} values are not (first at "
            f"clip {clip}, class {label}: {raw[clip, label]!r})"
        )
    return raw.astype(bool), scores


def _average_precision(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-column AP of validated input; NaN for columns without a positive."""
    n_clips = scores.shape[0]
    # One row per class (contiguous), clips in descending score order. The order within a
    # tie does not matter: tied scores are one threshold, and every clip of a tie group is
    # credited with the precision at the end of its group, as in sklearn's PR curve.
    scores_t = np.ascontiguousarray(scores.T)
    order = np.argsort(-scores_t, axis=1)
    ranked = np.take_along_axis(scores_t, order, axis=1)
    hits = np.take_along_axis(np.ascontiguousarray(positive.T), order, axis=1)
    true_positives = np.cumsum(hits, axis=1)
    position = np.arange(n_clips)
    group_last = np.ones(ranked.shape, dtype=bool)
    group_last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    # Index of the last clip of each clip's tie group: the next group end at or after it.
    group_end = np.where(group_last, position, n_clips)
    group_end = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(true_positives, group_end, axis=1) / (group_end + 1)
    n_positive = true_positives[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.sum(precision_at_end * hits, axis=1) / n_positive
    return np.where(n_positive > 0, ap, np.nan)


def average_precision_per_class(targets, scores) -> np.ndarray:
    """Average precision of each class, shape `(n_classes,)` float64.

    For class k this equals `sklearn.metrics.average_precision_score(targets[:, k],
    scores[:, k])`: the sum over thresholds of (recall increase) x precision, where tied
    scores form one threshold (all tied clips are counted together). Classes with no
    positive clip get NaN (their AP is undefined).
    """
    positive, scores = _validate(targets, scores)
    return _average_precision(positive, scores)


def _nanmean_or_nan(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


def mean_average_precision(targets, scores) -> float:
    """Macro mAP: the mean of `average_precision_per_class` over classes with a positive clip.

    Classes without any positive clip are left out (not counted as 0). Raises `ValueError`
    when no class has a positive clip.
    """
    value = _nanmean_or_nan(average_precision_per_class(targets, scores))
    if math.isnan(value):
        raise InputError("targets: no class has a positive clip, so mAP is undefined")
    return value


def _roc_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-column ROC AUC of validated input; NaN unless a column has both labels."""
    n_clips = scores.shape[0]
    # Mann-Whitney U with mid-ranks for ties: equal to the trapezoidal area under the ROC
    # curve (a tied positive/negative pair counts 1/2), as sklearn's roc_auc_score.
    ranks = scipy.stats.rankdata(scores, method="average", axis=0)
    n_positive = positive.sum(axis=0).astype(np.float64)
    n_negative = n_clips - n_positive
    rank_sum = np.sum(ranks * positive, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    return np.where((n_positive > 0) & (n_negative > 0), auc, np.nan)


def roc_auc_per_class(targets, scores) -> np.ndarray:
    """Area under the ROC curve of each class, shape `(n_classes,)` float64.

    Equals `sklearn.metrics.roc_auc_score(targets[:, k], scores[:, k])`: the probability
    that a random positive clip scores above a random negative one, ties counting 1/2.
    Classes without both a positive and a negative clip get NaN.
    """
    positive, scores = _validate(targets, scores)
    return _roc_auc(positive, scores)


def _d_prime_from_auc(mean_auc: float) -> float:
    return float(math.sqrt(2.0) * scipy.stats.norm.ppf(mean_auc))


def d_prime(targets, scores) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(mean AUC), Phi^-1 the standard normal quantile.

    The mean AUC is taken over classes with both positive and negative clips (the FSD50K /
    AudioSet convention: the mean AUC is converted, not the mean of per-class d'). A mean AUC
    of 0.5 gives 0; a mean AUC of exactly 1 (every class perfectly separated) gives `inf`.
    Raises `ValueError` when no class has both positives and negatives.
    """
    mean_auc = _nanmean_or_nan(roc_auc_per_class(targets, scores))
    if math.isnan(mean_auc):
        raise InputError(
            "targets: no class has both a positive and a negative clip, so AUC and d' are undefined"
        )
    return _d_prime_from_auc(mean_auc)


def _lwlrap(positive: np.ndarray, scores: np.ndarray) -> float:
    n_labels = int(positive.sum())
    if n_labels == 0:
        return math.nan
    # For each positive (clip, class): precision at its rank within the clip =
    # (positive classes scoring >= it) / (classes scoring >= it). Ranks with method="max"
    # count ties as ranked above, the pessimistic convention of sklearn's LRAP.
    ranked_above = scipy.stats.rankdata(-scores, method="max", axis=1)
    positives_only = np.where(positive, -scores, np.inf)
    positives_above = scipy.stats.rankdata(positives_only, method="max", axis=1)
    precision = positives_above[positive] / ranked_above[positive]
    # Every positive label weighs the same: overall lwlrap is the plain mean over all
    # (clip, positive class) pairs, which is the label-frequency-weighted mean of per-class
    # lwlrap of the DCASE definition.
    return float(precision.sum() / n_labels)


def lwlrap(targets, scores) -> float:
    """Label-weighted label-ranking average precision (DCASE 2019 Task 2, Freesound Audio Tagging).

    For every clip and every positive class c of that clip, the classes are ranked by the
    clip's scores and the precision at c's rank is taken: (positive classes ranked at or
    above c) / (c's rank). lwlrap is the mean of these precisions over all (clip, positive
    class) pairs, i.e. each class's LRAP weighted by its share of the positive labels. Clips
    without a positive label contribute nothing.

    Ties: a class tied with others in a clip is ranked below all of them (rank = number of
    classes scoring >= it, and the same for the positives above), the convention of
    `sklearn.metrics.label_ranking_average_precision_score`. It is deterministic; the DCASE
    reference code instead breaks ties by `np.argsort` order. On tie-free scores the two
    agree, and lwlrap equals sklearn's LRAP with `sample_weight` = positives per clip.
    Raises `ValueError` when no clip has a positive label.
    """
    positive, scores = _validate(targets, scores)
    value = _lwlrap(positive, scores)
    if math.isnan(value):
        raise InputError("targets: no clip has a positive label, so lwlrap is undefined")
    return value


def clip_mean_average_precision(clip_targets, chunk_scores, clip_index) -> float:
    """Macro mAP at clip level from chunk scores: each clip's score is the mean of its
    chunks' (`aggregate_chunks`). `clip_targets` `(n_clips, n_classes)`, one row per clip;
    `clip_index` `(n_chunks,)`, the row of `clip_targets` each chunk belongs to."""
    clips, scores = aggregate_chunks(chunk_scores, clip_index)
    return mean_average_precision(np.asarray(clip_targets)[clips], scores)


def aggregate_chunks(
    chunk_scores, clip_ids: Sequence, method: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Pools chunk-level scores into clip-level scores.

    Args:
        chunk_scores: `(n_chunks, n_classes)` scores, one row per chunk (e.g. 1 s windows).
        clip_ids: `(n_chunks,)` the clip each chunk comes from (strings, ints, ...); chunks
            of one clip need not be adjacent.
        method: "mean" (the FSD50K baseline: clip score = average of its chunk scores) or
            "max".

    Returns:
        `(unique_clip_ids, clip_scores)`: the clip ids in order of first appearance,
        `(n_clips,)`, and their pooled scores, `(n_clips, n_classes)` float64, row i
        belonging to `unique_clip_ids[i]`.
    """
    if method not in ("mean", "max"):
        raise InputError(f"method: must be 'mean' or 'max', got {method!r}")
    scores = _as_scores(chunk_scores, "chunk_scores")
    ids = np.asarray(clip_ids)
    if ids.ndim != 1:
        raise InputError(f"clip_ids: expected a 1-D sequence of ids, got shape {ids.shape}")
    if ids.shape[0] != scores.shape[0]:
        raise InputError(
            f"clip_ids and chunk_scores: length mismatch, {ids.shape[0]} clip ids for "
            f"{scores.shape[0]} chunks"
        )
    try:
        unique_sorted, first_index, inverse = np.unique(ids, return_index=True, return_inverse=True)
    except TypeError as error:
        raise InputError(f"clip_ids: ids must be mutually comparable ({error})") from None
    # Renumber clips by first appearance, then pool each clip's chunks with one reduceat.
    appearance = np.argsort(first_index, kind="stable")
    renumber = np.empty_like(appearance)
    renumber[appearance] = np.arange(appearance.size)
    clip_index = renumber[inverse.reshape(-1)]
    order = np.argsort(clip_index, kind="stable")
    counts = np.bincount(clip_index, minlength=appearance.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = scores[order]
    if method == "mean":
        pooled = np.add.reduceat(grouped, starts, axis=0) / counts[:, None]
    else:
        pooled = np.maximum.reduceat(grouped, starts, axis=0)
    return unique_sorted[appearance], pooled


def same_top_k(scores, reference, k: int = 5) -> np.ndarray:
    """Per row, whether the `k` highest scores are those of `reference` (as a set, any order).

    How an export is compared with its model beyond a tolerance: `(n, n_classes)` each;
    returns `(n,)` booleans.
    """
    scores, reference = _as_scores(scores), _as_scores(reference, "reference")
    if scores.shape != reference.shape:
        raise InputError(f"scores and reference: shapes differ, {scores.shape} and "
                         f"{reference.shape}")
    k = min(int(k), scores.shape[1])
    top = np.sort(np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)
    return np.all(top == np.sort(np.argsort(-reference, axis=1, kind="stable")[:, :k], axis=1),
                  axis=1)


def _float_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def tagging_report(targets, scores, labels: Sequence[str]) -> dict:
    """All clip-level metrics in one JSON-serialisable dict.

    Args:
        targets: `(n_clips, n_classes)` multi-hot 0/1.
        scores: `(n_clips, n_classes)` clip scores.
        labels: `n_classes` distinct class names, in column order.

    Returns:
        `{"mAP", "d_prime", "mean_auc", "lwlrap", "per_class_ap": {label: AP}, "n_clips",
        "n_classes_scored"}` with Python floats and ints. Undefined values are `None`, never
        NaN: the AP of a class with no positive clip, mAP/lwlrap when no positives exist at
        all, AUC/d' when no class has both positives and negatives, and d' when the mean
        AUC is exactly 1 (infinite). `n_classes_scored` counts the classes in the mAP.
    """
    positive, scores = _validate(targets, scores)
    labels = [str(label) for label in labels]
    if len(labels) != scores.shape[1]:
        raise InputError(f"labels: {len(labels)} labels for {scores.shape[1]} score columns")
    if len(set(labels)) != len(labels):
        duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
        raise InputError(f"labels: duplicate class names {duplicates[:5]}")
    per_class_ap = _average_precision(positive, scores)
    mean_auc = _nanmean_or_nan(_roc_auc(positive, scores))
    return {
        "mAP": _float_or_none(_nanmean_or_nan(per_class_ap)),
        "d_prime": None if math.isnan(mean_auc) else _float_or_none(_d_prime_from_auc(mean_auc)),
        "mean_auc": _float_or_none(mean_auc),
        "lwlrap": _float_or_none(_lwlrap(positive, scores)),
        "per_class_ap": {
            label: _float_or_none(value) for label, value in zip(labels, per_class_ap, strict=True)
        },
        "n_clips": int(scores.shape[0]),
        "n_classes_scored": int(np.count_nonzero(~np.isnan(per_class_ap))),
    }


def effective_rank(embeddings) -> float:
    """Roy and Vetterli's effective rank of `embeddings` `(n, d)`, centred: `exp` of the
    entropy of the normalised singular values, from 1 (the embeddings vary along one line:
    collapsed) to `min(n - 1, d)` (every direction used alike). RankMe (Garrido et al., ICML
    2023) takes it of the embeddings as they are; centred, a constant offset, which tells a
    linear probe nothing, does not count as a direction. A self-supervised embedding whose
    rank falls has lost what a probe could read from it."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or min(x.shape) == 0 or not np.all(np.isfinite(x)):
        raise InputError(f"embeddings must be a finite (n, d) array, got shape {x.shape}")
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    if singular.sum() == 0:
        return 1.0
    p = singular[singular > 0] / singular.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def temporal_share(frames) -> float:
    """The share of the variance of a tower's output frames `(clips, frames, d)` that lies
    along time within clips: the within-clip variance over the frames (averaged over clips and
    dimensions) over the total variance over clips and frames (averaged over dimensions), by
    the law of total variance in [0, 1]. Near 0, every frame of a clip holds the same vector:
    the tower's attention can only average it (its weights then get no gradient), and what a
    sound does over time is gone. Frames independent of each other give `(T - 1) / T`."""
    x = np.asarray(frames, np.float64)
    if x.ndim != 3 or min(x.shape) == 0 or not np.all(np.isfinite(x)):
        raise InputError(f"frames must be a finite (clips, frames, d) array, got shape "
                         f"{x.shape}")
    total = x.reshape(-1, x.shape[-1]).var(axis=0).mean()
    return 0.0 if total == 0 else float(x.var(axis=1).mean() / total)
