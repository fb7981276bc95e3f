"""The Ray Serve deployment end to end: a local Ray cluster, 2 replicas of the demo model, Ray's HTTP proxy.

One cluster for the whole module (starting Ray and two replicas takes ~20 s); tests that load it wait
until both replicas are idle again first. The replica kill test runs last: it replaces a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import ray
import torch
from ray import serve

from tadastream.deploy.ray import (
    DEPLOYMENT_NAME,
    REPLICA_HEADER,
    application,
    build_app,
    check_ray_options,
    deployment_options,
    ray_options,
    replica_options,
)
from tests.helpers.paths import ROOT, SRC
from tests.helpers.processes import interruptible
from tests.helpers.server_harness import LiveServer

pytestmark = pytest.mark.slow

APP = "tadastream-test"
SHORT = "Hello from one of the replicas."
MEDIUM = " ".join(["A sentence or two that keeps a stream going for a few seconds."] * 6)
LONG = " ".join(["This sentence keeps the stream busy for a good while, so it can be cut off."] * 30)
# served like `tadastream serve --model demo --dtype float32 --threads 1`, on 2 replicas of 2 streams + 2 queued
OPTIONS = dict(model="demo", dtype="float32", threads=1, log_level="warning", max_streams=2, replica_queue=2)
RAY_OPTIONS = dict(num_replicas=2, queue=8, retry_after=3, health_check_period=1, graceful_shutdown_timeout=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The deployment behind Ray's proxy, and ways to look at one replica."""

    def __init__(self, url: str):
        self.url = url

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def health_of_each(self, replicas: set[str] | None = None, timeout: float = 30.0, ready=None) -> dict[str, dict]:
        """/health of every replica (or of ``replicas``), polled through the proxy until each reply passes
        ``ready``: the router picks replicas, so this asks until it has heard from them all."""
        ready = ready or (lambda health: True)
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                res = c.get("/health")
                if res.status_code == 200 and ready(res.json()):
                    seen[res.headers[REPLICA_HEADER]] = res.json()
                    if (replicas is None and len(seen) >= 2) or (replicas is not None and replicas <= set(seen)):
                        return seen
                time.sleep(0.05)
        raise AssertionError(f"replicas not heard from in {timeout:g} s: have {sorted(seen)}, want {replicas}")

    def wait_idle(self, timeout: float = 60.0) -> dict[str, dict]:
        """Both replicas with no stream running or waiting (and the engine empty)."""
        return self.health_of_each(timeout=timeout, ready=idle)


def idle(health: dict) -> bool:
    streams, engine = health["streams"], health["engine"]
    return streams["active"] == 0 and streams["waiting"] == 0 and engine["active"] == 0 and engine["queued"] == 0


def replica_actor(replica: str):
    """The actor of replica ``replica`` (its x-replica id): Serve names replica actors after their ids."""
    from ray.serve._private.common import DeploymentID, ReplicaID

    name = ReplicaID(replica, DeploymentID(DEPLOYMENT_NAME, APP)).to_full_id_str()
    return ray.get_actor(name, namespace="serve")


def ongoing(replica: str) -> int:
    """Requests Ray counts as running on a replica (its own counter, not the app's)."""
    return ray.get(replica_actor(replica).get_num_ongoing_requests.remote(), timeout=10)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def cluster(voices_dir):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local",
        num_cpus=4,  # logical: 2 replicas of 1 CPU, and room for a replacement while one stops
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        opts = ray_options(**OPTIONS, **RAY_OPTIONS, voices=str(voices_dir))
        serve.run(application(opts), name=APP, route_prefix="/")
        live = Cluster(f"http://127.0.0.1:{port}")
        live.wait_idle()
        yield live
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def local():
    """``tadastream serve`` with the same options, in this process: the audio every replica must match."""
    from tadastream.server import add_serve_arguments
    from tadastream.server import build_app as build_server_app

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    opts = parser.parse_args([])
    for key in ("model", "dtype", "threads", "max_streams"):
        setattr(opts, key, OPTIONS[key])
    threads = torch.get_num_threads()
    try:
        with LiveServer(build_server_app(opts)) as live:
            yield live
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(local):
    """pcm16 bytes of (text, seed) from the in-process server, computed once each."""
    cache: dict[tuple[str, int], bytes] = {}

    def get(text: str, seed: int) -> bytes:
        if (text, seed) not in cache:
            with local.client() as c:
                res = c.post("/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm"})
            assert res.status_code == 200, res.text
            cache[text, seed] = res.content
        return cache[text, seed]

    return get


def speak(c: httpx.Client, text: str, seed: int, **extra) -> httpx.Response:
    return c.post("/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm", **extra})


# -- without a cluster ------------------------------------------------------------------------------
def test_limits_follow_the_engine_and_the_queue_is_bounded():
    opts = ray_options(model="demo", max_streams=6, replica_queue=2, queue=24, num_replicas=3, retry_after=7)
    options = deployment_options(opts)
    assert options["max_ongoing_requests"] == 8, "a replica takes its engine's slots plus its small queue"
    assert options["max_queued_requests"] == 24, "--queue bounds what waits when every replica is full"
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 7}
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    scaled = deployment_options(ray_options(model="demo", max_streams=6, num_replicas="auto", max_replicas=4))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6.0}
    for bad, flag in (
        (dict(queue=0), "--queue"),
        (dict(num_replicas="auto"), "--max-replicas"),
        (dict(num_replicas=2, max_replicas=3), "not both"),
        (dict(min_replicas=3, max_replicas=2), "--max-replicas"),
        (dict(send_timeout=0), "--send-timeout"),
        (dict(admission="fast"), "--admission must be one of slots, realtime"),
        (dict(realtime_margin=0.5), "--realtime-margin must be a number >= 1"),
    ):
        with pytest.raises(ValueError, match=flag):
            check_ray_options(ray_options(model="demo", **bad))


def test_builder_takes_serve_run_strings_and_the_example_config():
    import yaml  # a dependency of ray
    from ray.serve.schema import ServeDeploySchema

    app = build_app({"model": "demo", "max_streams": "3", "num_replicas": "2", "voices": "/srv/voices"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 2 and deployment.max_ongoing_requests == 3 + 2
    with pytest.raises(ValueError, match="unrecognized arguments: --max-stream=3"):
        build_app({"model": "demo", "max_stream": "3"})
    with pytest.raises(ValueError, match="http_options"):
        build_app({"model": "demo", "port": 9000})

    config = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)  # what `serve run` / `serve deploy` check first
    (spec,) = schema.applications
    assert spec.import_path == "tadastream.deploy.ray:build_app"
    built = build_app(spec.args)._bound_deployment
    assert built.max_ongoing_requests == spec.args["max_streams"] + spec.args["replica_queue"]
    assert built.max_queued_requests == spec.args["queue"] >= 1
    autoscaling = deployment_options(ray_options(**spec.args))["autoscaling_config"]
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    assert autoscaling["target_ongoing_requests"] == spec.args["max_streams"]


def test_each_replica_admits_to_its_own_engine_by_the_policy_given():
    """--admission reaches every replica's app (its capacity model sees that replica's engine only),
    with the replica's small queue; a bad value is refused by the builder, before Ray starts anything."""
    from tadastream.server import build_app as build_server_app

    args = {"model": "demo", "dtype": "float32", "threads": "1", "admission": "realtime", "realtime_margin": "1.5"}
    deployment = build_app({**args, "replica_queue": "3", "queue": "24"})._bound_deployment
    assert deployment.max_ongoing_requests == 4 + 3 and deployment.max_queued_requests == 24
    opts = replica_options(ray_options(**{**args, "threads": 1, "realtime_margin": 1.5, "replica_queue": 3}))
    threads = torch.get_num_threads()
    app = build_server_app(opts)  # what each replica's constructor builds (_replica_app)
    try:
        admission = app.state.service.admission
        assert (admission.policy, admission.capacity.margin, admission.max_waiting) == ("realtime", 1.5, 3)
    finally:
        app.state.service.shutdown()
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="invalid choice: 'fast'"):
        build_app({"model": "demo", "admission": "fast"})
    with pytest.raises(ValueError, match="--realtime-margin must be a number >= 1, got 0.5"):
        build_app({"model": "demo", "realtime_margin": "0.5"})


def test_cmd_ray_refuses_bad_options_before_starting_anything():
    from tadastream.cli import main
    from tadastream.deploy.ray import run_ray
    from tadastream.optionsets import OptionError

    assert not ray.is_initialized()
    with pytest.raises(OptionError, match="--max-replicas"):
        run_ray(ray_options(model="demo", num_replicas="auto"))
    with pytest.raises(OptionError, match="--max-streams"):
        run_ray(ray_options(model="demo", max_streams=0))
    assert main(["ray", "--model", "demo", "--max-streams", "0"]) == 2, "a usage error on the command line"
    assert not ray.is_initialized()


def test_cmd_ray_serves_until_interrupted(tmp_path):
    """The CLI entry: its own local cluster, the app on --host/--port, and all of it gone after Ctrl-C."""
    port = free_port()
    script = (
        "import sys; from tadastream.deploy.ray import run_ray, ray_options; "
        f"sys.exit(run_ray(ray_options(model='demo', dtype='float32', threads=1, port={port}, log_level='warning')))"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(SRC)}
    log = (tmp_path / "run_ray.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=interruptible
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()[-3000:]
            try:
                res = httpx.post(url + "/v1/audio/speech", json={"input": SHORT, "seed": 1}, trust_env=False)
                if res.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert res.headers["content-type"] in ("audio/mpeg", "audio/wav") and res.headers[REPLICA_HEADER]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.seek(0) or log.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(httpx.HTTPError):  # the proxy went with the cluster
        httpx.get(url + "/health", trust_env=False, timeout=5)


# -- through Ray's proxy ----------------------------------------------------------------------------
def test_openai_client_streams_a_wav_through_the_proxy(cluster, reference):
    import openai
    client = openai.OpenAI(
        base_url=f"{cluster.url}/v1", api_key="unused", http_client=httpx.Client(trust_env=False), max_retries=0
    )
    started = time.perf_counter()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=MEDIUM, response_format="wav", extra_body={"seed": 5}
    ) as res:
        assert res.headers[REPLICA_HEADER] and res.headers["content-type"] == "audio/wav"
        for chunk in res.iter_bytes():
            arrivals.append(time.perf_counter() - started)
            chunks.append(chunk)
    data = b"".join(chunks)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert data[44:] == reference(MEDIUM, 5), "the same samples as tadastream serve, seed for seed"
    assert len(chunks) >= 3 and arrivals[0] < 0.5 * arrivals[-1], "streamed as made, not buffered by the proxy"


def test_sse_through_the_proxy(cluster, reference):
    events = []
    with cluster.client() as c:
        body = {"input": SHORT, "seed": 9, "stream_format": "sse", "response_format": "pcm"}
        with c.stream("POST", "/v1/audio/speech", json=body) as res:
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
            for line in res.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and kinds[:-1] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) >= 3
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == reference(SHORT, 9)
    assert events[-1]["timings"]["seed"] == 9


def test_websocket_through_the_proxy(cluster, reference):
    from websockets.sync import client as ws_client
    url = cluster.url.replace("http", "ws") + "/v1/audio/stream"
    frames, messages = [], []
    with ws_client.connect(url, open_timeout=30, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 13}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["seed"] == 13
        words = SHORT.split(" ")
        for i, word in enumerate(words):  # the text arrives in pieces, as from an LLM
            ws.send(json.dumps({"type": "text", "text": word + (" " if i < len(words) - 1 else "")}))
        ws.send(json.dumps({"type": "end"}))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                frames.append(message)
                continue
            messages.append(json.loads(message))
            if messages[-1]["type"] in ("result", "error"):
                break
    assert [m["type"] for m in messages] == ["audio.done", "result"], messages
    assert messages[-1]["cancelled"] is False
    assert b"".join(frames) == reference(SHORT, 13), "the WebSocket speaks the same audio as HTTP, via Ray too"


def test_eight_concurrent_requests_spread_over_both_replicas(cluster, reference):
    cluster.wait_idle()

    def one(_):
        with cluster.client() as c:
            res = speak(c, SHORT, 21)
        return res.status_code, res.headers.get(REPLICA_HEADER), res.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [status for status, _, _ in results] == [200] * 8
    per_replica = collections.Counter(replica for _, replica, _ in results)
    assert len(per_replica) == 2, f"both replicas served: {per_replica}"
    assert min(per_replica.values()) >= 2, f"a replica takes 4 at most (2 streams + 2 queued): {per_replica}"
    expected = reference(SHORT, 21)
    assert all(body == expected for _, _, body in results), "same seed, same audio, on either replica"


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_a_disconnect_stops_the_generation_on_its_replica(cluster, transport):
    cluster.wait_idle()
    if transport == "http":
        client = cluster.client()
        res = client.send(
            client.build_request("POST", "/v1/audio/speech", json={"input": LONG, "seed": 3, "response_format": "pcm"}),
            stream=True,
        )
        assert res.status_code == 200
        audio = res.iter_raw()  # kept: dropping the iterator would close the connection
        next(audio)  # audio is flowing
        replica = res.headers[REPLICA_HEADER]
        time.sleep(0.3)
        assert ongoing(replica) == 1, "the request is running on the replica that answered"
        started = time.monotonic()
        res.close()
        client.close()
    else:
        from websockets.sync import client as ws_client
        url = cluster.url.replace("http", "ws") + "/v1/audio/stream"
        with ws_client.connect(url, open_timeout=30, close_timeout=2, proxy=None) as ws:
            replica = ws.response.headers[REPLICA_HEADER]
            ws.send(json.dumps({"seed": 3}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            ws.send(json.dumps({"type": "text", "text": LONG + " "}))  # no "end": the session stays open
            assert isinstance(ws.recv(timeout=30), bytes)
            time.sleep(0.3)
            assert ongoing(replica) == 1, "the session is running on the replica that answered"
            started = time.monotonic()
    while ongoing(replica):
        assert time.monotonic() - started < 5, "the replica kept generating for a client that left"
        time.sleep(0.05)
    # a whole LONG takes far longer than this: the generation was cancelled, not run to the end
    health = cluster.health_of_each({replica}, timeout=10, ready=idle)[replica]
    assert health["streams"]["active"] == 0 and health["engine"]["active"] == 0


def test_back_pressure_when_every_replica_is_full(cluster):
    cluster.wait_idle()
    capacity = 2 * (OPTIONS["max_streams"] + OPTIONS["replica_queue"]) + RAY_OPTIONS["queue"]  # 8 + 8 waiting

    async def flood() -> tuple[list[httpx.Response], int]:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=60, trust_env=False) as c:

            async def post(seed: int) -> httpx.Response:
                return await c.post("/v1/audio/speech", json={"input": LONG, "seed": seed, "response_format": "pcm"})

            tasks = []
            for seed in range(capacity + 4):
                tasks.append(asyncio.create_task(post(seed)))
                await asyncio.sleep(0.1)  # one at a time: Ray may refuse early when many are routed at once
            await asyncio.sleep(1.0)
            refused = [t.result() for t in tasks if t.done()]
            pending = sum(not t.done() for t in tasks)
            for t in tasks:
                t.cancel()  # the clients leave: their replicas stop, queued requests are dropped
            await asyncio.gather(*tasks, return_exceptions=True)
            return refused, pending

    refused, pending = asyncio.run(flood())
    assert len(refused) >= 4 and pending >= 2 * OPTIONS["max_streams"], (len(refused), pending)
    for res in refused:
        assert res.status_code == 429, res.text
        assert res.headers["retry-after"] == str(RAY_OPTIONS["retry_after"])
    cluster.wait_idle()  # the cancelled ones freed every slot


def test_voices_are_shared_by_the_replicas(cluster, voices_dir, tmp_path):
    from tadastream.demo import build_demo_model, demo_voice

    demo_voice(build_demo_model()).save(tmp_path / "v.voice")
    with cluster.client() as c:
        res = c.post(
            "/v1/voices?name=shared",
            content=(tmp_path / "v.voice").read_bytes(),
            headers={"content-type": "application/octet-stream"},
        )
        assert res.status_code == 201, res.text
    assert (voices_dir / "shared.voice").is_file(), "uploads land in the folder every replica reads"
    cluster.wait_idle()
    served: dict[str, int] = {}
    deadline = time.monotonic() + 30
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        while len(served) < 2 and time.monotonic() < deadline:

            def use(seed: int) -> httpx.Response:
                with cluster.client() as c:
                    return speak(c, SHORT, seed, voice="shared")

            for res in pool.map(use, (1, 2)):  # two at once: the second goes to the less busy replica
                assert res.status_code == 200, res.text
                served[res.headers[REPLICA_HEADER]] = len(res.content)
    assert len(served) == 2, f"the uploaded voice works on every replica: {served}"


def test_metrics_of_every_replica(cluster):
    """/metrics through the proxy answers from one replica at a time; Ray's metrics endpoint (one per node)
    has every replica's figures, published by each replica under the same names with a ``ray_`` prefix."""
    from prometheus_client import parser

    def samples(text: str) -> list:
        return [s for family in parser.text_string_to_metric_families(text) for s in family.samples]

    cluster.wait_idle()
    spoke: set[str] = set()
    deadline = time.monotonic() + 30
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        while len(spoke) < 2 and time.monotonic() < deadline:

            def one(seed: int) -> httpx.Response:
                with cluster.client() as c:
                    return speak(c, SHORT, seed)

            for res in pool.map(one, (1, 2)):  # two at once: the second goes to the less busy replica
                assert res.status_code == 200, res.text
                spoke.add(res.headers[REPLICA_HEADER])
    assert len(spoke) == 2, "each replica spoke"

    replicas: dict[str, list] = {}
    deadline = time.monotonic() + 30
    with cluster.client() as c:
        while len(replicas) < 2 and time.monotonic() < deadline:
            res = c.get("/metrics")
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
            replicas[res.headers[REPLICA_HEADER]] = samples(res.text)
    assert len(replicas) == 2, f"both replicas answered /metrics: {sorted(replicas)}"
    for found in replicas.values():
        slots = [s.value for s in found if s.name == "tadastream_stream_slots"]
        assert slots == [OPTIONS["max_streams"]], "each replica's own engine"

    port = ray.nodes()[0]["MetricsExportPort"]
    want = set(replicas)
    deadline = time.monotonic() + 30  # Ray exports every few seconds: earlier tests' requests are there already
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
        exported = [
            s for s in samples(text) if s.name.startswith("ray_tadastream_") and s.labels.get("application") == APP
        ]
        by_replica: dict[str, set[str]] = collections.defaultdict(set)
        for s in exported:
            if s.name == "ray_tadastream_requests_total" and s.labels["route"] == "/v1/audio/speech" and s.value > 0:
                by_replica[s.labels["replica"]].add("speech")
            elif s.name == "ray_tadastream_time_to_first_audio_seconds_count" and s.value > 0:
                by_replica[s.labels["replica"]].add("first_audio")
            elif s.name == "ray_tadastream_stream_slots" and s.value == OPTIONS["max_streams"]:
                by_replica[s.labels["replica"]].add("slots")
            elif s.name == "ray_tadastream_engine_ticks_total" and s.value > 0:
                by_replica[s.labels["replica"]].add("ticks")
        complete = {r for r, kinds in by_replica.items() if kinds == {"speech", "first_audio", "slots", "ticks"}}
        if want <= complete:
            break
        assert time.monotonic() < deadline, f"Ray's endpoint lacks replicas' metrics: {dict(by_replica)}, want {want}"
        time.sleep(0.5)
    assert all(s.labels["deployment"] == DEPLOYMENT_NAME for s in exported)


def test_killing_a_replica_mid_stream(cluster, reference):
    """Runs last: the killed replica's client gets an error at once, the other replica's stream goes on,
    new requests are served meanwhile, and Ray starts a replacement."""
    before = set(cluster.wait_idle())
    client_a, client_b = cluster.client(timeout=30), cluster.client(timeout=30)
    doomed = client_a.send(
        client_a.build_request("POST", "/v1/audio/speech", json={"input": LONG, "seed": 1, "response_format": "pcm"}),
        stream=True,
    )
    assert doomed.status_code == 200
    doomed_audio = doomed.iter_raw()  # kept: dropping the iterator would close the connection
    received = len(next(doomed_audio))
    victim = doomed.headers[REPLICA_HEADER]
    other = client_b.send(
        client_b.build_request("POST", "/v1/audio/speech", json={"input": MEDIUM, "seed": 2, "response_format": "pcm"}),
        stream=True,
    )
    assert other.status_code == 200
    survivor = other.headers[REPLICA_HEADER]
    assert survivor != victim and {victim, survivor} == before, "the router sent the second stream to the idle replica"

    ray.kill(replica_actor(victim), no_restart=True)
    killed = time.monotonic()
    with pytest.raises(httpx.HTTPError):  # a broken stream: never passed off as a complete file
        for chunk in doomed_audio:
            received += len(chunk)
    assert time.monotonic() - killed < 10, "the client learned of the failure promptly"
    doomed.close()
    client_a.close()

    with cluster.client() as c:  # meanwhile, new requests go to the healthy replica
        for seed in (31, 32):
            res = speak(c, SHORT, seed)
            assert res.status_code == 200 and res.headers[REPLICA_HEADER] == survivor
            assert res.content == reference(SHORT, seed)
    rest = other.read()
    assert rest == reference(MEDIUM, 2), "the other replica's stream was untouched"
    other.close()
    client_b.close()

    replaced = cluster.health_of_each(timeout=90, ready=idle)
    assert victim not in replaced and survivor in replaced and len(replaced) == 2, sorted(replaced)
    status = serve.status().applications[APP].deployments[DEPLOYMENT_NAME]
    assert status.replica_states.get("RUNNING") == 2
