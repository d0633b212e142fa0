"""Helpers of the `genlab serve` tests: a live server on 127.0.0.1 in this process, and small
HTTP helpers over real sockets (http.client), so body limits, disconnects and streaming behave as
in production."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from genlab.apps.serve import ServeSettings, create_app
from genlab.apps.serve_models import find_runs


@dataclass
class Live:
    """A running server: its address, the app (for its state) and small HTTP helpers."""

    host: str
    port: int
    app: Any
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: Any = None, *,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                auth: bool = True, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            if self.token and auth and "Authorization" not in hdrs:
                hdrs["Authorization"] = f"Bearer {self.token}"
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=hdrs)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, \
                response.read()
        finally:
            conn.close()

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, body, **kw)

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    @property
    def state(self) -> Any:
        return self.app.state.genlab

    def queue(self, name: str) -> Any:
        return self.state.models[name].queue


@contextmanager
def live_server(runs: list[Path], *, wait_ready: bool = True, **settings: Any) -> Iterator[Live]:
    """The app for `runs` under uvicorn on 127.0.0.1:<free port> in a thread, stopped after."""
    app = create_app(find_runs([str(r) for r in runs], None), ServeSettings(**settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = Live("127.0.0.1", sock.getsockname()[1], app, settings.get("token"))
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        while wait_ready and not app.state.genlab.ready:
            assert time.monotonic() < deadline and not app.state.genlab.failed, \
                app.state.genlab.failed or "the models did not load in 60 s"
            time.sleep(0.01)
        yield live
    finally:
        server.should_exit = True
        thread.join(30)
