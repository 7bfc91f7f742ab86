"""The recommendations API (FastAPI, run by uvicorn; `tidal serve` starts it).

    GET /v1/recommendations/{user_id}?k=10   top-k items with score and rank, the model version, the age of the
                                             online features used, a request id, `fallback` and `degraded`
    GET /v1/model                            the model serving now, the swaps so far, the last refused version
    GET /healthz                             alive (200 as long as the process answers)
    GET /readyz                              200 once a model is loaded and warmed (and through swaps); 503 with
                                             the reason before that
    GET /metrics                             Prometheus text format

Bad requests are refused before any work with 400 and a message that says what is allowed: k not an integer,
below 1 or above `serving.max_k`; a user id that is empty, longer than `serving.max_user_id_length`, or holds
control characters. No model yet: recommendations come from the online store's popular-now ranking, with
`fallback` saying why; with no ranking either, 503 and what to run.
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from serving.metrics import Metrics
from serving.model_slot import ModelSlot, utc_iso
from serving.online import OnlineFeatures
from serving.recommend import NothingToServe, answer, response_body
from tidal.config import Settings
from tidal.storage import StorageLayout

WHOLE_NUMBER = re.compile(r"-?[0-9]{1,9}")


class CountRequests:
    """Pure ASGI middleware that times every request into `metrics` by route and status. Not
    `@app.middleware("http")`: Starlette's BaseHTTPMiddleware costs about a third of the throughput here."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def remember_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router writes the matched route here
            self.metrics.observe(route, status, time.perf_counter() - started)


def check_k(raw: str | None, default: int, largest: int) -> int | str:
    """k as an int, or the message that says what is allowed."""
    if raw is None:
        return default
    allowed = f"k must be a whole number from 1 to {largest}"
    if not WHOLE_NUMBER.fullmatch(raw):  # stricter than int(): no "1_0", "+5", " 5" or non-ASCII digits
        return f"{allowed}; got {raw[:40]!r}"
    k = int(raw)
    return k if 1 <= k <= largest else f"{allowed}; got {k}"


def check_user_id(user_id: str, longest: int) -> str | None:
    """None when the user id is acceptable, else the message that says what is allowed."""
    if not user_id.strip():
        return "user_id is empty: give the id the events carry, e.g. /v1/recommendations/u42"
    if len(user_id) > longest:
        return f"user_id is {len(user_id)} characters long; at most {longest} are allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in user_id):
        return "user_id holds control characters; ids are printable text"
    return None


def create_app(settings: Settings) -> FastAPI:
    params = settings.params.serving
    layout = StorageLayout(settings.home)
    slot = ModelSlot(layout.registry, params, layout.serving_swaps)
    online = OnlineFeatures(settings.online_store, settings.params.features.online_ttl_s, params)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        slot.start()
        yield
        slot.stop()

    app = FastAPI(title="tidal serving", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.slot, app.state.online, app.state.metrics = slot, online, metrics

    app.add_middleware(CountRequests, metrics=metrics)

    def refuse(status: int, message: str, request_id: str | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "request_id": request_id}, status_code=status)

    @app.get("/v1/recommendations/")
    async def empty_user() -> JSONResponse:
        return refuse(400, check_user_id("", params.max_user_id_length))

    @app.get("/v1/recommendations/{user_id}")
    async def recommendations(user_id: str, request: Request) -> JSONResponse:
        request_id = uuid.uuid4().hex
        problem = check_user_id(user_id, params.max_user_id_length)
        k = check_k(request.query_params.get("k"), params.default_k, params.max_k)
        if problem or isinstance(k, str):
            return refuse(400, problem or k, request_id)
        model = slot.current  # one read: this request finishes on this model whatever swaps meanwhile
        try:
            result = answer(model, online, user_id, k)
        except NothingToServe as why:
            return refuse(503, str(why), request_id)
        body = response_body(result, user_id=user_id, k=k, request_id=request_id, model=model, online=online)
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"alive": True}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, body = readiness(slot, online)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/model")
    async def model_info() -> dict:
        return model_summary(slot, online, settings)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        model = slot.current
        return PlainTextResponse(metrics.render(metric_gauges(slot, online), model.version if model else None),
                                 media_type="text/plain; version=0.0.4")

    return app


def readiness(slot: ModelSlot, online: OnlineFeatures) -> tuple[bool, dict]:
    model = slot.current
    if model is None:
        reason = ("no model in production yet: a promotion (a cycle or a full retrain) makes one"
                  if slot.alias_state() is None else
                  f"loading the production model, or it was refused: {slot.counters.last_refused}")
        return False, {"ready": False, "reason": reason}
    return True, {"ready": True, "version": model.version, "servable_since": utc_iso(model.servable_at),
                  "degraded": online.degraded_reason}


def model_summary(slot: ModelSlot, online: OnlineFeatures, settings: Settings) -> dict:
    """GET /v1/model: the model serving now, the swaps so far, the last refused version, the store's state."""
    model, counters = slot.current, slot.counters
    return {"version": model.version if model else None,
            "kind": model.metadata.get("kind") if model else None,
            "newest_event_time": model.metadata.get("newest_event_time") if model else None,
            "servable_since": utc_iso(model.servable_at) if model else None,
            "known_users": len(model.candidates) if model else 0,
            "swaps": counters.swaps, "failed_loads": counters.failed_loads,
            "last_refused": counters.last_refused, "last_error": counters.last_error,
            "history": counters.history[-10:],
            "online_store": {"url": settings.online_store.display_url, "degraded": online.degraded_reason,
                             "errors": online.errors}}


def metric_gauges(slot: ModelSlot, online: OnlineFeatures) -> dict[str, tuple[str, float | None]]:
    model, counters, now = slot.current, slot.counters, time.time()
    newest = model.newest_event_s if model else None
    return {
        "tidal_model_age_seconds": ("Seconds since the newest event the serving model was trained on.",
                                    now - newest if newest else None),
        "tidal_model_servable_age_seconds": ("Seconds since the serving model became servable.",
                                             now - model.servable_at if model else None),
        "tidal_model_loaded": ("1 when a model is loaded and warmed.", 1.0 if model else 0.0),
        "tidal_model_swaps_total": ("Hot swaps to another version.", float(counters.swaps)),
        "tidal_model_failed_loads_total": ("Versions refused (failed to load or verify).", float(counters.failed_loads)),
        "tidal_online_store_errors_total": ("Failed online-store reads.", float(online.errors)),
        "tidal_online_store_degraded": ("1 while answers come from the model alone.",
                                        1.0 if online.degraded_reason else 0.0),
    }
