"""serve.py's app on a real port in a background thread, for the API, fuzz, concurrency and browser tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

import serve as serve_script


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(cfg, predictor) -> Iterator[tuple[str, serve_script.Server]]:
    """``(base URL, server)`` while uvicorn serves ``build_server(cfg, predictor)`` on a free port; on exit the
    server stops and its private folder is removed."""
    server = serve_script.build_server(cfg, predictor)
    port = free_port()
    config = uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    runner = uvicorn.Server(config)  # outside the main thread uvicorn installs no signal handler in pytest's process
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # start-up is imports and one model load, no network
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    assert httpx.get(f"{url}/v1/health").status_code == 200
    try:
        yield url, server
    finally:
        runner.should_exit = True
        thread.join(timeout=60)
        server.close()
