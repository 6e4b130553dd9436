"""Clip-level tagging metrics against scikit-learn, the DCASE lwlrap reference and hand values.

The metrics are numpy-only, so the backend does not matter: tests/run.sh runs them once.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    label_ranking_average_precision_score,
    roc_auc_score,
)

from keras_dae import metrics

pytestmark = pytest.mark.one_backend


def random_case(seed, n_clips=60, n_classes=12, levels=None, density=0.2):
    """Sparse multi-hot targets and scores correlated with them; `levels` quantises the
    scores to that many values (many ties); some classes get no positive, one gets all."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n_clips, n_classes)) < density).astype(np.int64)
    targets[:, 0] = 0  # no positive clip
    targets[:, 1] = 1  # no negative clip
    targets[:, 2] = 0
    targets[rng.integers(n_clips), 2] = 1  # exactly one positive
    scores = rng.random((n_clips, n_classes)) + 0.7 * targets
    scores = scores / scores.max()
    if levels is not None:
        scores = np.round(scores * (levels - 1)) / (levels - 1)
    return targets, scores


def sklearn_ap(targets, scores):
    return np.array(
        [
            average_precision_score(targets[:, k], scores[:, k]) if targets[:, k].any() else np.nan
            for k in range(targets.shape[1])
        ]
    )


def sklearn_auc(targets, scores):
    return np.array(
        [
            roc_auc_score(targets[:, k], scores[:, k])
            if 0 < targets[:, k].sum() < len(targets)
            else np.nan
            for k in range(targets.shape[1])
        ]
    )


def dcase_lwlrap(truth, scores):
    """The DCASE 2019 Task 2 reference (Dan Ellis' lwlrap colab), transcribed: per-class
    lwlrap weighted by each class's share of the labels. Ties go by np.argsort order."""
    n_samples, n_classes = scores.shape
    precisions = np.zeros((n_samples, n_classes))
    for i in range(n_samples):
        pos_class_indices = np.flatnonzero(truth[i] > 0)
        if not len(pos_class_indices):
            continue
        retrieved_classes = np.argsort(scores[i])[::-1]
        class_rankings = np.zeros(n_classes, dtype=int)
        class_rankings[retrieved_classes] = range(n_classes)
        retrieved_class_true = np.zeros(n_classes, dtype=bool)
        retrieved_class_true[class_rankings[pos_class_indices]] = True
        retrieved_cumulative_hits = np.cumsum(retrieved_class_true)
        precisions[i, pos_class_indices] = retrieved_cumulative_hits[
            class_rankings[pos_class_indices]
        ] / (1 + class_rankings[pos_class_indices].astype(float))
    labels_per_class = np.sum(truth > 0, axis=0)
    weight_per_class = labels_per_class / float(np.sum(labels_per_class))
    per_class = np.sum(precisions, axis=0) / np.maximum(1, labels_per_class)
    return float(np.sum(per_class * weight_per_class))


# ---------------------------------------------------------------- average precision, mAP


@pytest.mark.parametrize("levels", [None, 2, 5, 21])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_sklearn_including_ties(seed, levels):
    targets, scores = random_case(seed, levels=levels)
    ours = metrics.average_precision_per_class(targets, scores)
    reference = sklearn_ap(targets, scores)
    assert ours.shape == (targets.shape[1],)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(ours[0])  # no positive clip
    assert ours[1] == 1.0  # every clip positive
    if levels is not None:  # ties are present, and matter
        assert len(np.unique(scores)) <= levels


@pytest.mark.parametrize("levels", [None, 3])
def test_mean_average_precision_is_macro_mean_over_classes_with_positives(levels):
    targets, scores = random_case(7, n_clips=80, n_classes=20, levels=levels)
    targets[:, 5] = 0  # a second class without positives
    reference = sklearn_ap(targets, scores)
    expected = float(np.mean(reference[~np.isnan(reference)]))
    value = metrics.mean_average_precision(targets, scores)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12)
    # Classes without positives are left out, not counted as 0 (which would lower the mean).
    assert value > float(np.nan_to_num(reference).mean())


def test_average_precision_hand_example_with_ties():
    # Descending: 0.8 (pos), 0.8 (neg) tie -> one threshold: precision 1/2 at recall 1/2;
    # then 0.4 (pos): precision 2/3 at recall 1. AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    # Breaking the tie in the positive's favour would give 1/2 * 1 + 1/2 * 2/3 = 5/6.
    targets = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.8], [0.8], [0.4], [0.1]])
    assert metrics.average_precision_per_class(targets, scores)[0] == pytest.approx(7 / 12)
    assert metrics.average_precision_per_class(targets[[1, 0, 2, 3]], scores[[1, 0, 2, 3]])[
        0
    ] == pytest.approx(7 / 12)


def test_average_precision_is_rank_based_and_order_free():
    targets, scores = random_case(3, levels=7)
    base = metrics.average_precision_per_class(targets, scores)
    logits = np.log(scores + 1e-3) - np.log1p(1e-3 - scores)  # strictly increasing map
    np.testing.assert_allclose(
        metrics.average_precision_per_class(targets, logits), base, rtol=1e-12, equal_nan=True
    )
    permutation = np.random.default_rng(0).permutation(len(targets))
    np.testing.assert_allclose(
        metrics.average_precision_per_class(targets[permutation], scores[permutation]),
        base,
        rtol=1e-12,
        equal_nan=True,
    )


@settings(max_examples=60, deadline=None)
@given(
    n_clips=st.integers(1, 30),
    n_classes=st.integers(1, 5),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_average_precision_and_auc_match_sklearn_property(n_clips, n_classes, levels, seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, (n_clips, n_classes)).astype(bool)
    scores = rng.integers(0, levels, (n_clips, n_classes)) / levels
    np.testing.assert_allclose(
        metrics.average_precision_per_class(targets, scores),
        sklearn_ap(targets, scores),
        rtol=1e-12,
        atol=1e-12,
        equal_nan=True,
    )
    np.testing.assert_allclose(
        metrics.roc_auc_per_class(targets, scores),
        sklearn_auc(targets, scores),
        rtol=1e-12,
        atol=1e-12,
        equal_nan=True,
    )


def test_fsd50k_sized_evaluation_matches_sklearn():
    # Eval-set shape class: 3,000 clips x 200 classes, sparse labels (~1.5%), float32 scores.
    targets, scores = random_case(11, n_clips=3000, n_classes=200, density=0.015)
    scores = scores.astype(np.float32)
    ap = sklearn_ap(targets, scores)
    assert metrics.mean_average_precision(targets, scores) == pytest.approx(
        float(np.nanmean(ap)), rel=1e-12
    )
    auc = sklearn_auc(targets, scores)
    assert metrics.d_prime(targets, scores) == pytest.approx(
        math.sqrt(2) * scipy.stats.norm.ppf(np.nanmean(auc)), rel=1e-10
    )


# ---------------------------------------------------------------- ROC AUC, d'


@pytest.mark.parametrize("levels", [None, 2, 4])
@pytest.mark.parametrize("seed", [0, 5])
def test_roc_auc_equals_sklearn_including_ties(seed, levels):
    targets, scores = random_case(seed, levels=levels)
    ours = metrics.roc_auc_per_class(targets, scores)
    reference = sklearn_auc(targets, scores)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(ours[0]) and np.isnan(ours[1])  # only negatives / only positives


def test_roc_auc_hand_example_with_ties():
    # Positives 0.8, 0.4; negatives 0.8, 0.1. Pairs: tie 1/2, win, loss, win -> 2.5 / 4.
    targets = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.8], [0.8], [0.4], [0.1]])
    assert metrics.roc_auc_per_class(targets, scores)[0] == pytest.approx(0.625)


@pytest.mark.parametrize("levels", [None, 3])
def test_d_prime_from_mean_auc(levels):
    targets, scores = random_case(4, n_clips=100, levels=levels)
    auc = sklearn_auc(targets, scores)
    expected = math.sqrt(2) * scipy.stats.norm.ppf(np.nanmean(auc))
    value = metrics.d_prime(targets, scores)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12)
    assert value > 0  # scores were made to correlate with the targets


def test_d_prime_chance_and_perfect_and_inverted():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert metrics.d_prime(targets, np.full(targets.shape, 0.3)) == 0.0  # all tied: AUC 1/2
    assert metrics.d_prime(targets, targets * 0.6 + 0.2) == math.inf  # AUC 1
    inverted = metrics.d_prime(targets, 1.0 - (targets * 0.6 + 0.2))
    assert inverted == -math.inf
    auc = np.array([0.75, 1.0])  # a class at AUC 0.75 and one at 1: mean 0.875
    scores = np.array([[0.9, 0.1], [0.1, 0.8], [0.3, 0.9], [0.5, 0.2]])
    np.testing.assert_allclose(metrics.roc_auc_per_class(targets, scores), auc)
    assert metrics.d_prime(targets, scores) == pytest.approx(
        math.sqrt(2) * scipy.stats.norm.ppf(0.875)
    )


# ---------------------------------------------------------------- lwlrap


def test_lwlrap_hand_example():
    # Clip A: positives ranked 1st (precision 1/1) and 3rd (2/3); clip B: its only positive
    # ranked 3rd (1/3). lwlrap = (1 + 2/3 + 1/3) / 3 labels = 2/3; plain LRAP (each clip
    # weighted equally) would be ((1 + 2/3) / 2 + 1/3) / 2 = 7/12.
    targets = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])  # clip C: no label
    scores = np.array([[0.9, 0.8, 0.3, 0.1], [0.2, 0.7, 0.6, 0.4], [0.5, 0.1, 0.2, 0.3]])
    assert metrics.lwlrap(targets, scores) == pytest.approx(2 / 3)
    assert label_ranking_average_precision_score(targets[:2], scores[:2]) == pytest.approx(7 / 12)
    assert dcase_lwlrap(targets, scores) == pytest.approx(2 / 3)


def test_lwlrap_tie_convention_is_pessimistic():
    # The positive is tied with a negative at the top: ranked 2nd, precision 1/2.
    assert metrics.lwlrap([[1, 0, 0]], [[0.5, 0.5, 0.1]]) == pytest.approx(0.5)
    # Two positives tied with one negative: each ranked 3rd with 2 positives above: 2/3.
    assert metrics.lwlrap([[1, 1, 0, 0]], [[0.5, 0.5, 0.5, 0.1]]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lwlrap_equals_dcase_reference_and_weighted_lrap_without_ties(seed):
    targets, scores = random_case(seed, n_clips=120, n_classes=15)
    targets[:5] = 0  # clips without any label
    assert len(np.unique(scores)) == scores.size  # tie-free
    value = metrics.lwlrap(targets, scores)
    assert isinstance(value, float)
    assert value == pytest.approx(dcase_lwlrap(targets, scores), rel=1e-12)
    weighted = label_ranking_average_precision_score(
        targets, scores, sample_weight=targets.sum(axis=1)
    )
    assert value == pytest.approx(weighted, rel=1e-12)
    # Label weighting matters here: the unweighted LRAP differs.
    assert abs(value - label_ranking_average_precision_score(targets[5:], scores[5:])) > 1e-6


@pytest.mark.parametrize("levels", [2, 3, 6])
def test_lwlrap_equals_weighted_lrap_with_ties(levels):
    # Both use the pessimistic tie convention, so the identity holds with ties too.
    targets, scores = random_case(9, n_clips=150, n_classes=10, levels=levels)
    assert len(np.unique(scores)) <= levels
    weighted = label_ranking_average_precision_score(
        targets, scores, sample_weight=targets.sum(axis=1)
    )
    assert metrics.lwlrap(targets, scores) == pytest.approx(weighted, rel=1e-12)


# ---------------------------------------------------------------- chunk aggregation


def loop_aggregate(chunk_scores, clip_ids, method):
    order, groups = [], {}
    for row, clip in zip(chunk_scores, clip_ids, strict=True):
        if clip not in groups:
            order.append(clip)
            groups[clip] = []
        groups[clip].append(row)
    pool = np.mean if method == "mean" else np.max
    return order, np.array([pool(groups[clip], axis=0) for clip in order])


@pytest.mark.parametrize("method", ["mean", "max"])
def test_aggregate_chunks_matches_loop_and_keeps_first_appearance_order(method):
    rng = np.random.default_rng(0)
    clips = [f"clip_{i:03d}" for i in rng.permutation(40)]
    n_chunks = rng.integers(1, 8, size=len(clips))  # 1 to 7 chunks per clip
    clip_ids = np.repeat(clips, n_chunks)
    clip_ids = clip_ids[rng.permutation(len(clip_ids))]  # chunks of a clip not adjacent
    chunk_scores = rng.random((len(clip_ids), 6)).astype(np.float32)
    ids, pooled = metrics.aggregate_chunks(chunk_scores, list(clip_ids), method=method)
    expected_ids, expected = loop_aggregate(chunk_scores, clip_ids, method)
    assert list(ids) == expected_ids
    assert pooled.shape == (len(clips), 6)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)


def test_aggregate_chunks_small_example_with_integer_ids():
    chunk_scores = np.array([[0.1, 0.9], [0.4, 0.0], [0.3, 0.5], [0.8, 0.2], [0.2, 0.6]])
    clip_ids = [7, 3, 7, 5, 7]
    ids, mean = metrics.aggregate_chunks(chunk_scores, clip_ids)
    assert ids.tolist() == [7, 3, 5]
    np.testing.assert_allclose(mean, [[0.2, 2 / 3], [0.4, 0.0], [0.8, 0.2]])
    _, maximum = metrics.aggregate_chunks(chunk_scores, clip_ids, method="max")
    np.testing.assert_allclose(maximum, [[0.3, 0.9], [0.4, 0.0], [0.8, 0.2]])


def test_aggregate_then_evaluate():
    # Chunk scores pooled to clips, then scored: the full evaluation path on random data.
    rng = np.random.default_rng(2)
    targets, clip_scores = random_case(2, n_clips=30, n_classes=8)
    clip_ids = np.repeat(np.arange(30), 3)
    noise = rng.normal(0, 0.05, (90, 8))
    chunks = np.repeat(clip_scores, 3, axis=0) + noise
    ids, pooled = metrics.aggregate_chunks(chunks, clip_ids)
    np.testing.assert_array_equal(ids, np.arange(30))
    np.testing.assert_allclose(pooled, clip_scores + noise.reshape(30, 3, 8).mean(axis=1))
    assert metrics.mean_average_precision(targets, pooled) == pytest.approx(
        float(np.nanmean(sklearn_ap(targets, pooled))), rel=1e-12
    )


# ---------------------------------------------------------------- report


def test_tagging_report_is_json_and_consistent():
    targets, scores = random_case(6, n_clips=50, n_classes=6)
    labels = ["Bark", "Speech", "Guitar", "Rain", "Siren", "Door"]
    report = metrics.tagging_report(targets, scores, labels)
    text = json.dumps(report, allow_nan=False)  # no NaN or inf anywhere
    assert json.loads(text) == report
    assert report["n_clips"] == 50
    assert report["mAP"] == pytest.approx(metrics.mean_average_precision(targets, scores))
    assert report["d_prime"] == pytest.approx(metrics.d_prime(targets, scores))
    assert report["mean_auc"] == pytest.approx(float(np.nanmean(sklearn_auc(targets, scores))))
    assert report["lwlrap"] == pytest.approx(metrics.lwlrap(targets, scores))
    assert list(report["per_class_ap"]) == labels
    assert report["per_class_ap"]["Bark"] is None  # class 0 has no positive clip
    assert report["n_classes_scored"] == 5
    ap = sklearn_ap(targets, scores)
    for k, label in enumerate(labels[1:], start=1):
        assert report["per_class_ap"][label] == pytest.approx(ap[k], rel=1e-12)


def test_tagging_report_undefined_values_are_none():
    no_positives = metrics.tagging_report(np.zeros((3, 2)), np.full((3, 2), 0.5), ["a", "b"])
    assert no_positives["mAP"] is None and no_positives["lwlrap"] is None
    assert no_positives["d_prime"] is None and no_positives["mean_auc"] is None
    assert no_positives["per_class_ap"] == {"a": None, "b": None}
    json.dumps(no_positives, allow_nan=False)
    targets = np.array([[1, 0], [0, 1]])
    perfect = metrics.tagging_report(targets, targets * 0.8 + 0.1, ["a", "b"])
    assert perfect["mAP"] == 1.0 and perfect["lwlrap"] == 1.0 and perfect["mean_auc"] == 1.0
    assert perfect["d_prime"] is None  # infinite
    json.dumps(perfect, allow_nan=False)


def test_tagging_report_label_errors():
    targets, scores = random_case(0, n_clips=10, n_classes=3)
    with pytest.raises(ValueError, match="labels: 2 labels for 3"):
        metrics.tagging_report(targets, scores, ["a", "b"])
    with pytest.raises(ValueError, match="labels: duplicate.*'a'"):
        metrics.tagging_report(targets, scores, ["a", "b", "a"])


# ---------------------------------------------------------------- bad input


ALL_METRICS = [
    metrics.average_precision_per_class,
    metrics.mean_average_precision,
    metrics.roc_auc_per_class,
    metrics.d_prime,
    metrics.lwlrap,
    lambda t, s: metrics.tagging_report(t, s, [str(i) for i in range(np.shape(s)[-1])]),
]


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_bad_input_is_refused_with_clear_errors(metric):
    targets, scores = random_case(1, n_clips=10, n_classes=4)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(10, 4\) vs scores \(10, 3\)"):
        metric(targets, scores[:, :3])
    with pytest.raises(ValueError, match=r"shape mismatch"):
        metric(targets[:9], scores)
    half = targets.astype(float)
    half[3, 2] = 0.5
    with pytest.raises(ValueError, match=r"targets: must be multi-hot 0/1.*clip 3, class 2"):
        metric(half, scores)
    with pytest.raises(ValueError, match=r"targets: must be multi-hot"):
        metric(targets * 2 + 0, scores)
    nan_targets = targets.astype(float)
    nan_targets[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"targets: must be multi-hot"):
        metric(nan_targets, scores)
    with pytest.raises(ValueError, match=r"targets: must be a numeric or bool array"):
        metric(targets.astype(str), scores)
    nan_scores = scores.copy()
    nan_scores[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"scores: 1 NaN and 0 infinite.*clip 4, class 1"):
        metric(targets, nan_scores)
    inf_scores = scores.copy()
    inf_scores[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"scores: 0 NaN and 1 infinite"):
        metric(targets, inf_scores)
    with pytest.raises(ValueError, match=r"scores: empty input"):
        metric(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"scores: empty input"):
        metric(np.zeros((5, 0)), np.zeros((5, 0)))
    with pytest.raises(ValueError, match=r"scores: expected a 2-D array.*x\[:, None\]"):
        metric(targets[:, 0], scores[:, 0])
    with pytest.raises(ValueError, match=r"scores: not a numeric array"):
        metric(targets, [["a"] * 4] * 10)


def test_undefined_summaries_raise():
    with pytest.raises(ValueError, match="no class has a positive clip"):
        metrics.mean_average_precision(np.zeros((4, 3)), np.random.default_rng(0).random((4, 3)))
    with pytest.raises(ValueError, match="no class has both a positive and a negative"):
        metrics.d_prime(np.ones((4, 3)), np.random.default_rng(0).random((4, 3)))
    with pytest.raises(ValueError, match="no clip has a positive label"):
        metrics.lwlrap(np.zeros((4, 3)), np.random.default_rng(0).random((4, 3)))


def test_aggregate_chunks_bad_input():
    scores = np.random.default_rng(0).random((4, 3))
    with pytest.raises(ValueError, match="method: must be 'mean' or 'max', got 'median'"):
        metrics.aggregate_chunks(scores, [0, 0, 1, 1], method="median")
    with pytest.raises(ValueError, match="length mismatch, 3 clip ids for 4 chunks"):
        metrics.aggregate_chunks(scores, [0, 0, 1])
    with pytest.raises(ValueError, match="clip_ids: expected a 1-D"):
        metrics.aggregate_chunks(scores, [[0, 1], [1, 0], [0, 0], [1, 1]])
    with pytest.raises(ValueError, match="chunk_scores: empty input"):
        metrics.aggregate_chunks(np.zeros((0, 3)), [])
    bad = scores.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="chunk_scores: 1 NaN"):
        metrics.aggregate_chunks(bad, [0, 0, 1, 1])


def test_same_top_k_compares_the_sets_of_the_k_highest_scores():
    reference = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    scores = np.array([[0.7, 0.8, 0.9, 0.0],   # same three, another order: kept
                       [0.1, 0.2, 0.5, 0.4],   # same three again
                       [0.5, 0.4, 0.1, 0.2]])  # the third and fourth swap: not kept
    assert metrics.same_top_k(scores, reference, k=3).tolist() == [True, True, False]
    assert metrics.same_top_k(scores, reference, k=2).tolist() == [False, True, True]
    assert metrics.same_top_k(scores, reference, k=9).all()  # k past the classes: all of them
    with pytest.raises(metrics.InputError, match="shapes differ"):
        metrics.same_top_k(scores[:2], reference)
