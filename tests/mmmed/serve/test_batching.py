"""The batching queue: concurrent questions share a batch, a full queue refuses, a failed batch fails its requests only."""

from __future__ import annotations

import threading

import pytest

from mmmed.serve.batching import BatchingQueue, QueueFull, Question

WAIT_S = 30.0  # a future that takes longer than this has hung: far above any batch here (they echo strings)


def item(text: str) -> Question:
    return Question(text, name=text, inputs=[{}], path=text)


def test_questions_queued_together_are_answered_in_one_batch_in_order():
    batches: list[list[str]] = []
    entered, release = threading.Event(), threading.Event()

    def run(batch):
        entered.set()
        release.wait(WAIT_S)  # the first batch holds the model thread while the others queue
        batches.append([q.question for q in batch])
        return [{"answer": q.question.upper()} for q in batch]

    queue = BatchingQueue(run, max_batch=4, max_wait_s=0.0, max_queue=16)
    first = queue.submit(item("a"))
    assert entered.wait(WAIT_S)  # the model thread runs "a" alone and waits in run()
    futures = [queue.submit(item(t)) for t in "bcdefg"]
    release.set()
    assert first.result(WAIT_S) == {"answer": "A"}
    assert [f.result(WAIT_S)["answer"] for f in futures] == list("BCDEFG")
    assert batches == [["a"], ["b", "c", "d", "e"], ["f", "g"]]  # max_batch caps a batch; order is kept
    assert dict(queue.batch_sizes) == {1: 1, 4: 1, 2: 1}
    queue.close(WAIT_S)


def test_a_full_queue_refuses_at_once():
    entered, release = threading.Event(), threading.Event()
    queue = BatchingQueue(lambda batch: (entered.set(), release.wait(WAIT_S))[1] and [{} for _ in batch],
                          max_batch=1, max_wait_s=0.0, max_queue=2)
    running = queue.submit(item("running"))
    assert entered.wait(WAIT_S)  # taken off the queue: two places are free
    waiting = [queue.submit(item("1")), queue.submit(item("2"))]
    with pytest.raises(QueueFull, match="2 questions are waiting already"):
        queue.submit(item("3"))
    release.set()
    assert running.result(WAIT_S) == {} and all(f.result(WAIT_S) == {} for f in waiting)
    queue.close(WAIT_S)


def test_a_failed_batch_fails_its_questions_and_the_next_batch_is_answered():
    def run(batch):
        if any(q.question == "bad" for q in batch):
            raise ValueError("the model failed")
        return [{"answer": "ok"} for _ in batch]

    queue = BatchingQueue(run, max_batch=1, max_wait_s=0.0, max_queue=4)
    with pytest.raises(ValueError, match="the model failed"):
        queue.submit(item("bad")).result(WAIT_S)
    assert queue.submit(item("good")).result(WAIT_S) == {"answer": "ok"}
    queue.close(WAIT_S)
    assert not queue.thread.is_alive()
    with pytest.raises(RuntimeError, match="shutting down"):
        queue.submit(item("late"))


def test_a_lone_question_waits_at_most_max_wait_for_company():
    queue = BatchingQueue(lambda batch: [{"size": len(batch)} for _ in batch], max_batch=8, max_wait_s=0.05,
                          max_queue=8)
    assert queue.submit(item("alone")).result(WAIT_S) == {"size": 1}
    queue.close(WAIT_S)


@pytest.mark.parametrize("settings", [dict(max_batch=0, max_wait_s=0.0, max_queue=1),
                                      dict(max_batch=1, max_wait_s=-1.0, max_queue=1),
                                      dict(max_batch=1, max_wait_s=0.0, max_queue=0)])
def test_impossible_settings_are_refused(settings):
    with pytest.raises(ValueError, match="must be >= 1"):
        BatchingQueue(lambda batch: [], **settings)
