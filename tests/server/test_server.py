"""The speech server end to end: a real uvicorn on 127.0.0.1 (free port) serving the demo model."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import gc
import io
import json
import logging
import socket
import struct
import time

import httpx
import pytest
import soundfile
import torch

from tadastream.audio import float_to_pcm16, load_audio
from tadastream.drivers.stream import AudioStream
from tadastream.model import generate
from tadastream.server.app import ServerSettings, create_app
from tests.helpers.server_harness import LiveServer

SHORT = "Hello there, how are you today?"
LONG = " ".join(["This sentence keeps the only stream busy for a good while."] * 40)
KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    model, voice = demo
    settings = ServerSettings(
        max_streams=8, queue=8, voices_dir=str(tmp_path_factory.mktemp("voices")), max_voice_bytes=1 << 20
    )
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


@pytest.fixture(scope="module")
def tight(demo):
    """One stream, one queue place, a short queue timeout and an API key."""
    model, voice = demo
    settings = ServerSettings(max_streams=1, queue=1, queue_timeout=0.5, api_key=KEY, max_input_chars=3000)
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


def speak(client: httpx.Client, text: str, seed: int, **body) -> bytes:
    res = client.post("/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm", **body})
    assert res.status_code == 200, res.text
    return res.content


def reference_pcm(demo, text: str, seed: int) -> bytes:
    """What the library gives in-process after torch.manual_seed(seed)."""
    model, voice = demo
    torch.manual_seed(seed)
    with generate(model, voice, text, stream=True) as stream:
        return b"".join(float_to_pcm16(chunk) for chunk, _ in stream)


def error_of(res: httpx.Response) -> dict:
    body = res.json()
    assert set(body) == {"error"} and {"message", "type"} <= set(body["error"]), body
    assert "Traceback" not in res.text
    return body["error"]


def test_info_endpoints_and_page(server):
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/v1/models").json()["data"][0]["id"] == "demo"
        voices = c.get("/v1/voices").json()["data"]
        assert voices[0] == {"id": "default", "object": "voice", "source": "builtin", "default": True, "language": "en"}
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="play"' in page.text and 'id="ttfa"' in page.text
        assert error_of(c.get("/nope"))["type"] == "not_found_error"


def test_audio_streams_in_chunks_and_matches_the_library(server, demo):
    text = "Streaming means the first words play while the rest of this sentence is still being generated."
    arrivals, parts = [], []
    with server.client() as c:
        start = time.perf_counter()
        with c.stream("POST", "/v1/audio/speech", json={"input": text, "seed": 7, "response_format": "pcm"}) as res:
            assert res.status_code == 200
            assert res.headers["content-type"].startswith("audio/pcm") and res.headers["x-seed"] == "7"
            assert res.headers.get("transfer-encoding") == "chunked"
            for part in res.iter_raw():
                arrivals.append(time.perf_counter() - start)
                parts.append(part)
    pcm = b"".join(parts)
    first, total = arrivals[0], arrivals[-1]
    print(f"\npcm stream: {len(parts)} reads, first audio {first * 1000:.0f} ms, total {total * 1000:.0f} ms, "
          f"{len(pcm) / 48000:.2f} s of audio")  # fmt: skip
    assert len(parts) >= 4, "the audio should arrive in several chunks"
    assert first < 0.5 * total, f"first chunk at {first:.3f} s is not well before the end ({total:.3f} s)"
    assert pcm == reference_pcm(demo, text, 7), "same seed must give the library's audio, bit for bit"

    with server.client() as c:  # wav: the streaming header, then the same samples
        res = c.post("/v1/audio/speech", json={"input": text, "seed": 7, "response_format": "wav"})
    assert res.headers["content-type"] == "audio/wav"
    riff, size, wave = struct.unpack("<4sI4s", res.content[:12])
    assert (riff, size, wave) == (b"RIFF", 0xFFFFFFFF, b"WAVE") and res.content[44:] == pcm


def test_concurrent_requests_match_sequential(server):
    jobs = [("Good morning to you." if i % 2 else "See you very soon!", 100 + i) for i in range(8)]
    with server.client() as c:
        sequential = [speak(c, text, seed) for text, seed in jobs]
    spans = {}

    def one(i):
        with server.client() as c:
            t0 = time.perf_counter()
            out = speak(c, *jobs[i])
            spans[i] = (t0, time.perf_counter())
            return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_out = list(pool.map(one, range(8)))
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), "requests did not overlap"
    for i, (a, b) in enumerate(zip(sequential, concurrent_out)):
        assert a == b, f"request {i}: concurrent audio differs from the same request alone"
    assert sequential[0] != sequential[2], "different seeds should give different audio"


def test_disconnect_frees_the_slot(tight, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    auth = {"Authorization": f"Bearer {KEY}"}
    with tight.client(headers=auth) as c:
        with c.stream("POST", "/v1/audio/speech", json={"input": LONG, "response_format": "pcm"}) as res:
            assert res.status_code == 200
            chunks = res.iter_raw()  # keep the iterator: dropping it would close the connection
            next(chunks)  # audio is flowing
            assert tight.health()["streams"]["active"] == 1
            # leaving the block hangs up mid-stream
        hung_up = time.monotonic()
        tight.wait_for(lambda s: s["active"] == 0)
        freed_after = time.monotonic() - hung_up
        assert len(speak(c, SHORT, 1)) > 0  # max-streams 1: only possible if the slot came back
    print(f"\nslot freed {freed_after * 1000:.0f} ms after the disconnect")
    assert freed_after < 2.0, "the slot should come back within a step or two of the disconnect"
    gc.collect()
    alive = [s for s in gc.get_objects() if type(s) is AudioStream and not s.finished]
    assert not alive, "a closed stream still holds its KV cache"
    records = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    gone = [r for r in records if r.get("outcome") == "disconnected"]
    assert gone and gone[0]["audio_seconds"] < 20, "generation should stop soon after the disconnect"
    assert all({"status", "duration_ms", "request_id", "path"} <= set(r) for r in records)


def test_queue_full_gives_429_and_waiting_too_long_503(tight):
    auth = {"Authorization": f"Bearer {KEY}"}
    with tight.client(headers=auth) as c:
        with c.stream("POST", "/v1/audio/speech", json={"input": LONG, "response_format": "pcm"}) as busy:
            chunks = busy.iter_raw()
            next(chunks)

            def queued():
                with tight.client(headers=auth) as other:
                    return other.post("/v1/audio/speech", json={"input": SHORT})

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(queued)
                tight.wait_for(lambda s: s["waiting"] == 1)
                full = c.post("/v1/audio/speech", json={"input": SHORT})
                timed_out = waiting.result(timeout=30)
    assert full.status_code == 429 and full.headers["retry-after"] and error_of(full)["code"] == "queue_full"
    assert timed_out.status_code == 503 and int(timed_out.headers["retry-after"]) >= 1
    assert error_of(timed_out)["code"] == "queue_timeout"
    tight.wait_for(lambda s: s["active"] == 0 and s["waiting"] == 0)


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"input": "x" * 3001}, 400, "input_too_long"),
        ({"input": "   "}, 400, "empty_input"),
        ({"input": "hi", "voice": "../../etc/passwd"}, 400, "invalid_voice_name"),
        ({"input": "hi", "voice": "nobody"}, 400, "voice_not_found"),
        ({"input": "hi", "response_format": "aiff"}, 400, "unsupported_format"),
        ({"input": "hi", "stream_format": "sse", "response_format": "aiff"}, 400, "unsupported_format"),
        ({"input": "hi", "stream_format": "chunks"}, 400, "invalid_request"),
        ({"input": "hi", "speed": 9}, 400, "invalid_speed"),
        ({"input": "hi", "seed": -1}, 400, "invalid_seed"),
        ({"input": "hi", "options": {"num_flow_matching_steps": 10000}}, 400, "invalid_option"),
        ({"input": "hi", "options": {"nonsense": 1}}, 400, "invalid_option"),
        ({"voice": "alloy"}, 400, "invalid_request"),
        # strict types: these were accepted (or failed with Python's own message, or a 500)
        ({"input": "hi", "options": {"noise_temperature": 1e308}}, 400, "invalid_option"),
        ({"input": "hi", "options": {"text_do_sample": "no"}}, 400, "invalid_option"),
        ({"input": "hi", "options": {"text_temperature": "hot"}}, 400, "invalid_option"),
        ({"input": "hi", "options": {"num_acoustic_candidates": True}}, 400, "invalid_option"),
        ({"input": "hi", "seed": True}, 400, "invalid_request"),
        ({"input": "hi", "speed": True}, 400, "invalid_request"),
        ({"input": "hi", "speed": "fast"}, 400, "invalid_request"),
        ({"input": "hi", "voice": {"x": 1}}, 400, "invalid_voice_name"),
        ({"input": 5}, 400, "invalid_request"),
        ({"input": "hi", "min_first_chunk_ms": -5}, 400, "invalid_first_chunk"),
        ({"input": "hi", "min_first_chunk_ms": 1e9}, 400, "invalid_first_chunk"),
        ({"input": "hi", "min_first_chunk_ms": "soon"}, 400, "invalid_request"),
        ({"input": "hi", "min_first_chunk_ms": 10**400}, 400, "invalid_request"),  # no float holds it
    ],
)
def test_bad_requests_get_clear_4xx(tight, body, status, code):
    with tight.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        res = c.post("/v1/audio/speech", json=body)
    assert res.status_code == status and error_of(res)["code"] == code
    message = error_of(res)["message"]
    assert "\n" not in message and "Traceback" not in message and "not supported between" not in message


@pytest.mark.parametrize("number", ["1e999", "NaN", "-Infinity"])
def test_non_finite_first_chunk_settings_are_a_400(tight, number):
    raw = ('{"input": "hi", "min_first_chunk_ms": ' + number + "}").encode()  # Python's JSON reads these
    with tight.client(headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"}) as c:
        res = c.post("/v1/audio/speech", content=raw)
    assert res.status_code == 400 and error_of(res)["code"] == "invalid_first_chunk"


def test_a_lone_surrogate_is_a_400(tight):
    raw = b'{"input": "hi \\ud800 there", "response_format": "pcm"}'  # valid JSON, not valid Unicode
    with tight.client(headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"}) as c:
        res = c.post("/v1/audio/speech", content=raw)
    assert res.status_code == 400 and error_of(res)["code"] == "invalid_input" and error_of(res)["param"] == "input"


def test_speech_takes_json_only(tight):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = b'{"input": "hi", "seed": 1, "response_format": "pcm"}'
    with tight.client(headers=auth) as c:
        form = c.post("/v1/audio/speech", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
        text = c.post("/v1/audio/speech", content=body, headers={"content-type": "text/plain"})
        ok = c.post("/v1/audio/speech", content=body, headers={"content-type": "application/json; charset=utf-8"})
    for res in (form, text):
        assert res.status_code == 415 and error_of(res)["code"] == "unsupported_media_type"
        assert "application/json" in error_of(res)["message"]
    assert ok.status_code == 200 and len(ok.content) > 0


def test_websocket_refuses_a_lone_surrogate(server):
    from websockets.sync import client as ws_client
    url = server.url.replace("http", "ws") + "/v1/audio/stream"
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send('{"type": "text", "text": "hello \\ud800"}')
        reply = json.loads(ws.recv(timeout=30))
    assert reply["type"] == "error" and reply["error"]["code"] == "invalid_input"


def test_websocket_refuses_a_bad_first_chunk_setting_before_ready(server):
    from websockets.sync import client as ws_client
    url = server.url.replace("http", "ws") + "/v1/audio/stream"
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 1, "min_first_chunk_ms": -1}))
        reply = json.loads(ws.recv(timeout=30))
    assert reply["type"] == "error" and reply["error"]["code"] == "invalid_first_chunk"
    assert reply["error"]["param"] == "min_first_chunk_ms" and "between 0 and" in reply["error"]["message"]
    for hostile in ("1e999", str(10**400), "NaN"):  # JSON that Python reads as inf, a huge int, NaN
        with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
            ws.send('{"seed": 1, "min_first_chunk_ms": ' + hostile + "}")
            reply = json.loads(ws.recv(timeout=30))
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_first_chunk", (hostile, reply)


def test_api_key_and_body_limit(tight):
    with tight.client() as c:
        assert c.get("/health").status_code == 200  # health stays open for load balancers
        missing = c.post("/v1/audio/speech", json={"input": "hi"})
        wrong = c.post("/v1/audio/speech", json={"input": "hi"}, headers={"Authorization": "Bearer nope"})
        huge = c.post(
            "/v1/audio/speech",
            content=b'{"input": "' + b"x" * 400_000 + b'"}',
            headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )
    for res in (missing, wrong):
        assert res.status_code == 401 and error_of(res)["type"] == "authentication_error"
    assert huge.status_code == 413 and error_of(huge)["code"] == "body_too_large"


def test_openai_client_streams_a_file(server, tmp_path):
    import openai
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", http_client=httpx.Client(trust_env=False), max_retries=0
    )
    target = tmp_path / "speech.wav"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SHORT, response_format="wav", extra_body={"seed": 5}
    ) as res:
        res.stream_to_file(target)
    data = target.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with server.client() as c:
        assert data[44:] == speak(c, SHORT, 5), "the OpenAI client got the same samples as a plain request"
    flac = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SHORT, response_format="flac", extra_body={"seed": 5}
    )
    audio, rate = load_audio(flac.content)  # a streamed FLAC gives no length; soundfile.read cannot take it
    assert rate == 24000 and float_to_pcm16(audio[0]) == data[44:], "FLAC is lossless: the same samples"


def test_sse_events(server):
    with server.client() as c:
        res = c.post("/v1/audio/speech", json={"input": SHORT, "seed": 9, "stream_format": "sse"})
        plain = speak(c, SHORT, 9)
    assert res.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in res.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain
    timings = events[-1]["timings"]
    assert 0 < timings["time_to_first_audio"] <= timings["time_to_playable_audio"] <= timings["total_time"]
    assert timings["stall_count"] >= 0 and timings["stall_time"] >= 0


def test_first_chunk_policy_moves_only_chunk_boundaries(server):
    """0 sends the decoder's first samples at once (a crumb of a few ms); a fixed hold gathers at least
    that much first; the audio is the same bytes either way."""

    def deltas(**body) -> list[bytes]:
        with server.client() as c:
            res = c.post("/v1/audio/speech", json={"input": SHORT, "seed": 9, "stream_format": "sse", **body})
        assert res.status_code == 200, res.text
        events = [json.loads(line[6:]) for line in res.text.splitlines() if line.startswith("data: ")]
        return [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]

    earliest, held, adaptive = deltas(min_first_chunk_ms=0), deltas(min_first_chunk_ms=400), deltas()
    ms = [len(chunks[0]) / 2 / 24 for chunks in (earliest, held, adaptive)]  # PCM16 at 24 kHz
    assert ms[0] < 20 and ms[1] >= 400, ms
    assert b"".join(earliest) == b"".join(held) == b"".join(adaptive)


def test_websocket_round_trip(server):
    from websockets.sync import client as ws_client
    url = server.url.replace("http", "ws") + "/v1/audio/stream"
    frames, messages = [], []
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 11, "voice": "alloy"}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["sample_rate"] == 24000 and ready["seed"] == 11
        for piece in ("Hello there, ", "how are you today?"):  # text may come in several messages
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "end"}))
        for _ in range(10_000):
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                frames.append(message)
                continue
            messages.append(json.loads(message))
            if messages[-1]["type"] == "result":
                break
    assert [m["type"] for m in messages] == ["audio.done", "result"]
    result = messages[-1]
    assert 0 < result["time_to_first_audio"] <= result["total_time"] and result["seed"] == 11
    assert result["time_to_first_audio"] <= result["time_to_playable_audio"] <= result["total_time"]
    assert isinstance(result["stall_count"], int) and result["stall_time"] >= 0
    assert len(frames) >= 2 and messages[0]["samples"] * 2 == sum(len(f) for f in frames)
    with server.client() as c:
        assert b"".join(frames) == speak(c, SHORT, 11), "WebSocket and HTTP give the same audio"

    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:  # cancel mid-stream
        ws.send(json.dumps({"seed": 1}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": LONG}))
        ws.send(json.dumps({"type": "end"}))
        assert isinstance(ws.recv(timeout=60), bytes)
        ws.send(json.dumps({"type": "cancel"}))
        for _ in range(10_000):
            message = ws.recv(timeout=60)
            if isinstance(message, str) and json.loads(message)["type"] == "result":
                break
        result = json.loads(message)
        assert result["cancelled"] is True and result["audio_seconds"] < 20

    with ws_client.connect(url, open_timeout=10, proxy=None) as ws:  # errors are JSON, then a close
        ws.send(json.dumps({"voice": "../x"}))
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"]["code"] == "invalid_voice_name"


def test_voice_upload(server, demo, tmp_path):
    model, voice = demo
    path = tmp_path / "mine.voice"
    voice.save(path)
    data = path.read_bytes()
    with server.client() as c:
        res = c.post("/v1/voices", data={"name": "mine"}, files={"file": ("mine.voice", data)})
        assert res.status_code == 201, res.text  # 501: python-multipart (in the test extra) is missing
        assert res.json()["id"] == "mine"
        assert "mine" in [v["id"] for v in c.get("/v1/voices").json()["data"]]
        # the uploaded file holds the demo voice, so it must speak exactly like the default voice
        assert speak(c, SHORT, 3, voice="mine") == speak(c, SHORT, 3)

        again = c.post("/v1/voices", data={"name": "mine"}, files={"file": ("mine.voice", data)})
        assert again.status_code == 409
        bad_name = c.post("/v1/voices", data={"name": "../evil"}, files={"file": ("x.voice", data)})
        assert bad_name.status_code == 400 and error_of(bad_name)["code"] == "invalid_voice_name"
        junk = c.post("/v1/voices", data={"name": "junk"}, files={"file": ("junk.voice", b"not a voice")})
        assert junk.status_code == 400 and error_of(junk)["code"] == "invalid_voice_file"
        wav = c.post(
            "/v1/voices", data={"name": "fromwav", "transcript": "hi"}, files={"audio": ("a.wav", b"RIFF....")}
        )
        assert wav.status_code == 415 and error_of(wav)["code"] == "encoder_unavailable"
        too_big = c.post("/v1/voices", data={"name": "big"}, files={"file": ("big.voice", b"\0" * (2 << 20))})
        assert too_big.status_code == 413


def test_damaged_voice_uploads_are_refused_before_they_are_stored(server, demo, tmp_path):
    """NaN values, ids outside the vocabulary or positions out of order used to be stored (201),
    then failed with 500 on every use."""
    import dataclasses

    model, voice = demo
    vocab = model.config.vocab_size
    damaged = {
        "nan": dataclasses.replace(voice, token_values=voice.token_values.clone().fill_(float("nan"))),
        "vocab": dataclasses.replace(voice, text_tokens=voice.text_tokens.clone().fill_(vocab + 5)),
        "order": dataclasses.replace(voice, token_positions=voice.token_positions.flip(1).clone()),
    }
    with server.client() as c:
        for name, bad in damaged.items():
            path = bad.save(tmp_path / f"{name}.voice")
            res = c.post("/v1/voices", data={"name": name}, files={"file": (path.name, path.read_bytes())})
            assert res.status_code == 400, (name, res.text)
            err = error_of(res)
            assert err["code"] == "invalid_voice_file" and "encode-voice" in err["message"], err
            assert name not in [v["id"] for v in c.get("/v1/voices").json()["data"]]
        assert (
            "vocabulary"
            in error_of(
                c.post(
                    "/v1/voices",
                    data={"name": "v"},
                    files={"file": ("v.voice", (tmp_path / "vocab.voice").read_bytes())},
                )
            )["message"]
        )


def test_wav_upload_goes_through_the_encoder(server, demo):
    model, voice = demo
    calls = []

    def fake_encoder(audio, text, sample_rate, generator):  # stands in for tadastream.codec.encoder.Encoder
        calls.append((tuple(audio.shape), text, sample_rate, generator.get_state(), torch.get_rng_state()))
        return voice

    global_state = torch.get_rng_state()

    tone = 0.3 * torch.sin(torch.arange(16000) * 0.05)
    wav = io.BytesIO()
    soundfile.write(wav, tone.numpy(), 16000, format="WAV")
    app = server.app
    app.state.encoder, limit = fake_encoder, app.state.settings.max_voice_seconds
    try:
        with server.client() as c:
            form = {"name": "fromwav", "transcript": "a steady tone"}
            res = c.post("/v1/voices", data=form, files={"audio": ("tone.wav", wav.getvalue())})
            assert res.status_code == 201, res.text  # 501: python-multipart (in the test extra) is missing
            assert "fromwav" in [v["id"] for v in c.get("/v1/voices").json()["data"]]
            no_text = c.post("/v1/voices", data={"name": "x"}, files={"audio": ("tone.wav", wav.getvalue())})
            assert no_text.status_code == 400 and error_of(no_text)["code"] == "missing_transcript"
            app.state.settings.max_voice_seconds = 0.5
            too_long = c.post("/v1/voices", data={**form, "name": "y"}, files={"audio": ("tone.wav", wav.getvalue())})
            assert too_long.status_code == 413 and error_of(too_long)["code"] == "voice_too_long"
    finally:
        app.state.encoder, app.state.settings.max_voice_seconds = None, limit
    assert calls[0][:3] == ((16000,), "a steady tone", 16000)
    # the encoder draws its noise from a generator seeded for the upload (seed 0); the global RNG is untouched
    assert torch.equal(calls[0][3], torch.Generator().manual_seed(0).get_state())
    assert torch.equal(calls[0][4], global_state)


# -- incremental text over the WebSocket --------------------------------------------------------
INCREMENTAL = (
    "Streaming text in word by word lets the server start speaking early; the rest of this rather long "
    "sentence arrives while the first words are already being turned into audio, and nothing changes."
)


def ws_speak(server, pieces, seed: int, *, delay: float = 0.0, first_audio_before: int | None = None):
    """(pcm, final messages, times) for pieces sent one message each; times has the seconds from the
    first text message to the first audio frame ("audio") and to sending "end". With
    ``first_audio_before=k`` the first k pieces go out, then the client waits for audio (which
    must come while the text is still open) before sending the rest and ``end``."""
    from websockets.sync import client as ws_client
    url = server.url.replace("http", "ws") + "/v1/audio/stream"
    frames, messages, times = [], [], {}
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": seed}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        split = len(pieces) if first_audio_before is None else first_audio_before
        start = time.perf_counter()
        for piece in pieces[:split]:
            ws.send(json.dumps({"type": "text", "text": piece}))
            time.sleep(delay)
        if first_audio_before is not None:
            frames.append(ws.recv(timeout=30))
            times["audio"] = time.perf_counter() - start
            assert isinstance(frames[0], bytes), frames[0]
            for piece in pieces[split:]:
                ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "end"}))
        times["end"] = time.perf_counter() - start
        for _ in range(10_000):
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                frames.append(message)
                continue
            messages.append(json.loads(message))
            if messages[-1]["type"] in ("result", "error"):
                break
    return b"".join(frames), messages, times


def test_websocket_incremental_text_matches_one_message(server):
    words = INCREMENTAL.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    whole, done, _ = ws_speak(server, [INCREMENTAL], 5)
    assert [m["type"] for m in done] == ["audio.done", "result"]
    by_word, done, _ = ws_speak(server, pieces, 5, delay=0.01)
    assert [m["type"] for m in done] == ["audio.done", "result"]
    assert len(whole) > 48000 and by_word == whole, "word by word must give the one-message audio, bit for bit"
    with server.client() as c:
        assert whole == speak(c, INCREMENTAL, 5)


def test_websocket_audio_starts_before_end(server):
    words = INCREMENTAL.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    k = len(pieces) * 3 // 4
    pcm, done, times = ws_speak(server, pieces, 8, first_audio_before=k)
    print(f"\nfirst audio frame {times['audio'] * 1000:.0f} ms after the first text message, 'end' sent at "
          f"{times['end'] * 1000:.0f} ms ({k} of {len(pieces)} words sent before the audio)")  # fmt: skip
    assert [m["type"] for m in done] == ["audio.done", "result"] and times["audio"] < times["end"]
    assert pcm == ws_speak(server, [INCREMENTAL], 8)[0]


def test_websocket_empty_text_is_an_error_and_frees_the_slot(tight):
    from websockets.sync import client as ws_client
    url = tight.url.replace("http", "ws") + f"/v1/audio/stream?api_key={KEY}"
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 3}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "   "}))
        ws.send(json.dumps({"type": "end"}))
        error = json.loads(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"]["code"] == "empty_input", error
        assert error["status"] == 400 and "retry_after" not in error, "the HTTP status of the same refusal"
        assert error["error"]["param"] == "input"
        assert "empty" in error["error"]["message"] and "Traceback" not in json.dumps(error)
        with pytest.raises(Exception, match="1008"):
            ws.recv(timeout=10)
    tight.wait_for(lambda s: s["active"] == 0)
    with tight.client(headers={"Authorization": f"Bearer {KEY}"}) as c:  # the one slot is free again
        assert len(speak(c, SHORT, 3)) > 0


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 4.0])
def test_every_speed_the_api_accepts_streams_whole_audio(server, speed):
    """Slow speeds used to force durations past the model's time classes (500, or a stream cut
    mid-way); now the audio is as much longer as asked, streamed to the end."""
    text = "Hello there, how are you doing today?"
    with server.client() as c:
        normal = speak(c, text, 1)
        scaled = speak(c, text, 1, speed=speed)
        with c.stream(
            "POST", "/v1/audio/speech", json={"input": text, "seed": 1, "speed": speed, "response_format": "wav"}
        ) as res:
            assert res.status_code == 200
            wav = res.read()
    assert len(scaled) / len(normal) == pytest.approx(1 / speed, rel=0.3)
    assert wav[44:] == scaled  # the whole stream arrived: same samples as the pcm response


def test_small_http_items_health_head_favicon_docs_behind_the_key(tight, server):
    with tight.client() as c:
        head = c.head("/health")
        assert head.status_code == 200 and head.content == b""
        icon = c.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
        for path in ("/openapi.json", "/docs"):  # the key is set on this server
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
    with server.client() as c:  # no key: open
        assert "/v1/audio/speech" in c.get("/openapi.json").json()["paths"]


def test_retry_after_follows_the_queue_and_how_long_streams_take():
    from tadastream.service import Admission

    adm = Admission(max_active=2, max_waiting=4, timeout=1)
    assert adm.retry_after() == 3  # no history yet: 5 s a stream, one waiting slot's turn, 2 at a time
    adm.active = 2
    adm.release(held=70.0)
    assert adm.mean_hold == 70.0 and adm.retry_after() == 35  # 70 s a stream, 2 slots
    adm.release(held=10.0)
    assert adm.mean_hold == pytest.approx(52.0)


def test_cors_preflight_works_with_a_key(demo):
    model, voice = demo
    settings = ServerSettings(api_key=KEY, cors_origins=("https://app.example",))
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live, live.client() as c:
        pre = c.options(
            "/v1/audio/speech",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        res = c.post(
            "/v1/audio/speech",
            json={"input": "Hi.", "seed": 2, "response_format": "pcm"},
            headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"},
        )
        assert res.status_code == 200 and res.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-seed" in res.headers["access-control-expose-headers"].lower()
        other = c.options(
            "/v1/audio/speech", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


# -- progressive encodings, SSE in any format ----------------------------------------------------
MEDIUM = " ".join(
    [
        "Every format leaves the server while the audio is still being made.",
        "That is what a voice agent needs: the first words play before the last are spoken.",
        "The same seed gives the same audio, whatever the container around it.",
    ]
    * 3
)


def timed_parts(client: httpx.Client, body: dict) -> tuple[list[tuple[float, bytes]], float, httpx.Response]:
    """(arrival time, bytes) of every body part, the total time, and the response."""
    start = time.perf_counter()
    parts = []
    with client.stream("POST", "/v1/audio/speech", json=body) as res:
        assert res.status_code == 200, res.read()
        for part in res.iter_raw():
            if part:
                parts.append((time.perf_counter() - start, part))
    return parts, time.perf_counter() - start, res


def test_mp3_streams_progressively_and_sse_carries_any_format(server):
    with server.client() as c:
        parts, total, res = timed_parts(c, {"input": MEDIUM, "seed": 3, "response_format": "mp3"})
        body = {"input": MEDIUM, "seed": 3, "response_format": "mp3", "stream_format": "sse"}
        sse = c.post("/v1/audio/speech", json=body)
        pcm = speak(c, MEDIUM, 3)
    first = parts[0][0]
    print(f"\nmp3: first bytes after {first * 1000:.0f} ms of {total * 1000:.0f} ms, {len(parts)} parts")
    assert res.headers["content-type"] == "audio/mpeg" and "content-length" not in res.headers
    assert first < total / 2, "the first mp3 bytes must come before half the total time"
    assert len({round(t, 2) for t, _ in parts}) >= 3, "mp3 bytes came in one burst"
    mp3 = b"".join(p for _, p in parts)
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert sse.headers["content-type"].startswith("text/event-stream") and events[-1]["type"] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == mp3, "SSE deltas carry the same mp3 bytes"
    # the mp3 decodes to the pcm response's audio (after the encoder's delay), within mp3's loss
    decoded, rate = load_audio(mp3)
    reference = torch.frombuffer(bytearray(pcm), dtype=torch.int16).float() / 32767
    assert rate == 24000 and 0 < decoded.shape[-1] - reference.numel() <= 4 * 576
    window = reference[: 24000 // 2]
    delay = min(range(4 * 576), key=lambda d: float((decoded[0, d : d + window.numel()] - window).abs().sum()))
    aligned = decoded[0, delay : delay + reference.numel()]
    assert float((aligned - reference).pow(2).mean() / reference.pow(2).mean()) < 0.1


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "ogg"])
def test_every_format_streams_and_decodes_to_the_pcm_audio(server, fmt):
    with server.client() as c:
        parts, _, res = timed_parts(c, {"input": MEDIUM, "seed": 4, "response_format": fmt})
        body = {"input": SHORT, "seed": 4, "response_format": fmt, "stream_format": "sse"}
        sse = c.post("/v1/audio/speech", json=body)
        pcm = speak(c, MEDIUM, 4)
    assert len(parts) >= 2, f"{fmt} came in one burst"
    decoded, rate = load_audio(b"".join(p for _, p in parts))
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    short, short_rate = load_audio(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))
    assert events[-1]["type"] == "speech.audio.done" and short.shape[-1] / short_rate > 0.3
    if fmt in ("wav", "flac"):
        assert float_to_pcm16(decoded[0]) == pcm, f"{fmt} is lossless: the pcm response's samples"
    else:
        assert abs(decoded.shape[-1] / rate - len(pcm) / 2 / 24000) < 0.1, "the same duration"


# -- slow or idle clients -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(demo):
    """One stream, 1 s send timeout, 1.5 s WebSocket idle timeout; the server's socket has a small send
    buffer (as under load), so a client that stops reading stalls its writes within a second or two."""
    model, voice = demo
    settings = ServerSettings(max_streams=1, queue=2, queue_timeout=30, send_timeout=1.0, ws_idle_timeout=1.5)
    with LiveServer(create_app(model, settings=settings, default_voice=voice), send_buffer=8192) as live:
        yield live


def unread_connection(server, request: bytes, then: bytes = b"") -> socket.socket:
    """A client socket with a tiny receive window that sends ``request`` and then never reads.

    With ``then``, it reads the reply's head first (a WebSocket handshake), then sends ``then``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request)
    if then:
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(then)
    return sock


def server_records(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]


def test_a_client_that_stops_reading_loses_its_slot(guarded, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    body = json.dumps({"input": LONG, "response_format": "pcm"}).encode()
    head = (
        "POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}"
    )
    stalled = unread_connection(guarded, head.encode() + b"\r\n\r\n" + body)
    try:
        guarded.wait_for(lambda s: s["active"] == 1)
        freed_after = guarded.wait_for(lambda s: s["active"] == 0, timeout=60)
        with guarded.client() as c:
            assert len(speak(c, SHORT, 1)) > 0, "the only slot serves others while the stalled client stays connected"
    finally:
        stalled.close()
    print(f"\nslot freed {freed_after:.1f} s after generation began, the client never read")
    assert any(r.get("outcome") == "stalled" for r in server_records(caplog))
    assert any("--send-timeout" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def ws_frame(payload: dict) -> bytes:
    """One masked client text frame (RFC 6455), as a browser sends it."""
    data = json.dumps(payload).encode()
    mask = b"\x01\x02\x03\x04"
    size = bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(data))
    return b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_a_websocket_that_stops_reading_loses_its_slot(guarded, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    key = base64.b64encode(b"0123456789abcdef").decode()
    handshake = (
        "GET /v1/audio/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    text = LONG[:2000]
    frames = ws_frame({"seed": 1}) + ws_frame({"type": "text", "text": text}) + ws_frame({"type": "end"})
    stalled = unread_connection(guarded, handshake, then=frames)
    try:
        guarded.wait_for(lambda s: s["active"] == 1)
        guarded.wait_for(lambda s: s["active"] == 0, timeout=60)
        # the slot is freed first; the request's log line follows once the close gave up on the client
        deadline = time.monotonic() + 10
        while not any(r.get("outcome") == "stalled" for r in server_records(caplog)):
            assert time.monotonic() < deadline, "no 'stalled' outcome was logged"
            time.sleep(0.05)
    finally:
        stalled.close()


def ws_session(server, send_piece, *, pieces: int, every: float) -> tuple[list[dict], float]:
    """Send ``send_piece(i)`` every ``every`` s (then 'end'), reading all the while: (JSON messages, seconds)."""
    from websockets.sync import client as ws_client
    messages = []
    start = time.perf_counter()
    with ws_client.connect(server.url.replace("http", "ws") + "/v1/audio/stream", proxy=None) as ws:
        ws.send(json.dumps({"seed": 2}))
        sent = 0
        while True:
            if sent < pieces and time.perf_counter() - start >= sent * every:
                ws.send(json.dumps({"type": "text", "text": send_piece(sent)}))
                sent += 1
                if sent == pieces:
                    ws.send(json.dumps({"type": "end"}))
            try:
                message = ws.recv(timeout=every / 4)
            except TimeoutError:
                continue
            except Exception:  # closed by the server
                break
            if isinstance(message, str):
                messages.append(json.loads(message))
                if messages[-1]["type"] in ("result", "error"):
                    break
    return messages, time.perf_counter() - start


def test_websocket_spaces_do_not_keep_a_session_alive(guarded):
    # one word every 0.5 s for 4 s: past the 1.5 s idle timeout in total, never idle
    words = "one two three four five six seven eight".split()
    messages, _ = ws_session(guarded, lambda i: words[i] + " ", pieces=len(words), every=0.5)
    assert messages[-1]["type"] == "result", messages[-1]
    # a word, then only spaces every 0.3 s: cut off after 1.5 s without a word
    messages, seconds = ws_session(guarded, lambda i: "Hello" if i == 0 else " ", pieces=40, every=0.3)
    assert messages[-1]["type"] == "error" and messages[-1]["error"]["code"] == "timeout", messages[-1]
    assert 1.4 < seconds < 8, seconds
    guarded.wait_for(lambda s: s["active"] == 0, timeout=5)


# -- a WebSocket waiting for a slot ----------------------------------------------------------------
@pytest.fixture(scope="module")
def one_slot(demo):
    """One stream slot and a 0.4 s WebSocket idle timeout, so a second session can wait in the queue
    several idle timeouts long."""
    model, voice = demo
    settings = ServerSettings(max_streams=1, queue=2, queue_timeout=30, ws_idle_timeout=0.4)
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


def ws_paced(server, text: str, seed: int) -> tuple[bytes, list[dict], int | None]:
    """A session that sends ``text`` at once but ``end`` only when its audio starts, as a client that
    paces its text by the audio does: (pcm, JSON messages up to 'result' or 'error', close code)."""
    from websockets.sync import client as ws_client
    frames, messages = [], []
    with ws_client.connect(server.url.replace("http", "ws") + "/v1/audio/stream", proxy=None) as ws:
        ws.send(json.dumps({"seed": seed}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": text}))
        while not messages or messages[-1]["type"] not in ("result", "error"):
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                if not frames:
                    ws.send(json.dumps({"type": "end"}))
                frames.append(message)
            else:
                messages.append(json.loads(message))
        with contextlib.suppress(Exception):
            ws.recv(timeout=5)  # the close
    return b"".join(frames), messages, ws.close_code


def while_the_slot_is_held(server, seconds: float, queued):
    """Hold the only slot with a session that gets a word every 0.1 s (never idle) while ``queued()``
    runs in a thread and waits in the queue; then end it. (queued()'s result, sessions waiting at the end)."""
    from websockets.sync import client as ws_client
    with ws_client.connect(server.url.replace("http", "ws") + "/v1/audio/stream", proxy=None) as holder:
        holder.send(json.dumps({"seed": 1}))
        holder.send(json.dumps({"type": "text", "text": "Hold "}))
        server.wait_for(lambda s: s["active"] == 1)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            result = pool.submit(queued)
            server.wait_for(lambda s: s["waiting"] == 1)
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                time.sleep(0.1)
                holder.send(json.dumps({"type": "text", "text": "on "}))
            waited = server.health()["streams"]["waiting"]
            holder.send(json.dumps({"type": "end"}))
            while not isinstance(message := holder.recv(timeout=30), str) or json.loads(message)["type"] != "result":
                pass
            return result.result(timeout=60), waited


def test_the_idle_clock_does_not_run_while_a_websocket_waits_for_a_slot(one_slot, demo):
    (pcm, messages, code), waited = while_the_slot_is_held(one_slot, 1.5, lambda: ws_paced(one_slot, SHORT, 4))
    assert [m["type"] for m in messages] == ["audio.done", "result"], messages
    assert waited == 1  # still in the queue, more than three idle timeouts after it sent its text
    assert code == 1000 and pcm == reference_pcm(demo, SHORT, 4)
    one_slot.wait_for(lambda s: s["active"] == 0 and s["waiting"] == 0)


def test_a_websocket_waiting_for_a_slot_gets_the_queue_timeout(one_slot):
    admission = one_slot.app.state.service.admission
    admission.timeout = 1.0  # the 0.4 s idle clock would have run out first
    try:
        (pcm, messages, code), _ = while_the_slot_is_held(one_slot, 1.5, lambda: ws_paced(one_slot, SHORT, 4))
    finally:
        admission.timeout = 30.0
    assert pcm == b"" and [m["type"] for m in messages] == ["error"], messages
    error = messages[0]
    assert error["status"] == 503 and error["retry_after"] >= 1 and code == 1013
    assert error["error"]["code"] == "queue_timeout" and "1 s" in error["error"]["message"], error
    one_slot.wait_for(lambda s: s["active"] == 0 and s["waiting"] == 0)


def test_the_session_cap_does_not_count_the_wait_for_a_slot(demo):
    """--max-session-seconds bounds how long a slot is held: sessions queued longer than the cap
    behind two holders still get their whole audio once they have the slot."""
    from websockets.sync import client as ws_client
    model, voice = demo
    settings = ServerSettings(max_streams=1, queue=3, max_session_seconds=2.0)
    url = "/v1/audio/stream"

    def hold_then_end(ws, seconds: float) -> None:
        time.sleep(seconds)
        with contextlib.suppress(Exception):  # already cut off at the cap: its error is still to be read
            ws.send(json.dumps({"type": "end"}))
        while not isinstance(message := ws.recv(timeout=30), str) or json.loads(message)["type"] not in (
            "result",
            "error",
        ):
            pass

    def http_queued() -> tuple[int, bytes]:
        with live.client() as c:
            res = c.post("/v1/audio/speech", json={"input": SHORT, "seed": 5, "response_format": "pcm"})
            return res.status_code, res.content

    with (
        LiveServer(create_app(model, settings=settings, default_voice=voice)) as live,
        ws_client.connect(live.url.replace("http", "ws") + url, proxy=None) as first,
        ws_client.connect(live.url.replace("http", "ws") + url, proxy=None) as second,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        for n, holder in enumerate((first, second)):
            holder.send(json.dumps({"seed": 1}))
            holder.send(json.dumps({"type": "text", "text": "Hold on "}))
            live.wait_for(lambda s, n=n: s["active"] == 1 and s["waiting"] == n)
        queued_ws = pool.submit(ws_paced, live, SHORT, 4)
        live.wait_for(lambda s: s["waiting"] == 2)
        queued_http = pool.submit(http_queued)
        live.wait_for(lambda s: s["waiting"] == 3)
        hold_then_end(first, 1.2)  # the second holder now has the slot, the others wait on
        hold_then_end(second, 1.2)  # by now both have waited longer than the 2 s cap
        pcm, messages, code = queued_ws.result(timeout=60)
        status, http_pcm = queued_http.result(timeout=60)
    assert [m["type"] for m in messages] == ["audio.done", "result"], messages
    assert messages[-1]["queue_time"] > 2.0, messages
    assert code == 1000 and pcm == reference_pcm(demo, SHORT, 4)
    assert status == 200 and http_pcm == reference_pcm(demo, SHORT, 5)


def test_max_session_seconds_caps_requests_and_sessions(demo, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    model, voice = demo
    settings = ServerSettings(max_streams=1, max_session_seconds=1.0)
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live, live.client() as c:
        start = time.perf_counter()
        with pytest.raises(httpx.RemoteProtocolError):  # the body is cut off: the client sees it incomplete
            with c.stream("POST", "/v1/audio/speech", json={"input": LONG, "response_format": "pcm"}) as res:
                assert res.status_code == 200
                for _ in res.iter_raw():
                    pass
        assert time.perf_counter() - start < 10
        live.wait_for(lambda s: s["active"] == 0, timeout=5)
        messages, seconds = ws_session(live, lambda i: LONG, pieces=1, every=0.2)
        assert messages[-1]["type"] == "error" and messages[-1]["error"]["code"] == "session_limit"
        assert seconds < 10
        live.wait_for(lambda s: s["active"] == 0, timeout=5)
    assert sum(r.get("outcome") == "session_limit" for r in server_records(caplog)) == 2


def test_server_settings_refuse_bad_limits():
    with pytest.raises(ValueError, match="--send-timeout must be a number of seconds > 0"):
        ServerSettings(send_timeout=0)
    with pytest.raises(ValueError, match="--max-session-seconds"):
        ServerSettings(max_session_seconds=-1)
    with pytest.raises(ValueError, match="--ws-idle-timeout"):
        ServerSettings(ws_idle_timeout=float("nan"))
    assert ServerSettings(max_session_seconds=0).session_cap is None


def test_a_text_longer_than_the_model_context_streams_in_segments(demo):
    model, voice = demo
    settings = ServerSettings(max_streams=1, max_input_chars=30_000, max_body_bytes=1 << 20)
    text = "word " * 5000  # past the demo model's 4096 positions: one generation cannot hold it
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live, live.client() as c:
        with c.stream("POST", "/v1/audio/speech", json={"input": text, "response_format": "pcm", "seed": 1}) as res:
            assert res.status_code == 200
            first = next(res.iter_raw())
            assert len(first) > 0, "audio starts as soon as for a short text"
        live.wait_for(lambda s: s["active"] == 0)


def test_a_proxys_request_id_is_the_logs_id(server, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    with server.client() as c:
        own = c.get("/v1/models")
        proxied = c.get("/v1/models", headers={"x-request-id": "ray-7f3a.2:b"})
        odd = c.get("/v1/models", headers={"x-request-id": "has spaces\tand tabs"})
    assert len(own.headers["x-request-id"]) == 12, "an id of our own is sent back"
    assert "x-request-id" not in proxied.headers, "the proxy that named the request answers with its id"
    ids = [r["request_id"] for r in server_records(caplog) if r.get("path") == "/v1/models"]
    assert ids[0] == own.headers["x-request-id"] and ids[1] == "ray-7f3a.2:b"
    assert ids[2] == odd.headers["x-request-id"] != "has spaces\tand tabs", "anything but a plain token is replaced"


def test_the_input_limit_is_one_check_in_one_wording_over_http_and_the_websocket(tight):
    """The limit was written in each front end with its own words; now one check says it for all."""
    import websockets.sync.client as ws_client

    limit = 3000
    with tight.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        res = c.post("/v1/audio/speech", json={"model": "tada", "input": "ab " * 1001})  # 3003 characters
    http = error_of(res)
    assert res.status_code == 400 and http["code"] == "input_too_long" and http["param"] == "input"
    assert http["message"] == f"the input is 3003 characters; the limit is {limit}: send the rest in another request"
    url = tight.url.replace("http", "ws") + f"/v1/audio/stream?api_key={KEY}"
    with ws_client.connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
        ws.send(json.dumps({"seed": 3}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "ab " * 600}))  # 1800 characters: within the limit
        ws.send(json.dumps({"type": "text", "text": "ab " * 401}))  # 3003 in all
        while isinstance(message := ws.recv(timeout=60), bytes):
            pass  # audio of the first piece may come before the refusal
        error = json.loads(message)
    assert error["type"] == "error" and error["error"]["code"] == "input_too_long", error
    assert error["error"]["message"] == http["message"].replace("the input", "the text")
    tight.wait_for(lambda s: s["active"] == 0)
