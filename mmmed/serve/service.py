"""What the web page and the HTTP API both call: answer a question about uploaded files, describe the model.

One :class:`AnswerService` holds the predictor (``mmmed.infer.inference``, the API predict.py uses) and the
batching queue in front of it. A request's files are saved to a private folder, read by the model's modality
plugins there (so a bad file fails that request alone, with a 4xx naming the problem), queued, answered in a
batch, optionally drawn, and deleted. Nothing about the files is logged; DICOM header values are cut out of any
error message (``mmmed.serve.redact``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmmed.atomic_files import file_sha256
from mmmed.eval.rationale import shown_answer
from mmmed.infer.inference import CONFIG_NAME, RECORD_SEPARATOR, MultimodalPredictor
from mmmed.infer.restore import find_checkpoint
from mmmed.reasoning.api import MODES, reason
from mmmed.serve.batching import BatchingQueue, Question
from mmmed.serve.redact import header_values, is_dicom, redact
from mmmed.serve.uploads import PrivateUploads, UploadError, UploadLimits

log = logging.getLogger(__name__)


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 of the weights served: a checkpoint file's; for an exported folder, of its files' names and hashes."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
        return digest.hexdigest()
    return file_sha256(find_checkpoint(path))


@dataclass(frozen=True)
class Batching:
    """conf/serve.yaml ``batching``: the most questions per forward pass, how long the first waits, the queue's length."""

    max_batch: int
    max_wait_ms: float
    max_queue: int


class AnswerService:
    """Answers about uploaded patient files through one predictor and a batching queue.

    Args:
        predictor: the loaded model.
        model_id: the name the API reports (the run or export folder's name).
        checkpoint_sha256: the weights' hash (:func:`checkpoint_sha256`).
        private_dir: the server's own folder (mode 0700): each request's files go in a folder inside it.
        limits: the limits on one request's files.
        batching: the queue's settings.
        generation: conf/predict.yaml's ``generation`` block (greedy by default), as predict.py takes it.
        rationale: ``auto``, true or false, as in predict.py.
        reasoning: ``none``, ``sample`` or ``uncertainty_search`` (with ``search``, as in predict.py).
        search: conf/predict.yaml's ``search`` block, for the reasoning modes.
        option_batch_size: answer options scored per forward pass.
        timeout_s: how long a request waits for its answer before it fails (HTTP 504).
        read_workers: requests whose files are saved and read (decoded) at once; the others wait for a turn,
            while those already queued wait for the model without holding one.
    """

    def __init__(self, predictor: MultimodalPredictor, *, model_id: str, checkpoint_sha256: str,
                 private_dir: str | Path, limits: UploadLimits, batching: Batching, generation: Mapping[str, Any],
                 rationale: str | bool = "auto", reasoning: str = "none", search: Mapping[str, Any] | None = None,
                 option_batch_size: int = 32, timeout_s: float = 300.0, read_workers: int = 4) -> None:
        if reasoning != "none" and reasoning not in MODES:
            raise ValueError(f"reasoning must be one of none, {', '.join(MODES)}, not {reasoning!r}")
        self.predictor = predictor
        self.model_id, self.checkpoint_sha256 = model_id, checkpoint_sha256
        self.private_dir = Path(private_dir)
        self.limits = limits
        if reasoning != "none" and rationale is True:  # as predict.py: the samples answer the plain question
            raise ValueError(f"reasoning={reasoning} samples answers to the plain question: rationale=true cannot go "
                             f"with it (rationale=auto asks a self-trained model plainly)")
        self.rationale = predictor.asks_for_reasoning(rationale) and reasoning == "none"
        self.settings = predictor.generation_settings(dict(generation), self.rationale)
        self.reasoning, self.search = reasoning, dict(search or {})
        self.option_batch_size, self.timeout_s = option_batch_size, timeout_s
        self.reading = threading.BoundedSemaphore(read_workers)
        self.queue = BatchingQueue(self._run_batch, batching.max_batch, batching.max_wait_ms / 1000,
                                   batching.max_queue)
        self.started = time.time()

    def close(self) -> None:
        """Stop the model thread (after the questions already queued)."""
        self.queue.close(timeout=self.timeout_s)

    def model_card(self) -> dict[str, Any]:
        """``GET /v1/model``: what the model reads, the questions it was trained on, and which weights these are."""
        config = self.predictor.config
        return {
            "model": self.model_id,
            "checkpoint_sha256": self.checkpoint_sha256,
            "stage": config.get("stage"),
            "llm": (config.get("llm") or {}).get("identity"),
            "modalities": {name: {"tag": plugin.tag, "description": plugin.description}
                           for name, plugin in self.predictor.plugins.items()},
            "trained_questions": [config["question"]] if config.get("question") else [],
            "answer_classes": sorted(config.get("answer_classes") or {}),
            "rationale": self.rationale,
            "reasoning": self.reasoning,
            "max_new_tokens": self.settings.max_new_tokens,
        }

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``: up, how many questions wait, and the batch sizes run so far."""
        return {"status": "ok", "model": self.model_id, "queued": self.queue.queue.qsize(),
                "uptime_s": round(time.time() - self.started, 1),
                "batches": {str(size): count for size, count in sorted(self.queue.batch_sizes.items())}}

    def answer(self, files: list[tuple[str, bytes]], question: str, options: list[str] | None = None,
               picture: bool = False) -> dict[str, Any]:
        """The answer about one patient's ``(name, content)`` files: ``answer``, ``options`` (when given), the
        rationale and sources when the model gives them, ``timings`` and ``model``; with ``picture``, a PNG of each
        file as the encoder saw it with the question and answer (``pictures``: base64). Raises :class:`UploadError`
        for what the client sent wrong."""
        started = time.perf_counter()
        question = (question or "").strip()
        if not question:
            raise UploadError("the question is empty: ask something about the files, e.g. one of GET /v1/model's "
                              "trained_questions")
        options = [o.strip() for o in options or [] if o and o.strip()] or None
        if options is not None and self.reasoning != "none":
            raise UploadError(f"this server answers with reasoning={self.reasoning}, which scores no options")
        with PrivateUploads(self.private_dir, self.limits) as uploads:
            with self.reading:
                paths = uploads.save(files)
                source = RECORD_SEPARATOR.join(str(p) for p in paths)
                inputs = self._read(uploads, paths)
            read = time.perf_counter()
            item = Question(question, name="upload", inputs=inputs, path=source, options=options)
            future = self.queue.submit(item)
            result = future.result(timeout=self.timeout_s)
            answered = time.perf_counter()
            response = self._response(result)
            if picture:
                response["pictures"] = self._pictures(uploads, source, question, result)
        done = time.perf_counter()
        response["timings"] = {"read_s": round(read - started, 4), "queue_s": round(item.started_at - item.queued_at, 4),
                               "model_s": round(answered - item.started_at, 4), "total_s": round(done - started, 4)}
        log.info("answered in %.2f s", done - started)  # nothing about the files or the question
        return response

    def _read(self, uploads: PrivateUploads, paths: list[Path]) -> list[dict[str, Any]]:
        """The record's encoder inputs; a file that cannot be read is the client's 422, with no header value in it."""
        try:
            return self.predictor.record_inputs([str(p) for p in paths])
        except Exception as error:  # noqa: BLE001 - the uploaded files are unreadable: the client's problem
            dicoms = [p for p in uploads.folder.iterdir() if is_dicom(p)]  # type: ignore[union-attr]
            message = redact(uploads.relative(str(error)), set().union(*(header_values(p) for p in dicoms)))
            raise UploadError(f"the files cannot be read: {message}", 422) from None

    def _response(self, result: dict[str, Any]) -> dict[str, Any]:
        """The JSON an answer gets: the same keys predict.py writes, without file names."""
        response: dict[str, Any] = {"answer": result["answer"], "model": self.model_id}
        for key in ("options", "reasoning", "samples", "entropies", "rounds", "queries", "passages"):
            if key in result:
                response[key] = result[key]
        return response

    def _pictures(self, uploads: PrivateUploads, source: str, question: str, result: dict[str, Any]) -> list[str]:
        """Each file drawn by its modality's plugin into the request's folder, returned as base64 PNG."""
        drawn = self.predictor.draw_record(source, uploads.folder / "picture.png", question=question,  # type: ignore[operator]
                                           reference="(none given)", answer=shown_answer(result, True))
        return [base64.b64encode(path.read_bytes()).decode() for path in drawn]

    def _run_batch(self, batch: list[Question]) -> list[dict[str, Any]]:
        """One batch on the model thread: greedy (or the configured) generation over every question's views at once,
        or the reasoning loop over the batch."""
        if self.reasoning != "none":
            return reason(self.predictor, [q.question for q in batch], [q.inputs[0] for q in batch], self.reasoning,
                          self.search)
        return self.predictor.predict_records([q.question for q in batch], [q.name for q in batch],
                                             [q.inputs for q in batch], self.settings, [q.options for q in batch],
                                             batch_size=sum(len(q.inputs) for q in batch),
                                             option_batch_size=self.option_batch_size, reasoning=self.rationale)
