"""The HTTP service over ServeEngine (FastAPI; install with ``pip install 'prompttune[serve]'``).

Routes (all JSON except /metrics and the playground; every route but /health and the playground needs ``Authorization: Bearer KEY`` when a key is set):

- ``GET /health``                         liveness, backbone and task count
- ``GET /v1/tasks``, ``GET /v1/tasks/{task}``   tasks with their labels, fields, template, method, metrics
- ``POST /v1/tasks/{task}/predict``      ``{"inputs": ["text", {"premise": .., "hypothesis": ..}]}`` (or ``"input"``)
- ``POST /v1/predict``                   ``{"requests": [{"task": "sst", "input": "..."}, ...]}``: several tasks at once
- ``POST /v1/tasks/{task}/generate``     generated text for a generation task (decoding settings per request)
- ``POST /v1/tasks``, ``DELETE /v1/tasks/{task}``   load / unload an artifact at run time: off unless the server is
  started with ``--admin`` (``create_app(..., allow_admin=True)``), since they make the server read any path it can
  (403 otherwise); with an API key set they need it, as every route does
- ``GET /metrics``                       Prometheus text: requests, inputs, batch sizes, latency, tokens reused
- ``GET /``                              the playground: a page with a card per task (type a text, see the label and its
  probabilities, or the generated text), which calls the routes above from the browser; its page, script and style
  (``/playground/app.js``, ``/playground/style.css``) need no key, the routes they call do

Errors are ``{"detail": what, "where": ..., "fix": ...}`` with 400 (malformed JSON, bad artifact path),
401 (key), 403 (admin routes when off), 404 (unknown task or route), 405 (method), 409 (artifact for another backbone,
name in use), 413 (body or input count over the limit), 415 (a body that is not ``application/json``), 422 (missing /
wrong fields or options, text that is not valid Unicode), 400 (an operation the task's kind lacks), 503 + Retry-After
(queue full).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time

from ..errors import ArtifactError, PromptTuneError, check_input_texts
from .engine import (BATCH_BUCKETS, OverloadedError, ServeEngine, TaskConflictError, UnknownTaskError, UnsupportedError)
from .schemas import (AddTaskRequest, ErrorBody, GenerateRequest, GenerateResponse, Generated, MixedRequest, MixedResponse,
                      MixedResult, PredictRequest, Prediction, PredictResponse)

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise PromptTuneError("the HTTP server needs FastAPI and uvicorn", where="prompttune serve",
                          fix="pip install 'prompttune[serve]' (fastapi, uvicorn)") from e

# The playground's files (package data in serve/playground/), served by a fixed name -> type table: no path from a URL
# reaches the file system. Its page loads only these (CSP), so a string a task returns can never become script.
PLAYGROUND = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PLAYGROUND_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                                 "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                      "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
PUBLIC_PATHS = frozenset({"/health", "/", *(f"/playground/{name}" for name in PLAYGROUND)})


def playground_file(name: str) -> str:
    """The text of a playground file shipped with the package (``index.html`` or a name of PLAYGROUND)."""
    from importlib.resources import files

    return files("prompttune.serve").joinpath("playground", name).read_text(encoding="utf-8")


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: non-ASCII escaped (a lone surrogate echoed from a request cannot break the UTF-8
    encoding) and non-finite floats written as null (a NaN metric in an artifact's prompt.json, say)."""

    def render(self, content) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class AdminDisabledError(PromptTuneError):
    """An admin route (add / remove tasks) on a server started without --admin (HTTP 403)."""


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _check_texts(items: list, path: str, *, listed: bool = True) -> None:
    """Text fields that are not valid Unicode (lone surrogates) fail here, naming where in the body they are
    (``inputs[3]``; ``input`` or ``requests[2].input`` for a single input, ``listed=False``)."""
    for i, x in enumerate(items):
        check_input_texts(x, f"{path}[{i}]" if listed else path)


# ---- metrics ---------------------------------------------------------------------------------------
class HttpMetrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.inputs: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> [bucket counts..., sum, count]

    def request(self, method: str, route: str, status: int) -> None:
        with self.lock:
            k = (method, route, status)
            self.requests[k] = self.requests.get(k, 0) + 1

    def predicted(self, task: str, n: int, seconds: float, route: str) -> None:
        with self.lock:
            self.inputs[task] = self.inputs.get(task, 0) + n
            h = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, engine: ServeEngine) -> str:
        s = engine.stats.snapshot()
        out = []

        def metric(name, kind, help_, samples):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                lab = "{" + ",".join(f'{k}="{_esc(val)}"' for k, val in labels.items()) + "}" if labels else ""
                out.append(f"{name}{lab} {_num(v)}")

        with self.lock:
            metric("prompttune_http_requests_total", "counter", "HTTP requests by method, route and status",
                   [({"method": m, "route": r, "status": str(c)}, v) for (m, r, c), v in sorted(self.requests.items())])
            metric("prompttune_inputs_total", "counter", "inputs answered, by task", [({"task": t}, v) for t, v in sorted(self.inputs.items())])
            lat = []
            for route, h in sorted(self.latency.items()):
                lat += [({"route": route, "le": str(b)}, h[i]) for i, b in enumerate(LATENCY_BUCKETS)]
                lat += [({"route": route, "le": "+Inf"}, h[-1])]
            out.append("# HELP prompttune_request_latency_seconds time from request to answer of predict routes")
            out.append("# TYPE prompttune_request_latency_seconds histogram")
            for labels, v in lat:
                out.append(f'prompttune_request_latency_seconds_bucket{{route="{_esc(labels["route"])}",le="{labels["le"]}"}} {_num(v)}')
            for route, h in sorted(self.latency.items()):
                out.append(f'prompttune_request_latency_seconds_sum{{route="{_esc(route)}"}} {_num(h[-2])}')
                out.append(f'prompttune_request_latency_seconds_count{{route="{_esc(route)}"}} {_num(h[-1])}')
        out.append("# HELP prompttune_batch_size inputs per engine batch")
        out.append("# TYPE prompttune_batch_size histogram")
        for b in BATCH_BUCKETS:
            out.append(f'prompttune_batch_size_bucket{{le="{b}"}} {s["batch_hist"][b]}')
        out.append(f'prompttune_batch_size_bucket{{le="+Inf"}} {s["batches"]}')
        out.append(f"prompttune_batch_size_sum {s['batch_inputs']}")
        out.append(f"prompttune_batch_size_count {s['batches']}")
        metric("prompttune_forward_passes_total", "counter", "backbone forward passes", [({}, s["forwards"])])
        metric("prompttune_model_rows_total", "counter", "rows sent through the backbone", [({}, s["model_rows"])])
        metric("prompttune_tokens_computed_total", "counter", "tokens the backbone computed", [({}, s["tokens_computed"])])
        metric("prompttune_prefix_tokens_reused_total", "counter", "prompt-prefix tokens served from the per-task cache instead of computed",
               [({}, s["prefix_tokens_reused"])])
        metric("prompttune_queue_depth", "gauge", "inputs waiting for a batch", [({}, engine.queue_depth())])
        metric("prompttune_tasks", "gauge", "tasks loaded", [({}, len(engine.tasks))])
        return "\n".join(out) + "\n"


def _esc(v) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# ---- the guard: API key, body size, request counting (pure ASGI: BaseHTTPMiddleware costs ~ms per request) ---
class Guard:
    def __init__(self, app, *, limit: int, api_key: str | None, metrics: "HttpMetrics"):
        self.app = app
        self.limit = limit
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope.get("path") not in PUBLIC_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                self.metrics.request(scope["method"], "(unauthorised)", 401)
                return await _send_json(send, 401, {"detail": "missing or wrong API key", "where": "Authorization header",
                                                    "fix": "send 'Authorization: Bearer <key>'"}, [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self.metrics.request(scope["method"], "(too large)", 413)
            return await self._reject(send)
        state = {"seen": 0, "over": False, "status": 500}

        async def limited_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg):
            if state["over"]:
                return
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            self.metrics.request(scope["method"], "(too large)", 413)
            return await self._reject(send)
        route = scope.get("route")
        self.metrics.request(scope["method"], getattr(route, "path", "(unmatched)"), state["status"])

    async def _reject(self, send):
        await _send_json(send, 413, {"detail": f"the request body is larger than {self.limit} bytes", "where": "body",
                                     "fix": "send fewer inputs per request, or start the server with a larger --max-body-bytes"})


async def _send_json(send, status: int, body: dict, extra_headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())] + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


# ---- the app ---------------------------------------------------------------------------------------
def create_app(engine: ServeEngine, *, api_key: str | None = None, max_body_bytes: int = 1_000_000, max_inputs: int = 256,
               request_timeout_s: float = 120.0, allow_admin: bool = False, on_shutdown=None):
    """The ASGI app (FastAPI wrapped in a body-size guard). ``app.fastapi`` is the FastAPI object;
    ``on_shutdown()`` runs when the server stops (uvicorn re-raises SIGTERM after shutdown, so code after
    ``uvicorn.run`` may never run). ``allow_admin``: serve ``POST /v1/tasks`` and ``DELETE /v1/tasks/{task}``,
    which load any artifact path the server can read (off by default; ``prompttune serve --admin``)."""
    import contextlib

    from .. import __version__

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if on_shutdown is not None:
            on_shutdown()

    api = FastAPI(title="prompttune serve", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse,
                  description="Many tuned prompts on one frozen backbone; requests of different tasks share each forward pass.",
                  responses={k: {"model": ErrorBody} for k in (400, 401, 404, 413, 415, 422, 503)})
    metrics = HttpMetrics()
    api.state.engine = engine
    api.state.metrics = metrics

    def error(status: int, e: PromptTuneError | str, headers: dict | None = None) -> JSONResponse:
        body = {"detail": e.what, "where": e.where, "fix": e.fix} if isinstance(e, PromptTuneError) else {"detail": str(e)}
        return SafeJSONResponse(body, status_code=status, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        ctype = request.headers.get("content-type", "")
        if not _is_json(ctype):  # FastAPI reads a body as JSON only when it says it is
            shown = f"{ctype!r}" if ctype else "no Content-Type"
            return SafeJSONResponse({"detail": f"the body must be JSON sent as application/json; this request has {shown}",
                                     "where": "Content-Type header", "fix": "send the header 'Content-Type: application/json' "
                                     "with a JSON body, e.g. {\"inputs\": [\"some text\"]}"}, status_code=415)
        if any(e.get("type") == "json_invalid" for e in errs):
            return SafeJSONResponse({"detail": "the body is not valid JSON", "where": "body",
                                     "fix": "send a JSON object, e.g. {\"inputs\": [\"some text\"]}"}, status_code=400)
        clean = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errs]
        return SafeJSONResponse({"detail": clean, "where": "body", "fix": "see /docs for the request schema"}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # Starlette's own errors (no route, wrong method, a body it cannot parse) in this service's error format.
        status = exc.status_code
        if status == 404:
            body = {"detail": f"no route {request.url.path!r}", "where": "URL",
                    "fix": "see /docs for the routes (e.g. POST /v1/tasks/{task}/predict)"}
        elif status == 405:
            allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), None)
            body = {"detail": f"{request.method} is not allowed on {request.url.path!r}", "where": "method",
                    "fix": f"use {allow or 'another method'} on this route (see /docs)"}
        elif status == 400:
            body = {"detail": "the body cannot be parsed as JSON (not UTF-8, or nested too deeply)", "where": "body",
                    "fix": "send a UTF-8 JSON object, e.g. {\"inputs\": [\"some text\"]}"}
        else:
            body = {"detail": str(exc.detail), "where": None, "fix": None}
        return SafeJSONResponse(body, status_code=status, headers=exc.headers)

    @api.exception_handler(PromptTuneError)
    async def _domain(request: Request, exc: PromptTuneError):
        if isinstance(exc, UnknownTaskError):
            return error(404, exc)
        if isinstance(exc, TooManyInputsError):
            return error(413, exc)
        if isinstance(exc, TaskConflictError):
            return error(409, exc)
        if isinstance(exc, OverloadedError):
            return error(503, exc, {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
        if isinstance(exc, UnsupportedError):
            return error(400 if exc.implemented else 501, exc)
        if isinstance(exc, ArtifactError):
            return error(400, exc)
        if isinstance(exc, AdminDisabledError):
            return error(403, exc)
        return error(422, exc)  # template / verbalizer / config errors raised by an input

    def check_count(n: int) -> None:
        if n > max_inputs:
            raise TooManyInputsError(f"{n} inputs in one request; the limit is {max_inputs}", where="inputs",
                                     fix="split the request, or start the server with a larger --max-inputs")

    async def run(task: str, items: list, route: str, operation: str = "predict", **options) -> list:
        start = time.perf_counter()
        fut = engine.submit(task, items, operation=operation, **options)
        try:
            raw = await asyncio.wait_for(asyncio.wrap_future(fut), request_timeout_s)
        except asyncio.TimeoutError:
            raise OverloadedError(f"no answer within {request_timeout_s:.0f} s", retry_after=5.0, fix="retry later") from None
        metrics.predicted(task, len(items), time.perf_counter() - start, route)
        return raw

    @api.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "backbone": engine.backbone.name, "family": engine.backbone.family.name, "tasks": len(engine.tasks)}

    @api.get("/v1/tasks", tags=["tasks"])
    def list_tasks() -> dict:
        return {"backbone": {"name": engine.backbone.name, "family": engine.backbone.family.name, "fingerprint": engine.fingerprint},
                "tasks": [t.describe() for _, t in sorted(engine.tasks.items())]}

    @api.get("/v1/tasks/{task}", tags=["tasks"])
    def get_task(task: str) -> dict:
        return engine.task(task).describe()

    @api.post("/v1/tasks/{task}/predict", response_model=PredictResponse, tags=["inference"])
    async def predict(task: str, body: PredictRequest) -> PredictResponse:
        items = body.items()
        check_count(len(items))
        t = engine.task(task)
        _check_texts(items, "inputs" if body.inputs is not None else "input", listed=body.inputs is not None)
        raw = await run(task, items, "/v1/tasks/{task}/predict")
        return PredictResponse(task=task, predictions=[Prediction(**t.format_result("predict", r)) for r in raw])

    @api.post("/v1/predict", response_model=MixedResponse, tags=["inference"])
    async def predict_mixed(body: MixedRequest) -> MixedResponse:
        check_count(len(body.requests))
        tasks = {r.task: engine.task(r.task) for r in body.requests}
        for i, r in enumerate(body.requests):
            _check_texts([r.input], f"requests[{i}].input", listed=False)
        futs = engine.submit_many([(r.task, [r.input]) for r in body.requests])  # queued together: they share batches
        start = time.perf_counter()
        try:
            raws = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futs)), request_timeout_s)
        except asyncio.TimeoutError:
            raise OverloadedError(f"no answer within {request_timeout_s:.0f} s", retry_after=5.0, fix="retry later") from None
        seconds = time.perf_counter() - start
        for r in body.requests:
            metrics.predicted(r.task, 1, seconds, "/v1/predict")
        return MixedResponse(results=[MixedResult(task=r.task, **tasks[r.task].format_result("predict", raw[0]))
                                      for r, raw in zip(body.requests, raws)])

    @api.post("/v1/tasks/{task}/generate", response_model=GenerateResponse, tags=["inference"])
    async def generate(task: str, body: GenerateRequest) -> GenerateResponse:
        """Generation tasks only (400 for a task of another kind). Requests of several tasks with the same decoding
        settings share one generate() call."""
        items = body.items()
        check_count(len(items))
        t = engine.task(task)
        _check_texts(items, "inputs" if body.inputs is not None else "input", listed=body.inputs is not None)
        raw = await run(task, items, "/v1/tasks/{task}/generate", operation="generate", **body.options())
        return GenerateResponse(task=task, outputs=[Generated(**t.format_result("generate", r)) for r in raw])

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> HTMLResponse:
        return HTMLResponse(playground_file("index.html"), headers=PLAYGROUND_HEADERS)

    @api.get("/playground/{name}", include_in_schema=False)
    def playground_asset(name: str) -> Response:
        if name not in PLAYGROUND:
            raise StarletteHTTPException(404)
        return Response(playground_file(name), media_type=PLAYGROUND[name], headers=PLAYGROUND_HEADERS)

    @api.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    if allow_admin:
        @api.post("/v1/tasks", status_code=201, tags=["tasks"])
        def add_task(body: AddTaskRequest) -> dict:
            return engine.add(body.path, name=body.name).describe()

        @api.delete("/v1/tasks/{task}", tags=["tasks"])
        def remove_task(task: str) -> dict:
            engine.remove(task)
            return {"removed": task}
    else:
        def admin_off():
            raise AdminDisabledError("adding and removing tasks over HTTP is off on this server (it would let any client "
                                     "make the server read any path)", where="admin routes",
                                     fix="start the server with `prompttune serve --admin` (and --api-key, so that only "
                                         "key holders can use them)")

        api.add_api_route("/v1/tasks", admin_off, methods=["POST"], include_in_schema=False)
        api.add_api_route("/v1/tasks/{task}", admin_off, methods=["DELETE"], include_in_schema=False)

    if api_key:
        from fastapi.openapi.utils import get_openapi

        def openapi_with_bearer():
            if api.openapi_schema is None:
                spec = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
                spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, ops in spec["paths"].items():
                    for op in ops.values():
                        op["security"] = [] if path == "/health" else [{"bearer": []}]
                api.openapi_schema = spec
            return api.openapi_schema

        api.openapi = openapi_with_bearer

    wrapped = Guard(api, limit=max_body_bytes, api_key=api_key, metrics=metrics)
    wrapped.state = api.state  # type: ignore[attr-defined]
    wrapped.fastapi = api  # type: ignore[attr-defined]
    return wrapped


class TooManyInputsError(PromptTuneError):
    """More inputs in one request than the server accepts (HTTP 413)."""


def serve(engine: ServeEngine, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_kw) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    app = create_app(engine, **app_kw)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        engine.close()
