"""Prometheus metrics for the server: ``GET /metrics`` in the Prometheus (or OpenMetrics) text format.

Two kinds of figures, with one naming scheme (:data:`REQUEST_METRICS`, :data:`LIVE_METRICS`) so
that other exporters (the Ray Serve replicas, :mod:`tadastream.deploy.ray`) publish the same ones:

* **Per request**, from the JSON record the request's log line carries (the middleware hands it to
  :meth:`ServerMetrics.observe_request` once the request has ended): counts by route template,
  method, status and outcome, the duration, and for speech the time to first audio, total time,
  real-time factor, queue wait and audio made. Labels come from bounded sets only: a path that
  matches no route is ``other``, so a scanner cannot blow up the number of series.
* **At scrape time**, read by a custom collector rather than kept in gauges on a timer: stream
  slots (active, queued, free), the engine's ticks and seconds per phase, its KV cache bytes, with
  ``--admission realtime`` the capacity it predicts and the tick time it fitted, and how many voices
  the folder holds (counted at most every few seconds, off the event loop).

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one process
(tests, one per replica) never share or collide. Who may read ``/metrics`` is the middleware's call
(the API key, unless ``--metrics-public``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.registry import Collector
from starlette.routing import Mount, WebSocketRoute

from ..service.voices import VOICE_NAME

__all__ = [
    "LIVE_METRICS",
    "REQUEST_METRICS",
    "MetricSpec",
    "Observation",
    "ServerMetrics",
    "add_metrics_route",
]

logger = logging.getLogger("tadastream.server")

PREFIX = "tadastream_"

#: Methods kept as labels; anything else a client invents is ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "WS"})
OTHER = "other"
_OUTCOME = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric as every exporter names it: ``name`` without the ``_total`` a counter gets on export."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


#: One value for one metric: a counter's increment or a histogram's observation (per request), or
#: a gauge's value or a counter's running total (at scrape time).
Observation = tuple[MetricSpec, dict[str, str], float]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_FIRST_AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_TOTAL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RTF_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = MetricSpec(
    PREFIX + "requests",
    "counter",
    "Finished requests (WebSocket sessions included) by route template, method, status and outcome.",
    ("route", "method", "status", "outcome"),
)
REQUEST_DURATION = MetricSpec(
    PREFIX + "request_duration_seconds",
    "histogram",
    "Seconds from a request's arrival to the end of its response (a WebSocket: of its session).",
    ("route",),
    _DURATION_BUCKETS,
)
TIME_TO_FIRST_AUDIO = MetricSpec(
    PREFIX + "time_to_first_audio_seconds",
    "histogram",
    "Seconds from a speech request's arrival (queue wait included) to its first chunk of audio.",
    ("route",),
    _FIRST_AUDIO_BUCKETS,
)
TOTAL_TIME = MetricSpec(
    PREFIX + "speech_total_seconds",
    "histogram",
    "Seconds from a speech request's arrival to its last chunk of audio, for requests that ended ok.",
    ("route",),
    _TOTAL_BUCKETS,
)
REAL_TIME_FACTOR = MetricSpec(
    PREFIX + "real_time_factor",
    "histogram",
    "Generation seconds per second of audio (below 1: faster than real time), for requests that ended ok.",
    ("route",),
    _RTF_BUCKETS,
)
QUEUE_TIME = MetricSpec(
    PREFIX + "queue_time_seconds",
    "histogram",
    "Seconds a speech request waited for a stream slot.",
    ("route",),
    _QUEUE_BUCKETS,
)
AUDIO_SECONDS = MetricSpec(
    PREFIX + "audio_seconds",
    "counter",
    "Seconds of audio generated, whatever the outcome.",
    ("route",),
)
REQUEST_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS,
    REQUEST_DURATION,
    TIME_TO_FIRST_AUDIO,
    TOTAL_TIME,
    REAL_TIME_FACTOR,
    QUEUE_TIME,
    AUDIO_SECONDS,
)

STREAMS_ACTIVE = MetricSpec(PREFIX + "streams_active", "gauge", "Requests holding a stream slot now.")
REQUESTS_QUEUED = MetricSpec(PREFIX + "requests_queued", "gauge", "Requests waiting for a stream slot now.")
SLOTS_FREE = MetricSpec(PREFIX + "stream_slots_free", "gauge", "Stream slots free now (--max-streams less active).")
SLOTS = MetricSpec(PREFIX + "stream_slots", "gauge", "Stream slots (--max-streams).")
QUEUE_LIMIT = MetricSpec(PREFIX + "queue_limit", "gauge", "Requests that may wait for a slot (--queue).")
ENGINE_STREAMS = MetricSpec(
    PREFIX + "engine_streams",
    "gauge",
    "Streams in the batched engine: running (holding a KV slot, parked ones included) or queued for one.",
    ("state",),
)
ENGINE_TICKS = MetricSpec(PREFIX + "engine_ticks", "counter", "Engine ticks that ran a batched LLM step.")
ENGINE_BOOSTS = MetricSpec(
    PREFIX + "engine_boost_passes",
    "counter",
    "Extra passes the engine ran for streams joining others, before their first audio frame (--first-audio-boost).",
)
ENGINE_SECONDS = MetricSpec(
    PREFIX + "engine_seconds",
    "counter",
    "Seconds the engine spent per phase of its ticks: llm (backbone), flow (flow solve), logits, "
    "programs (the streams' own logic), decode (the codec's batched decode phase).",
    ("phase",),
)
ENGINE_ROWS = MetricSpec(
    PREFIX + "engine_llm_rows",
    "counter",
    "LLM rows x positions computed by the engine (divided by ticks: the batch it ran at).",
)
KV_ALLOCATED = MetricSpec(
    PREFIX + "kv_cache_allocated_bytes",
    "gauge",
    "Bytes of KV cache the engine holds: every slot buffer, free ones kept for reuse included "
    "(a compiled engine: its whole arena).",
)
KV_IN_USE = MetricSpec(PREFIX + "kv_cache_in_use_bytes", "gauge", "Bytes of KV cache in the slots streams hold now.")
REALTIME_CAPACITY = MetricSpec(
    PREFIX + "realtime_capacity_streams",
    "gauge",
    "Streams the engine is predicted to keep ahead of playback (--admission realtime only).",
)
TICK_FIT = MetricSpec(
    PREFIX + "engine_tick_fit_seconds",
    "gauge",
    "The fitted engine tick time, seconds = intercept + per_row x LLM rows (--admission realtime only).",
    ("term",),
)
VOICES = MetricSpec(
    PREFIX + "voices",
    "gauge",
    "Voices a request may name: the built-in one, and the .voice files in --voices.",
    ("source",),
)
LIVE_METRICS: tuple[MetricSpec, ...] = (
    STREAMS_ACTIVE,
    REQUESTS_QUEUED,
    SLOTS_FREE,
    SLOTS,
    QUEUE_LIMIT,
    ENGINE_STREAMS,
    ENGINE_TICKS,
    ENGINE_BOOSTS,
    ENGINE_SECONDS,
    ENGINE_ROWS,
    KV_ALLOCATED,
    KV_IN_USE,
    REALTIME_CAPACITY,
    TICK_FIT,
    VOICES,
)

#: The speech record's timings (see :meth:`~tadastream.service.speech.SpeechJob.timings`) and the
#: histogram each feeds; the last two only when the request ended ok (else they describe a cut).
_TIMINGS = (
    ("time_to_first_audio", TIME_TO_FIRST_AUDIO, False),
    ("queue_time", QUEUE_TIME, False),
    ("total_time", TOTAL_TIME, True),
    ("real_time_factor", REAL_TIME_FACTOR, True),
)


def _number(value: Any) -> float | None:
    """``value`` if it is a finite, non-negative number (a record's timing), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        return None
    return float(value)


def _retry(read: Callable[[], int]) -> int:
    """``read()`` again when another thread changed what it sums (the engine's slot table, the admission
    queue when read off the event loop) while it was being summed."""
    for _ in range(3):
        try:
            return read()
        except RuntimeError:  # dictionary changed size / deque mutated during iteration
            continue
    return read()


class _VoiceCount:
    """How many ``.voice`` files the folder holds. Listed again only when the folder changed (its mtime)
    or ``ttl`` seconds passed (a filesystem with coarse times): a scrape every few seconds must not
    list a large folder, maybe on a network filesystem, each time."""

    def __init__(self, voices, ttl: float):
        self.voices, self.ttl = voices, ttl
        self._files = 0
        self._seen: tuple[int, float] | None = None  # (folder mtime, monotonic time) of the last count

    def refresh(self) -> None:
        """Count if due (blocking: a stat, and maybe a listing of the folder)."""
        directory = getattr(self.voices, "directory", None)
        try:
            mtime = os.stat(directory).st_mtime_ns if directory is not None else 0
        except OSError:  # not created yet (the first upload makes it)
            mtime = 0
        seen = self._seen
        if seen is not None and seen[0] == mtime and time.monotonic() - seen[1] < self.ttl:
            return
        files = 0
        if mtime:
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    stem, dot, ext = entry.name.rpartition(".")
                    if dot and ext == "voice" and VOICE_NAME.fullmatch(stem) and stem.lower() != "default":
                        files += 1
        self._files, self._seen = files, (mtime, time.monotonic())

    def counts(self) -> dict[str, int]:
        if self._seen is None:  # never counted (a scrape not through /metrics): once, here
            self.refresh()
        return {"builtin": int(getattr(self.voices, "default", None) is not None), "file": self._files}


class _LiveCollector(Collector):
    """The scrape-time figures of one :class:`ServerMetrics`, as metric families."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:  # the names, so the registry refuses a duplicate
        return [_family(spec) for spec in LIVE_METRICS]

    def collect(self) -> Iterator[Metric]:
        # every family, those without a value now too (the realtime figures under slots admission)
        families = {spec.name: _family(spec) for spec in LIVE_METRICS}
        for spec, labels, value in self.metrics.live():
            families[spec.name].add_metric([labels[name] for name in spec.labels], value)
        yield from families.values()


def _family(spec: MetricSpec) -> Metric:
    kind = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
    return kind(spec.name, spec.help, labels=list(spec.labels))


class ServerMetrics:
    """One app's metrics: fed one log record per finished request, read live at scrape time.

    ``listeners`` get each request's observations too (another exporter, e.g. Ray's metrics in a
    Serve replica), so they count exactly what ``/metrics`` counts.
    """

    def __init__(self, service, voices, *, voice_ttl: float = 10.0) -> None:
        self.service, self.voices = service, voices
        self.registry = CollectorRegistry(auto_describe=True)
        self.listeners: list[Callable[[list[Observation]], None]] = []
        self.router: Any = None  # the app's router (add_metrics_route): route templates for labels
        self._templates: dict[tuple[bool, str], str] = {}
        self._voice_count = _VoiceCount(voices, voice_ttl)
        self._instruments: dict[str, Counter | Histogram] = {}
        for spec in REQUEST_METRICS:
            if spec.kind == "counter":
                self._instruments[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            else:
                self._instruments[spec.name] = Histogram(
                    spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets
                )
        self.registry.register(_LiveCollector(self))
        ProcessCollector(registry=self.registry)  # memory, CPU and open files of this process (Linux)

    # -- per request ------------------------------------------------------------------------------
    def route(self, path: str, websocket: bool) -> str:
        """The template of the app's route that ``path`` matches (``/v1/voices/{name}``), else ``other``."""
        key = (websocket, path)
        found = self._templates.get(key)
        if found is not None:
            return found
        template = OTHER
        for route in getattr(self.router, "routes", ()):
            regex = getattr(route, "path_regex", None)
            if regex is None or isinstance(route, WebSocketRoute) != websocket or not regex.match(path):
                continue
            template = f"{route.path}/{{path}}" if isinstance(route, Mount) else route.path
            break
        if template != OTHER:  # unknown paths are not kept: a scanner would fill the cache
            if len(self._templates) >= 1024:
                self._templates.clear()
            self._templates[key] = template
        return template

    def observations(self, record: dict[str, Any]) -> list[Observation]:
        """What one finished request's log record adds to the request metrics."""
        method = str(record.get("method") or "")
        websocket = method == "WS"
        route = self.route(str(record.get("path") or ""), websocket)
        status = record.get("status")
        outcome = record.get("outcome")
        if not isinstance(outcome, str) or not _OUTCOME.fullmatch(outcome):
            if isinstance(status, int):
                outcome = "ok" if status < 400 else f"{status // 100}xx"
            else:
                outcome = "no_response"
        labels = {
            "route": route,
            "method": method if method in METHODS else OTHER,
            "status": str(status) if isinstance(status, int) and 100 <= status < 600 else "none",
            "outcome": outcome,
        }
        by_route = {"route": route}
        found: list[Observation] = [(REQUESTS, labels, 1.0)]
        duration = _number(record.get("duration_ms"))
        if duration is not None:
            found.append((REQUEST_DURATION, by_route, duration / 1000))
        for key, spec, only_ok in _TIMINGS:
            value = _number(record.get(key))
            if value is not None and (outcome == "ok" or not only_ok):
                found.append((spec, by_route, value))
        audio = _number(record.get("audio_seconds"))
        if audio:
            found.append((AUDIO_SECONDS, by_route, audio))
        return found

    def observe_request(self, record: dict[str, Any]) -> None:
        """Count one finished request from its log line's record. Never raises: a metrics bug must not
        turn into a failed request."""
        try:
            found = self.observations(record)
            for spec, labels, value in found:
                instrument = self._instruments[spec.name].labels(**labels)
                if spec.kind == "counter":
                    instrument.inc(value)
                else:
                    instrument.observe(value)
            for listener in self.listeners:
                listener(found)
        except Exception:
            logger.exception("recording metrics for request %s failed", record.get("request_id"))

    # -- at scrape time ---------------------------------------------------------------------------
    def live(self) -> list[Observation]:
        """The scrape-time figures: gauges' values and the engine's running totals. Call it on the event
        loop's thread (the admission queue lives there); the engine's figures are safe from any thread."""
        adm = self.service.admission
        engine = self.service.engine
        active, waiting = adm.active, _retry(lambda: adm.waiting)
        found: list[Observation] = [
            (STREAMS_ACTIVE, {}, active),
            (REQUESTS_QUEUED, {}, waiting),
            (SLOTS_FREE, {}, max(0, adm.max_active - active)),
            (SLOTS, {}, adm.max_active),
            (QUEUE_LIMIT, {}, adm.max_waiting),
            (ENGINE_STREAMS, {"state": "running"}, engine.active),
            (ENGINE_STREAMS, {"state": "queued"}, engine.queued),
            (ENGINE_TICKS, {}, engine.ticks),
            (ENGINE_BOOSTS, {}, engine.boost_passes),
            (ENGINE_ROWS, {}, engine.tick_rows),
            (KV_ALLOCATED, {}, _retry(lambda: engine.pool.nbytes)),
            (KV_IN_USE, {}, engine.kv_cache_bytes_in_use),
        ]
        found += [(ENGINE_SECONDS, {"phase": phase}, seconds) for phase, seconds in dict(engine.seconds).items()]
        found += [(VOICES, {"source": source}, n) for source, n in self._voice_count.counts().items()]
        model = adm.capacity  # realtime admission: once the engine has ticked, what it learned
        if model is not None and (fit := model.fit()) is not None:
            found += [(TICK_FIT, {"term": "intercept"}, fit.intercept), (TICK_FIT, {"term": "per_row"}, fit.per_row)]
            if (capacity := model.capacity()) is not None:
                found.append((REALTIME_CAPACITY, {}, capacity))
        return found

    async def refresh(self) -> None:
        """Recount the voice folder if due, in a thread: a large folder or a slow disk must not hold up
        the event loop."""
        await asyncio.to_thread(self._voice_count.refresh)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type): OpenMetrics when ``accept`` asks for it, else Prometheus text."""
        try:
            encoder, content_type = choose_encoder(accept or "")
        except ValueError:  # a malformed version in the Accept header
            encoder, content_type = generate_latest, CONTENT_TYPE_LATEST
        return encoder(self.registry), content_type


def add_metrics_route(app: FastAPI) -> None:
    """``GET /metrics`` on ``app`` (whose ``state.metrics`` is its :class:`ServerMetrics`)."""
    metrics: ServerMetrics = app.state.metrics
    metrics.router = app.router

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route(request: Request) -> Response:
        await metrics.refresh()
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type, headers={"cache-control": "no-store"})
