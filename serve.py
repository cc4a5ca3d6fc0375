"""Serve a trained model to a browser and over HTTP: ``python serve.py ckpt=<run folder | .ckpt | exported folder>``.

One process: the web page at ``/`` (Gradio), the API under ``/v1`` (FastAPI; ``/openapi.json``), one model thread
answering queued questions in batches (conf/serve.yaml, docs/serve.md). Uploads live in a private folder for the
length of their request; the folder itself is removed when the server stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mmmed.infer.inference import MultimodalPredictor, load
from mmmed.serve.service import AnswerService, Batching, checkpoint_sha256
from mmmed.serve.uploads import UploadLimits

log = logging.getLogger("mmmed.serve")


@dataclass
class Server:
    """The ASGI app, the service behind it, and the private folder to remove when done (:meth:`close`)."""

    app: object
    service: AnswerService
    private_dir: Path

    def close(self) -> None:
        """Answer what is queued, stop the model thread, delete the private folder and everything in it."""
        self.service.close()
        shutil.rmtree(self.private_dir, ignore_errors=True)


def build_server(cfg: DictConfig, predictor: MultimodalPredictor | None = None) -> Server:
    """The page and the API over the model of ``cfg.ckpt`` (or ``predictor``, already loaded from it)."""
    from mmmed.serve.api import build_api

    predictor = predictor or load(cfg.ckpt, cfg.device, cfg.llm_cache_dir, cfg.trust_remote_code,
                                  tuple(cfg.trusted_modules))
    private_dir = Path(tempfile.mkdtemp(prefix="mmmed-serve-", dir=cfg.private_dir))  # 0700
    # Gradio writes uploads to GRADIO_TEMP_DIR before the page's handler sees them: inside the private folder too.
    os.environ["GRADIO_TEMP_DIR"] = str(private_dir / "page")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    max_bytes = int(cfg.uploads.max_mb * 2**20)
    service = AnswerService(
        predictor, model_id=Path(cfg.ckpt).name, checkpoint_sha256=checkpoint_sha256(cfg.ckpt),
        private_dir=private_dir, limits=UploadLimits(max_bytes=max_bytes, max_files=cfg.uploads.max_files),
        batching=Batching(**cfg.batching), generation=OmegaConf.to_container(cfg.generation, resolve=True),
        rationale=cfg.rationale, reasoning=cfg.reasoning, search=OmegaConf.to_container(cfg.search, resolve=True),
        option_batch_size=cfg.option_batch_size, timeout_s=cfg.timeout_s, read_workers=cfg.workers)
    from mmmed.serve.page import build_page, mount_page  # imports gradio: after its settings above

    # A multipart body carries the files plus its boundaries and fields: a little over the files' limit.
    api = build_api(service, max_request_bytes=max_bytes + 2**20,
                    max_in_flight=cfg.batching.max_queue + cfg.batching.max_batch)
    app = mount_page(api, build_page(service, cfg.page.concurrency, cfg.page.delete_after_s), max_file_bytes=max_bytes)
    return Server(app, service, private_dir)


@hydra.main(config_path="pkg://mmmed_conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: serves until interrupted, then removes every upload."""
    import uvicorn

    server = build_server(cfg)
    # Every temporary file of this process inside the private folder too: Starlette spools uploads over 1 MB to one.
    (server.private_dir / "tmp").mkdir()
    tempfile.tempdir = str(server.private_dir / "tmp")
    log.info("serving %s at http://%s:%d (API: /v1, schema: /openapi.json)", cfg.ckpt, cfg.host, cfg.port)
    try:
        uvicorn.run(server.app, host=cfg.host, port=cfg.port, log_level="info")
    finally:
        server.close()


if __name__ == "__main__":
    main()
