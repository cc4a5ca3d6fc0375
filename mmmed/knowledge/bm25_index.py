"""A BM25 index of knowledge chunks (``bm25s``: sparse matrices, saved as .npy and memory-mapped at load).

On disk (``out``)::

    manifest.json   format version, BM25 and tokenizer settings, chunk count, sha256 of every other file
    chunks.jsonl    one chunk per line, in index order (id, document, title, heading, text, source, licence, file)
    bm25/           bm25s's own files (scores as a CSC matrix, vocabulary, parameters)

Loading checks every file against the manifest's sha256, so a truncated copy or a half-written index is an error
naming the file, never a search that silently returns the wrong passages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import bm25s

from mmmed.knowledge.documents import Chunk
from mmmed.knowledge.index_folder import KnowledgeIndexError, read_index_manifest, write_index_folder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNKS = "chunks.jsonl"
BM25_DIR = "bm25"


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk and its BM25 score for the query."""

    chunk: Chunk
    score: float

    def citation(self) -> dict:
        """What an answer records about a passage it used."""
        return {"id": self.chunk.chunk_id, "title": self.chunk.title, "heading": self.chunk.heading,
                "source": self.chunk.source, "licence": self.chunk.licence, "score": round(self.score, 4)}


class KnowledgeIndex:
    """BM25 search over knowledge chunks: ``build`` from chunks, ``save``/``load`` a folder, ``search`` a query."""

    def __init__(self, retriever: bm25s.BM25, chunks: list[Chunk], settings: dict):
        self.retriever = retriever
        self.chunks = chunks
        self.settings = settings  # k1, b, method, stopwords: what built it, and how queries are tokenized

    @classmethod
    def build(cls, chunks: list[Chunk], k1: float, b: float, method: str, stopwords: str) -> "KnowledgeIndex":
        """Index ``chunks`` (their title, heading and text) with BM25."""
        if not chunks:
            raise ValueError("no chunks to index")
        settings = {"k1": float(k1), "b": float(b), "method": method, "stopwords": stopwords}
        retriever = bm25s.BM25(k1=settings["k1"], b=settings["b"], method=method)
        retriever.index(_tokenize([c.searchable_text() for c in chunks], stopwords), show_progress=False)
        return cls(retriever, chunks, settings)

    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` best chunks for ``query``, best first; chunks sharing no term with the query are left out."""
        tokens = _tokenize([query], self.settings["stopwords"])
        if not tokens[0] or k <= 0:
            return []
        ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.chunks)), show_progress=False)
        return [Passage(self.chunks[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def save(self, out: str | Path) -> Path:
        """Write the index to ``out`` (replacing an index there): built beside it, then renamed into place."""
        def write(folder: Path) -> None:
            with (folder / CHUNKS).open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in self.chunks)
            self.retriever.save(str(folder / BM25_DIR), show_progress=False)

        return write_index_folder(out, write, {"format": FORMAT_VERSION, "num_chunks": len(self.chunks),
                                               "settings": self.settings})

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "KnowledgeIndex":
        """Read an index written by ``save``; every file is checked against the manifest first."""
        path = Path(path)
        manifest = read_index_manifest(path, "knowledge index", FORMAT_VERSION,
                                       f"python -m mmmed.knowledge build source=<folder> out={path}")
        chunks = [Chunk(**json.loads(line)) for line in (path / CHUNKS).read_text(encoding="utf-8").splitlines()]
        retriever = bm25s.BM25.load(str(path / BM25_DIR), mmap=mmap, show_progress=False)
        if len(chunks) != manifest["num_chunks"]:
            raise KnowledgeIndexError(f"{path / CHUNKS}: {len(chunks)} chunks, the manifest says {manifest['num_chunks']}")
        return cls(retriever, chunks, manifest["settings"])


def _tokenize(texts: list[str], stopwords: str) -> list[list[str]]:
    """Lower-cased word tokens of two or more characters, stop words removed (bm25s's tokenizer, no stemming)."""
    return bm25s.tokenize(texts, lower=True, stopwords=stopwords, return_ids=False, show_progress=False)
