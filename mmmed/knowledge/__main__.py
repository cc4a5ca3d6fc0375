"""``python -m mmmed.knowledge build source=<folder> out=<index dir>``: index knowledge documents for retrieval;
``python -m mmmed.knowledge cases ckpt=<run> out=<index dir>``: index a run's training cases by embedding.

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


def cases(cfg: DictConfig) -> Path:
    """Embed every training-split record of ``cfg.ckpt``'s data with its model and index them at ``cfg.out``."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from mmmed.infer.inference import load
    from mmmed.knowledge.cases import Case, CaseIndex, record_embeddings

    predictor = load(cfg.ckpt, cfg.device, cfg.llm_cache_dir, cfg.trust_remote_code, tuple(cfg.trusted_modules))
    with open_dict(cfg):
        cfg.modalities = predictor.config["modalities"]  # data configs read the model's own pipelines
        if cfg.get("data") is None:
            if predictor.run_config is None:
                raise ValueError(f"{cfg.ckpt} is an exported model, which does not record its data: pass data=<name>")
            cfg.data = predictor.run_config["data"]
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    # The training split only, read as evaluation reads it (no random crops): a case is what the model would see.
    datamodule.split_kwargs = {"train": {**datamodule.split_kwargs["train"], "train": False}}
    datamodule.normalization = predictor.config["normalization"]
    datamodule.attach_formatter(predictor.formatter)
    datamodule.prepare_data()
    datamodule.setup("test")
    dataset = datamodule.splits["train"]
    items = [dataset[i] for i in range(len(dataset))]
    found = [Case(case_id=str(item["id"]), patient_id=str(item["patient_id"]), split="train",
                  question=item["question"], answer=item["answer"],
                  label=item["label"] if isinstance(item["label"], str) else None) for item in items]
    vectors = record_embeddings(predictor.model, [item["signals"] for item in items])
    index = CaseIndex.build(vectors, found, {"ckpt": str(cfg.ckpt), "data": cfg.data.get("root", "")})
    out = index.save(cfg.out)
    log.info("Indexed %d training cases (dimension %d) from %s into %s", len(found), vectors.shape[1], cfg.ckpt, out)
    return out


COMMANDS = {"build": build, "cases": cases}


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
