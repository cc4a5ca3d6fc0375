"""An app served by uvicorn on a free local port in a background thread: for tests, benchmarks and notebooks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app, host: str = "127.0.0.1", start_timeout_s: float = 120.0) -> Iterator[str]:
    """The base URL while uvicorn serves ``app`` from a background thread; it stops on exit. Outside the main
    thread uvicorn installs no signal handler, so the caller's process keeps its own."""
    port = free_port(host)
    runner = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            runner.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    url = f"http://{host}:{port}"
    try:
        yield url
    finally:
        runner.should_exit = True
        thread.join(timeout=60)
