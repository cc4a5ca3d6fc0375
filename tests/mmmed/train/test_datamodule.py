"""The DataModule refuses answer classes a YAML file turned into booleans (every answer would score wrong)."""

from __future__ import annotations

import pytest

from mmmed.train.datamodule import MultimodalDataModule


def make(answer_classes: dict, answer_parts: dict | None = None) -> MultimodalDataModule:
    return MultimodalDataModule(root="/nowhere", dataset=dict, splits={}, prepare=None, batch_size=2, eval_batch_size=2,
                                num_workers=0, max_length=32, answer_classes=answer_classes, max_new_tokens=4,
                                label_scores=None, report_metrics=None, seed=0, answer_parts=answer_parts)


def test_boolean_class_names_from_bare_yaml_yes_no_are_refused():
    with pytest.raises(ValueError, match=r"data.answer_classes: class names must be strings, got \[True, False\]"):
        make({True: "yes", False: "no"})
    with pytest.raises(ValueError, match=r"data.answer_parts.finding: class names must be strings"):
        make({}, {"finding": {"normal": "normal", True: "yes"}})
    assert make({"yes": "yes", "no": "no"}).answer_classes == {"yes": "yes", "no": "no"}
