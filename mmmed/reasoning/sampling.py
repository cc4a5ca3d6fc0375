"""The model's side of the loop: greedy and sampled completions from a ``MultimodalPredictor``, in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from mmmed.model.generation import GenerationSettings


@contextmanager
def longer_prompts(predictor, max_prompt_tokens: int) -> Iterator[None]:
    """While inside, prompts with retrieved passages may reach ``max_prompt_tokens`` (training's ``max_length`` is a
    limit on training sequences; a longer prompt is still refused beyond this, never truncated). The predictor's
    own limit is back on exit, so its plain answers afterwards are checked as before."""
    before = predictor.formatter.max_length
    predictor.formatter.max_length = max(before, int(max_prompt_tokens))
    try:
        yield
    finally:
        predictor.formatter.max_length = before


def sampled_answers(predictor, settings: GenerationSettings, batch_size: int, seed: int) -> Callable:
    """``f(questions, records) -> [[completion] * settings.num_samples per question]``, ``batch_size`` questions per
    forward pass; the generator is seeded once, so a run draws the same samples every time."""
    if not settings.do_sample:
        raise ValueError("uncertainty needs sampled answers: do_sample must be true")
    generator_state = {"seeded": False}

    def sample(questions: list[str], records: list) -> list[list[str]]:
        if not generator_state["seeded"]:
            torch.manual_seed(seed)
            generator_state["seeded"] = True
        out: list[list[str]] = []
        for start in range(0, len(questions), batch_size):
            out += predictor.generate(questions[start:start + batch_size], records[start:start + batch_size], settings)
        return out

    return sample


def greedy_answers(predictor, batch_size: int) -> Callable:
    """``f(questions, records) -> [greedy answer per question]``, batched as validation batches."""

    def greedy(questions: list[str], records: list) -> list[str]:
        out: list[str] = []
        for start in range(0, len(questions), batch_size):
            out += predictor.answer_batch(questions[start:start + batch_size], records[start:start + batch_size])
        return out

    return greedy


def model_queries(predictor, instruction: str, batch_size: int) -> Callable:
    """``f(questions, records) -> [[query, ...] per question]``: the model's greedy answer to the question followed by
    ``instruction`` on its own line, one query per line (``queries: model``)."""

    def write(questions: list[str], records: list) -> list[list[str]]:
        asked = [f"{question}\n{instruction}" for question in questions]
        written = greedy_answers(predictor, batch_size)(asked, records)
        return [[line.strip(" -*0123456789.").strip() for line in text.splitlines() if line.strip()] for text in written]

    return write
