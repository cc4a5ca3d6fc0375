"""Longer prompts for retrieved passages hold only inside the reasoning call: plain answers keep the training limit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mmmed.model.prompts import ChatFormatter, Modality
from mmmed.reasoning.sampling import longer_prompts

LONG_QUESTION = "<ecg>\n" + "Context: a passage about heart rates. " * 40 + "Does this ECG meet the criteria?"


def test_the_training_limit_is_back_after_the_call_and_after_a_failure(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], "You read ECGs.", max_length=96)
    predictor = SimpleNamespace(formatter=formatter)  # the one attribute longer_prompts reads: a predictor's formatter
    with pytest.raises(ValueError, match="max_length=96"):
        formatter.prompt_ids(LONG_QUESTION, {"ecg": 1})
    with longer_prompts(predictor, 768):
        assert len(formatter.prompt_ids(LONG_QUESTION, {"ecg": 1})) > 96  # passages fit while reasoning
    assert formatter.max_length == 96
    with pytest.raises(RuntimeError), longer_prompts(predictor, 768):
        raise RuntimeError("the model failed mid-search")
    assert formatter.max_length == 96
    with pytest.raises(ValueError, match="max_length=96"):  # a plain question afterwards is checked as in training
        formatter.prompt_ids(LONG_QUESTION, {"ecg": 1})
    with longer_prompts(predictor, 32):  # never shorter than training's limit
        assert formatter.max_length == 96
