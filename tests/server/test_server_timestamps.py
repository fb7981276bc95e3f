"""Word timestamps over the wire: SSE events, the WebSocket's messages and the JSON endpoint."""

from __future__ import annotations

import base64
import json

import pytest

from tadastream.config import SAMPLE_RATE
from tadastream.demo import build_demo_model, demo_voice
from tests.helpers.server_harness import demo_server

TEXT = "Captions follow the voice — word by word, exactly. Interrupted agents know what was heard!"
SEED = 21


@pytest.fixture(scope="module")
def server():
    with demo_server(max_streams=2) as live:
        yield live


@pytest.fixture(scope="module")
def library_words():
    """The words generate() gives in-process for the same text and seed (the server's default voice)."""
    model = build_demo_model()
    out = model.generate(demo_voice(model), TEXT, seed=SEED)
    return [w.to_dict() for w in out.words[0]], out.audio[0].numel()


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def check_before_their_audio(sequence: list[tuple[str, object]], total_words: list[dict]) -> None:
    """Every word was announced before all of its audio had been sent."""
    sent = 0
    announced = []
    for kind, item in sequence:
        if kind == "words":
            for word in item:
                assert sent < round(word["end"] * SAMPLE_RATE), (word, sent)
                announced.append(word)
        else:
            sent += item
    assert announced == total_words


def test_sse_timestamp_events_come_before_the_audio_they_describe(server, library_words):
    words, samples = library_words
    with server.client() as c:
        body = {"input": TEXT, "seed": SEED, "response_format": "pcm", "stream_format": "sse", "timestamps": True}
        res = c.post("/v1/audio/speech", json=body)
    assert res.status_code == 200, res.text
    events = sse_events(res.text)
    assert {e["type"] for e in events} == {"speech.audio.delta", "speech.audio.timestamps", "speech.audio.done"}
    sequence = [
        ("words", e["words"])
        if e["type"] == "speech.audio.timestamps"
        else ("audio", len(base64.b64decode(e["audio"])) // 2)
        for e in events
        if e["type"] != "speech.audio.done"
    ]
    check_before_their_audio(sequence, words)
    assert sum(n for kind, n in sequence if kind == "audio") == samples
    assert [e["type"] for e in events].count("speech.audio.timestamps") >= 2, "timestamps are streamed, not batched"
    # without the flag the stream is as before
    with server.client() as c:
        plain = sse_events(c.post("/v1/audio/speech", json={**body, "timestamps": False}).text)
    assert "speech.audio.timestamps" not in {e["type"] for e in plain}


def test_with_timestamps_endpoint_returns_audio_words_and_characters(server, library_words):
    words, samples = library_words
    with server.client() as c:
        res = c.post("/v1/audio/speech/with-timestamps", json={"input": TEXT, "seed": SEED, "response_format": "pcm"})
        pcm = c.post("/v1/audio/speech", json={"input": TEXT, "seed": SEED, "response_format": "pcm"}).content
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    body = res.json()
    assert base64.b64decode(body["audio"]) == pcm and body["sample_rate"] == SAMPLE_RATE
    assert body["words"] == words and words[-1]["end"] == pytest.approx(samples / SAMPLE_RATE)
    assert all(TEXT[w["char_start"] : w["char_end"]] == w["word"] for w in body["words"])
    chars = body["characters"]
    assert chars and all(TEXT[c["index"]] == c["char"] for c in chars)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(chars, chars[1:]))


@pytest.mark.parametrize(
    "path, extra, param",
    [
        ("/v1/audio/speech", {"timestamps": True}, "timestamps"),  # plain audio has nowhere to put them
        ("/v1/audio/speech", {"timestamps": "yes"}, "timestamps"),
        ("/v1/audio/speech/with-timestamps", {"stream_format": "sse"}, "stream_format"),
    ],
)
def test_timestamp_requests_that_cannot_work_are_400(server, path, extra, param):
    with server.client() as c:
        res = c.post(path, json={"input": TEXT, **extra})
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param


def ws_session(server, pieces: list[str], seed: int) -> list:
    """A WebSocket session with timestamps: ``pieces`` sent, then ``end``; what came back in order,
    ``("audio", samples)`` for audio and the parsed message otherwise, up to ``result`` or ``error``."""
    from websockets.sync import client as ws_client
    received = []
    with ws_client.connect(server.url.replace("http", "ws") + "/v1/audio/stream", proxy=None) as ws:
        ws.send(json.dumps({"seed": seed, "timestamps": True}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for piece in pieces:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "end"}))
        while not received or isinstance(received[-1], tuple) or received[-1]["type"] not in ("result", "error"):
            message = ws.recv(timeout=60)
            received.append(("audio", len(message) // 2) if isinstance(message, bytes) else json.loads(message))
    return received


def test_websocket_timestamp_messages_interleave_with_the_audio(server, library_words):
    words, samples = library_words
    received = ws_session(server, [TEXT[i : i + 7] for i in range(0, len(TEXT), 7)], SEED)
    sequence = [
        m if isinstance(m, tuple) else ("words", m["words"])
        for m in received
        if isinstance(m, tuple) or m["type"] == "timestamps"
    ]
    finals = [m["type"] for m in received if not isinstance(m, tuple) and m["type"] != "timestamps"]
    assert finals == ["audio.done", "result"]
    check_before_their_audio(sequence, words)  # text in pieces: the same words as the whole text
    assert sum(n for kind, n in sequence if kind == "audio") == samples
