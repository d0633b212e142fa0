"""The HTTP plumbing of `genlab serve`, apart from what it serves: JSON errors, strict request
bodies, the guard in front of every route (host, origin, token, body size) and a server-sent-events
response that notices a client that went away.

Everything here is plain ASGI or pydantic; nothing knows about models.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("genlab.serve")

# the requests a browser opens itself: a 401 there asks for the token in the browser's own dialog
PAGE_PATHS = frozenset({"/", "/docs"})
OPEN_PATHS = frozenset({"/livez"})  # answered without the token (a process that is up says so)
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


class ApiError(Exception):
    """An error answer: status, one-line message, its type and the request field it is about."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.headers = headers or {}


def error_body(message: str, type: str, param: str | None = None) -> dict[str, Any]:
    """The JSON of every error, in the shape OpenAI-style clients read (`error.message`, ...)."""
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param), e.status, headers=e.headers)


# --- strict request bodies -------------------------------------------------------------------------

def parse_body(body: bytes, schema: type[BaseModel]) -> Any:
    """A request body as `schema`, or a 422 `ApiError` naming the field. The body is JSON whatever
    its content type (`curl -d` sends form encoding); NaN, Infinity and 1e999 parse to floats that
    the schema refuses as not finite, and no input value is ever echoed back."""
    if not body.strip():
        raise ApiError(422, "the body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise ApiError(422, f"the body is not valid JSON ({reason}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, got a JSON {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        param, message = validation_message(e.errors(include_input=False, include_url=False),
                                            schema)
        raise ApiError(422, message, param=param) from None


def validation_message(errors: Sequence[dict[str, Any]], schema: type[BaseModel]
                       ) -> tuple[str | None, str]:
    """The request field of the first error and a one-line message about it."""
    first = errors[0]
    if not first["loc"]:
        return None, f"the body: {_lower(first['msg'])}"
    field = str(first["loc"][0])
    if first["type"] == "extra_forbidden":
        return field, (f"{field} is not a field of this request (it takes: "
                       f"{', '.join(schema.model_fields)})")
    if first["type"] == "missing":
        return field, f"{field} is required"
    mine = [e for e in errors if e["loc"] and str(e["loc"][0]) == field]
    if len(mine) > 1:  # every member of a union refused the value (label: integer or list)
        in_list = [e for e in mine if any(isinstance(p, int) for p in e["loc"])]
        if not in_list:
            types = [t.get("type", "?") for t in
                     schema.model_json_schema()["properties"][field].get("anyOf", [])]
            return field, f"{field} must be one of: {', '.join(types)}"
        first = in_list[0]
    where = field + "".join(f"[{p}]" for p in first["loc"][1:] if isinstance(p, int))
    return field, f"{where}: {_lower(first['msg'])}"


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


# --- the guard: host, origin, token, body size -----------------------------------------------------

class Guard:
    """Pure ASGI middleware in front of every route (order matters):

    1. `allowed_hosts`: the Host header must name the server (a loopback server answers only to
       127.0.0.1, localhost and [::1]: a web page that rebinds its own name to 127.0.0.1 is refused).
    2. A request with an `Origin` header must come from the server's own origin or a `--cors-origin`
       (a page elsewhere cannot make a browser spend this server's time, with or without cookies).
    3. The token, when set: `Authorization: Bearer T`, or HTTP Basic with T as the password (what a
       browser's login dialog sends for the page), compared in constant time; not for /livez.
    4. Bodies over `max_body` bytes: 413 before they are read past the limit; the body is then
       handed on to the app as it came (disconnects still reach it).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int,
                 allowed_hosts: Sequence[str] | None, cors_origins: Sequence[str]) -> None:
        self.app, self.max_body = app, max_body
        self.token = token.encode() if token else None
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.cors_origins = set(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._refusal(scope, headers)
        if problem is not None:
            await _send_error(send, problem)
            return
        receive = await self._limited_body(headers, receive)
        if isinstance(receive, ApiError):
            await _send_error(send, receive)
            return
        await self.app(scope, receive, _with_security_headers(send))

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            return ApiError(403, "this server answers only to its own host names (Host header "
                                 f"{host[:100]!r}); use http://127.0.0.1:PORT",
                            type="forbidden", param="host")
        origin = headers.get("origin")
        if origin is not None and origin != "null" and origin not in self.cors_origins and \
                urlsplit(origin).netloc.lower() != host.lower():
            return ApiError(403, f"requests from pages at {origin[:100]} are refused; start the "
                                 "server with --cors-origin ORIGIN to allow them",
                            type="forbidden", param="origin")
        if origin == "null":
            return ApiError(403, "requests from sandboxed or file:// pages are refused",
                            type="forbidden", param="origin")
        if self.token is not None and scope["path"] not in OPEN_PATHS and \
                not self._authorized(headers.get("authorization", "")):
            page = scope["path"] in PAGE_PATHS
            challenge = 'Basic realm="genlab", charset="UTF-8"' if page else "Bearer"
            return ApiError(401, "missing or wrong token; send the header Authorization: Bearer "
                                 "TOKEN", type="unauthorized",
                            headers={"www-authenticate": challenge})
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        candidate = b""
        if scheme.lower() == "bearer":
            candidate = value.strip().encode("latin-1", "replace")
        elif scheme.lower() == "basic":
            try:
                candidate = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        return hmac.compare_digest(candidate, self.token)  # constant time in the token's bytes

    async def _limited_body(self, headers: dict[str, str], receive: Receive
                            ) -> Receive | ApiError:
        too_big = ApiError(413, f"the body is over {self.max_body // 1024} KiB; send a smaller "
                                "request", type="too_large")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return too_big if length.isdigit() else ApiError(400, "bad Content-Length header")
        chunks, size, more = [], 0, True
        first: Message | None = None
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                first = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return too_big
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first or {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _host_name(host: str) -> str:
    """The name part of a Host header: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)
    return wrapped


async def _send_error(send: Send, e: ApiError) -> None:
    await error_response(e)({"type": "http"}, _no_receive, _with_security_headers(send))


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# --- noticing a client that went away --------------------------------------------------------------

def watch_disconnect(receive: Receive) -> tuple[asyncio.Event, asyncio.Task]:
    """An event set when the client disconnects, and the task that watches for it (cancel it when
    the answer is sent). Needs the body to be read already."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    return gone, asyncio.create_task(watch())


class EventStream(StreamingResponse):
    """Server-sent events from `events(gone)`, an async iterator of JSON-able objects (each sent as
    `data: {...}`), then `data: [DONE]`. `gone` is set as soon as the client disconnects, so the
    producer stops before its next token instead of generating for nobody."""

    media_type = "text/event-stream"

    def __init__(self, events: Callable[[asyncio.Event], AsyncGenerator[Any, None]],
                 headers: dict[str, str] | None = None) -> None:
        # no body of its own (so no Content-Length); `__call__` sends the events
        super().__init__(iter(()), headers={"cache-control": "no-cache",
                                            "x-accel-buffering": "no", **(headers or {})},
                         media_type=self.media_type)
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone, watcher = watch_disconnect(receive)
        events = self.events(gone)
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for event in events:
                if gone.is_set():
                    break
                data = json.dumps(event, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":"))
                await send({"type": "http.response.body", "more_body": True,
                            "body": f"data: {data}\n\n".encode()})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                            "more_body": False})
        finally:
            watcher.cancel()
            await events.aclose()  # the producer's cleanup runs now, not when collected
