"""The uncertainty-guided loop: when it retrieves, what it puts in the prompt, when it stops, what it records.

The model is replaced by a scripted sampler here (a function of the prompt), because what is tested is the
loop's control flow; tests/test_reasoning_demo.py runs the loop on the real embedded LLM.
"""

import math

import pytest

from mmmed.knowledge.bm25_index import KnowledgeIndex
from mmmed.knowledge.documents import Chunk
from mmmed.reasoning.search import SearchSettings, UncertaintyGuidedSearch, with_context
from mmmed.reasoning.uncertainty import AnswerKey

YES_NO = {"YES": r"^\W*yes\b", "NO": r"^\W*no\b"}
SPLIT = -(0.6 * math.log2(0.6) + 0.4 * math.log2(0.4))  # 3 yes, 2 no: 0.971 bits


def card(doc_id: str, title: str, text: str) -> Chunk:
    return Chunk(f"{doc_id}#0", doc_id, title, "Criterion", text, f"Citation of {title}", "CC0-1.0", f"{doc_id}.md")


INDEX = KnowledgeIndex.build([
    card("tachy", "Sinus tachycardia", "A heart rate above 100 bpm."),
    card("brady", "Sinus bradycardia", "A heart rate below 60 bpm."),
    card("effusion", "Pleural effusion", "Blunting of the costophrenic angle."),
    card("ptx", "Pneumothorax", "A visceral pleural line with no lung markings beyond it."),
], k1=1.5, b=0.75, method="lucene", stopwords="en")


class Scripted:
    """Answers "Yes." five times once the prompt holds the tachycardia criterion; before that, a 3:2 split."""

    def __init__(self, uncertain_always: bool = False):
        self.prompts: list[list[str]] = []
        self.uncertain_always = uncertain_always

    def __call__(self, prompts, records):
        self.prompts.append(list(prompts))
        out = []
        for prompt in prompts:
            if "above 100 bpm" in prompt and not self.uncertain_always:  # the card's criterion is in the prompt
                out.append(["Reasoning: 120 bpm is above 100.\nAnswer: Yes."] * 5)
            elif prompt.startswith("Stated"):
                out.append(["No."] * 5)
            else:
                out.append(["Reasoning: fast.\nAnswer: Yes."] * 3 + ["Reasoning: looks calm.\nAnswer: No."] * 2)
        return out


def settings(**changes) -> SearchSettings:
    values = dict(threshold=0.5, max_rounds=2, max_queries=3, top_k=1, queries="question_and_rationales")
    return SearchSettings(**(values | changes))


QUESTIONS = ["Does this ECG meet the criteria for sinus tachycardia?", "Stated: is the rate above 80 bpm?"]


def test_an_uncertain_question_retrieves_and_is_answered_again_with_its_source():
    sampler = Scripted()
    results = UncertaintyGuidedSearch(sampler, INDEX, AnswerKey(YES_NO), settings()).run(QUESTIONS, [{}, {}])
    unsure, sure = results
    assert unsure.entropies == pytest.approx([SPLIT, 0.0]) and unsure.rounds == 1
    assert unsure.majorities == ["YES", "YES"] and unsure.answer == "Yes." and unsure.key == "YES"
    assert unsure.passages == [{"id": "tachy#0", "title": "Sinus tachycardia", "heading": "Criterion",
                                "source": "Citation of Sinus tachycardia", "licence": "CC0-1.0",
                                "score": unsure.passages[0]["score"]}]
    # the queries: the question, then the rationales of the majority and of the minority answer
    assert unsure.queries == [[QUESTIONS[0], "fast.", "looks calm."]]
    assert (sure.rounds, sure.entropies, sure.passages, sure.answer) == (0, [0.0], [], "No.")
    # round 1 asked only the uncertain question again, with the passage before it
    assert sampler.prompts[1] == [with_context(QUESTIONS[0], INDEX.search(QUESTIONS[0], k=1))]
    assert sampler.prompts[1][0].startswith("Context:\n[1] Sinus tachycardia (Criterion): A heart rate above 100 bpm.\n\n")


def test_the_loop_stops_at_max_rounds_and_keeps_earlier_passages():
    sampler = Scripted(uncertain_always=True)
    [result] = UncertaintyGuidedSearch(sampler, INDEX, AnswerKey(YES_NO), settings(max_rounds=2)).run(QUESTIONS[:1], [{}])
    assert result.rounds == 2 and len(result.entropies) == 3 and len(sampler.prompts) == 3
    assert len(result.queries) == 2
    ids = [p["id"] for p in result.passages]
    assert ids[0] == "tachy#0" and len(ids) == len(set(ids))  # round 2 added to round 1's passages, no repeats
    [none] = UncertaintyGuidedSearch(Scripted(True), INDEX, AnswerKey(YES_NO), settings(max_rounds=0)).run(QUESTIONS[:1], [{}])
    assert none.rounds == 0 and none.passages == [] and none.answer == "Yes."  # the 3:2 majority


def test_controls_always_never_random_and_placebo():
    key = AnswerKey(YES_NO)
    always = UncertaintyGuidedSearch(Scripted(), INDEX, key, settings(trigger="always")).run(QUESTIONS, [{}, {}])
    assert [r.rounds for r in always] == [1, 1]  # retrieves for the confident question too, once
    never = UncertaintyGuidedSearch(Scripted(), INDEX, key, settings(trigger="never")).run(QUESTIONS, [{}, {}])
    assert [r.rounds for r in never] == [0, 0]
    questions = [QUESTIONS[1]] * 10
    randomly = UncertaintyGuidedSearch(Scripted(), INDEX, key, settings(trigger="random", random_rate=0.3, seed=4)).run(
        questions, [{}] * 10)
    assert sum(r.rounds for r in randomly) == 3  # exactly the rate's share, chosen by the seed
    placebo = UncertaintyGuidedSearch(Scripted(), INDEX, key, settings(trigger="placebo")).run(QUESTIONS[:1], [{}])
    [used] = placebo[0].passages
    assert used["id"] != "tachy#0" and placebo[0].rounds >= 1  # an unrelated card, never the relevant one
    assert placebo[0].entropies[1] == pytest.approx(SPLIT)  # so the model stays unsure


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="trigger must be one of"):
        settings(trigger="sometimes")
    with pytest.raises(ValueError, match="queries=model needs a query writer"):
        UncertaintyGuidedSearch(Scripted(), INDEX, AnswerKey(YES_NO), settings(queries="model"))


def test_model_written_queries_are_capped_and_never_empty():
    written = {QUESTIONS[0]: ["sinus tachycardia criteria", "rate above", "x", "y"], QUESTIONS[1]: []}
    loop = UncertaintyGuidedSearch(Scripted(), INDEX, AnswerKey(YES_NO), settings(queries="model", max_queries=2,
                                                                                   trigger="always"),
                                   write_queries=lambda questions, records: [written[q] for q in questions])
    first, second = loop.run(QUESTIONS, [{}, {}])
    assert first.queries == [["sinus tachycardia criteria", "rate above"]]
    assert second.queries == [[QUESTIONS[1]]]  # nothing written: the question itself is the query
