"""Risk-coverage, AURC, error AUROC, ECE and the bootstrap interval, against values worked out by hand."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmmed.reasoning.metrics import accuracy_with_ci, error_auroc, expected_calibration_error, risk_coverage


def test_risk_coverage_answers_the_most_confident_first_and_keeps_ties_together():
    # confidences 0.9, 0.9, 0.5, 0.1 with correctness T, F, T, F
    curve = risk_coverage([0.9, 0.9, 0.5, 0.1], [True, False, True, False])
    assert curve["coverage"] == [0.5, 0.75, 1.0]
    assert curve["risk"] == pytest.approx([1 / 2, 1 / 3, 2 / 4])
    # AURC: each block's risk weighted by its share: 0.5 * 2/4 + (1/3) * 1/4 + 0.5 * 1/4
    assert curve["aurc"] == pytest.approx(0.5 * 0.5 + (1 / 3) * 0.25 + 0.5 * 0.25)


def test_a_perfect_ranking_has_the_smallest_aurc_and_a_constant_one_the_error_rate():
    correct = [True, True, True, False]
    perfect = risk_coverage([4, 3, 2, 1], correct)["aurc"]  # risks 0, 0, 0, 1/4 at coverage 1/4 .. 1
    assert perfect == pytest.approx(0.25 * 0.25)
    assert risk_coverage([1, 1, 1, 1], correct)["aurc"] == pytest.approx(0.25)  # one block: the error rate


def test_error_auroc_is_sklearns_with_wrong_answers_as_positives():
    rng = np.random.default_rng(0)
    uncertainty = rng.integers(0, 4, 50).astype(float)  # many ties, as entropies of 5 samples have
    correct = rng.random(50) > 0.4
    assert error_auroc(uncertainty, correct) == pytest.approx(roc_auc_score(~correct, uncertainty))
    assert np.isnan(error_auroc([0.1, 0.2], [True, True]))


def test_ece_by_hand():
    # bins of width 0.5: [0.2, 0.4] -> mean 0.3, accuracy 0.5; [0.6, 1.0] -> mean 0.8, accuracy 1.0
    result = expected_calibration_error([0.2, 0.4, 0.6, 1.0], [True, False, True, True], bins=2)
    assert result["ece"] == pytest.approx(0.5 * abs(0.3 - 0.5) + 0.5 * abs(0.8 - 1.0))
    assert [b["count"] for b in result["bins"]] == [2, 2]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_calibration_error([1.5], [True], bins=2)


def test_the_bootstrap_interval_brackets_the_accuracy_and_is_reproducible():
    correct = [True] * 80 + [False] * 20
    a = accuracy_with_ci(correct, num_bootstrap=2000, confidence=0.95, seed=0)
    assert a["accuracy"] == 0.8 and a == accuracy_with_ci(correct, 2000, 0.95, 0)
    low, high = a["ci"]
    # the normal approximation's half-width is 1.96 * sqrt(0.8 * 0.2 / 100) = 0.078; the bootstrap's is close
    assert low == pytest.approx(0.8 - 0.078, abs=0.02) and high == pytest.approx(0.8 + 0.078, abs=0.02)
