"""The HTTP API: ``POST /v1/answer``, ``GET /v1/health``, ``GET /v1/model``, and its OpenAPI schema.

    curl -F files=@00001_lr.hea -F files=@00001_lr.dat \\
         -F 'request={"question": "What rhythm does this ECG show?"}' http://127.0.0.1:8000/v1/answer

Errors are JSON ``{"detail": "..."}`` with a 4xx status naming the problem (400 bad request, 413 too large, 422
unreadable files, 503 queue full, 504 no answer in time). The interactive docs pages are off: FastAPI's load their
scripts from a CDN, and the server must work with no internet; ``/openapi.json`` describes the API.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
import anyio
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from mmmed.serve.batching import QueueFull
from mmmed.serve.service import AnswerService
from mmmed.serve.uploads import UploadError

log = logging.getLogger(__name__)


class AnswerRequest(BaseModel):
    """The ``request`` form field of ``POST /v1/answer``, as JSON."""

    question: str = Field(description="the question; tags such as <ecg> optional (GET /v1/model: trained_questions)")
    options: list[str] | None = Field(None, description="answer options to score: each gets a probability among them")
    picture: bool = Field(False, description="return a PNG (base64) of each file as the encoder saw it")


def parse_request(text: str) -> AnswerRequest:
    """The ``request`` field, or an :class:`UploadError` saying what is wrong with it."""
    try:
        return AnswerRequest.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError, TypeError) as error:
        problem = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
        raise UploadError(f'the request field must be JSON like {{"question": "..."}}: {problem}') from None


def build_api(service: AnswerService, max_request_bytes: int, max_in_flight: int) -> FastAPI:
    """The FastAPI app serving ``service`` (the web page is mounted on it by ``mmmed.serve.page``). Each request
    waits for its answer in a thread of its own, ``max_in_flight`` at most: enough for a full queue and a batch,
    so that concurrent questions can fill a batch (the model answers on the queue's one thread)."""
    limiter: list[anyio.CapacityLimiter] = []  # made in the event loop, on the first request
    app = FastAPI(title="mmmed", summary="Answers about a patient's ECG and chest X-ray files from a trained model",
                  docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):  # before the body is read or spooled anywhere
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            return JSONResponse({"detail": f"the request is larger than {max_request_bytes} bytes, the upload limit"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        log.info("refused a request: %d", error.status)  # the status only: messages name the client's files
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        """Whether the server is up, how many questions wait, and the sizes of the batches run."""
        return service.health()

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        """The model: its modalities and tags, trained questions, answer classes and checkpoint hash."""
        return service.model_card()

    @app.post("/v1/answer")
    async def answer(files: list[UploadFile] = File(..., description="one patient's files: a WFDB record (.hea and "
                                                    "the .dat it names, or a zip), an ECG or chest X-ray DICOM, a PNG"),
                     request: str = Form(..., description='JSON: {"question": "...", "options": [...], '
                                         '"picture": false}')) -> Any:
        """The model's answer about the files, with option scores, rationale and sources when given, and timings."""
        asked = parse_request(request)
        contents, total = [], 0
        for upload in files:
            data = await upload.read(max_request_bytes + 1 - total)
            total += len(data)
            if total > max_request_bytes:
                raise UploadError(f"the files hold more than {max_request_bytes} bytes, the upload limit", 413)
            contents.append((upload.filename or "", data))
            await upload.close()
        try:
            if not limiter:
                limiter.append(anyio.CapacityLimiter(max_in_flight))
            return await anyio.to_thread.run_sync(service.answer, contents, asked.question, asked.options,
                                                  asked.picture, limiter=limiter[0])
        except QueueFull as error:
            return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})
        except FutureTimeout:
            return JSONResponse({"detail": f"no answer within {service.timeout_s} s"}, status_code=504)

    return app
