"""``selftrain.json`` and ``selftrain.png``: per round, what was sampled, kept and learned, and the rows compared.

Rows (``rows``), each scored on the same held-out questions by the evaluation's code:

* ``final``: the round with the best validation accuracy, asked for reasoning;
* ``seed_only``: round 0 (the seed rationales plus the answer-only data, no sampled rationale);
* ``answer_only_baseline``: the answer-only data alone, from the same start, as many optimizer steps as ``final``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmmed.atomic_files import write_file_atomic
from mmmed.eval.evaluation import json_safe

ROW_STYLES = {"final": ("tab:green", "-"), "seed_only": ("tab:blue", "--"), "answer_only_baseline": ("tab:red", ":")}


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> list[float] | None:
    """The 95% Wilson score interval of a proportion ``correct / total`` (None without questions)."""
    if total <= 0:
        return None
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def write_report(out: Path, report: dict) -> None:
    """Write ``selftrain.json`` and ``selftrain.png`` into ``out``."""
    text = json.dumps(json_safe(report), indent=2).encode()
    write_file_atomic(out / "selftrain.json", lambda handle: handle.write(text))
    plot_rounds(report, out / "selftrain.png")


def plot_rounds(report: dict, path: Path) -> None:
    """Validation accuracy per round, the rows' test accuracies as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["val"].get("accuracy") for r in rounds], "o-", color="black", label="validation, per round")
    for name, row in report["rows"].items():
        if row.get("test_accuracy") is None:
            continue
        color, style = ROW_STYLES.get(name, ("gray", "-."))
        ax.axhline(row["test_accuracy"], color=color, linestyle=style,
                   label=f"test, {name.replace('_', ' ')} ({row['test_accuracy']:.3f}, {row['steps']} steps)")
    ax.axvline(report["best_round"], color="tab:green", alpha=0.3, linewidth=6, label="best round (validation)")
    ax.set_xticks(xs)
    ax.set_xlabel("round (0: seeds + answers; n: the model's own kept rationales)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Self-training")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
