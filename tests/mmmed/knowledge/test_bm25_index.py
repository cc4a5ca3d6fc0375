"""The BM25 knowledge index: built, saved, loaded memory-mapped, searched; a damaged index is an error naming it."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmmed.knowledge.bm25_index import KnowledgeIndex, KnowledgeIndexError
from mmmed.knowledge.documents import Chunk, read_chunks

REPO = Path(__file__).resolve().parents[3]
CARDS = REPO / "knowledge" / "cards"


def chunk(doc_id: str, text: str) -> Chunk:
    return Chunk(f"{doc_id}#0", doc_id, doc_id.title(), "", text, f"source of {doc_id}", "CC0-1.0", f"{doc_id}.md")


def small_index() -> KnowledgeIndex:
    chunks = [chunk("a", "sinus tachycardia heart rate above one hundred"),
              chunk("b", "sinus bradycardia heart rate below sixty"),
              chunk("c", "pleural effusion blunts the costophrenic angle")]
    return KnowledgeIndex.build(chunks, k1=1.5, b=0.75, method="lucene", stopwords="en")


def test_scores_equal_lucenes_bm25_computed_by_hand():
    index = small_index()
    # Lucene's BM25 (Kamphuis et al. 2020): idf = ln(1 + (N - df + 0.5) / (df + 0.5)), term part
    # tf / (tf + k1 (1 - b + b |d| / avgdl)). Indexed text is title + passage, stop words and one-letter words
    # dropped: a = sinus tachycardia heart rate above one hundred (7), b = 6, c = 5 ("the" and "C" dropped).
    k1, b, lengths = 1.5, 0.75, [7, 6, 5]
    avgdl = sum(lengths) / 3
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # "tachycardia": df = 1 of N = 3
    expected = idf * 1 / (1 + k1 * (1 - b + b * lengths[0] / avgdl))
    [best] = index.search("tachycardia", k=3)  # the other two score 0 and are left out
    assert best.chunk.chunk_id == "a#0"
    assert best.score == pytest.approx(expected, rel=1e-6)  # bm25s keeps float32 scores: 6e-8 relative
    idf_rate = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "rate": df = 2; doc b is shorter, so it ranks first
    scores = {p.chunk.chunk_id: p.score for p in index.search("rate", k=3)}
    assert scores == pytest.approx({"b#0": idf_rate / (1 + k1 * (1 - b + b * 6 / avgdl)),
                                    "a#0": idf_rate / (1 + k1 * (1 - b + b * 7 / avgdl))}, rel=1e-6)


def test_a_saved_index_loads_memory_mapped_and_gives_the_same_top_k(tmp_path):
    index = KnowledgeIndex.build(read_chunks(CARDS, max_words=120), k1=1.5, b=0.75, method="lucene", stopwords="en")
    index.save(tmp_path / "idx")
    loaded = KnowledgeIndex.load(tmp_path / "idx")
    assert isinstance(loaded.retriever.scores["data"], np.memmap)
    assert loaded.chunks == index.chunks and loaded.settings == index.settings
    for query in ["criteria for sinus tachycardia", "bradycardia guideline 2018", "large pneumothorax size",
                  "cardiothoracic ratio on an AP film", "prolonged QTc in women"]:
        before, after = index.search(query, k=4), loaded.search(query, k=4)
        assert [(p.chunk.chunk_id, p.score) for p in before] == [(p.chunk.chunk_id, p.score) for p in after]
        assert before, query
    assert index.search("criteria for sinus tachycardia", k=1)[0].chunk.doc_id == "ecg-sinus-tachycardia"
    assert index.search("bradycardia guideline 2018", k=1)[0].chunk.doc_id == "ecg-bradycardia-2018"


def test_a_passage_cites_its_id_title_and_source():
    [passage] = small_index().search("effusion", k=1)
    assert passage.citation() == {"id": "c#0", "title": "C", "heading": "", "source": "source of c",
                                  "licence": "CC0-1.0", "score": round(passage.score, 4)}


def test_a_query_sharing_no_word_with_the_documents_retrieves_nothing():
    assert small_index().search("zzz qqq", k=3) == []
    assert small_index().search("the and of", k=3) == []  # stop words only


def test_a_missing_index_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(KnowledgeIndexError, match=f"{tmp_path / 'nope'}: no knowledge index there"):
        KnowledgeIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnowledgeIndexError, match=f"{tmp_path / 'empty' / 'manifest.json'}: missing"):
        KnowledgeIndex.load(tmp_path / "empty")


@pytest.mark.parametrize("damaged", ["chunks.jsonl", "bm25/data.csc.index.npy", "bm25/vocab.index.json"])
def test_a_truncated_or_deleted_file_is_an_error_naming_it(tmp_path, damaged):
    small_index().save(tmp_path / "idx")
    file = tmp_path / "idx" / damaged
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(KnowledgeIndexError, match=f"{file}: corrupt"):
        KnowledgeIndex.load(tmp_path / "idx")
    file.unlink()
    with pytest.raises(KnowledgeIndexError, match=f"{file}: missing from the knowledge index"):
        KnowledgeIndex.load(tmp_path / "idx")


def test_a_corrupt_manifest_is_an_error_naming_it(tmp_path):
    small_index().save(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(KnowledgeIndexError, match="manifest.json: corrupt"):
        KnowledgeIndex.load(tmp_path / "idx")


def test_the_command_line_builds_an_index_of_the_shipped_cards(tmp_path):
    out = tmp_path / "cards-index"
    run = subprocess.run([sys.executable, "-m", "mmmed.knowledge", "build", f"source={CARDS}", f"out={out}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    chunks = read_chunks(CARDS, max_words=120)
    assert f"Indexed {len(chunks)} chunks of {len({c.doc_id for c in chunks})} documents" in run.stderr
    assert KnowledgeIndex.load(out).chunks == chunks
    bad = subprocess.run([sys.executable, "-m", "mmmed.knowledge", "bulid"], capture_output=True, text=True)
    assert bad.returncode != 0 and "usage: python -m mmmed.knowledge {build" in bad.stderr
