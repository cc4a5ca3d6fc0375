"""Uncertainty-guided search (Med-Gemini's inference loop) over a local knowledge index, and its controls.

Per question, round 0 samples ``num_samples`` answers to the plain question. While the entropy of their final
answers (:mod:`mmmed.reasoning.uncertainty`) is above ``threshold`` and fewer than ``max_rounds`` retrieval rounds
have run, the loop writes up to ``max_queries`` search queries, retrieves the ``top_k`` best passages for them, and
samples again with the passages in the prompt (:func:`with_context`). The answer is the majority of the last round.

Queries: Med-Gemini has the model write them. A small model fine-tuned to read signals writes poor queries, so the
default (``queries: question_and_rationales``) is extractive and still follows the loop's idea: the question itself,
then the rationales of the two most frequent disagreeing answers (what the samples disagree about). ``queries:
model`` asks the model itself to write one query per line (:data:`QUERY_INSTRUCTION`).

Triggers (``trigger``), the controls an honest measurement needs:

* ``uncertainty``: retrieve when the entropy is above the threshold (the method);
* ``always``: retrieve once for every question, whatever its entropy;
* ``never``: sample and vote only (``reasoning=sample``);
* ``random``: retrieve for a random subset of questions of a given rate (the uncertainty row's rate);
* ``placebo``: retrieve like ``uncertainty`` but put passages from unrelated documents in the prompt.

Every result records the passages it used (id, title, heading, source, licence, score), the entropy and the
majority answer of each round, the queries, and the number of retrieval rounds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mmmed.eval.rationale import parse_rationale
from mmmed.knowledge.bm25_index import KnowledgeIndex, Passage
from mmmed.reasoning.uncertainty import AnswerKey, answer_entropy, majority

TRIGGERS = ("uncertainty", "always", "never", "random", "placebo")
QUERY_SOURCES = ("question_and_rationales", "model")
QUERY_INSTRUCTION = "Write up to three short search queries, one per line, that would settle this question."

# samples(questions, records) -> completions per question: the model's sampled answers (N per question)
SampleFn = Callable[[list[str], list], list[list[str]]]


@dataclass(frozen=True)
class SearchSettings:
    """How the loop runs (conf: ``search:`` in eval.yaml and predict.yaml)."""

    threshold: float  # bits: retrieve while the answers' entropy is above this
    max_rounds: int  # retrieval rounds at most (Med-Gemini: up to 4 on MedQA)
    max_queries: int  # queries per round
    top_k: int  # passages put in the prompt per round
    queries: str  # question_and_rationales | model
    trigger: str = "uncertainty"
    random_rate: float = 0.0  # trigger=random: the share of questions that retrieve
    seed: int = 0
    cases_k: int = 0  # similar training cases added per retrieval round (needs a case lookup; placebo adds none)

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"search trigger must be one of {TRIGGERS}, not {self.trigger!r}")
        if self.queries not in QUERY_SOURCES:
            raise ValueError(f"search queries must be one of {QUERY_SOURCES}, not {self.queries!r}")
        if self.max_rounds < 0 or self.max_queries < 1 or self.top_k < 1:
            raise ValueError("search needs max_rounds >= 0, max_queries >= 1 and top_k >= 1")
        if not 0.0 <= self.random_rate <= 1.0:
            raise ValueError(f"random_rate {self.random_rate} is not in [0, 1]")


@dataclass
class SearchResult:
    """One question's answer and how it was reached."""

    answer: str  # the majority completion's final answer (text after "Answer:" when it gave a rationale)
    completion: str  # a completion of the last round that gave the majority answer
    reasoning: str | None = None  # that completion's rationale, when it wrote "Reasoning: ... Answer: ..."
    key: str = ""  # the majority answer's key (its class, or its items)
    rounds: int = 0  # retrieval rounds run
    entropies: list[float] = field(default_factory=list)  # per round, round 0 first
    majorities: list[str] = field(default_factory=list)  # the majority key per round
    queries: list[list[str]] = field(default_factory=list)  # per retrieval round
    passages: list[dict] = field(default_factory=list)  # citations of the passages in the final prompt
    samples: list[str] = field(default_factory=list)  # the last round's completions
    seconds: float = 0.0

    @property
    def retrieved(self) -> bool:
        return self.rounds > 0

    def to_json(self) -> dict:
        return {"answer": self.answer, "completion": self.completion, "reasoning": self.reasoning,
                "answer_key": self.key, "rounds": self.rounds,
                "entropies": list(self.entropies), "majorities": self.majorities,
                "queries": self.queries, "passages": self.passages, "samples": self.samples,
                "seconds": round(self.seconds, 4)}


def with_context(question: str, passages: Sequence[Passage]) -> str:
    """The question with retrieved passages before it, each numbered and titled (the demo trains on this shape)."""
    if not passages:
        return question
    lines = [f"[{n}] {p.chunk.title}" + (f" ({p.chunk.heading})" if p.chunk.heading else "") + f": {p.chunk.text}"
             for n, p in enumerate(passages, start=1)]
    return "Context:\n" + "\n".join(lines) + "\n\n" + question


class UncertaintyGuidedSearch:
    """The loop over a batch of questions; ``sample`` draws the model's answers, ``index`` holds the knowledge."""

    def __init__(self, sample: SampleFn, index: KnowledgeIndex | None, answer_key: AnswerKey, settings: SearchSettings,
                 write_queries: Callable[[list[str], list], list[list[str]]] | None = None,
                 case_lookup: Callable[[object, int], list[Passage]] | None = None):
        if settings.cases_k and case_lookup is None:
            raise ValueError("cases_k > 0 needs a case index (search.cases)")
        if index is None and settings.trigger != "never":
            raise ValueError(f"trigger={settings.trigger} retrieves: it needs a knowledge index")
        if settings.queries == "model" and write_queries is None:
            raise ValueError("queries=model needs a query writer (the model, asked with QUERY_INSTRUCTION)")
        self.sample = sample
        self.index = index
        self.key = answer_key
        self.settings = settings
        self.write_queries = write_queries
        self.case_lookup = case_lookup
        self.rng = random.Random(settings.seed)

    def run(self, questions: list[str], records: list) -> list[SearchResult]:
        """Answer each question about its record (an encoder-input dict), retrieving as ``settings.trigger`` says."""
        s = self.settings
        start = time.perf_counter()
        chosen = self._random_choice(len(questions)) if s.trigger == "random" else None
        results = [SearchResult("", "") for _ in questions]
        passages: list[list[Passage]] = [[] for _ in questions]
        active = list(range(len(questions)))
        for round_no in range(s.max_rounds + 1):
            prompts = [with_context(questions[i], passages[i]) for i in active]
            completions = self.sample(prompts, [records[i] for i in active])
            still: list[int] = []
            for i, samples in zip(active, completions):
                keys = [self.key(c) for c in samples]
                result = results[i]
                result.entropies.append(answer_entropy(keys))
                result.majorities.append(majority(keys))
                result.samples = list(samples)
                if round_no < s.max_rounds and self._retrieves(i, round_no, result.entropies[-1], chosen):
                    still.append(i)
            if not still:
                break
            queries = self._queries([questions[i] for i in still], [records[i] for i in still],
                                    [results[i].samples for i in still])
            for i, query_list in zip(still, queries):
                results[i].queries.append(query_list)
                found = self._retrieve(query_list)
                if s.cases_k and s.trigger != "placebo":  # the record's nearest training cases, by embedding
                    found += self.case_lookup(records[i], s.cases_k)
                held = {p.chunk.chunk_id for p in passages[i]}  # earlier rounds' passages stay in the prompt
                passages[i] = passages[i] + [p for p in found if p.chunk.chunk_id not in held]
                results[i].rounds += 1
            active = still
        elapsed = (time.perf_counter() - start) / max(len(questions), 1)
        for i, result in enumerate(results):
            keys = [self.key(c) for c in result.samples]
            result.key = majority(keys)
            result.completion = next(c for c, k in zip(result.samples, keys) if k == result.key)
            parsed = parse_rationale(result.completion)
            result.answer = parsed.answer if parsed else result.completion
            result.reasoning = parsed.reasoning if parsed else None
            result.passages = [p.citation() for p in passages[i]]
            result.seconds = elapsed  # the batch's time, shared equally: questions are sampled together
        return results

    def _random_choice(self, n: int) -> set[int]:
        return set(self.rng.sample(range(n), round(self.settings.random_rate * n)))

    def _retrieves(self, i: int, round_no: int, entropy: float, chosen: set[int] | None) -> bool:
        trigger = self.settings.trigger
        if trigger == "never":
            return False
        if trigger == "always":
            return round_no == 0
        if trigger == "random":
            return round_no == 0 and i in chosen
        return entropy > self.settings.threshold  # uncertainty, placebo

    def _queries(self, questions: list[str], records: list, samples: list[list[str]]) -> list[list[str]]:
        if self.settings.queries == "model":
            written = self.write_queries(questions, records)
            return [[q for q in lines if q.strip()][: self.settings.max_queries] or [question]
                    for question, lines in zip(questions, written)]
        return [self._extractive_queries(question, completions) for question, completions in zip(questions, samples)]

    def _extractive_queries(self, question: str, completions: list[str]) -> list[str]:
        """The question, then the rationales (or answers) of the most frequent disagreeing answers."""
        by_key: dict[str, list[str]] = {}
        for completion in completions:
            by_key.setdefault(self.key(completion), []).append(completion)
        ranked = sorted(by_key.values(), key=len, reverse=True)
        queries = [question]
        for group in ranked:
            parsed = parse_rationale(group[0])
            text = parsed.reasoning if parsed else group[0]
            if text.strip() and text not in queries:
                queries.append(text)
        return queries[: self.settings.max_queries]

    def _retrieve(self, queries: list[str]) -> list[Passage]:
        """The ``top_k`` best passages over all queries (a passage's best score counts); placebo: unrelated ones."""
        best: dict[str, Passage] = {}
        for query in queries:
            for passage in self.index.search(query, k=self.settings.top_k):
                held = best.get(passage.chunk.chunk_id)
                if held is None or passage.score > held.score:
                    best[passage.chunk.chunk_id] = passage
        ranked = sorted(best.values(), key=lambda p: (-p.score, p.chunk.chunk_id))[: self.settings.top_k]
        if self.settings.trigger != "placebo":
            return ranked
        related = {p.chunk.doc_id for p in best.values()}
        unrelated = [c for c in self.index.chunks if c.doc_id not in related]
        picked = self.rng.sample(unrelated, min(len(ranked) or self.settings.top_k, len(unrelated)))
        return [Passage(c, 0.0) for c in picked]
