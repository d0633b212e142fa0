"""Running `genlab serve`: the exposure rules (loopback by default, a token beyond it), the listening
socket, uvicorn with a graceful SIGTERM, and a model that fails to load as a one-line error. The
app itself is `genlab.apps.serve.create_app`."""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
from typing import Any

from genlab.apps.serve import LOOPBACK_NAMES, ServeSettings, create_app
from genlab.apps.serve_models import find_runs
from genlab.errors import UserError
from genlab.log import get_logger

log = get_logger(__name__)


def check_exposure(host: str, token: str | None, insecure: bool) -> tuple[str, ...] | None:
    """Refuse to listen beyond this machine without a token (unless `insecure`); the Host header
    names a loopback server answers to (None: any, for a server behind a name or a proxy)."""
    if token is not None and (len(token) < 16 or not re.fullmatch(r"[!-~]+", token)):
        raise UserError("--token must be 16 or more visible ASCII characters without spaces, "
                        "e.g. the output of: python -c 'import secrets; print(secrets."
                        "token_urlsafe(32))'")
    if is_loopback(host):
        return LOOPBACK_NAMES
    if token is None and not insecure:
        raise UserError(f"--host {host} lets other machines reach the server; give it a token "
                        "(--token T or GENLAB_SERVE_TOKEN), or pass --insecure to serve without "
                        "one")
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def serve(runs: list[str], *, runs_dir: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, insecure: bool = False,
          cors_origins: tuple[str, ...] = (), drain_s: float = 30.0, **settings: Any) -> None:
    """Serve runs until SIGTERM or Ctrl-C: then stop accepting, finish the requests in flight
    (for up to `drain_s` seconds) and return. `settings`: fields of `ServeSettings`. Raises
    `UserError` before listening for a bad run, flag or port, and after it for a model that
    fails to load."""
    import uvicorn

    allowed_hosts = check_exposure(host, token, insecure)
    specs = find_runs(runs, runs_dir)
    sock = _listen(host, port)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(specs, ServeSettings(token=token, cors_origins=cors_origins,
                                          allowed_hosts=allowed_hosts, **settings), on_fatal)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.genlab.draining = True  # /readyz says 503 while the last requests finish
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in getattr(self, "_captured_signals", []):
                # uvicorn raises the signal again once drained (the process would die of it):
                # a drained server exits 0; Ctrl-C still ends as an interrupt
                self._captured_signals.remove(sig)

    server = Server(uvicorn.Config(app, log_level="info", server_header=False, lifespan="on",
                                   timeout_graceful_shutdown=drain_s))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    log.info(f"genlab serve: http://{shown}:{bound[1]}/ (the page; the API's docs at /docs), "
             f"{len(specs)} model(s) loading; Ctrl-C or SIGTERM stops it")
    server.run(sockets=[sock])
    if fatal:
        raise UserError(f"cannot serve {fatal[0]}")
    log.info("genlab serve: stopped")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another server "
                        "there? pick another --port") from None
    return sock
