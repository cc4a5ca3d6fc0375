"""The chat template, placeholder expansion, label mask and truncation, checked token by token."""

from __future__ import annotations

import pytest

from mmmed.prompts import IGNORE_INDEX, ChatFormatter, Modality

QUESTION = "<ecg>\nWhat rhythm does this ECG show?"
ANSWER = "Sinus tachycardia at 118 bpm."
SYSTEM = "You are a cardiology assistant."


@pytest.fixture
def formatter(tiny_llm):
    return ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], SYSTEM, max_length=96)


def test_labels_cover_exactly_the_answer_and_end_of_turn(formatter):
    tok = formatter.tokenizer
    sample = formatter.encode(QUESTION, ANSWER, {"ecg": 1})
    answer_labels = [l for l in sample.labels if l != IGNORE_INDEX]
    assert tok.decode(answer_labels) == ANSWER + "<|im_end|>"
    # Every labelled position is the tail of the sequence, and the tail is labelled exactly.
    start = sample.prompt_length
    assert sample.labels[:start] == [IGNORE_INDEX] * start
    assert sample.labels[start:] == sample.input_ids[start:]
    assert sample.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_prompt_is_the_models_own_chat_template(formatter):
    tok = formatter.tokenizer
    sample = formatter.encode(QUESTION, ANSWER, {"ecg": 1})
    expected = tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "<|ecg_pad|>" * 4 + QUESTION[5:]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert tok.decode(sample.input_ids[: sample.prompt_length]) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_placeholder_run_sits_where_the_tag_was_inside_the_user_turn(formatter):
    tok = formatter.tokenizer
    pid = formatter.placeholder_ids["ecg"]
    sample = formatter.encode("Look at this: <ecg> What rhythm?", ANSWER, {"ecg": 1})
    positions = [i for i, t in enumerate(sample.input_ids) if t == pid]
    assert len(positions) == 4 and positions == list(range(positions[0], positions[0] + 4))
    before = tok.decode(sample.input_ids[: positions[0]])
    after = tok.decode(sample.input_ids[positions[-1] + 1 : sample.prompt_length])
    assert before.endswith("<|im_start|>user\nLook at this: ")
    assert after.startswith(" What rhythm?<|im_end|>")


def test_placeholder_id_is_a_single_new_special_token(formatter):
    tok = formatter.tokenizer
    pid = formatter.placeholder_ids["ecg"]
    assert pid >= tok.vocab_size  # outside the LLM's embedding table: never mistaken for text
    assert tok("<|ecg_pad|><|ecg_pad|>", add_special_tokens=False)["input_ids"] == [pid, pid]


def test_tag_and_signal_counts_must_agree(formatter):
    with pytest.raises(ValueError, match=r"1 '<ecg>' tag\(s\) but the sample carries 2 ecg signal\(s\)"):
        formatter.encode(QUESTION, ANSWER, {"ecg": 2})
    with pytest.raises(ValueError, match=r"0 '<ecg>' tag\(s\) but the sample carries 1"):
        formatter.encode("What rhythm?", ANSWER, {"ecg": 1})


def test_two_signals_get_two_placeholder_runs(formatter):
    sample = formatter.encode("<ecg> then <ecg>: changed?", "Yes.", {"ecg": 2})
    assert sample.input_ids.count(formatter.placeholder_ids["ecg"]) == 8


def test_truncation_cuts_the_answer_never_the_placeholders(formatter):
    full = formatter.encode(QUESTION, ANSWER * 10, {"ecg": 1})
    formatter.max_length = full.prompt_length + 3
    cut = formatter.encode(QUESTION, ANSWER * 10, {"ecg": 1})
    assert cut.truncated and len(cut.input_ids) == full.prompt_length + 3
    assert cut.input_ids == full.input_ids[: full.prompt_length + 3]
    assert cut.input_ids.count(formatter.placeholder_ids["ecg"]) == 4


def test_prompt_longer_than_max_length_is_an_error(formatter):
    formatter.max_length = 10
    with pytest.raises(ValueError, match="longer than max_length=10"):
        formatter.encode(QUESTION, ANSWER, {"ecg": 1})


def test_empty_answer_is_an_error(formatter):
    with pytest.raises(ValueError, match="Empty answer"):
        formatter.encode(QUESTION, "  ", {"ecg": 1})
