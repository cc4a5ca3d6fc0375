"""Turn (question, answer) pairs with modality tags into chat-templated token ids and label masks.

Where the signals go (one rule for training, evaluation and prediction: all use ChatFormatter):

* A question with tags (``<ecg>``, ``<xray>``) places each signal at its tag, anywhere in the user
  turn; it must carry exactly one tag per signal of each modality, or it is an error.
* A question without any tag gets one tag per signal placed before its text, each followed by a
  newline, as LLaVA places ``<image>\n``: modalities in the order the formatter was given them, and
  within a modality the sample's signal order. ``"What rhythm?"`` with one ECG is therefore exactly
  ``"<ecg>\nWhat rhythm?"``; with two it is ``"<ecg>\n<ecg>\nWhat rhythm?"``.
* A tag-shaped word naming no modality of the formatter (``<xray>`` to an ECG model) is an error, not text.

Each tag is expanded into ``num_tokens`` copies of one special placeholder token (``<|ecg_pad|>``);
the model later scatters the encoder's tokens into exactly those positions. The loss covers only
the assistant's answer and its end-of-turn token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: the pre-flight check reads Modality tags without loading transformers
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
TAG_SHAPE = re.compile(r"<[A-Za-z][A-Za-z0-9_]*>")  # what Modality.tag looks like, whatever the name


@dataclass(frozen=True)
class Modality:
    """How one modality appears in text: the tag users write and how many LLM tokens it becomes."""

    name: str
    num_tokens: int

    @property
    def tag(self) -> str:
        """The tag written in questions, e.g. ``<ecg>``."""
        return f"<{self.name}>"

    @property
    def placeholder(self) -> str:
        """The special token the tag expands into, e.g. ``<|ecg_pad|>``."""
        return f"<|{self.name}_pad|>"


@dataclass
class EncodedSample:
    """Token ids of one chat sample; ``labels`` is IGNORE_INDEX outside the answer."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens up to and including the assistant header
    truncated: bool


class ChatFormatter:
    """Chat-templates samples for one tokenizer and a fixed set of modalities.

    ``modalities`` is ordered: an untagged question gets its signals' tags in that order (module docstring).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        modalities: list[Modality],
        system_prompt: str | None,
        max_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.modalities = {m.name: m for m in modalities}
        self.system_prompt = system_prompt
        self.max_length = max_length
        new_tokens = [m.placeholder for m in modalities if m.placeholder not in tokenizer.get_vocab()]
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens})
        self.placeholder_ids = {m.name: tokenizer.convert_tokens_to_ids(m.placeholder) for m in modalities}
        self.eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self._by_tag = {m.tag: m for m in modalities}
        self._tag_pattern = re.compile("|".join(re.escape(m.tag) for m in modalities))

    def _expand_tags(self, question: str, signal_counts: dict[str, int]) -> str:
        """Replace each tag by its placeholder run; tags must match the signals given, or be absent
        (then every signal's tag goes first, each on its own line, in ``modalities`` order)."""
        unknown = set(signal_counts) - set(self.modalities)
        if unknown:
            raise ValueError(f"Sample carries signals of unknown modalities {sorted(unknown)}")
        strangers = sorted(set(TAG_SHAPE.findall(question)) - set(self._by_tag))
        if strangers:
            raise ValueError(f"Question has tag(s) {strangers} this model does not read (it reads "
                             f"{', '.join(self._by_tag)}): {question!r}")
        tags = self._tag_pattern.findall(question)
        if not tags:
            # Modalities in the formatter's order; each modality's signals in the sample's order.
            leading = "".join(f"{m.tag}\n" * signal_counts.get(name, 0) for name, m in self.modalities.items())
            question = leading + question
            tags = self._tag_pattern.findall(question)
        for name, modality in self.modalities.items():
            found, expected = tags.count(modality.tag), signal_counts.get(name, 0)
            if found != expected:
                raise ValueError(
                    f"Question has {found} '{modality.tag}' tag(s) but the sample carries {expected} "
                    f"{name} signal(s): {question!r}"
                )
        return self._tag_pattern.sub(lambda m: self._by_tag[m.group(0)].placeholder * self._by_tag[m.group(0)].num_tokens, question)

    def _messages(self, user_text: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": user_text}]

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt(self, question: str, signal_counts: dict[str, int]) -> tuple[list[dict[str, str]], str, list[int]]:
        """Messages, templated text and token ids of the prompt up to the assistant header, checked."""
        messages = self._messages(self._expand_tags(question, signal_counts))
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self._tokenize(text)
        for name, pid in self.placeholder_ids.items():
            expected = signal_counts.get(name, 0) * self.modalities[name].num_tokens
            if ids.count(pid) != expected:
                raise ValueError(f"Tokenizer split the {name} placeholder: {ids.count(pid)} != {expected}")
        if len(ids) > self.max_length:
            raise ValueError(
                f"Prompt is {len(ids)} tokens, longer than max_length={self.max_length}; truncating it would "
                f"cut the question or a signal placeholder. Raise data.max_length or shorten the question."
            )
        return messages, text, ids

    def prompt_ids(self, question: str, signal_counts: dict[str, int]) -> list[int]:
        """Token ids of the templated prompt ending with the assistant header (for generation)."""
        return self._prompt(question, signal_counts)[2]

    def encode(self, question: str, answer: str, signal_counts: dict[str, int]) -> EncodedSample:
        """Template a full exchange; only answer tokens (and the end-of-turn token) get labels."""
        if not answer or not answer.strip():
            raise ValueError(f"Empty answer for question {question!r}")
        messages, prompt_text, prompt = self._prompt(question, signal_counts)
        full_text = self.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if not full_text.startswith(prompt_text):
            raise ValueError("Chat template renders the prompt differently with and without the answer.")
        # Tokenised separately at the assistant header: exactly what generation sees as its prompt.
        answer_ids = self._tokenize(full_text[len(prompt_text):])
        if self.eos_id in answer_ids:  # drop what the template adds after the end-of-turn token
            answer_ids = answer_ids[: answer_ids.index(self.eos_id) + 1]
        room = self.max_length - len(prompt)
        if room < 1:
            raise ValueError(
                f"Prompt fills max_length={self.max_length}; no room is left for the answer. Raise data.max_length."
            )
        truncated = len(answer_ids) > room
        answer_ids = answer_ids[:room]
        return EncodedSample(
            input_ids=prompt + answer_ids,
            labels=[IGNORE_INDEX] * len(prompt) + answer_ids,
            prompt_length=len(prompt),
            truncated=truncated,
        )
