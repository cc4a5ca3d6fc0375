from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmmed.eval.classification_metrics import auroc_with_ci, per_class_prf
from mmmed.eval.metrics import UNPARSED

NAN = float("nan")


def test_per_class_prf_hand_counted():
    references = ["AF", "AF", "AF", "NORM", "NORM", "STTC", "STTC", None]
    predicted = ["AF", "AF", "NORM", "NORM", UNPARSED, "STTC", "AF", "NORM"]
    result = per_class_prf(predicted, references, ["AF", "NORM", "STTC"])
    # Last row has no reference: its NORM prediction is not a false positive. 7 rows scored.
    # AF: tp 2 (rows 0, 1), fp 1 (row 6), fn 1 (row 2).
    # NORM: tp 1 (row 3), fp 1 (row 2), fn 1 (row 4: unparsed is a miss, and a false positive of no class).
    # STTC: tp 1 (row 5), fp 0, fn 1 (row 6).
    expected = {
        "AF": {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3},
        "NORM": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
        "STTC": {"precision": 1.0, "recall": 1 / 2, "f1": 2 * 1 * (1 / 2) / (1 + 1 / 2), "support": 2},
    }
    assert result["per_class"].keys() == expected.keys()
    for cls, values in expected.items():
        assert result["per_class"][cls] == pytest.approx(values, abs=1e-12)
    assert result["macro"] == pytest.approx({"precision": 13 / 18, "recall": 5 / 9, "f1": 11 / 18, "support": 7})
    # Pooled: tp 4, fp 2, fn 3.
    assert result["micro"] == pytest.approx({"precision": 4 / 6, "recall": 4 / 7, "f1": 8 / 13, "support": 7})
    assert result["scored"] == 7
    assert result["predictions_outside_classes"] == 1
    assert json.loads(json.dumps(result)) == result  # plain floats and ints


def test_per_class_prf_class_never_predicted_scores_zero():
    result = per_class_prf(["A", "A"], ["A", "B"], ["A", "B"])
    assert result["per_class"]["B"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_class"]["A"] == pytest.approx({"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1})


@pytest.mark.parametrize(
    ("predicted", "references", "message"),
    [
        (["A"], ["A", "B"], "1 predictions but 2 references"),
        (["A", "A"], ["A", "C"], "\\['C'\\] are not in classes"),
        (["A"], [None], "no row has a reference class"),
    ],
)
def test_per_class_prf_rejects_bad_input(predicted, references, message):
    with pytest.raises(ValueError, match=message):
        per_class_prf(predicted, references, ["A", "B"])


def _pair_count_auroc(scores: list[float], targets: list[float]) -> float:
    """(concordant pairs + 0.5 ties) / (positives x negatives), counted pair by pair."""
    pos = [s for s, t in zip(scores, targets) if t == 1.0]
    neg = [s for s, t in zip(scores, targets) if t == 0.0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def _six_rows():
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.9, 0.1], [0.4, 0.5, 0.7],
                       [0.4, 0.1, 0.3], [0.3, 0.0, 0.2], [0.1, 0.7, 0.6]])
    targets = np.array([[1, 1, 0], [0, NAN, 0], [1, 0, 0],
                        [0, 0, NAN], [1, NAN, 0], [0, 1, 0]], dtype=float)
    return scores, targets, ["effusion", "edema", "pneumothorax"]


def test_auroc_hand_counted_nan_rows_and_single_class_label():
    scores, targets, labels = _six_rows()
    result = auroc_with_ci(scores, targets, labels, num_bootstrap=200, confidence=0.95, seed=0)
    # effusion: positives 0.9, 0.4, 0.3 vs negatives 0.8, 0.4, 0.1 -> 3 + (1 + 0.5) + 1 = 5.5 of 9 pairs.
    assert result["per_label"]["effusion"]["auroc"] == pytest.approx(5.5 / 9)
    assert result["per_label"]["effusion"]["auroc"] == pytest.approx(_pair_count_auroc(scores[:, 0], targets[:, 0]))
    # edema: rows 1 and 4 are not applicable; positives 0.2, 0.7 vs negatives 0.5, 0.1 -> 1 + 2 = 3 of 4.
    assert result["per_label"]["edema"]["auroc"] == pytest.approx(3 / 4)
    assert (result["per_label"]["edema"]["positives"], result["per_label"]["edema"]["negatives"]) == (2, 2)
    # pneumothorax has no positive: undefined and out of the macro.
    assert np.isnan(result["per_label"]["pneumothorax"]["auroc"])
    assert list(result["undefined"]) == ["pneumothorax"]
    assert "0 positive, 5 negative" in result["undefined"]["pneumothorax"]
    assert result["macro_auroc"] == pytest.approx((5.5 / 9 + 3 / 4) / 2)


def test_auroc_matches_sklearn_on_random_data_with_ties_and_nans():
    rng = np.random.default_rng(7)
    targets = (rng.random((300, 4)) < 0.3).astype(float)
    scores = np.round(targets * 0.4 + rng.random((300, 4)), 1)  # rounding makes many ties
    targets[rng.random((300, 4)) < 0.25] = NAN
    result = auroc_with_ci(scores, targets, list("abcd"), num_bootstrap=10, confidence=0.9, seed=1)
    for c, label in enumerate("abcd"):
        rows = ~np.isnan(targets[:, c])
        assert result["per_label"][label]["auroc"] == pytest.approx(roc_auc_score(targets[rows, c], scores[rows, c]),
                                                                   abs=1e-12)


def _random_problem(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n_rows, 3)) < 0.4).astype(float)
    scores = targets * 0.8 + rng.normal(size=(n_rows, 3))
    return scores, targets


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_sklearn_aurocs():
    scores, targets = _random_problem(60, seed=3)
    num_bootstrap, seed = 50, 11
    result = auroc_with_ci(scores, targets, ["a", "b", "c"], num_bootstrap, 0.9, seed)
    draws = np.random.default_rng(seed).integers(0, 60, size=(num_bootstrap, 60))
    per_resample = np.array([[roc_auc_score(targets[rows, c], scores[rows, c]) for c in range(3)] for rows in draws])
    for c, label in enumerate("abc"):
        assert result["per_label"][label]["ci"] == pytest.approx(list(np.percentile(per_resample[:, c], [5, 95])))
    assert result["macro_auroc_ci"] == pytest.approx(list(np.percentile(per_resample.mean(axis=1), [5, 95])))


def test_bootstrap_ci_contains_estimate_is_seeded_and_narrows_with_more_rows():
    scores, targets = _random_problem(200, seed=5)
    result = auroc_with_ci(scores, targets, ["a", "b", "c"], 500, 0.95, seed=0)
    for entry in result["per_label"].values():
        assert entry["ci"][0] <= entry["auroc"] <= entry["ci"][1]
    assert result["macro_auroc_ci"][0] <= result["macro_auroc"] <= result["macro_auroc_ci"][1]
    assert auroc_with_ci(scores, targets, ["a", "b", "c"], 500, 0.95, seed=0) == result
    other_seed = auroc_with_ci(scores, targets, ["a", "b", "c"], 500, 0.95, seed=1)
    assert other_seed["macro_auroc_ci"] != result["macro_auroc_ci"]
    big_scores, big_targets = _random_problem(800, seed=5)
    big = auroc_with_ci(big_scores, big_targets, ["a", "b", "c"], 500, 0.95, seed=0)
    width = result["macro_auroc_ci"][1] - result["macro_auroc_ci"][0]
    big_width = big["macro_auroc_ci"][1] - big["macro_auroc_ci"][0]
    assert big_width < 0.75 * width  # about 1/2 expected from 4x the rows
    assert result["bootstrap"] == {"resamples": 500, "confidence": 0.95, "seed": 0,
                                   "resamples_with_undefined_labels": 0}


def test_bootstrap_counts_resamples_missing_a_class():
    n_rows, num_bootstrap, seed = 20, 300, 4
    targets = np.zeros((n_rows, 1))
    targets[0, 0] = 1.0  # one positive: every resample that misses row 0 leaves the label undefined
    scores = np.linspace(1.0, 0.0, n_rows)[:, None]
    result = auroc_with_ci(scores, targets, ["rare"], num_bootstrap, 0.95, seed)
    draws = np.random.default_rng(seed).integers(0, n_rows, size=(num_bootstrap, n_rows))
    missing = int((~(draws == 0).any(axis=1)).sum())
    assert 0 < missing < num_bootstrap
    assert result["bootstrap"]["resamples_with_undefined_labels"] == missing
    assert result["per_label"]["rare"]["auroc"] == 1.0
    assert result["per_label"]["rare"]["ci"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, t: (s[:, :2], t), "must both be \\(N, C\\)"),
        (lambda s, t: (np.where(np.eye(6, 3) == 1, NAN, s), t), "scores must be finite; row 0, label 'effusion'"),
        (lambda s, t: (s, np.where(np.eye(6, 3, k=-1) == 1, 2.0, t)), "row 1, label 'effusion' is 2.0"),
    ],
)
def test_auroc_rejects_bad_input(change, message):
    scores, targets, labels = _six_rows()
    scores, targets = change(scores, targets)
    with pytest.raises(ValueError, match=message):
        auroc_with_ci(scores, targets, labels, 10, 0.95, 0)
