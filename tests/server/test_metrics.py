"""``GET /metrics``: the Prometheus exposition of a live server (uvicorn on 127.0.0.1, the demo model).

A request is counted once it has ended on the server's side, which can be just after the client has
read its last byte: the checks poll the exposition until the expected value shows up, then require
exactly that value.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tadastream.server.metrics import LIVE_METRICS, REQUEST_METRICS
from tests.helpers.server_harness import demo_server

SPEECH = "/v1/audio/speech"
STREAM = "/v1/audio/stream"
SHORT = "Hello there, how are you today?"
LONG = " ".join(["This sentence keeps a stream busy for a good while."] * 20)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def server(voices_dir):
    with demo_server(max_streams=2, queue=4, voices_dir=str(voices_dir)) as live:
        yield live


class Scrape:
    """One parsed exposition: samples by name, looked up by a subset of their labels."""

    def __init__(self, text: str):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the samples named ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(server) -> Scrape:
    with server.client() as c:
        res = c.get("/metrics")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain")
    return Scrape(res.text)


def wait_for(server, name: str, expected: float, timeout: float = 10.0, **labels: str) -> Scrape:
    """Scrape until ``name{labels}`` reaches ``expected``; it must then be exactly that."""
    deadline = time.monotonic() + timeout
    while True:
        found = scrape(server)
        value = found.value(name, **labels)
        if value >= expected or time.monotonic() > deadline:
            assert value == expected, f"{name}{labels} = {value}, expected {expected}"
            return found
        time.sleep(0.02)


def test_exposition_parses_and_names_every_metric(server):
    with server.client() as c:
        assert c.get("/health").status_code == 200
    found = wait_for(server, "tadastream_requests_total", 1, route="/health", method="GET", status="200", outcome="ok")
    for spec in REQUEST_METRICS + LIVE_METRICS:
        assert spec.name in found.families, f"{spec.name} missing from /metrics"
        assert found.families[spec.name].type == spec.kind
    assert found.value("tadastream_stream_slots") == 2 and found.value("tadastream_queue_limit") == 4
    assert found.value("tadastream_stream_slots_free") == 2 and found.value("tadastream_streams_active") == 0
    assert found.value("tadastream_voices", source="builtin") == 1
    phases = {s.labels["phase"] for s in found.families["tadastream_engine_seconds"].samples}
    assert phases == {"llm", "flow", "logits", "programs", "decode"}
    assert found.value("tadastream_kv_cache_allocated_bytes") >= found.value("tadastream_kv_cache_in_use_bytes") == 0

    with server.client() as c:  # what a Prometheus server asks for first
        res = c.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert res.headers["content-type"].startswith("application/openmetrics-text") and res.text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(res.text)}
    assert {"tadastream_requests", "tadastream_time_to_first_audio_seconds", "tadastream_engine_ticks"} <= names


def test_a_speech_request_moves_its_counters_by_one(server):
    ok = dict(route=SPEECH, method="POST", status="200", outcome="ok")
    before = scrape(server)
    with server.client() as c:
        res = c.post(SPEECH, json={"input": SHORT, "seed": 3, "response_format": "pcm"})
    assert res.status_code == 200
    after = wait_for(server, "tadastream_requests_total", before.value("tadastream_requests_total", **ok) + 1, **ok)
    for name in (
        "tadastream_time_to_first_audio_seconds_count",
        "tadastream_speech_total_seconds_count",
        "tadastream_real_time_factor_count",
        "tadastream_queue_time_seconds_count",
        "tadastream_request_duration_seconds_count",
    ):
        assert after.value(name, route=SPEECH) == before.value(name, route=SPEECH) + 1, name
    audio = after.value("tadastream_audio_seconds_total", route=SPEECH) - before.value(
        "tadastream_audio_seconds_total", route=SPEECH
    )
    assert audio == pytest.approx(len(res.content) / 2 / 24000, abs=1e-3)
    assert after.value("tadastream_engine_ticks_total") > before.value("tadastream_engine_ticks_total")
    assert after.value("tadastream_engine_llm_rows_total") > before.value("tadastream_engine_llm_rows_total")
    for phase in ("llm", "flow", "programs"):
        assert after.value("tadastream_engine_seconds_total", phase=phase) > before.value(
            "tadastream_engine_seconds_total", phase=phase
        )
    rtf = after.value("tadastream_real_time_factor_sum", route=SPEECH) - before.value(
        "tadastream_real_time_factor_sum", route=SPEECH
    )
    assert 0 < rtf < 10


def test_refusals_and_unknown_paths_are_counted_without_new_series(server):
    refused = dict(route=SPEECH, method="POST", status="400", outcome="empty_input")  # the refusal's code
    before = scrape(server)
    with server.client() as c:
        assert c.post(SPEECH, json={"input": "   ", "seed": 1}).status_code == 400
        for path in ("/wp-admin/setup.php", "/.env", "/v1/nothing/here"):
            assert c.get(path).status_code == 404
        assert c.request("PROPFIND", "/health").status_code == 405
    after = wait_for(
        server, "tadastream_requests_total", before.value("tadastream_requests_total", **refused) + 1, **refused
    )
    other = dict(route="other", method="GET", status="404", outcome="4xx")
    after = wait_for(
        server, "tadastream_requests_total", before.value("tadastream_requests_total", **other) + 3, **other
    )
    propfind = dict(route="/health", method="other", status="405", outcome="4xx")
    assert (
        after.value("tadastream_requests_total", **propfind)
        == before.value("tadastream_requests_total", **propfind) + 1
    )
    assert "wp-admin" not in after.text and ".env" not in after.text and "PROPFIND" not in after.text
    name = "tadastream_time_to_first_audio_seconds_count"
    assert after.value(name, route=SPEECH) == before.value(name, route=SPEECH), "no audio, no first-audio time"


def test_gauges_follow_open_websocket_streams_and_the_queue(server):
    from websockets.sync import client as ws_client
    url = server.url.replace("http", "ws") + STREAM
    cancelled = dict(route=STREAM, method="WS", status="101", outcome="cancelled")
    count_before = scrape(server).value("tadastream_requests_total", **cancelled)
    with contextlib.ExitStack() as stack:
        sessions = [
            stack.enter_context(ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None)) for _ in range(3)
        ]
        for i, ws in enumerate(sessions):
            ws.send(json.dumps({"seed": i}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            ws.send(json.dumps({"type": "text", "text": LONG + " "}))  # no "end": the stream stays open
        for ws in sessions[:2]:
            assert isinstance(ws.recv(timeout=20), bytes), "audio is flowing"
        server.wait_for(lambda s: s["active"] == 2 and s["waiting"] == 1)
        busy = scrape(server)
        assert busy.value("tadastream_streams_active") == 2 and busy.value("tadastream_stream_slots_free") == 0
        assert busy.value("tadastream_requests_queued") == 1
        assert busy.value("tadastream_engine_streams", state="running") == 2
        in_use = busy.value("tadastream_kv_cache_in_use_bytes")
        assert 0 < in_use <= busy.value("tadastream_kv_cache_allocated_bytes")

        sessions[0].send(json.dumps({"type": "cancel"}))
        while not (isinstance(m := sessions[0].recv(timeout=20), str) and json.loads(m)["type"] == "result"):
            pass
        sessions[0].close()
        server.wait_for(lambda s: s["active"] == 2 and s["waiting"] == 0)  # the queued one took the slot
        moved = wait_for(server, "tadastream_requests_total", count_before + 1, **cancelled)
        assert moved.value("tadastream_requests_queued") == 0 and moved.value("tadastream_streams_active") == 2
    server.wait_for(lambda s: s["active"] == 0 and s["waiting"] == 0)
    idle = scrape(server)
    assert idle.value("tadastream_streams_active") == 0 and idle.value("tadastream_stream_slots_free") == 2
    assert idle.value("tadastream_kv_cache_in_use_bytes") == 0


def test_voice_count_follows_the_folder(server, voices_dir):
    assert scrape(server).value("tadastream_voices", source="file") == 0
    for name in ("anna.voice", "Bob_2.voice", "default.voice", "bad name.voice", "notes.txt"):
        (voices_dir / name).write_bytes(b"")  # only the names count: a scrape never reads a voice
    found = scrape(server)
    assert found.value("tadastream_voices", source="file") == 2, "anna and Bob_2; default is the built-in voice"
    (voices_dir / "anna.voice").unlink()
    assert scrape(server).value("tadastream_voices", source="file") == 1, "the folder changed: counted again"


def test_each_app_has_its_own_registry_and_the_key_guards_metrics(demo_model, demo_voice):
    from fastapi.testclient import TestClient

    from tadastream.server.app import ServerSettings, create_app

    key = {"authorization": "Bearer k"}
    guarded = create_app(demo_model, settings=ServerSettings(api_key="k"), default_voice=demo_voice)
    public = create_app(demo_model, settings=ServerSettings(api_key="k", metrics_public=True), default_voice=demo_voice)
    with TestClient(guarded) as a, TestClient(public) as b:
        for _ in range(3):
            assert a.get("/v1/models", headers=key).status_code == 200
        assert b.get("/v1/models", headers=key).status_code == 200
        assert a.get("/metrics").status_code == 401, "a key-protected server protects /metrics too"
        counts = Scrape(a.get("/metrics", headers=key).text), Scrape(b.get("/metrics").text)
    models = dict(route="/v1/models", method="GET", status="200", outcome="ok")
    assert [c.value("tadastream_requests_total", **models) for c in counts] == [3, 1]
    assert counts[0].value("tadastream_requests_total", route="/metrics", status="401", outcome="invalid_api_key") == 1


def test_records_become_bounded_labels(demo_model, demo_voice):
    from tadastream.server.app import ServerSettings, create_app

    app = create_app(demo_model, settings=ServerSettings(), default_voice=demo_voice)
    app.state.service.shutdown()  # only its routes and metrics are used
    metrics = app.state.metrics

    def labels(**record) -> dict[str, str]:
        return metrics.observations({"method": "GET", "path": "/", "status": 200, **record})[0][1]

    assert labels(path="/v1/voices/anna", method="DELETE", status=204)["route"] == "/v1/voices/{name}"
    assert labels(path=STREAM, method="WS", status=101, outcome="ok")["route"] == STREAM
    assert labels(path=STREAM, method="GET", status=404)["route"] == "other", "the WebSocket route answers no GET"
    assert labels(path="/x", method="PROPFIND", status=None) == {
        "route": "other",
        "method": "other",
        "status": "none",
        "outcome": "no_response",
    }
    assert labels(status=503, outcome="Robert'); DROP TABLE")["outcome"] == "5xx", "only code-like outcomes"
    speech = metrics.observations(
        {"method": "POST", "path": SPEECH, "status": 200, "outcome": "disconnected", "duration_ms": 50.0}
        | {"time_to_first_audio": 0.2, "total_time": 0.9, "real_time_factor": 0.3, "audio_seconds": 1.5}
    )
    names = [spec.name for spec, _, _ in speech]
    assert "tadastream_time_to_first_audio_seconds" in names and "tadastream_audio_seconds" in names
    assert "tadastream_speech_total_seconds" not in names, "a cut-off request's total time is not a generation's"
