"""predict.py's manifest reading, argument checks and command-line questions (a 2-step tiny model for the answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import OverrideParseException

import predict as predict_script
from mmmed.infer.inference import load
from tests.conftest import compose_app

PLAIN = "What rhythm does this ECG show?"


def test_manifest_paths_are_relative_to_the_csv_and_options_split_at_bars(tmp_path):
    manifest = tmp_path / "q.csv"
    manifest.write_text('input,question,options,reference\n'
                        'records/001,"<ecg>\nWhat rhythm?",Sinus rhythm.| Sinus bradycardia. ,Sinus rhythm.\n'
                        '/abs/film.dcm,"<xray>\nAny finding?",,\n')
    rows = predict_script.read_manifest(manifest)
    assert rows == [
        {"input": str(tmp_path / "records" / "001"), "question": "<ecg>\nWhat rhythm?",
         "options": ["Sinus rhythm.", "Sinus bradycardia."], "reference": "Sinus rhythm."},
        {"input": "/abs/film.dcm", "question": "<xray>\nAny finding?", "options": None, "reference": None},
    ]


@pytest.mark.parametrize("text, message", [
    ("path,question\nx,q\n", r"lacks column\(s\) \['input'\]"),
    ("input,question\nx,\n", "line 2: empty input or question"),
    ("input,question\n", "has no rows"),
])
def test_bad_manifests_name_the_file_and_the_problem(tmp_path, text, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        predict_script.read_manifest(manifest)
    assert str(manifest) in str(error.value)


def test_exactly_one_of_input_and_manifest(tmp_path):
    for overrides in ([], ["input=a", "manifest=b.csv"]):
        cfg = compose_app("predict", ["ckpt=unused", *overrides], tmp_path, resolve=True)
        with pytest.raises(ValueError, match="exactly one of input"):
            predict_script.predict(cfg)


# ---- questions on the command line (the shell has already removed its own quotes) ---------------
@pytest.mark.parametrize("override, question", [
    (f"question={PLAIN}", PLAIN),                                       # shell: question="What rhythm ...?"
    ('question="<ecg> Any ST elevation, or not?"', "<ecg> Any ST elevation, or not?"),  # shell: 'question="<ecg> ..."'
    ("question='<ecg> What is the rate?'", "<ecg> What is the rate?"),  # shell: question="'<ecg> ...'"
])
def test_a_question_with_or_without_a_tag_composes_as_the_readme_says(tmp_path, override, question):
    assert compose_app("predict", ["ckpt=unused", override], tmp_path, resolve=True).question == question


@pytest.mark.parametrize("override", ["question=<ecg> What rhythm?", r"question=\<ecg\> What rhythm?"])
def test_an_unquoted_or_backslashed_tag_is_a_hydra_grammar_error(tmp_path, override):
    with pytest.raises(OverrideParseException):
        compose_app("predict", ["ckpt=unused", override], tmp_path, resolve=True)


@pytest.fixture
def tiny_run(tiny_ecg_run) -> tuple[Path, Path]:
    """tests/conftest.py's tiny run (trained on "<ecg>\\nWhat rhythm does this ECG show?") and one of its records."""
    run, root = tiny_ecg_run
    return run, next((root / "records100").rglob("*_lr.hea")).with_suffix("")


def test_predict_answers_an_untagged_question_as_the_tagged_one(tiny_run, tmp_path):
    run, record = tiny_run
    predictor = load(run)
    trained = predictor.config["question"]
    assert trained == "<ecg>\n" + PLAIN  # the data config's question: the untagged one is the same token ids
    answers = {}
    for name, override in [("plain", f"question={PLAIN}"), ("tagged", f'question="<ecg> {PLAIN}"'), ("trained", None)]:
        overrides = [f"ckpt={run}", f"input={record}", "pictures=false", *([override] if override else [])]
        [written] = predict_script.predict(compose_app("predict", overrides, tmp_path / name, resolve=True), predictor)
        assert written["question"] == (trained if name == "trained" else override.split("=", 1)[1].strip('"'))
        assert isinstance(written["answer"], str)
        answers[name] = written["answer"]
    assert answers["plain"] == answers["trained"] == predictor.answer(trained, record)
    wrong = "<ecg> then <ecg>: which is faster?"  # two tags for one ECG: still refused, naming the counts
    with pytest.raises(ValueError, match=r"2 '<ecg>' tag\(s\) but the sample carries 1 ecg signal\(s\)"):
        predictor.answer(wrong, record)


def test_reasoning_modes_refuse_rationale_true_and_options(tiny_run, tmp_path):
    run, record = tiny_run
    predictor = load(run)
    base = [f"ckpt={run}", f"input={record}", "pictures=false", "reasoning=sample"]
    cfg = compose_app("predict", [*base, "rationale=true"], tmp_path / "a", resolve=True)
    with pytest.raises(ValueError, match="reasoning=sample samples answers to the plain question: rationale=true"):
        predict_script.predict(cfg, predictor)
    cfg = compose_app("predict", [*base, "options=[Yes.,No.]"], tmp_path / "b", resolve=True)
    with pytest.raises(ValueError, match="reasoning=sample scores no options"):
        predict_script.predict(cfg, predictor)
