"""``--admission realtime`` on a live server (uvicorn on 127.0.0.1, the demo model).

The demo model is far faster than real time here, so one test slows every LLM call by a known
cost per stream row that the engine really pays and the capacity model learns from its tick log:
one stream then stays well ahead of playback and two would fall behind.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tadastream.server import add_serve_arguments
from tadastream.server.app import ServerSettings, create_app
from tests.helpers.server_harness import LiveServer
from tests.helpers.slow import slow_llm

SPEECH = "/v1/audio/speech"
SHORT = "Hello there, how are you today?"
MEDIUM = " ".join(["This sentence keeps a stream busy for a good while."] * 2)
PCM_BYTES_PER_SECOND = 2 * 24000


def realtime_app(demo, **settings):
    model, voice = demo
    return create_app(model, settings=ServerSettings(admission="realtime", **settings), default_voice=voice)


def error_of(res: httpx.Response) -> dict:
    return res.json()["error"]


def test_the_stream_that_would_fall_behind_queues_then_429_while_the_running_one_stays_real_time(demo):
    # A demo stream settles 0.12-0.16 s of audio a step (2 rows). One stream: ticks of 0.08 s and a
    # little, real time with the 1.25 margin; two: 0.16 s and more, behind playback even without it.
    app = realtime_app(demo, max_streams=4, queue=1, queue_timeout=60)
    slow_llm(app.state.service.engine, per_row=0.04)
    with LiveServer(app) as live, live.client() as client:
        started = time.perf_counter()
        with client.stream("POST", SPEECH, json={"input": MEDIUM, "seed": 1, "response_format": "pcm"}) as first:
            assert first.status_code == 200
            parts = first.iter_bytes()
            heard = 0
            while heard < 1.5 * PCM_BYTES_PER_SECOND:  # enough audio for the model to know its rate
                heard += len(next(parts))

            def second_request() -> httpx.Response:
                with live.client() as other:
                    return other.post(SPEECH, json={"input": SHORT, "seed": 2, "response_format": "pcm"})

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                second = pool.submit(second_request)
                live.wait_for(lambda s: s["waiting"] == 1)
                busy = live.health()
                assert busy["streams"]["active"] == 1, "three slots free, yet the second request waits"
                assert busy["admission"]["capacity"] <= 1, busy
                fit = busy["admission"]["tick_seconds"]
                assert fit["ticks"] > 5 and 0.08 <= 2 * fit["per_row"] + fit["intercept"] < 0.16, fit

                third = client.post(SPEECH, json={"input": SHORT, "seed": 3})
                assert third.status_code == 429 and error_of(third)["code"] == "queue_full"
                assert "real-time capacity" in error_of(third)["message"]
                # no stream has finished yet: 5 s each, one waiting ahead, one stream at a time
                assert third.headers["retry-after"] == "10"

                for part in parts:
                    heard += len(part)
                elapsed = time.perf_counter() - started
                later = second.result(timeout=60)
    audio = heard / PCM_BYTES_PER_SECOND
    assert audio / elapsed > 1, f"{audio:.2f} s of audio took {elapsed:.2f} s: the running stream fell behind"
    assert later.status_code == 200 and len(later.content) > PCM_BYTES_PER_SECOND // 2, "admitted once room came"


def test_at_full_speed_realtime_admission_fills_every_slot_and_exports_its_capacity(demo):
    app = realtime_app(demo, max_streams=3, queue=0, queue_timeout=5)
    with LiveServer(app) as live, live.client() as client:
        assert live.health()["admission"]["capacity"] is None, "nothing learned before the first tick"
        learned = client.post(SPEECH, json={"input": SHORT, "seed": 1, "response_format": "pcm"})
        assert learned.status_code == 200
        health = live.health()["admission"]
        assert health["policy"] == "realtime" and health["margin"] == 1.25 and health["capacity"] >= 3, health

        with contextlib.ExitStack() as stack:  # no queue: any request the model turned away would be a 429
            for seed in range(3):
                res = stack.enter_context(
                    client.stream("POST", SPEECH, json={"input": MEDIUM, "seed": seed, "response_format": "pcm"})
                )
                assert res.status_code == 200, res.read()
            live.wait_for(lambda s: s["active"] == 3)
            full = client.post(SPEECH, json={"input": SHORT})
            assert full.status_code == 429 and error_of(full)["message"].startswith("all 3 streams are busy")

        scraped = client.get("/metrics")
        assert scraped.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
        (capacity,) = families["tadastream_realtime_capacity_streams"].samples
        assert capacity.value >= 3
        terms = {s.labels["term"]: s.value for s in families["tadastream_engine_tick_fit_seconds"].samples}
        assert set(terms) == {"intercept", "per_row"} and terms["per_row"] > 0 and terms["intercept"] >= 0


def test_slots_admission_shows_its_policy_and_no_realtime_figures(demo_model, demo_voice):
    from fastapi.testclient import TestClient

    app = create_app(demo_model, settings=ServerSettings(), default_voice=demo_voice)
    with TestClient(app, base_url="http://localhost") as client:  # a loopback name: no Host refusal
        assert client.get("/health").json()["admission"] == {"policy": "slots"}
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["tadastream_realtime_capacity_streams"].samples == []
    assert families["tadastream_engine_tick_fit_seconds"].samples == []


def test_the_admission_flags_and_their_checks():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    opts = parser.parse_args(["--admission", "realtime", "--realtime-margin", "1.5"])
    assert (opts.admission, opts.realtime_margin) == ("realtime", 1.5)
    assert parser.parse_args([]).admission == "slots"
    with pytest.raises(ValueError, match="--admission must be one of slots, realtime"):
        ServerSettings(admission="fast")
    with pytest.raises(ValueError, match="--realtime-margin must be a number >= 1"):
        ServerSettings(admission="realtime", realtime_margin=0.8)
