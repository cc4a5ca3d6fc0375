"""Read a folder of knowledge documents (Markdown, text, JSONL) and cut them into retrievable chunks.

Every chunk keeps where it came from (document id, title, heading, source, licence, file), because an answer
that used it must be able to say so. Markdown is cut at its headings (a card's "## Criterion" is one chunk), text
files at blank lines, JSONL has one document per line; a section longer than ``max_words`` is cut further at
paragraph boundaries. A chunk's searchable text starts with its document title and heading, so that a query
naming the condition finds the criterion paragraph even when the paragraph itself does not repeat the name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

SUFFIXES = (".md", ".markdown", ".txt", ".jsonl")
UNSPECIFIED_LICENCE = "unspecified"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


class KnowledgeSourceError(ValueError):
    """A knowledge document that cannot be read as one; the message names the file."""


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage and where it came from."""

    chunk_id: str  # "<doc_id>#<n>", unique in an index
    doc_id: str
    title: str
    heading: str  # the section heading ("" for text before the first heading or a text file's paragraph)
    text: str  # the passage itself, as written
    source: str  # the citation (a card's `source:`) or, failing that, the file it was read from
    licence: str
    path: str  # the file, relative to the source folder

    def searchable_text(self) -> str:
        """What BM25 indexes: title, heading and passage."""
        return " ".join(part for part in (self.title, self.heading, self.text) if part)

    def to_json(self) -> dict:
        return asdict(self)


def read_chunks(folder: str | Path, max_words: int) -> list[Chunk]:
    """All chunks of the documents under ``folder`` (recursively, in sorted path order); README files are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise KnowledgeSourceError(f"{root}: the knowledge source is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and p.stem.lower() != "readme")
    if not files:
        raise KnowledgeSourceError(f"{root}: no {', '.join(SUFFIXES)} documents in the knowledge source")
    chunks: list[Chunk] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() == ".jsonl":
            chunks.extend(_jsonl_chunks(path, rel, max_words))
        else:
            chunks.extend(_document_chunks(path, rel, max_words))
    seen: dict[str, str] = {}
    for chunk in chunks:
        if chunk.chunk_id in seen:
            raise KnowledgeSourceError(f"{root / chunk.path}: document id {chunk.doc_id!r} is also used by "
                                       f"{root / seen[chunk.chunk_id]}; ids must be unique")
        seen[chunk.chunk_id] = chunk.path
    return chunks


def _document_chunks(path: Path, rel: str, max_words: int) -> list[Chunk]:
    text = _read_text(path)
    meta: dict = {}
    match = _FRONT_MATTER.match(text)
    if match:
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as err:
            raise KnowledgeSourceError(f"{path}: front matter is not valid YAML ({err})") from err
        if not isinstance(meta, dict):
            raise KnowledgeSourceError(f"{path}: front matter must be key: value lines")
        text = text[match.end():]
    doc_id = str(meta.get("id") or Path(rel).with_suffix("").as_posix())
    sections = _markdown_sections(text) if path.suffix.lower() in (".md", ".markdown") else [("", "", text)]
    title = str(meta.get("title") or next((t for t, _, _ in sections if t), "") or Path(rel).stem)
    passages = [(heading, passage) for _, heading, body in sections for passage in _split(body, max_words)]
    if not passages:
        raise KnowledgeSourceError(f"{path}: the document has no text")
    return [_chunk(doc_id, n, title, heading, passage, meta, rel) for n, (heading, passage) in enumerate(passages)]


def _jsonl_chunks(path: Path, rel: str, max_words: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise KnowledgeSourceError(f"{path}, line {line_no}: not JSON ({err.msg})") from err
        if not isinstance(record, dict) or not str(record.get("text") or "").strip():
            raise KnowledgeSourceError(f"{path}, line {line_no}: a document needs a non-empty \"text\"")
        doc_id = str(record.get("id") or f"{Path(rel).with_suffix('').as_posix()}:{line_no}")
        title = str(record.get("title") or "")
        for n, passage in enumerate(_split(str(record["text"]), max_words)):
            chunks.append(_chunk(doc_id, n, title, str(record.get("heading") or ""), passage, record, rel))
    if not chunks:
        raise KnowledgeSourceError(f"{path}: the JSONL file has no documents")
    return chunks


def _chunk(doc_id: str, n: int, title: str, heading: str, text: str, meta: dict, rel: str) -> Chunk:
    return Chunk(chunk_id=f"{doc_id}#{n}", doc_id=doc_id, title=title, heading=heading, text=text,
                 source=str(meta.get("source") or rel), licence=str(meta.get("licence") or meta.get("license")
                                                                     or UNSPECIFIED_LICENCE), path=rel)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise KnowledgeSourceError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _markdown_sections(text: str) -> list[tuple[str, str, str]]:
    """``(document title, section heading, body)`` per heading; the ``#`` title itself is not a section."""
    sections: list[tuple[str, str, str]] = []
    title, heading, body = "", "", []
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            sections.append((title, heading, "\n".join(body)))
            if len(match.group(1)) == 1 and not title:
                title, heading = match.group(2), ""
            else:
                heading = match.group(2)
            body = []
        else:
            body.append(line)
    sections.append((title, heading, "\n".join(body)))
    return [(title, h, b) for _, h, b in sections if b.strip()]


def _split(body: str, max_words: int) -> list[str]:
    """Paragraphs joined up to ``max_words`` words per passage (a longer single paragraph stays whole)."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    passages: list[str] = []
    current: list[str] = []
    for paragraph in paragraphs:
        words = len(paragraph.split())
        if current and sum(len(p.split()) for p in current) + words > max_words:
            passages.append(" ".join(current))
            current = []
        current.append(paragraph)
    if current:
        passages.append(" ".join(current))
    return passages
