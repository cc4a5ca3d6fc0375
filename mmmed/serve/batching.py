"""A queue that answers concurrent questions together: one model thread, one forward pass per batch.

Requests put their (already read) record on the queue and wait on a future. The model thread takes the oldest,
then whatever else arrives within ``max_wait_s`` up to ``max_batch`` questions, and answers them in one call of
``run_batch``, which batches their encoder inputs into shared forward passes (left padding, as validation does).
Under load the queue is never empty, so batches fill without waiting; one request alone waits at most
``max_wait_s``. A full queue refuses at once (:class:`QueueFull`) rather than letting latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` questions already: the caller should retry later (HTTP 503)."""


@dataclass
class Question:
    """One request's question about one record, waiting for its answer in ``future``.

    Args:
        question: the question as asked.
        name: the record's name (its windows' ids; never logged).
        inputs: the record's encoder inputs per evaluation view (``MultimodalPredictor.record_inputs``).
        path: the record as a path string (``a|b`` for several files), for modes that read files themselves.
        options: answer options to score, or None.
    """

    question: str
    name: str
    inputs: list[dict[str, Any]]
    path: str
    options: list[str] | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None


class BatchingQueue:
    """Answers :class:`Question` s in batches on one model thread.

    Args:
        run_batch: answers a batch, one result per question, in order (an exception fails the whole batch).
        max_batch: the most questions answered together.
        max_wait_s: how long the oldest question waits for others to join its batch.
        max_queue: the most questions waiting; more are refused with :class:`QueueFull`.
    """

    def __init__(self, run_batch: Callable[[list[Question]], list[dict[str, Any]]], max_batch: int,
                 max_wait_s: float, max_queue: int) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1, max_wait_s "
                             f"({max_wait_s}) >= 0")
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.queue: queue.Queue[Question | None] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size were run (GET /v1/health)
        self.thread = threading.Thread(target=self._serve, name="mmmed-model", daemon=True)
        self.thread.start()

    def submit(self, question: Question) -> Future:
        """Queue ``question``; its future gets the result (or the batch's exception)."""
        if not self.thread.is_alive():
            raise RuntimeError("the model thread has stopped: the server is shutting down")
        try:
            self.queue.put_nowait(question)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} questions are waiting already: try again in a moment") from None
        return question.future

    def close(self, timeout: float | None = None) -> None:
        """Answer what is queued, then stop the model thread."""
        self.queue.put(None)
        self.thread.join(timeout)

    def _next_batch(self) -> tuple[list[Question], bool]:
        """The oldest question and those that join it within ``max_wait_s``; ``True`` when told to stop."""
        first = self.queue.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _serve(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            for item in batch:
                item.started_at = started
            try:
                results = self.run_batch(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)} questions")
            except Exception as error:  # noqa: BLE001 - every waiting request hears of it; the thread goes on
                log.error("a batch of %d failed: %s", len(batch), type(error).__name__)
                for item in batch:
                    item.future.set_exception(error)
                continue
            self.batch_sizes[len(batch)] += 1
            for item, result in zip(batch, results):
                item.future.set_result(result)
