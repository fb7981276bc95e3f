"""Who may use a server, and clients the server must survive: Origin and Host without a key, the
docs pages (offline, and behind the key), slow bodies, HTTP/1.0, whole files with real lengths, AAC."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import socket
import time

import av
import numpy as np
import pytest
import soundfile as sf
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from tadastream.server.access import AccessRules, host_name
from tadastream.server.app import ServerSettings, create_app
from tests.helpers.server_harness import LiveServer, logged_requests

KEY = "sk-access-test"
TEXT = "Hello there, general."


@pytest.fixture(scope="module")
def open_server(demo_model, demo_voice, tmp_path_factory):
    """No key (the default), a voices folder, one listed page origin, a short body timeout."""
    model, voice = demo_model, demo_voice
    settings = ServerSettings(
        voices_dir=str(tmp_path_factory.mktemp("voices")),
        cors_origins=("https://app.example",),
        body_timeout=1.0,
    )
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(demo_model, demo_voice):
    model, voice = demo_model, demo_voice
    settings = ServerSettings(api_key=KEY)
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


# -- the rules themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, name",
    [("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("::1", "::1"), ("Example.COM", "example.com")],
)
def test_host_name_drops_port_and_brackets(host, name):
    assert host_name(host) == name


@pytest.mark.parametrize(
    "bind, allowed, host, ok",
    [
        ("127.0.0.1", (), "127.0.0.1:8000", True),
        ("127.0.0.1", (), "localhost:8000", True),
        ("127.0.0.1", (), "app.localhost", True),  # RFC 6761: always loopback
        ("127.0.0.1", (), "[::1]:8000", True),
        ("127.0.0.1", (), "127.3.4.5", True),
        ("127.0.0.1", (), "attacker.example", False),  # DNS rebinding
        ("127.0.0.1", (), "localhost.attacker.example", False),
        ("127.0.0.1", (), "10.0.0.5:8000", False),  # not an address this server listens on
        ("0.0.0.0", (), "10.0.0.5:8000", True),  # listening on every address: each IP is its own
        ("0.0.0.0", (), "box.lan:8000", False),  # ... but a name must be listed
        ("0.0.0.0", ("box.lan",), "Box.LAN:8000", True),
        ("10.0.0.5", (), "10.0.0.5:8000", True),
        ("127.0.0.1", ("*",), "anything.example", True),
        ("127.0.0.1", (), None, True),  # HTTP/1.0 without Host: no browser sends that
        ("127.0.0.1", (), "[::1", False),  # an unclosed bracket names nothing
    ],
)
def test_host_rule(bind, allowed, host, ok):
    refusal = AccessRules(bind_host=bind, allowed_hosts=allowed).host_refusal(host)
    assert (refusal is None) == ok
    if not ok:
        assert refusal.code == "forbidden_host" and f"--allowed-host {host_name(host)}" in refusal.message


@pytest.mark.parametrize(
    "origin, host, listed, ok",
    [
        (None, "localhost:8000", (), True),  # SDKs, curl, the frameworks
        ("http://localhost:8000", "localhost:8000", (), True),  # the server's own page
        ("https://localhost:8000", "localhost:8000", (), True),  # behind a TLS proxy
        ("http://localhost:8001", "localhost:8000", (), False),  # another local app
        ("http://evil.example", "localhost:8000", (), False),
        ("null", "localhost:8000", (), False),  # sandboxed frames and file:// pages
        ("http://evil.example", "localhost:8000", ("http://evil.example",), True),
        ("http://evil.example", "localhost:8000", ("*",), True),
        ("http://localhost:8000", None, (), False),  # no Host to compare with
        ("http://[", "localhost:8000", (), False),  # what makes a URL parser raise
        ("http://[::1", "localhost:8000", (), False),
        ("HTTP://localhost:8000", "localhost:8000", (), True),  # schemes ignore case
    ],
)
def test_origin_rule(origin, host, listed, ok):
    refusal = AccessRules(cors_origins=listed).origin_refusal(origin, host)
    assert (refusal is None) == ok
    if not ok:
        assert refusal.code == "forbidden_origin" and f"--cors-origin {origin}" in refusal.message


@settings(max_examples=300, deadline=None)
@given(origin=st.one_of(st.none(), st.text(max_size=60)), host=st.one_of(st.none(), st.text(max_size=60)))
def test_any_origin_and_host_get_an_answer_not_an_exception(origin, host):
    headers = {k: v for k, v in (("origin", origin), ("host", host)) if v is not None}
    refusal = AccessRules().refusal(headers)
    assert refusal is None or refusal.code in ("forbidden_host", "forbidden_origin")
    if origin is not None and refusal is None:
        assert host is not None and origin.lower().endswith("://" + host.strip().lower())


# -- through uvicorn --------------------------------------------------------------------------------


def error_of(res) -> dict:
    return res.json()["error"]


def test_a_foreign_host_is_refused_and_loopback_names_are_served(open_server):
    with open_server.client() as c:
        res = c.get("/health", headers={"Host": "attacker.example"})
        assert res.status_code == 403 and error_of(res)["code"] == "forbidden_host"
        assert "--allowed-host attacker.example" in error_of(res)["message"]
        for host in (f"127.0.0.1:{open_server.port}", f"localhost:{open_server.port}"):
            assert c.get("/health", headers={"Host": host}).status_code == 200


def test_cross_origin_speech_is_refused_same_origin_and_originless_are_served(open_server):
    body = {"input": TEXT, "response_format": "wav", "seed": 3}
    own = f"http://127.0.0.1:{open_server.port}"
    with open_server.client() as c:
        res = c.post("/v1/audio/speech", json=body, headers={"Origin": "http://evil.example"})
        assert res.status_code == 403 and error_of(res)["code"] == "forbidden_origin"
        hostile = c.post("/v1/audio/speech", json=body, headers={"Origin": "http://["})
        assert hostile.status_code == 403 and error_of(hostile)["code"] == "forbidden_origin"
        own_page = c.post("/v1/audio/speech", json=body, headers={"Origin": own})
        no_origin = c.post("/v1/audio/speech", json=body)
        listed = c.post("/v1/audio/speech", json=body, headers={"Origin": "https://app.example"})
    assert own_page.status_code == no_origin.status_code == listed.status_code == 200
    assert own_page.content == no_origin.content == listed.content and len(no_origin.content) > 1000


def test_cross_origin_multipart_voice_upload_is_refused_and_stores_nothing(open_server, demo_voice):
    from tadastream.service.voices import voice_bytes

    files = {"file": ("x.voice", voice_bytes(demo_voice), "application/octet-stream")}
    with open_server.client() as c:
        before = c.get("/v1/voices").json()["data"]
        res = c.post(
            "/v1/voices",
            data={"name": "planted", "overwrite": "true"},
            files=files,
            headers={"Origin": "http://evil.example"},  # what a form on another site sends, with no preflight
        )
        assert res.status_code == 403 and error_of(res)["code"] == "forbidden_origin"
        assert c.get("/v1/voices").json()["data"] == before
        own = c.post(
            "/v1/voices",
            data={"name": "mine"},
            files=files,
            headers={"Origin": f"http://127.0.0.1:{open_server.port}"},
        )
        assert own.status_code == 201, own.text


async def _ws_exchange(url: str, origin: str | None) -> tuple[list, int | None, str]:
    """Messages received (after sending a config) and the close code and reason."""
    kwargs = {"origin": origin} if origin else {}
    got: list = []
    async with websockets.connect(url, **kwargs) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):  # a refused socket may be closed already
            await ws.send(json.dumps({"seed": 1}))
        with contextlib.suppress(websockets.ConnectionClosed):
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            if got[0]["type"] == "error":
                await asyncio.wait_for(ws.wait_closed(), 10)
        return got, ws.close_code, ws.close_reason


def test_a_cross_origin_websocket_is_closed_with_its_reason(open_server, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    url = f"ws://127.0.0.1:{open_server.port}/v1/audio/stream"
    got, code, reason = asyncio.run(_ws_exchange(url, "http://evil.example"))
    assert got[0]["type"] == "error" and got[0]["status"] == 403
    assert got[0]["error"]["code"] == "forbidden_origin"
    assert code == 1008 and reason.startswith("pages from http://evil.example may not use this server")
    assert any(r["status"] == 403 for r in logged_requests(caplog, "/v1/audio/stream"))
    for origin in (None, f"http://127.0.0.1:{open_server.port}"):
        got, _code, _reason = asyncio.run(_ws_exchange(url, origin))
        assert got[0]["type"] == "ready"


def test_with_a_key_the_key_decides(keyed_server):
    body = {"input": TEXT, "response_format": "pcm", "seed": 1}
    with keyed_server.client() as c:
        assert c.post("/v1/audio/speech", json=body, headers={"Origin": "http://evil.example"}).status_code == 401
        keyed = {"Origin": "http://evil.example", "Authorization": f"Bearer {KEY}", "Host": "tts.example"}
        assert c.post("/v1/audio/speech", json=body, headers=keyed).status_code == 200


# -- docs --------------------------------------------------------------------------------------------


def test_docs_pages_open_offline(open_server):
    with open_server.client() as c:
        for page in ("/docs", "/redoc"):
            res = c.get(page)
            assert res.status_code == 200 and "text/html" in res.headers["content-type"]
            html = res.text
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html, "nothing loads from the internet"
            assets = [a for a in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js") if a in html]
            assert assets, html
            for name in assets:
                asset = c.get(f"/docs/assets/{name}")
                assert asset.status_code == 200 and len(asset.content) > 50_000
        responses = [
            op["responses"] for path in c.get("/openapi.json").json()["paths"].values() for op in path.values()
        ]
        assert all("422" not in r for r in responses), "a refused body is a 400 here, as the schema says"
        assert "400" in c.get("/openapi.json").json()["paths"]["/v1/audio/speech"]["post"]["responses"]
        assert c.get("/docs/assets/../../etc/passwd").status_code == 404
        assert c.get("/docs/assets/secrets.py").status_code == 404


def test_docs_behind_a_key_open_after_a_login(keyed_server):
    with keyed_server.client(follow_redirects=False) as c:
        page = c.get("/docs")
        assert page.status_code == 401 and '<form method="post" action="/docs/login"' in page.text
        assert c.get("/openapi.json").status_code == 401
        wrong = c.post("/docs/login", data={"api_key": "nope", "next": "/redoc"})
        assert wrong.status_code == 401 and "not this server" in wrong.text and "docs_" not in str(wrong.cookies)
        right = c.post("/docs/login", data={"api_key": KEY, "next": "https://evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/docs", "never redirects off-site"
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and KEY.lower() not in cookie
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 200
        schema = c.get("/openapi.json")
        assert schema.status_code == 200
        assert schema.json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        res = c.post("/v1/audio/speech", json={"input": TEXT})
        assert res.status_code == 401, "the docs cookie opens the docs, not the API"


# -- slow and old clients --------------------------------------------------------------------------


def _raw(port: int, request: bytes, timeout: float = 30.0) -> tuple[bytes, float]:
    """The server's whole reply to ``request`` (read until it closes) and the seconds that took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply, time.monotonic() - start


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(open_server):
    head = (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n"
    )
    reply, seconds = _raw(open_server.port, head + b'{"input": "' + b"x" * 50)
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body_timeout" in rest and b"connection: close" in rest.lower()
    assert 0.9 < seconds < 10, "cut off at --body-timeout (1 s here), not left open"
    with open_server.client() as c:
        assert c.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm"}).status_code == 200


def _http10(port: int, path: str, body: dict) -> tuple[dict[str, str], bytes]:
    data = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    )
    reply, _ = _raw(port, request)
    head, _, payload = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split()[1] == "200", lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return headers, payload


def test_http10_gets_a_plain_body_it_can_parse(open_server):
    headers, payload = _http10(open_server.port, "/v1/audio/speech", {"input": TEXT, "response_format": "wav"})
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(payload)
    audio, rate = sf.read(io.BytesIO(payload))
    assert rate == 24000 and len(audio) == (len(payload) - 44) // 2
    headers, payload = _http10(open_server.port, "/v1/audio/speech", {"input": TEXT, "stream_format": "sse"})
    assert int(headers["content-length"]) == len(payload) and payload.rstrip().endswith(b"}")
    assert b"speech.audio.done" in payload


# -- whole files and AAC -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_with_timestamps_files_have_real_lengths(open_server, fmt):
    body = {"input": TEXT, "response_format": fmt, "seed": 5}
    with open_server.client() as c:
        res = c.post("/v1/audio/speech/with-timestamps", json=body)
        reference = c.post("/v1/audio/speech", json={**body, "response_format": "pcm"}).content
    assert res.status_code == 200
    data = base64.b64decode(res.json()["audio"])
    info = sf.info(io.BytesIO(data))
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and info.frames == len(audio) == len(reference) // 2
    assert np.array_equal(audio, np.frombuffer(reference, "<i2")), "the same samples as the stream"
    if fmt == "wav":
        assert int.from_bytes(data[4:8], "little") == len(data) - 8
        assert int.from_bytes(data[40:44], "little") == len(data) - 44


def _aac_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data), format="adts") as container:
        return sum(frame.samples for frame in container.decode(audio=0)) / 24000


def test_aac_streams_and_decodes_with_its_duration(open_server):
    body = {"input": TEXT, "seed": 9}
    with open_server.client() as c:
        pcm = c.post("/v1/audio/speech", json={**body, "response_format": "pcm"}).content
        with c.stream("POST", "/v1/audio/speech", json={**body, "response_format": "aac"}) as res:
            assert res.status_code == 200 and res.headers["content-type"] == "audio/aac"
            parts = list(res.iter_raw())
        sse = c.post("/v1/audio/speech", json={**body, "response_format": "aac", "stream_format": "sse"})
    data = b"".join(parts)
    assert data[:2] == b"\xff\xf1", "ADTS frames"
    seconds = len(pcm) / 2 / 24000
    # ADTS cannot say how many samples the encoder added: 1024 of priming, and the last frame's padding
    assert seconds <= _aac_seconds(data) <= seconds + 2048 / 24000
    deltas = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    streamed = b"".join(base64.b64decode(d["audio"]) for d in deltas if d["type"] == "speech.audio.delta")
    assert streamed == data, "SSE carries the same AAC bytes"
