"""A BM25 index of knowledge chunks (``bm25s``: sparse matrices, saved as .npy and memory-mapped at load).

On disk (``out``)::

    manifest.json   format version, BM25 and tokenizer settings, chunk count, sha256 of every other file
    chunks.jsonl    one chunk per line, in index order (id, document, title, heading, text, source, licence, file)
    bm25/           bm25s's own files (scores as a CSC matrix, vocabulary, parameters)

Loading checks every file against the manifest's sha256, so a truncated copy or a half-written index is an error
naming the file, never a search that silently returns the wrong passages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import bm25s

from mmmed.knowledge.documents import Chunk

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
BM25_DIR = "bm25"


class KnowledgeIndexError(RuntimeError):
    """A knowledge index that is missing, incomplete or corrupt; the message names the path."""


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
        out = Path(out)
        staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with (staging / CHUNKS).open("w", encoding="utf-8") as handle:
            for chunk in self.chunks:
                handle.write(json.dumps(chunk.to_json(), ensure_ascii=False) + "\n")
        self.retriever.save(str(staging / BM25_DIR), show_progress=False)
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {"format": FORMAT_VERSION, "num_chunks": len(self.chunks), "settings": self.settings,
                    "sha256": {name: _sha256(staging / name) for name in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return out

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "KnowledgeIndex":
        """Read an index written by ``save``; every file is checked against the manifest first."""
        path = Path(path)
        if not path.is_dir():
            raise KnowledgeIndexError(f"{path}: no knowledge index there (build one: python -m mmmed.knowledge "
                                      f"build source=<folder> out={path})")
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError as err:
            raise KnowledgeIndexError(f"{manifest_path}: missing; {path} is not a complete knowledge index") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise KnowledgeIndexError(f"{manifest_path}: corrupt ({err})") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise KnowledgeIndexError(f"{manifest_path}: not a format-{FORMAT_VERSION} knowledge index manifest")
        for name, expected in manifest["sha256"].items():
            file = path / name
            if not file.is_file():
                raise KnowledgeIndexError(f"{file}: missing from the knowledge index")
            if _sha256(file) != expected:
                raise KnowledgeIndexError(f"{file}: corrupt (its sha256 differs from {manifest_path}'s)")
        chunks = [Chunk(**json.loads(line)) for line in (path / CHUNKS).read_text(encoding="utf-8").splitlines()]
        retriever = bm25s.BM25.load(str(path / BM25_DIR), mmap=mmap, show_progress=False)
        if len(chunks) != manifest["num_chunks"]:
            raise KnowledgeIndexError(f"{path / CHUNKS}: {len(chunks)} chunks, the manifest says {manifest['num_chunks']}")
        return cls(retriever, chunks, manifest["settings"])


def _tokenize(texts: list[str], stopwords: str) -> list[list[str]]:
    """Lower-cased word tokens of two or more characters, stop words removed (bm25s's tokenizer, no stemming)."""
    return bm25s.tokenize(texts, lower=True, stopwords=stopwords, return_ids=False, show_progress=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
