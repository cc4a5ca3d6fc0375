"""The chat template, placeholder expansion, label mask and truncation, checked token by token."""

from __future__ import annotations

import pytest

from mmmed.model.prompts import IGNORE_INDEX, ChatFormatter, Modality

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
    with pytest.raises(ValueError, match=r"2 '<ecg>' tag\(s\) but the sample carries 1 ecg signal\(s\)"):
        formatter.prompt_ids("<ecg> then <ecg>: changed?", {"ecg": 1})


# ---- questions without tags: the signals go first, each on its own line ------------------------
PLAIN = "What rhythm does this ECG show?"


@pytest.mark.parametrize("count", [1, 2])
def test_an_untagged_question_is_the_question_with_its_tags_written_first(formatter, count):
    tagged = "<ecg>\n" * count + PLAIN
    assert formatter.prompt_ids(PLAIN, {"ecg": count}) == formatter.prompt_ids(tagged, {"ecg": count})
    plain, explicit = formatter.encode(PLAIN, ANSWER, {"ecg": count}), formatter.encode(tagged, ANSWER, {"ecg": count})
    assert plain == explicit  # training sees exactly what generation sees
    assert plain.input_ids.count(formatter.placeholder_ids["ecg"]) == 4 * count
    if count == 1:
        assert plain.input_ids == formatter.encode(QUESTION, ANSWER, {"ecg": 1}).input_ids  # the shipped PTB-XL question


@pytest.mark.parametrize("order", [["ecg", "xray"], ["xray", "ecg"]])
def test_several_modalities_go_first_in_the_formatters_order(tiny_llm, order):
    sizes = {"ecg": 4, "xray": 3}
    two = ChatFormatter(tiny_llm.tokenizer, [Modality(name, sizes[name]) for name in order], SYSTEM, max_length=96)
    counts = {"xray": 1, "ecg": 2}  # the sample's own key order does not matter
    tagged = "".join(f"<{name}>\n" * counts[name] for name in order) + PLAIN
    assert two.prompt_ids(PLAIN, counts) == two.prompt_ids(tagged, counts)
    ids = two.prompt_ids(PLAIN, counts)
    runs = [name for name in order for _ in range(counts[name])]
    name_of = {pid: name for name, pid in two.placeholder_ids.items()}
    starts = [i for i, t in enumerate(ids) if t in name_of and ids[i - 1] not in name_of]  # each placeholder run
    assert [name_of[ids[i]] for i in starts] == runs


def test_tags_of_one_modality_require_tags_of_all(tiny_llm):
    two = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4), Modality("xray", 3)], SYSTEM, max_length=96)
    with pytest.raises(ValueError, match=r"0 '<xray>' tag\(s\) but the sample carries 1 xray signal\(s\)"):
        two.prompt_ids(QUESTION, {"ecg": 1, "xray": 1})


def test_a_tag_the_model_does_not_read_is_an_error_not_text(formatter):
    with pytest.raises(ValueError, match=r"tag\(s\) \['<xray>'\] this model does not read \(it reads <ecg>\)"):
        formatter.prompt_ids("<xray>\nAny finding?", {"ecg": 1})


def test_an_untagged_question_without_signals_stays_text(formatter):
    tok = formatter.tokenizer
    assert tok.decode(formatter.prompt_ids(PLAIN, {})) == tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PLAIN}], tokenize=False, add_generation_prompt=True)


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
