"""``--first-audio-boost`` on a live server: a request that joins a playing one gets boost passes, the
engine counts them in /metrics, and neither request's audio changes."""

from __future__ import annotations

import argparse
import concurrent.futures

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tadastream.server import add_serve_arguments
from tadastream.server.app import ServerSettings, create_app
from tests.helpers.server_harness import LiveServer

from .test_realtime_admission import MEDIUM, PCM_BYTES_PER_SECOND, SHORT, SPEECH


def boost_count(client) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return sum(s.value for s in families["tadastream_engine_boost_passes"].samples)


def join_a_playing_request(demo, policy: str) -> tuple[bytes, bytes, int, float]:
    """(audio of the playing request, of the one that joined it, the engine's boost passes, /metrics' count)."""
    model, voice = demo
    app = create_app(model, settings=ServerSettings(max_streams=2, first_audio_boost=policy), default_voice=voice)
    assert app.state.service.engine.first_audio_boost == policy
    with LiveServer(app) as live, live.client() as client:
        with client.stream("POST", SPEECH, json={"input": MEDIUM, "seed": 1, "response_format": "pcm"}) as first:
            assert first.status_code == 200
            parts = first.iter_bytes()
            playing = next(parts)
            while len(playing) < 0.2 * PCM_BYTES_PER_SECOND:  # heard: the engine knows its first audio
                playing += next(parts)

            def joiner() -> bytes:
                with live.client() as other:
                    res = other.post(SPEECH, json={"input": SHORT, "seed": 2, "response_format": "pcm"})
                    assert res.status_code == 200, res.text
                    return res.content

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                joined = pool.submit(joiner)
                playing += b"".join(parts)
                joined_audio = joined.result(timeout=120)
        return playing, joined_audio, app.state.service.engine.boost_passes, boost_count(client)


def test_a_request_joining_a_playing_one_is_boosted_and_both_sound_the_same(demo):
    boosted = join_a_playing_request(demo, "always")
    plain = join_a_playing_request(demo, "off")
    assert boosted[2] > 0 and boosted[3] == boosted[2], "the joiner got boost passes, and /metrics counts them"
    assert plain[2] == plain[3] == 0
    assert boosted[0] == plain[0] and boosted[1] == plain[1], "the boost changes when audio comes, never what"


def test_the_boost_flag_and_its_check():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).first_audio_boost == "guarded"
    assert parser.parse_args(["--first-audio-boost", "off"]).first_audio_boost == "off"
    with pytest.raises(ValueError, match="--first-audio-boost must be one of guarded, always, off"):
        ServerSettings(first_audio_boost="eager")


def test_a_service_sets_the_policy_of_the_engine_it_serves_from(demo):
    from tadastream.service import SpeechService

    model, _ = demo
    service = SpeechService(model, max_streams=1, first_audio_boost="off")
    try:
        assert service.engine.first_audio_boost == "off"
    finally:
        service.shutdown()
    with pytest.raises(ValueError, match="first_audio_boost must be one of"):
        SpeechService(model, max_streams=1, first_audio_boost="sometimes")
