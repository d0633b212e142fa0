"""`genlab serve`: trained models behind a small REST API (OpenAI-style routes) and a web page.

    app = create_app(serve_models.find_runs(["runs/fmnist-cdcgan"], None), ServeSettings())
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or serve_run.serve(...), as the CLI does

Routes: GET /v1/models, /v1/models/{model}; POST /v1/images/generations, /v1/audio/generations
(base64 WAV), /v1/completions (SSE with `stream: true`); GET /livez, /readyz, /openapi.json, /docs
(offline), / (the page). The request bodies and their checks are in serve_schemas.py and `genlab.generation.check_request`; the guard in
front of every route (host, origin, token, body size) in serve_http.py; the queue of each model
(micro-batches, text streams, 429, 504, clients that leave) in serve_batch.py; running it
(exposure rules, SIGTERM) in serve_run.py. docs/serving.md is the user's guide.

Images go through `modalities.image.image_call` and `model.sample_many`, as `genlab sample` does,
so a request gives the same bytes as `genlab sample` with the same options (same device and torch
thread count). /v1/audio/generations is `queue.submit_fn` of the audio modality's `generate`
(sampling, then Griffin-Lim on the model's worker), its WAV bytes base64 in the JSON.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response

from genlab.apps.serve_batch import ClientGone, DeadlineExceeded, ModelQueue, Overloaded, TextStream
from genlab.apps.serve_http import (
    ApiError,
    EventStream,
    Guard,
    error_body,
    error_response,
    parse_body,
    watch_disconnect,
)
from genlab.apps.serve_models import ROUTES, RunSpec, ServedModel, load_served
from genlab.apps.serve_schemas import (
    IMAGE_OPTIONS,
    AudioRequest,
    AudioResponse,
    CompletionsRequest,
    CompletionsResponse,
    ErrorResponse,
    Health,
    ImagesRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
)
from genlab.errors import UserError
from genlab.generation import DEFAULT_NEW_TOKENS, GenerationRequest, RequestError, check_request
from genlab.images import image_pngs
from genlab.log import get_logger
from genlab.modalities.image import image_call, image_samples
from genlab.version import __version__

log = get_logger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# request fields as `check_request` names them -> as the HTTP request names them
REQUEST_FIELDS = {"max_new_tokens": "max_tokens", **{v: k for k, v in IMAGE_OPTIONS.items()}}
ERRORS = {401: "missing or wrong token", 403: "a refused host or origin",
          404: "no such model", 413: "body over the size limit",
          422: "a bad field (named by error.param)", 429: "the model's queue is full (Retry-After)",
          503: "the models are still loading, or the server is stopping",
          504: "past the request deadline"}


# one server-sent event of a streamed completion (OpenAPI < 3.2: the schema of each event)
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "a text_completion chunk "
                                     "as JSON, or [DONE] last"}, "event": {"type": "string"}}}


@dataclass
class ServeSettings:
    token: str | None = None  # required on every route but /livez when set
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (no credentials)
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES  # Host header names; None = any
    device: str = "cpu"
    which: str = "checkpoint"  # or "best"
    batching: bool = True  # micro-batch concurrent image requests of one model
    batch_window_s: float = 0.01  # at most this long a worker waits for a pass to fill
    max_batch_images: int = 64  # images per sample_many call (in passes of sample_pass_rows)
    max_queue: int = 64  # requests waiting per model; beyond: 429
    max_streams: int = 16  # text requests at once per model; beyond: 429
    timeout_s: float = 60.0  # a request's deadline (504 when its work has not started by then)
    max_body_bytes: int = 64 * 1024
    max_tokens: int = 2048  # the largest max_tokens of a completion


@dataclass
class ServerState:
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    failed: str | None = None
    finished_streams: deque = field(default_factory=lambda: deque(maxlen=100))  # for tests


def create_app(runs: list[RunSpec], settings: ServeSettings | None = None,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The app serving `runs` (see `serve_models.find_runs`). The models load after the server
    starts (GET /readyz says 503 until each is loaded, verified and warmed); a model that fails to
    load calls `on_fatal(message)` (the command line then stops the server)."""
    settings = settings or ServeSettings()
    state = ServerState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load_all(runs, settings, state, on_fatal))
        yield
        state.draining = True
        loader.cancel()
        for served in state.models.values():
            await served.queue.stop()

    app = FastAPI(title="genlab serve", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json", redirect_slashes=False,
                  description="Generate with trained genlab models. Errors are JSON "
                              "`{\"error\": {\"message\", \"type\", \"param\"}}`.")
    app.state.genlab = state
    app.state.settings = settings
    app.add_middleware(Guard, token=settings.token, max_body=settings.max_body_bytes,
                       allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins)
    if settings.cors_origins:
        if "*" in settings.cors_origins:
            log.warning("--cors-origin '*': any web page may call this server (without "
                        "credentials)")
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_credentials=False,
                           allow_headers=["authorization", "content-type"], max_age=600)
    _add_error_handlers(app)
    _add_health_routes(app, state, len(runs))
    _add_model_routes(app, state, settings)
    _add_pages(app)
    app.openapi = lambda: _openapi(app, state, runs, settings)  # type: ignore[method-assign]
    return app


async def _load_all(runs: list[RunSpec], settings: ServeSettings, state: ServerState,
                    on_fatal: Callable[[str], None] | None) -> None:
    for spec in runs:
        try:
            served = await asyncio.to_thread(load_served, spec, device=settings.device,
                                             which=settings.which)
        except (UserError, OSError) as e:
            state.failed = f"{spec.path}: {e}"
            if on_fatal is None:
                log.error(f"genlab serve: cannot serve {state.failed}")
            else:
                on_fatal(state.failed)  # the command line stops and says it
            return
        served.queue = ModelQueue(served.model, batching=settings.batching,
                                  window_s=settings.batch_window_s,
                                  max_images=settings.max_batch_images,
                                  max_waiting=settings.max_queue)
        served.queue.start()
        state.models[spec.name] = served
        log.info(f"loaded {spec.name} ({served.model.name}, step {served.model.checkpoint_step}, "
                 f"sha256 {served.sha256[:12]}) -> {ROUTES[served.kind]}")
    state.ready = True
    log.info(f"ready: {len(runs)} model(s)")


# --- routes ----------------------------------------------------------------------------------------

def _add_health_routes(app: FastAPI, state: ServerState, total: int) -> None:
    @app.get("/livez", response_model=Health, summary="200 once the process is up")
    async def livez() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, summary="200 once every model is loaded and warmed",
             responses={503: {"model": Health, "description": "loading, failed or stopping"}})
    async def readyz() -> Any:
        names = list(state.models)
        if state.failed or state.draining or not state.ready:
            status = "failed" if state.failed else "draining" if state.draining else "loading"
            return JSONResponse(Health(status=status, models=names, message=state.failed or
                                       f"{len(names)} of {total} models loaded").model_dump(), 503)
        return Health(status="ready", models=names)


def _add_model_routes(app: FastAPI, state: ServerState, settings: ServeSettings) -> None:
    ids = itertools.count(1)

    def check_ready() -> None:
        if state.failed:
            raise ApiError(503, "a model failed to load; see the server's log", type="unavailable")
        if state.draining:
            raise ApiError(503, "the server is shutting down", type="unavailable")
        if not state.ready:
            raise ApiError(503, "the models are still loading; retry shortly (GET /readyz)",
                           type="unavailable", headers={"retry-after": "1"})

    def lookup(name: str, kind: str | None) -> ServedModel:
        check_ready()
        served = state.models.get(name)
        if served is None:
            raise ApiError(404, "no model of that name is served here; GET /v1/models lists them",
                           type="not_found", param="model")
        if kind is not None and served.kind != kind:
            raise ApiError(422, f"{name} makes {served.model.modality} samples; use "
                                f"{ROUTES[served.kind]}", param="model")
        return served

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401, 403, 503),
             summary="Every served model: family, modality, classes, step, checkpoint SHA-256, "
                     "its genlab eval figures")
    async def list_models() -> ModelList:
        check_ready()
        return ModelList(object="list", data=[ModelCard(**s.card) for s in state.models.values()])

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=_errors(401, 403, 404, 503),
             summary="One served model")
    async def get_model(model: str) -> ModelCard:
        return ModelCard(**lookup(model, None).card)

    @app.post("/v1/images/generations", response_model=None, summary="Images from an image model",
              openapi_extra=_body("ImagesRequest"),
              responses={200: {"model": ImagesResponse, "description": "b64_json: one base64 "
                               "PNG per image; png_grid: the grid as image/png",
                               "content": {"image/png": {"schema": {"type": "string",
                                                                    "format": "binary"}}}},
                         **_errors(401, 403, 404, 413, 422, 429, 503, 504)})
    async def images(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        body = parse_body(await request.body(), ImagesRequest)
        served = lookup(body.model, "images")
        options = {option: getattr(body, key) for key, option in IMAGE_OPTIONS.items()
                   if getattr(body, key) is not None}
        try:
            r, call, nrow = image_call(served.model, GenerationRequest(
                n=body.n, seed=body.seed, label=body.label, options=options))
        except UserError as e:
            raise _request_error(e) from None
        grid = body.response_format == "png_grid"

        def encode(images: Any) -> Any:  # on the model's worker, right after the pass
            samples = image_samples(call, images, nrow)
            if grid:
                return samples.encode("png_grid")
            labels = samples.labels.tolist() if samples.labels is not None else [None] * r.n
            return [{"b64_json": base64.b64encode(png).decode(), "label": y}
                    for png, y in zip(samples.pngs(), labels)]

        result = await _wait(request, served, served.queue.submit_call(call, encode), deadline,
                             settings)
        headers = {"x-genlab-model-sha256": served.sha256, "x-genlab-seed": str(r.seed)}
        if grid:
            return Response(result, media_type="image/png", headers=headers)
        return JSONResponse({"created": int(time.time()), "model": served.name,
                             "model_sha256": served.sha256, "seed": r.seed, "data": result},
                            headers=headers)

    @app.post("/v1/audio/generations", response_model=None, summary="Clips from an audio model",
              openapi_extra=_body("AudioRequest"),
              responses={200: {"model": AudioResponse, "description": "b64_wav: one base64 "
                               "WAV (8 kHz mono 16-bit PCM) per clip, and its spectrogram PNG"},
                         **_errors(401, 403, 404, 413, 422, 429, 503, 504)})
    async def audio(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        body = parse_body(await request.body(), AudioRequest)
        served = lookup(body.model, "audio")
        options = {option: getattr(body, key) for key, option in IMAGE_OPTIONS.items()
                   if getattr(body, key) is not None}
        gen = GenerationRequest(n=body.n, seed=body.seed, label=body.label, options=options)
        try:
            check_request(served.model, gen, text=False)  # a bad field is a 422 before queueing
        except UserError as e:
            raise _request_error(e) from None

        def work() -> dict[str, Any]:  # on the model's worker: sampling and Griffin-Lim
            samples = served.modality.generate(served.model, gen)
            labels = samples.labels.tolist() if samples.labels is not None else [None] * body.n
            return {"sample_rate": samples.sample_rate,
                    "data": [{"b64_wav": base64.b64encode(wav).decode(),
                              "b64_png": base64.b64encode(png).decode(), "label": y}
                             for wav, png, y in zip(samples.wav_files(),
                                                    image_pngs(samples.images), labels)]}

        result = await _wait(request, served, served.queue.submit_fn(work), deadline, settings)
        return JSONResponse({"created": int(time.time()), "model": served.name,
                             "model_sha256": served.sha256, "seed": body.seed, **result},
                            headers={"x-genlab-model-sha256": served.sha256,
                                     "x-genlab-seed": str(body.seed)})

    @app.post("/v1/completions", response_model=None, summary="Text from a text model",
              openapi_extra=_body("CompletionsRequest"),
              responses={200: {"model": CompletionsResponse, "description": "the text; with "
                               "stream: true, server-sent events",
                               "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                         **_errors(401, 403, 404, 413, 422, 429, 503, 504)})
    async def completions(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        body = parse_body(await request.body(), CompletionsRequest)
        served = lookup(body.model, "completions")
        tokens = DEFAULT_NEW_TOKENS if body.max_tokens is None else body.max_tokens
        if tokens > settings.max_tokens:
            raise ApiError(422, f"max_tokens must be <= {settings.max_tokens} on this server, got "
                                f"{tokens}", param="max_tokens")
        gen = GenerationRequest(n=1, seed=body.seed, prompt=body.prompt, max_new_tokens=tokens,
                                temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)
        try:
            stream = served.queue.stream(served.modality.stream(served.model, gen),
                                         settings.max_streams)
        except Overloaded as e:
            raise _overloaded(served, e) from None
        head = {"id": f"cmpl-{next(ids)}", "object": "text_completion",
                "created": int(time.time()), "model": served.name}
        try:
            await stream.step()  # the prompt: the request's checks run here
        except UserError as e:
            _finish(state, stream, "refused")
            raise _request_error(e) from None
        except BaseException:
            _finish(state, stream, "refused")
            raise
        if body.stream:
            return EventStream(lambda gone: _events(state, stream, head, gone, deadline))
        gone, watcher = watch_disconnect(request.receive)
        stream.watch(gone)
        parts: list[str] = []
        reason = "error"
        try:
            while (piece := await stream.step()) is not None:
                parts.append(piece)
                if gone.is_set():
                    reason = "gone"
                    raise ApiError(499, "the client closed the request", type="client_gone")
                if time.monotonic() > deadline:
                    reason = "deadline"
                    raise _timeout(settings)
            reason = "done"
        finally:
            watcher.cancel()
            _finish(state, stream, reason)
        return JSONResponse({**head, "model_sha256": served.sha256, "seed": body.seed,
                             "choices": [{"index": 0, "text": "".join(parts),
                                          "finish_reason": "length"}]})


async def _events(state: ServerState, stream: TextStream, head: dict[str, Any],
                  gone: asyncio.Event, deadline: float) -> AsyncIterator[dict[str, Any]]:
    """The SSE events of a completion: one per piece of text, a last one with finish_reason."""
    stream.watch(gone)
    reason = "error"
    try:
        while not gone.is_set():
            if time.monotonic() > deadline:
                reason = "deadline"
                yield error_body("the stream passed its deadline", "timeout")
                return
            piece = await stream.step()
            if piece is None:
                reason = "done"
                yield {**head, "choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
                return
            yield {**head, "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
        reason = "gone"
    finally:  # also when the response stops early, its client gone
        _finish(state, stream, "gone" if gone.is_set() else reason)


def _finish(state: ServerState, stream: TextStream, reason: str) -> None:
    if not stream.closed:
        stream.close()
        state.finished_streams.append({"reason": reason, "steps": stream.steps,
                                       "steps_when_gone": stream.steps_when_gone})


async def _wait(request: Request, served: ServedModel, job: Any, deadline: float,
                settings: ServeSettings) -> Any:
    """A queued job's result, mapping the queue's outcomes to HTTP answers."""
    gone, watcher = watch_disconnect(request.receive)
    try:
        return await served.queue.result(job, deadline, gone)
    except UserError as e:  # the model refused the call (what check_request cannot know)
        raise _request_error(e) from None
    except DeadlineExceeded:
        raise _timeout(settings) from None
    except ClientGone:
        raise ApiError(499, "the client closed the request", type="client_gone") from None
    finally:
        watcher.cancel()


def _request_error(e: UserError) -> ApiError:
    """A generation API error as a 422 naming the HTTP request's field."""
    if isinstance(e, RequestError):
        field_name = REQUEST_FIELDS.get(e.field, e.field)
        return ApiError(422, f"{field_name} {e.problem}", param=field_name)
    return ApiError(422, str(e))


def _overloaded(served: ServedModel, e: Overloaded) -> ApiError:
    return ApiError(429, f"{served.name} is busy (its queue is full); retry in {e.retry_after} s",
                    type="overloaded", headers={"retry-after": str(e.retry_after)})


def _timeout(settings: ServeSettings) -> ApiError:
    return ApiError(504, f"the request passed its deadline of {settings.timeout_s:g} s; the "
                         "server is busy, retry later or ask for less", type="timeout")


# --- errors, pages, the schema -------------------------------------------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return error_response(e)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> Response:
        return error_response(ApiError(429, str(e), type="overloaded",
                                       headers={"retry-after": str(e.retry_after)}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        message = {404: "no such route; see /docs", 405: "method not allowed on this route"}.get(
            e.status_code, str(e.detail))
        return error_response(ApiError(e.status_code, message, type=kind,
                                       headers=dict(e.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        errors = e.errors()
        param = str(errors[0]["loc"][-1]) if errors and errors[0].get("loc") else None
        return error_response(ApiError(422, f"{param}: {errors[0]['msg']}" if errors else
                                       "bad request", param=param))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> Response:
        log.exception("genlab serve: internal error")  # the traceback goes to the log only
        return JSONResponse(error_body("internal error; see the server's log", "server_error"),
                            500)


def _static(name: str) -> tuple[str, str]:
    """A page shipped in genlab/apps/ and the CSP that allows exactly its inline script."""
    html = resources.files("genlab.apps").joinpath(name).read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
           "img-src data:; media-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html, csp


def _add_pages(app: FastAPI) -> None:
    page, docs = _static("serve_page.html"), _static("serve_docs.html")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page[0], headers={"content-security-policy": page[1]})

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(docs[0], headers={"content-security-policy": docs[1]})


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": ERRORS[code]} for code in codes}


def _body(schema_name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{schema_name}"}}}}}


def _openapi(app: FastAPI, state: ServerState, runs: list[RunSpec],
             settings: ServeSettings) -> dict[str, Any]:
    """FastAPI's schema, plus the request bodies (parsed by `parse_body`, not by FastAPI) with
    the served models' names as the allowed values of `model`."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for cls, kind in ((ImagesRequest, "images"), (AudioRequest, "audio"),
                      (CompletionsRequest, "completions")):
        body = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        names = [s.name for s in state.models.values() if s.kind == kind] if state.ready else \
            [spec.name for spec in runs]
        if names:
            body["properties"]["model"]["enum"] = names
        if kind == "completions":
            tokens = body["properties"]["max_tokens"]["anyOf"][0]
            tokens["maximum"] = settings.max_tokens
        components[cls.__name__] = body
    if settings.token:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                             "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        schema["paths"]["/livez"]["get"]["security"] = []  # the one open route
        for item in schema["paths"].values():
            for operation in item.values():
                if operation.get("security") != []:
                    operation.setdefault("responses", {}).setdefault(
                        "401", {"description": ERRORS[401], "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    if state.ready:
        app.openapi_schema = schema  # final once the models are known
    return schema
