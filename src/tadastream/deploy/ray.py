"""Ray Serve: the ``tadastream serve`` app on many replicas, each with one model and one batched engine.

    serve run deploy/ray-serve.yaml                                      # a config file (see its comments)
    serve run tadastream.deploy.ray:build_app model=demo num_replicas=2  # the builder, arguments inline
    tadastream ray --model demo --num-replicas 2                         # the CLI (run_ray)

Each replica builds its app in its constructor exactly as ``tadastream serve`` does
(:func:`tadastream.server.build_app`: the model through :func:`tadastream.loading.load_model`, voices,
encoder, limits), and Ray Serve's FastAPI ingress runs it: endpoints, errors, chunked audio, SSE,
the WebSocket and disconnect handling are one code path under uvicorn and behind Ray's HTTP proxy.

Why the limits are what they are:

* ``max_ongoing_requests`` = ``--max-streams`` + ``--replica-queue``: a replica takes what its
  engine generates at once plus a small queue (the next stream starts at the tick after one ends);
  everything else waits in the proxy, where whichever replica frees a slot first, or one that
  autoscaling adds, takes it. A large per-replica queue would pin requests to a busy replica.
* ``max_queued_requests`` = ``--queue`` (per proxy, one per node): when every replica is full,
  that many requests wait; more are refused at once with 429 and ``Retry-After: --retry-after``.
  Nothing queues without bound.
* ``--voices DIR`` is read by every replica (across nodes: a shared filesystem). An upload through
  one replica is an atomic rename that the others see on their next request (the store checks the
  file's mtime and size each time).
* Every HTTP response and WebSocket handshake names its replica in ``x-replica``.
* Metrics: ``GET /metrics`` through the proxy answers from whichever replica the router picks, so
  each replica also publishes the same figures (:mod:`tadastream.server.metrics`) through Ray's own
  metrics (:class:`RayMetrics`): every node's Ray metrics endpoint (``ray start --metrics-export-port``,
  the port scraped for Ray's dashboards) serves them as ``ray_tadastream_...``, tagged with
  ``deployment``, ``replica`` and ``application``.

A replica whose engine thread died fails Ray's health check and is replaced; a killed replica's
in-flight streams end with a broken response (clients see an error, never a short file passed off
as whole), and the proxy routes new requests to the healthy replicas meanwhile.

Importing this module imports no Ray; :func:`build_app`, :func:`tada_deployment` and
:func:`run_ray` raise ImportError (the CLI: a usage error) naming ``pip install "tadastream[ray]"``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from ..optionsets import OptionError, adder, configure_logging, option_namespace

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application, Deployment

    from ..server.metrics import Observation, ServerMetrics

__all__ = [
    "DEPLOYMENT_NAME",
    "REPLICA_HEADER",
    "RayMetrics",
    "ReplicaHeader",
    "add_ray_arguments",
    "application",
    "build_app",
    "check_ray_options",
    "DeploymentFailed",
    "run_ray",
    "deployment_options",
    "ray_options",
    "replica_options",
    "tada_deployment",
]

logger = logging.getLogger("tadastream.deploy")

#: Backpressure settings (429 with Retry-After) arrived in Ray 2.58; the ingress app builder before that.
MIN_RAY = (2, 58)
INSTALL_HINT = 'Ray Serve deployments need ray[serve] >= 2.58: pip install "tadastream[ray]"'
DEPLOYMENT_NAME = "TadaSpeech"
REPLICA_HEADER = "x-replica"
#: Seconds between a replica's publications of its scrape-time figures (Ray exports every 10 s by default).
METRICS_PERIOD = 5.0


# -- options ------------------------------------------------------------------------------------
def _replica_count(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas or 'auto', got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 replica, got {count}")
    return count


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``serve`` option and the Ray ones to ``parser``; options it already has are kept.

    In a deployment, ``--queue`` is what waits when every replica is full (Ray's
    ``max_queued_requests``, per proxy) and ``--replica-queue`` what each replica holds beyond its
    ``--max-streams``; ``--host``/``--port`` are where the Ray proxy listens.
    """
    from ..server import add_serve_arguments

    add_serve_arguments(parser)

    add = adder(parser)
    add(
        "--num-replicas",
        type=_replica_count,
        default=None,
        metavar="N|auto",
        help="replicas, each a whole model (default 1); 'auto' autoscales between --min- and --max-replicas",
    )
    add("--min-replicas", type=int, default=1, help="autoscaling: fewest replicas (default 1; 0 scales to zero)")
    add("--max-replicas", type=int, default=None, help="autoscaling: most replicas (setting it turns autoscaling on)")
    add(
        "--target-ongoing-requests",
        type=float,
        default=None,
        metavar="N",
        help="autoscaling: requests per replica to aim for (default --max-streams: a full engine)",
    )
    add(
        "--replica-queue",
        type=int,
        default=2,
        help="requests a replica holds beyond --max-streams, ready for the next free slot (default 2)",
    )
    add("--retry-after", type=float, default=5.0, help="Retry-After seconds on a 429 when all replicas are full (5)")
    add("--replica-cpus", type=float, default=None, help="CPUs Ray reserves per replica (default: --threads, or 1)")
    add(
        "--replica-gpus",
        type=float,
        default=None,
        help="GPUs per replica, may be a fraction (default 1 on cuda, else 0)",
    )
    add(
        "--graceful-shutdown-timeout",
        type=float,
        default=60.0,
        help="seconds a stopping replica lets its streams finish (default 60)",
    )
    add("--health-check-period", type=float, default=10.0, help="seconds between replica health checks (default 10)")
    add("--ray-address", default=None, help="an existing Ray cluster (e.g. auto, ray://HOST:10001); default: start one")
    add("--app-name", default="tadastream", help="the Serve application's name (default tadastream)")
    add("--route-prefix", default="/", help="URL prefix of the app on the proxy (default /)")


def _parser() -> argparse.ArgumentParser:
    parser = _ArgsParser(add_help=False, allow_abbrev=False)
    add_ray_arguments(parser)
    return parser


class _ArgsParser(argparse.ArgumentParser):
    """Raises ValueError instead of exiting: builders run inside ``serve run`` and Ray's controller."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def ray_options(args: argparse.Namespace | None = None, **kwargs: Any) -> argparse.Namespace:
    """Every option of a deployment: the defaults, then ``args`` (other attributes ignored), then ``kwargs``."""
    return option_namespace(add_ray_arguments, args, kwargs)


def _options_from_mapping(args: dict[str, Any] | None) -> argparse.Namespace:
    """Options from a ``serve run`` argument dict (strings) or a config's ``args`` (YAML values), checked
    and converted by the same parser as the command line."""
    argv: list[str] = []
    for key, value in (args or {}).items():
        name = str(key).replace("_", "-")
        if name in ("host", "port"):
            raise ValueError(f"{key}: the proxy's address is Serve's http_options (host, port), not an app argument")
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            argv.append(f"--{name}={item}")
    return _parser().parse_args(argv)


def _autoscaling(opts: argparse.Namespace) -> bool:
    return opts.num_replicas == "auto" or opts.max_replicas is not None


def check_ray_options(opts: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for options that cannot work, before Ray or a model starts."""
    from ..server.settings import ServerSettings

    if not isinstance(opts.model, str):
        raise ValueError("--model: each replica loads its own model: give a hub id, a folder or 'demo'")
    for name, low in (("max_streams", 1), ("replica_queue", 0), ("queue", 1), ("min_replicas", 0)):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            extra = " (a bounded queue: requests beyond it get 429)" if name == "queue" else ""
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}{extra}, got {value!r}")
    if isinstance(opts.num_replicas, int) and opts.max_replicas is not None:
        raise ValueError("give --num-replicas N, or --max-replicas (autoscaling), not both")
    if _autoscaling(opts):
        if opts.max_replicas is None:
            raise ValueError("--num-replicas auto needs --max-replicas: each replica holds a whole model")
        if opts.max_replicas < max(1, opts.min_replicas):
            raise ValueError(f"--max-replicas must be >= max(1, --min-replicas), got {opts.max_replicas}")
    for name in ("target_ongoing_requests", "replica_cpus", "replica_gpus"):
        value = getattr(opts, name)
        if value is not None and not value >= (1e-9 if name == "target_ongoing_requests" else 0):
            raise ValueError(f"--{name.replace('_', '-')} must be {'> 0' if name.startswith('target') else '>= 0'}")
    for name in ("retry_after", "graceful_shutdown_timeout", "health_check_period"):
        if not getattr(opts, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a number of seconds >= 0")
    ServerSettings(  # its own checks of the timeouts and the admission policy, with the flags' names
        queue_timeout=opts.queue_timeout,
        admission=opts.admission,
        realtime_margin=opts.realtime_margin,
        first_audio_boost=opts.first_audio_boost,
        ws_idle_timeout=opts.ws_idle_timeout,
        send_timeout=opts.send_timeout,
        max_session_seconds=opts.max_session_seconds,
    )


def deployment_options(opts: argparse.Namespace) -> dict[str, Any]:
    """The ``serve.deployment`` options for ``opts``: replica count or autoscaling, per-replica
    concurrency from the engine's slots, the bounded proxy queue and its 429, and resources."""
    cpus = opts.replica_cpus if opts.replica_cpus is not None else float(opts.threads or 1)
    gpus = opts.replica_gpus
    if gpus is None:
        gpus = 1.0 if str(opts.device or "").startswith("cuda") else 0.0
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": opts.max_streams + opts.replica_queue,
        "max_queued_requests": opts.queue,
        "backpressure_config": {"status_code": 429, "retry_after_s": opts.retry_after},
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus},
        "graceful_shutdown_timeout_s": opts.graceful_shutdown_timeout,
        "health_check_period_s": opts.health_check_period,
    }
    if _autoscaling(opts):
        options["autoscaling_config"] = {
            "min_replicas": opts.min_replicas,
            "max_replicas": opts.max_replicas,
            "target_ongoing_requests": opts.target_ongoing_requests or float(opts.max_streams),
        }
    else:
        options["num_replicas"] = opts.num_replicas or 1
    return options


# -- the replica --------------------------------------------------------------------------------
def replica_options(opts: argparse.Namespace) -> argparse.Namespace:
    """The ``tadastream serve`` options each replica builds its app from: all of ``opts`` (``--admission``
    too: each replica admits to its own engine), but its ``--queue`` is ``--replica-queue``, since
    the deployment-wide queue is Ray's (``max_queued_requests``)."""
    return argparse.Namespace(**{**vars(opts), "queue": opts.replica_queue})


class ReplicaHeader:
    """ASGI middleware naming the replica on every HTTP response and WebSocket handshake (``x-replica``),
    so clients, logs and load tests can tell which replica served them."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode("latin-1"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_named(message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


class RayMetrics:
    """A replica's ``/metrics`` figures, also published as Ray Serve metrics.

    Through the proxy, ``/metrics`` answers from whichever replica the router picks; Ray's metrics
    reach every replica's figures from one endpoint per node. Requests are recorded as they finish
    (the same observations ``/metrics`` counts); the scrape-time figures (slots, engine, KV cache,
    voices) are read every ``period`` seconds on the replica's event loop: gauges are set, and the
    engine's running totals added as increments. Names and help are :mod:`tadastream.server.metrics`'s;
    Ray exports them with its ``ray_`` prefix.
    """

    def __init__(self, metrics: ServerMetrics, period: float = METRICS_PERIOD):
        from ray.serve import metrics as serve_metrics

        from ..server.metrics import LIVE_METRICS, REQUEST_METRICS

        self.metrics, self.period = metrics, period
        self._instruments: dict[str, Any] = {}
        for spec in REQUEST_METRICS + LIVE_METRICS:
            tags = spec.labels or None
            if spec.kind == "histogram":
                instrument = serve_metrics.Histogram(spec.name, spec.help, list(spec.buckets), tags)
            elif spec.kind == "counter":
                instrument = serve_metrics.Counter(spec.name, spec.help, tags)
            else:
                instrument = serve_metrics.Gauge(spec.name, spec.help, tags)
            self._instruments[spec.name] = instrument
        self._totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._task: asyncio.Task | None = None
        metrics.listeners.append(self.record)

    def record(self, observations: list[Observation]) -> None:
        """One finished request's observations (a ServerMetrics listener)."""
        for spec, labels, value in observations:
            instrument = self._instruments[spec.name]
            if spec.kind == "histogram":
                instrument.observe(value, dict(labels))
            elif value > 0:  # Ray's counters take positive increments only
                instrument.inc(value, dict(labels))

    def publish(self) -> None:
        """Set the gauges to the replica's figures now; add what the engine's totals grew by since the last call."""
        for spec, labels, value in self.metrics.live():
            instrument = self._instruments[spec.name]
            if spec.kind == "gauge":
                instrument.set(value, dict(labels))
                continue
            key = (spec.name, tuple(sorted(labels.items())))
            grown = value - self._totals.get(key, 0.0)
            self._totals[key] = value
            if grown > 0:
                instrument.inc(grown, dict(labels))

    async def run(self) -> None:
        """Publish every ``period`` seconds, until cancelled."""
        while True:
            try:
                await self.metrics.refresh()
                self.publish()
            except Exception:  # a failed publication must not end the next ones
                logger.exception("publishing the replica's metrics to Ray failed")
            await asyncio.sleep(self.period)

    def start(self) -> RayMetrics:
        """Publish from now on, on the running event loop (the replica's, where its requests run)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a Ray that builds ingress apps off the replica's loop: requests are still recorded
            logger.warning("no event loop while the replica starts: Ray gets its request metrics, not its gauges")
            return self
        self._task = loop.create_task(self.run(), name="tadastream-ray-metrics")
        return self


def _replica_app(opts: argparse.Namespace) -> FastAPI:
    """Runs in each replica's constructor (on its event loop): the app ``tadastream serve`` builds for ``opts``,
    named after its replica, publishing its metrics to Ray."""
    from ray import serve

    from ..server import build_app as build_server_app

    configure_logging(opts.log_level)
    replica = serve.get_replica_context().replica_id.unique_id
    app = build_server_app(opts)
    app.add_middleware(ReplicaHeader, replica=replica)
    app.state.ray_metrics = RayMetrics(app.state.metrics).start()
    model = app.state.service.model
    logger.info("replica %s: %s on %s, %d streams", replica, opts.model, model.device, opts.max_streams)
    return app


def _require_ray():
    """(ray, ray.serve), or ImportError with the install command."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    found = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    if found < MIN_RAY:
        raise ImportError(f"{INSTALL_HINT} (found ray {ray.__version__})")
    return ray, serve


def tada_deployment(opts: argparse.Namespace) -> Deployment:
    """The Serve deployment for ``opts`` (from :func:`ray_options`): adjust it with ``.options()``, run
    ``.bind()``. Its replicas serve the app :func:`tadastream.server.build_app` makes, via Ray's ingress."""
    _ray, serve = _require_ray()
    check_ray_options(opts)
    replica_opts = replica_options(opts)

    def build_replica_app() -> FastAPI:
        return _replica_app(replica_opts)

    @serve.ingress(build_replica_app)
    class TadaSpeech:
        """One model, one batched engine, the whole HTTP/WebSocket API."""

        def check_health(self) -> None:
            """Ray replaces a replica whose engine worker died: it would accept requests and never answer."""
            if not self.app.state.service.engine.has_worker:
                raise RuntimeError("the engine's worker thread has stopped")

    return serve.deployment(TadaSpeech, **deployment_options(opts))


def application(opts: argparse.Namespace) -> Application:
    """The bound application for ``opts``, for ``serve.run``."""
    return tada_deployment(opts).bind()


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run tadastream.deploy.ray:build_app key=value ...`` and a Serve
    config's ``import_path``/``args``. Keys are the ``tadastream ray`` options without dashes
    (``model``, ``voices``, ``max_streams``, ``num_replicas``, ``max_replicas``, ...); unknown keys or
    bad values raise ValueError before anything starts."""
    _require_ray()
    return application(_options_from_mapping(args))


# -- the command --------------------------------------------------------------------------------
class DeploymentFailed(RuntimeError):
    """Ray could not bring the deployment up (a replica failed to load the model, no resources, ...)."""


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run_ray(args: argparse.Namespace) -> int:
    """Run the deployment on a Ray cluster (a local one unless ``--ray-address``) and serve until
    interrupted; then the app is deleted (and a local cluster stopped). Returns 0 (``tadastream ray``).

    Before anything starts, raises ImportError (no ``ray[serve]``: the message says how to install
    it) or OptionError (a bad option); DeploymentFailed when Ray cannot bring the replicas up.
    """
    ray, serve = _require_ray()
    opts = ray_options(args)
    try:
        check_ray_options(opts)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    configure_logging(opts.log_level)
    if opts.host not in ("127.0.0.1", "::1", "localhost") and not opts.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach it can use it", opts.host)
    local = opts.ray_address is None
    ray.init(address="local" if local else opts.ray_address)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # a service manager's SIGTERM acts as Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": opts.host, "port": opts.port})
        try:
            serve.run(application(opts), name=opts.app_name, route_prefix=opts.route_prefix)
        except Exception as exc:  # a replica failed to start: Ray's message names the cause
            raise DeploymentFailed(f"the deployment failed: {exc}") from None
        options = deployment_options(opts)
        scale = options.get("autoscaling_config") or f"{options['num_replicas']} replica(s)"
        logger.info("serving %s on http://%s:%d%s with %s", opts.model, opts.host, opts.port, opts.route_prefix, scale)
        stop.wait()  # until Ctrl-C, which may also come while the replicas are still starting
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(opts.app_name)
        finally:
            ray.shutdown()
    return 0
