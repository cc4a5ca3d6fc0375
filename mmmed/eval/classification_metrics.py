"""Per-class precision/recall/F1 of parsed answers, and per-label AUROC with bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def _prf(precision: float, recall: float, f1: float, support: int) -> dict:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def per_class_prf(predicted: list[str], references: list[str | None], classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class (one-vs-rest), with macro and micro averages.

    Rows whose reference is ``None`` are not scored. A prediction outside ``classes`` (``unparsed``: the
    answer named no class or several) is a false negative of the reference class and a false positive of
    no class, so it lowers recall but no class's precision.

    Undefined ratios follow scikit-learn's ``zero_division=0``: a class never predicted has precision
    0.0, a class absent from the references has recall 0.0, and F1 is 0.0 when precision + recall is 0.
    ``macro`` is the unweighted mean over all of ``classes`` (absent classes included, at 0.0) and its
    support the number of scored rows. ``micro`` pools true/false positives and negatives over
    ``classes``: its recall equals the accuracy over scored rows, its precision is the accuracy over
    scored rows whose prediction names a class.

    Returns ``{"per_class": {cls: {"precision", "recall", "f1", "support"}}, "macro": {...},
    "micro": {...}, "scored": int, "predictions_outside_classes": int}`` of plain floats/ints.
    """
    if len(predicted) != len(references):
        raise ValueError(f"per_class_prf: {len(predicted)} predictions but {len(references)} references")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"per_class_prf: classes must be non-empty and distinct, got {classes}")
    pairs = [(p, r) for p, r in zip(predicted, references) if r is not None]
    if not pairs:
        raise ValueError("per_class_prf: no row has a reference class, nothing to score")
    unknown = sorted({r for _, r in pairs} - set(classes))
    if unknown:
        raise ValueError(f"per_class_prf: reference classes {unknown} are not in classes {classes}")
    preds = [p for p, _ in pairs]
    refs = [r for _, r in pairs]
    # labels=classes keeps out-of-class predictions out of every class's column: a miss, never a hit.
    p, r, f, s = precision_recall_fscore_support(refs, preds, labels=classes, zero_division=0)
    per_class = {cls: _prf(p[i], r[i], f[i], s[i]) for i, cls in enumerate(classes)}
    micro = precision_recall_fscore_support(refs, preds, labels=classes, average="micro", zero_division=0)
    return {
        "per_class": per_class,
        "macro": _prf(np.mean(p), np.mean(r), np.mean(f), len(pairs)),
        "micro": _prf(micro[0], micro[1], micro[2], len(pairs)),
        "scored": len(pairs),
        "predictions_outside_classes": sum(pred not in per_class for pred in preds),
    }


def _weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one label under per-row integer weights (a bootstrap resample is a weighting of rows).

    scores, positive: (n,) over the label's applicable rows; weights: (B, n), how often each row was drawn.
    AUROC = P(score_pos > score_neg) + 0.5 P(tie): each positive counts the negative weight below its
    score group plus half the negative weight in it. Returns (B,), NaN where a resample lacks a class.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # first row of each tie group
    w = weights[:, order]  # (B, n)
    pos = positive[order].astype(w.dtype)
    pos_per_group = np.add.reduceat(w * pos, starts, axis=1)  # (B, G)
    neg_per_group = np.add.reduceat(w * (1 - pos), starts, axis=1)  # (B, G)
    neg_below = np.cumsum(neg_per_group, axis=1) - neg_per_group
    concordant = (pos_per_group * (neg_below + 0.5 * neg_per_group)).sum(axis=1)
    pairs = pos_per_group.sum(axis=1) * neg_per_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, concordant / pairs, np.nan)


def _percentile_ci(values: np.ndarray, confidence: float) -> list[float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _check_auroc_inputs(scores: np.ndarray, targets: np.ndarray, labels: list[str], num_bootstrap: int,
                        confidence: float) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"auroc_with_ci: scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    if scores.shape[1] != len(labels):
        raise ValueError(f"auroc_with_ci: {scores.shape[1]} score columns but {len(labels)} labels")
    if scores.shape[0] == 0:
        raise ValueError("auroc_with_ci: no rows to score")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"auroc_with_ci: scores must be finite; row {bad[0]}, label {labels[bad[1]]!r} is "
                         f"{scores[bad[0], bad[1]]}")
    invalid = ~(np.isnan(targets) | (targets == 0.0) | (targets == 1.0))
    if invalid.any():
        bad = np.argwhere(invalid)[0]
        raise ValueError(f"auroc_with_ci: targets must be 1.0, 0.0 or NaN; row {bad[0]}, label "
                         f"{labels[bad[1]]!r} is {targets[bad[0], bad[1]]}")
    if num_bootstrap < 1:
        raise ValueError(f"auroc_with_ci: num_bootstrap must be >= 1, got {num_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"auroc_with_ci: confidence must lie in (0, 1), got {confidence}")


def auroc_with_ci(scores: np.ndarray, targets: np.ndarray, labels: list[str], num_bootstrap: int,
                  confidence: float, seed: int) -> dict:
    """Per-label ROC AUC and its macro average, with percentile bootstrap confidence intervals.

    scores: (N, C), higher = finding more likely present. targets: (N, C), 1.0 present, 0.0 absent,
    NaN not applicable (that row is not scored for that label, e.g. a yes/no question about one finding).
    AUROC counts tied scores as half concordant (as ``sklearn.metrics.roc_auc_score``).

    A label whose applicable rows hold only one class has AUROC NaN, is listed under ``undefined`` with
    the reason, and is left out of the macro average (the mean over defined labels).

    Bootstrap: the N rows are resampled with replacement ``num_bootstrap`` times (``numpy`` Generator
    seeded with ``seed``); each resample recomputes every defined label's AUROC and the macro over the
    labels defined in that resample. The interval is the percentile interval at ``confidence``
    (0.95 -> 2.5th and 97.5th percentiles) over the resamples where the value is defined;
    ``resamples_with_undefined_labels`` counts the resamples in which some defined label had one class.

    Returns ``{"macro_auroc", "macro_auroc_ci": [lo, hi], "per_label": {label: {"auroc", "ci": [lo, hi],
    "positives", "negatives"}}, "undefined": {label: reason}, "bootstrap": {"resamples", "confidence",
    "seed", "resamples_with_undefined_labels"}}`` of plain floats/ints (NaN where undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    _check_auroc_inputs(scores, targets, labels, num_bootstrap, confidence)
    n_rows = scores.shape[0]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_rows, size=(num_bootstrap, n_rows))  # (B, N) row indices
    # How often each row was drawn: a resample's AUROC is the AUROC under these weights.
    counts = np.bincount((np.arange(num_bootstrap)[:, None] * n_rows + draws).ravel(),
                         minlength=num_bootstrap * n_rows).reshape(num_bootstrap, n_rows)

    per_label: dict[str, dict] = {}
    undefined: dict[str, str] = {}
    boot = np.full((num_bootstrap, len(labels)), np.nan)  # (B, C), NaN for labels undefined there
    defined = []
    for c, label in enumerate(labels):
        applicable = ~np.isnan(targets[:, c])
        positive = targets[applicable, c] == 1.0
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        entry = {"auroc": float("nan"), "ci": [float("nan"), float("nan")], "positives": n_pos, "negatives": n_neg}
        per_label[label] = entry
        if n_pos == 0 or n_neg == 0:
            undefined[label] = (f"only one class among its {n_pos + n_neg} applicable rows "
                                f"({n_pos} positive, {n_neg} negative): AUROC needs both")
            continue
        label_scores = scores[applicable, c]
        entry["auroc"] = float(_weighted_auroc(label_scores, positive, np.ones((1, n_pos + n_neg)))[0])
        boot[:, c] = _weighted_auroc(label_scores, positive, counts[:, applicable])
        entry["ci"] = _percentile_ci(boot[:, c], confidence)
        defined.append(c)

    if defined:
        macro = float(np.mean([per_label[labels[c]]["auroc"] for c in defined]))
        boot_defined = boot[:, defined]
        has_any = ~np.isnan(boot_defined).all(axis=1)
        boot_macro = np.full(num_bootstrap, np.nan)
        boot_macro[has_any] = np.nanmean(boot_defined[has_any], axis=1)
        macro_ci = _percentile_ci(boot_macro, confidence)
        with_undefined = int(np.isnan(boot_defined).any(axis=1).sum())
    else:
        macro, macro_ci, with_undefined = float("nan"), [float("nan"), float("nan")], 0
    return {
        "macro_auroc": macro,
        "macro_auroc_ci": macro_ci,
        "per_label": per_label,
        "undefined": undefined,
        "bootstrap": {"resamples": int(num_bootstrap), "confidence": float(confidence), "seed": int(seed),
                      "resamples_with_undefined_labels": with_undefined},
    }
