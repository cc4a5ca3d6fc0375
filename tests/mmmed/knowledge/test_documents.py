"""Chunking keeps every passage's document id, title, heading, source and licence."""

import json
from pathlib import Path

import pytest

from mmmed.knowledge.documents import UNSPECIFIED_LICENCE, KnowledgeSourceError, read_chunks

REPO = Path(__file__).resolve().parents[3]

CARD = """---
id: demo-card
title: Demo condition
source: "Author A. A paper. J Demo 2001;1:1-2."
licence: CC0-1.0
---
# Demo condition

## Criterion
First criterion paragraph.

## How to read it
One paragraph.

Another paragraph.
"""


def test_a_markdown_card_is_cut_at_its_headings_and_each_chunk_keeps_its_provenance(tmp_path):
    (tmp_path / "card.md").write_text(CARD)
    chunks = read_chunks(tmp_path, max_words=120)
    assert [(c.chunk_id, c.heading, c.text) for c in chunks] == [
        ("demo-card#0", "Criterion", "First criterion paragraph."),
        ("demo-card#1", "How to read it", "One paragraph. Another paragraph."),
    ]
    for chunk in chunks:
        assert (chunk.doc_id, chunk.title, chunk.source, chunk.licence, chunk.path) == (
            "demo-card", "Demo condition", "Author A. A paper. J Demo 2001;1:1-2.", "CC0-1.0", "card.md")
    assert chunks[0].searchable_text() == "Demo condition Criterion First criterion paragraph."


def test_a_long_section_is_cut_at_paragraph_boundaries(tmp_path):
    (tmp_path / "card.md").write_text(CARD)
    chunks = read_chunks(tmp_path, max_words=2)  # "One paragraph." fills a passage; the next one starts another
    assert [c.text for c in chunks] == ["First criterion paragraph.", "One paragraph.", "Another paragraph."]
    assert [c.chunk_id for c in chunks] == ["demo-card#0", "demo-card#1", "demo-card#2"]


def test_text_and_jsonl_documents_without_metadata_are_named_by_their_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("Para one.\n\nPara two.\n")
    lines = [{"id": "g1", "title": "Guideline", "text": "Rule.", "source": "Hospital SOP 12", "licence": "internal"},
             {"text": "Untitled rule."}]
    (tmp_path / "rules.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    chunks = {c.chunk_id: c for c in read_chunks(tmp_path, max_words=1)}
    assert set(chunks) == {"g1#0", "rules:2#0", "sub/notes#0", "sub/notes#1"}
    assert (chunks["g1#0"].source, chunks["g1#0"].licence, chunks["g1#0"].title) == ("Hospital SOP 12", "internal", "Guideline")
    assert (chunks["rules:2#0"].source, chunks["rules:2#0"].licence) == ("rules.jsonl", UNSPECIFIED_LICENCE)
    assert (chunks["sub/notes#1"].text, chunks["sub/notes#1"].source, chunks["sub/notes#1"].title) == (
        "Para two.", "sub/notes.txt", "notes")


@pytest.mark.parametrize("name, content, problem", [
    ("a.jsonl", '{"text": "ok"}\nnot json\n', "line 2: not JSON"),
    ("a.jsonl", '{"title": "no text"}\n', 'line 1: a document needs a non-empty "text"'),
    ("a.md", "---\nid: [unclosed\n---\nbody\n", "front matter is not valid YAML"),
    ("a.md", "---\nid: x\n---\n# Title only\n", "the document has no text"),
])
def test_a_bad_document_is_an_error_naming_the_file(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    with pytest.raises(KnowledgeSourceError, match=problem) as err:
        read_chunks(tmp_path, max_words=100)
    assert str(tmp_path / name) in str(err.value)


def test_two_documents_with_one_id_are_refused(tmp_path):
    (tmp_path / "a.md").write_text(CARD)
    (tmp_path / "b.md").write_text(CARD)
    with pytest.raises(KnowledgeSourceError, match="'demo-card' is also used by"):
        read_chunks(tmp_path, max_words=100)


def test_the_shipped_cards_each_cite_a_source_and_carry_the_project_licence():
    chunks = read_chunks(REPO / "knowledge" / "cards", max_words=120)
    cards = {c.doc_id: c for c in chunks}
    assert len(cards) >= 15
    for chunk in chunks:
        assert chunk.licence == "Apache-2.0 (written for mmmed)", chunk.path
        assert chunk.source != chunk.path and len(chunk.source) > 40, chunk.path  # a citation, not a file name
        assert chunk.heading, chunk.path  # every passage is under a section heading
    assert any(c.heading.startswith("Criterion") for c in chunks if c.doc_id == "ecg-sinus-tachycardia")
