"""serve.py's app on a real port in a background thread, for the API, fuzz, concurrency and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

import serve as serve_script
from mmmed.serve.background import serving


@contextmanager
def live_server(cfg, predictor) -> Iterator[tuple[str, serve_script.Server]]:
    """``(base URL, server)`` while ``build_server(cfg, predictor)`` is served on a free port; on exit the server
    stops and its private folder is removed."""
    server = serve_script.build_server(cfg, predictor)
    try:
        with serving(server.app) as url:
            assert httpx.get(f"{url}/v1/health").status_code == 200
            yield url, server
    finally:
        server.close()
