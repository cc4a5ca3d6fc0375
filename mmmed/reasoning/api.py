"""Answers with reasoning from Python and predict.py: ``reason(predictor, questions, sources, mode, search)``.

    from mmmed.infer.inference import load
    from mmmed.reasoning.api import reason
    predictor = load("outputs/criterion_demo")
    [answer] = reason(predictor, ["Does this ECG meet the criteria for sinus tachycardia?"], ["rec_hr"],
                      "uncertainty_search", {"index": "outputs/knowledge/cards", "threshold": 0.5, ...})
    answer["answer"], answer["passages"], answer["entropies"], answer["rounds"]

``mode`` is ``sample`` (``num_samples`` answers, majority vote, their entropy) or ``uncertainty_search`` (the loop of
``mmmed.reasoning.search``). ``search`` holds the keys of ``search:`` in conf/predict.yaml; ``threshold`` must be a
number here (eval.py calibrates one on validation and writes it to reasoning.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from mmmed.knowledge.bm25_index import KnowledgeIndex
from mmmed.knowledge.cases import CaseIndex, case_passages, record_embeddings
from mmmed.model.generation import GenerationSettings
from mmmed.reasoning.sampling import longer_prompts, model_queries, sampled_answers
from mmmed.reasoning.search import QUERY_INSTRUCTION, SearchSettings, UncertaintyGuidedSearch
from mmmed.reasoning.uncertainty import AnswerKey

MODES = ("sample", "uncertainty_search")


def reason(predictor, questions: list[str], sources: list, mode: str, search: Mapping,
           index: KnowledgeIndex | None = None) -> list[dict]:
    """One answer per question about its source (a file, ``a|b``, a list, ``{modality: [files]}`` or prepared
    encoder inputs), each with ``answer``, ``samples``, ``entropies``, ``rounds``, ``queries`` and ``passages``."""
    if mode not in MODES:
        raise ValueError(f"reasoning must be one of none, {', '.join(MODES)}, not {mode!r}")
    if isinstance(search.get("threshold"), str):
        raise ValueError(f"search.threshold must be a number of bits here, not {search['threshold']!r} "
                         "(eval.py ... reasoning=uncertainty_search calibrates one on validation: reasoning.json)")
    records = [_record(predictor, source) for source in sources]
    with longer_prompts(predictor, search["max_prompt_tokens"]):
        return _reason(predictor, questions, records, mode, search, index)


def _reason(predictor, questions: list[str], records: list, mode: str, search: Mapping,
            index: KnowledgeIndex | None) -> list[dict]:
    generation = GenerationSettings(max_new_tokens=search.get("max_new_tokens") or predictor.config["max_new_tokens"],
                                    do_sample=True, temperature=search["temperature"], top_p=search["top_p"],
                                    num_samples=search["num_samples"], use_cache=True)
    sample = sampled_answers(predictor, generation, search["batch_size"], search["seed"])
    case_lookup, cases_k = None, 0
    if mode == "uncertainty_search" and search.get("cases"):
        cases = CaseIndex.load(search["cases"])
        case_lookup = lambda record, k: case_passages(cases, record_embeddings(predictor.model, [record])[0], k)  # noqa: E731
        cases_k = search["cases_k"]
    settings = SearchSettings(threshold=float(search["threshold"]), max_rounds=search["max_rounds"],
                              max_queries=search["max_queries"], top_k=search["top_k"], queries=search["queries"],
                              seed=search["seed"], cases_k=cases_k)
    if mode == "sample":
        settings = dataclasses.replace(settings, trigger="never")  # round 0 only: no index is read
    else:
        index = index or KnowledgeIndex.load(search["index"])
    writer = model_queries(predictor, QUERY_INSTRUCTION, search["batch_size"]) if search["queries"] == "model" else None
    loop = UncertaintyGuidedSearch(sample, index, AnswerKey(predictor.config["answer_classes"]), settings,
                                   write_queries=writer, case_lookup=case_lookup)
    return [result.to_json() for result in loop.run(list(questions), records)]


def _record(predictor, source) -> dict:
    """A source's encoder inputs: files through the predictor's modality plugins (the first evaluation view)."""
    if isinstance(source, (str, Path, list, tuple)) or (isinstance(source, dict) and _holds_paths(source)):
        return predictor.record_inputs(source)[0]
    return source


def _holds_paths(source: dict) -> bool:
    return all(isinstance(v, (list, tuple)) and all(isinstance(p, (str, Path)) for p in v) for v in source.values())
