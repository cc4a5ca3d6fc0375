"""Similar training cases by what the model sees: an index of training-split records by encoder embedding.

A record's embedding is the mean of the tokens its signals become in the LLM's space (every modality's adapter
output, averaged over tokens and signals), L2-normalised, so that cosine similarity is a dot product. Only
training-split records go in: a validation or test case retrieved for its own question would hand the model the
answer (:meth:`CaseIndex.build` refuses any other split, and the builder reads the training split only).

The vectors live in a ``usearch`` index searched exactly (brute force: the case sets are thousands, not billions,
and an exact search gives the same neighbours on every machine), saved to disk and memory-mapped at load
(``Index.restore(view=True)``). usearch over faiss-cpu: a 2.3 MB wheel against 18.8 MB, and a memory-mapped view
without copying the index into RAM; ``bench/case_index.py`` measures both on the same vectors.

On disk (``out``): ``manifest.json`` (format, dimension, count, model checkpoint, sha256 of the other files),
``cases.jsonl`` (id, patient, split, question, answer, label per case, in index order) and ``vectors.usearch``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmmed.knowledge.index_folder import read_index_manifest, write_index_folder

FORMAT_VERSION = 1
CASES, VECTORS = "cases.jsonl", "vectors.usearch"


@dataclass(frozen=True)
class Case:
    """One training record and its question and answer, as retrieval shows it."""

    case_id: str
    patient_id: str
    split: str
    question: str
    answer: str
    label: str | None


@torch.no_grad()
def record_embeddings(model, records: list[dict]) -> np.ndarray:
    """Mean LLM-space token of each record's signals (``{modality: [encoder input, ...]}``), normalised. (N, D)"""
    device = next(model.parameters()).device
    out = []
    for record in records:
        tokens = []
        for name, signals in record.items():
            for signal in signals:
                batch = ({k: v.unsqueeze(0).to(device) for k, v in signal.items()} if isinstance(signal, dict)
                         else signal.unsqueeze(0).to(device))
                out_tokens = model.modality_tokens(name, batch).float()  # (1, N, D)
                tokens.append(out_tokens.reshape(-1, out_tokens.shape[-1]))  # (N, D)
        if not tokens:
            raise ValueError("a record without signals has no embedding")
        mean = torch.cat(tokens).mean(dim=0)
        out.append((mean / mean.norm().clamp_min(1e-12)).cpu().numpy())
    return np.stack(out).astype(np.float32)


class CaseIndex:
    """Cosine search over training cases: ``build`` from embeddings, ``save``/``load``, ``search`` an embedding."""

    def __init__(self, index, cases: list[Case], meta: dict):
        self.index = index
        self.cases = cases
        self.meta = meta

    @classmethod
    def build(cls, vectors: np.ndarray, cases: list[Case], meta: dict) -> "CaseIndex":
        """Index ``vectors`` (N, D), row i being ``cases[i]``; every case must be from the training split."""
        from usearch.index import Index

        leaked = [c.case_id for c in cases if c.split != "train"]
        if leaked:
            raise ValueError(f"the case index holds training cases only; {len(leaked)} are not, e.g. {leaked[:3]}")
        if vectors.ndim != 2 or vectors.shape[0] != len(cases) or not len(cases):
            raise ValueError(f"need one vector per case: {vectors.shape} vectors for {len(cases)} cases")
        index = Index(ndim=vectors.shape[1], metric="cos", dtype="f32")
        index.add(np.arange(len(cases)), np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index, cases, {**meta, "dim": int(vectors.shape[1])})

    def search(self, vector: np.ndarray, k: int) -> list[tuple[Case, float]]:
        """The ``k`` most similar cases and their cosine similarity, most similar first (exact search)."""
        matches = self.index.search(np.asarray(vector, dtype=np.float32), min(k, len(self.cases)), exact=True)
        return [(self.cases[int(key)], float(1.0 - distance)) for key, distance in zip(matches.keys, matches.distances)]

    def save(self, out: str | Path) -> Path:
        """Write to ``out`` (replacing it): built in a sibling folder, then renamed into place."""
        def write(folder: Path) -> None:
            with (folder / CASES).open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in self.cases)
            self.index.save(str(folder / VECTORS))

        return write_index_folder(out, write, {"format": FORMAT_VERSION, "num_cases": len(self.cases), **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> "CaseIndex":
        """Read a case index (its vectors memory-mapped); a missing or altered file is an error naming it."""
        from usearch.index import Index

        path = Path(path)
        manifest = read_index_manifest(path, "case index", FORMAT_VERSION,
                                       f"python -m mmmed.knowledge cases ckpt=<run> out={path}")
        cases = [Case(**json.loads(line)) for line in (path / CASES).read_text(encoding="utf-8").splitlines()]
        index = Index.restore(str(path / VECTORS), view=True)
        meta = {k: v for k, v in manifest.items() if k not in ("format", "num_cases", "sha256")}
        return cls(index, cases, meta)


def case_passages(index: CaseIndex, vector: np.ndarray, k: int) -> list:
    """The ``k`` most similar training cases as passages for a prompt, cited by case id and patient."""
    from mmmed.knowledge.bm25_index import Passage
    from mmmed.knowledge.documents import Chunk

    passages = []
    for case, similarity in index.search(vector, k):
        text = f"{case.question} {case.answer}".strip()
        chunk = Chunk(chunk_id=f"case:{case.case_id}", doc_id=f"case:{case.case_id}", title="Similar training case",
                      heading=f"cosine {similarity:.2f}", text=text,
                      source=f"training split, patient {case.patient_id} ({index.meta.get('ckpt', 'case index')})",
                      licence="the training data's", path="")
        passages.append(Passage(chunk, similarity))
    return passages
