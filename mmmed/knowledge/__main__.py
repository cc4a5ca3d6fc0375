"""``python -m mmmed.knowledge build source=<folder> out=<index dir>``: index knowledge documents for retrieval.

The first word is the command; the rest are Hydra overrides of ``conf/knowledge_<command>.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mmmed.config_dir import config_dir
from mmmed.knowledge.bm25_index import KnowledgeIndex
from mmmed.knowledge.documents import read_chunks

log = logging.getLogger("mmmed.knowledge")


def build(cfg: DictConfig) -> Path:
    """Chunk the documents under ``cfg.source`` and write their BM25 index to ``cfg.out``."""
    chunks = read_chunks(cfg.source, max_words=cfg.chunking.max_words)
    index = KnowledgeIndex.build(chunks, k1=cfg.bm25.k1, b=cfg.bm25.b, method=cfg.bm25.method,
                                 stopwords=cfg.bm25.stopwords)
    out = index.save(cfg.out)
    documents = len({c.doc_id for c in chunks})
    log.info("Indexed %d chunks of %d documents from %s into %s", len(chunks), documents, cfg.source, out)
    return out


COMMANDS = {"build": build}


def main(argv: list[str]) -> None:
    """Run ``argv[0]`` (a command) with ``argv[1:]`` as overrides of its config."""
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m mmmed.knowledge {{{'|'.join(COMMANDS)}}} key=value ...\n"
                         f"  e.g. python -m mmmed.knowledge build source=knowledge/cards out=outputs/knowledge/cards")
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose(f"knowledge_{argv[0]}", overrides=argv[1:])
    COMMANDS[argv[0]](cfg)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
