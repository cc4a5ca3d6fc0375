"""How good the answers and the uncertainty are: accuracy with a bootstrap interval, the risk-coverage curve and
its area (AURC), the AUROC of uncertainty for detecting errors, and calibration (ECE).

Risk-coverage (Geifman and El-Yaniv, 2017): answer only the questions the model is most confident about; at
coverage c (the share answered) the risk is the error rate among them. Questions are ranked by confidence, ties
kept together (a tie is answered or withheld as a block: no order within it is invented). AURC is the mean risk
over the coverage points where a block ends, weighted by the block's size: a perfect confidence ranks every
error last; a constant confidence gives the overall error rate at every coverage.

ECE (expected calibration error): confidences in ``bins`` equal-width bins; the gap between a bin's mean
confidence and its accuracy, weighted by its share of questions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy_with_ci(correct: Sequence[bool], num_bootstrap: int, confidence: float, seed: int) -> dict:
    """Accuracy and its percentile bootstrap interval (questions resampled with replacement)."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        raise ValueError("accuracy of no questions is undefined")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(num_bootstrap, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"accuracy": float(values.mean()), "ci": [float(low), float(high)], "n": int(values.size),
            "bootstrap": {"samples": num_bootstrap, "confidence": confidence, "seed": seed}}


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> dict:
    """The curve (``coverage``, ``risk`` at the end of each tie block, most confident first) and its AURC."""
    conf = np.asarray(confidence, dtype=float)
    wrong = 1.0 - np.asarray(correct, dtype=float)
    if conf.size == 0 or conf.size != wrong.size:
        raise ValueError("risk-coverage needs one confidence per answer, and at least one answer")
    levels = np.unique(conf)[::-1]  # most confident first
    coverage, risk, aurc, answered, errors = [], [], 0.0, 0, 0.0
    for level in levels:
        block = conf == level
        answered += int(block.sum())
        errors += float(wrong[block].sum())
        coverage.append(answered / conf.size)
        risk.append(errors / answered)
        aurc += (errors / answered) * block.sum() / conf.size
    return {"coverage": coverage, "risk": risk, "aurc": float(aurc)}


def error_auroc(uncertainty: Sequence[float], correct: Sequence[bool]) -> float:
    """P(a wrong answer's uncertainty > a right one's), ties counted half; NaN when all are right or all wrong."""
    u = np.asarray(uncertainty, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    wrong_u, right_u = u[~ok], u[ok]
    if wrong_u.size == 0 or right_u.size == 0:
        return float("nan")
    greater = (wrong_u[:, None] > right_u[None, :]).sum()
    ties = (wrong_u[:, None] == right_u[None, :]).sum()
    return float((greater + 0.5 * ties) / (wrong_u.size * right_u.size))


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int) -> dict:
    """ECE over ``bins`` equal-width confidence bins in [0, 1] (the last bin includes 1.0), with each bin's figures."""
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=float)
    if conf.size == 0:
        raise ValueError("calibration of no answers is undefined")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    index = np.minimum((conf * bins).astype(int), bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        mean_conf, acc, share = float(conf[members].mean()), float(ok[members].mean()), float(members.mean())
        ece += share * abs(mean_conf - acc)
        table.append({"bin": [b / bins, (b + 1) / bins], "confidence": mean_conf, "accuracy": acc,
                      "count": int(members.sum())})
    return {"ece": float(ece), "bins": table}
