"""`kaizen serve-model`: predictions from `@champion`, following the alias as it moves.

`mlflow models serve` loads one version and never looks at the registry again (mlflow#4039),
so a promotion or a rollback needs a restart. Here a follower thread re-reads the alias every
`serve.reload_seconds`; a new champion is loaded through the registered pyfunc (which verifies
its weights), warmed with one prediction, and only then swapped in with one reference
assignment, so the old model answers until the new one is ready and a version that fails to
load is never swapped in. Concurrent requests share forward passes (`Batcher`): the first
queued request waits up to `serve.batch_wait_ms` for others, which is what lifts throughput
on a CPU where one forward pass of a short batch costs about what one text costs.

Every answer names the version that produced it; every prediction goes through
`tasks.inference.predict_texts`, the function behind `kaizen predict` and the pyfunc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.requests import Request  # module level: FastAPI resolves handler annotations here

from tasks.config import ServeConfig
from tasks.context import Context

log = logging.getLogger("kaizen.serve")


class PredictRequest(BaseModel):
    # No other field: the service never takes a model name, path or URI from a client.
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1)


class GenerateRequest(PredictRequest):
    """POST /generate: prompts and the generation settings of a causal LM."""

    max_new_tokens: int = Field(32, ge=1, le=512)
    temperature: float = Field(0.0, ge=0, le=5)
    seed: int = 0


@dataclass(frozen=True)
class Served:
    """One loaded version: what answers requests until the next swap."""

    version: str
    model: object  # the unwrapped KaizenClassifier pyfunc: .family, .model, .tokenizer, .max_length
    since: str
    labels: list[str] = field(default_factory=list)

    @property
    def generates(self) -> bool:
        return bool(getattr(self.model.family, "PREDICT_PARAMS", None))

    def predict(self, texts: list[str], **params) -> pd.DataFrame:
        """The family's prediction frame (tasks/families), as `kaizen predict` and the pyfunc answer."""
        m = self.model
        return m.family.predict_frame(m.model, m.tokenizer, texts, m.max_length, **params)


def answers(frame: pd.DataFrame, version: str) -> list[dict]:
    """One JSON object per row of a prediction frame; `p_<label>` columns become `probabilities`."""
    out = []
    for row in frame.to_dict("records"):
        answer = {k: _plain(v) for k, v in row.items() if not str(k).startswith("p_")}
        probabilities = {str(k)[2:]: float(v) for k, v in row.items() if str(k).startswith("p_")}
        if probabilities:
            answer["probabilities"] = probabilities
        out.append({**answer, "version": version})
    return out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def load_version(ctx: Context, version: str) -> Served:
    """Load a registered version through its pyfunc (weights verified there) and warm it."""
    import mlflow

    from tasks.inference import label_names

    _ = ctx.client  # connecting points MLflow's global registry URI, which load_model reads, here
    pyfunc = mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{version}")
    model = pyfunc.unwrap_python_model()
    served = Served(version, model, _now(), label_names(model.model))
    # The first forward pass allocates; no request should pay for it (one generated token is enough).
    served.predict(["warm up"], max_new_tokens=1)
    return served


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Follower:
    """Holds the served model and swaps in each new champion once it is loaded and warm."""

    def __init__(self, ctx: Context, metrics: Metrics, load: Callable[[Context, str], Served] = load_version):
        self.ctx, self.metrics, self._load = ctx, metrics, load
        self.current: Served | None = None
        self._failed: str | None = None  # the version that last failed to load (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Read the alias; load and swap if it moved. True when a swap happened."""
        from tasks.registry import CHAMPION, get_alias

        try:
            ref = get_alias(self.ctx.client, self.ctx.model_name, CHAMPION)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup must not stop the service
            log.warning("serve: cannot read the champion alias: %s", exc)
            return False
        if ref is None or (self.current is not None and ref.version == self.current.version):
            return False
        try:
            served = self._load(self.ctx, ref.version)
        except Exception as exc:  # noqa: BLE001 - any failure: keep answering with what we have
            self.metrics.load_failures.inc()
            if self._failed != ref.version:
                kept = f"v{self.current.version} keeps answering" if self.current else "no model is served yet"
                log.error("serve: champion v%s failed to load, not swapped in (%s): %s", ref.version, kept, exc)
            self._failed = ref.version
            return False
        previous = self.current
        self.current = served  # the swap: one reference assignment, atomic for every reader
        self._failed = None
        self.metrics.swaps.inc()
        self.metrics.version.set(float(served.version))
        log.info("serve: now serving v%s (was %s)", served.version, f"v{previous.version}" if previous else "none")
        return True

    def start(self, every_s: float) -> None:
        self.poll()
        self._thread = threading.Thread(target=self._follow, args=(every_s,), name="kaizen-follow", daemon=True)
        self._thread.start()

    def _follow(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class _Waiting:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Concurrent requests share forward passes; one batch is answered by one version."""

    def __init__(self, follower: Follower, config: ServeConfig):
        self.follower, self.config = follower, config
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def predict(self, texts: list[str]) -> tuple[Served, pd.DataFrame]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Waiting(texts, future))
        return await future

    async def _gather(self) -> list[_Waiting]:
        first = await self.queue.get()
        batch, count = [first], len(first.texts)
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000
        while count < self.config.max_batch_texts:
            try:  # whatever is already queued joins at once; then wait out the deadline
                item = self.queue.get_nowait() if not self.queue.empty() else None
                if item is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    item = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                break
            batch.append(item)
            count += len(item.texts)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            served = self.follower.current  # read once: the whole batch answers with one version
            try:
                if served is None:
                    raise NoChampion()
                texts = [t for item in batch for t in item.texts]
                proba = await asyncio.to_thread(served.predict, texts)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result((served, proba.iloc[start : start + len(item.texts)]))
                start += len(item.texts)


class NoChampion(Exception):
    """No version is served yet (the registry has no champion, or it has not loaded)."""


class Metrics:
    """Prometheus metrics in a registry of their own (nothing global at import)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kaizen_requests", "Requests by route and status", ["route", "status"], registry=self.registry
        )
        self.texts = Counter("kaizen_texts_predicted", "Texts labelled", registry=self.registry)
        self.latency = Histogram(
            "kaizen_predict_seconds",
            "Time to answer /predict",
            buckets=(0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.version = Gauge("kaizen_model_version", "Registered version being served", registry=self.registry)
        self.swaps = Counter("kaizen_model_swaps", "Times a new champion was swapped in", registry=self.registry)
        self.load_failures = Counter(
            "kaizen_model_load_failures", "Champion versions that failed to load", registry=self.registry
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class BodyTooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs milliseconds a request):
    refuses a body over `max_bytes` with 413, before or while it is read (uvicorn has no limit
    of its own, and a client need not send Content-Length), and counts responses by route."""

    ROUTES = ("/predict", "/generate", "/health", "/metrics")

    def __init__(self, app, max_bytes: int, metrics: Metrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.ROUTES else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, message["status"]).inc()
            await send(message)

        await self._limited(scope, receive, counted)

    async def _limited(self, scope, receive, send):
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        import json

        body = json.dumps({"detail": f"request body larger than serve.max_body_bytes = {self.max_bytes}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def parse_request(raw: bytes, schema: type[PredictRequest] = PredictRequest) -> PredictRequest:
    """The body as a PredictRequest (or GenerateRequest), or a 400/422 whose message names the
    problem without echoing the (possibly huge) input back; any content type is read as JSON."""
    import json

    from fastapi import HTTPException
    from pydantic import ValidationError

    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        fields = ", ".join(f'"{f}"' for f in schema.model_fields if f != "texts")
        extra = f" (optional: {fields})" if fields else ""
        raise HTTPException(422, f'expected {{"texts": ["...", ...]}}{extra} and nothing else: {problems}') from None


def build_app(ctx: Context, follow: bool = True):
    """The FastAPI app: POST /predict, POST /generate (a causal LM), GET /health, GET /metrics;
    nothing else is routed."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, Response

    config = ctx.config.serve
    metrics = Metrics()
    follower = Follower(ctx, metrics)
    batcher = Batcher(follower, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if follow:
            await asyncio.to_thread(follower.start, config.reload_seconds)
        batcher.start()
        yield
        await batcher.stop()
        follower.stop()

    app = FastAPI(title="kaizen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.follower, app.state.metrics = follower, metrics

    def checked(body: PredictRequest) -> PredictRequest:
        if len(body.texts) > config.max_texts:
            raise HTTPException(
                413, f"{len(body.texts)} texts; at most serve.max_texts = {config.max_texts} per request"
            )
        for i, text in enumerate(body.texts):
            if len(text) > config.max_chars:
                raise HTTPException(
                    422, f"texts[{i}] has {len(text)} characters; at most serve.max_chars = {config.max_chars}"
                )
        return body

    @app.post("/predict")
    async def predict(request: Request):
        started = time.perf_counter()
        body = checked(parse_request(await request.body()))
        try:
            served, frame = await batcher.predict(body.texts)
        except NoChampion:
            raise HTTPException(503, f"no champion of {ctx.model_name} is served yet") from None
        metrics.texts.inc(len(body.texts))
        metrics.latency.observe(time.perf_counter() - started)
        return {"model": ctx.model_name, "version": served.version, "predictions": answers(frame, served.version)}

    @app.post("/generate")
    async def generate(request: Request):
        """Continuations from a causal LM champion; not batched with other requests, since
        each request brings its own settings."""
        started = time.perf_counter()
        body = checked(parse_request(await request.body(), GenerateRequest))
        served = follower.current
        if served is None:
            raise HTTPException(503, f"no champion of {ctx.model_name} is served yet")
        if not served.generates:
            family = served.model.family.NAME
            raise HTTPException(409, f"{ctx.model_name} v{served.version} is a {family} model; it does not generate")
        params = {"max_new_tokens": body.max_new_tokens, "temperature": body.temperature, "seed": body.seed}
        frame = await asyncio.to_thread(served.predict, body.texts, **params)
        metrics.texts.inc(len(body.texts))
        metrics.latency.observe(time.perf_counter() - started)
        return {"model": ctx.model_name, "version": served.version, "predictions": answers(frame, served.version)}

    @app.get("/health")
    async def health():
        served = follower.current
        if served is None:
            return JSONResponse({"status": "waiting", "detail": f"no champion of {ctx.model_name} is served yet"}, 503)
        return {"status": "ok", "model": ctx.model_name, "version": served.version, "since": served.since}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Guard(app, config.max_body_bytes, metrics)


def serve(ctx: Context, on_ready: Callable[[str], None]) -> None:
    """Run the service in the foreground until interrupted (Ctrl-C stops it cleanly)."""
    import socket

    import uvicorn

    config = ctx.config.serve
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every response waits ~40 ms for a delayed ACK (Nagle, headers then body).
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))  # bound here, so port 0 gives a port we can print
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(build_app(ctx), log_level="warning", access_log=False))
    on_ready(f"kaizen: serving {ctx.model_name}@champion on http://{host}:{port} (Ctrl-C stops)")
    server.run(sockets=[sock])
