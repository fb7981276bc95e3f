"""The LiveKit Agents plugin (:mod:`tadastream.integrations.livekit`) against a real server.

The demo model is served live on loopback with an API key; the plugin is driven the way an
``AgentSession`` drives a TTS (``stream()`` fed piece by piece, ``synthesize()``, ``aclose()`` on
an interruption) and checked against plain ``POST /v1/audio/speech`` requests with the same seed.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time
from dataclasses import dataclass, field

import pytest
from livekit.agents import APIConnectOptions, APIStatusError, utils
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from tadastream.integrations.livekit import TTS
from tests.helpers.server_harness import demo_server, logged_requests

KEY = "lk-test-key"
SEED = 11
TEXT = (
    "Streaming text in word by word lets the server start speaking early, while the rest of this "
    "rather long reply is still being written by the language model, and nothing about the audio changes."
)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=10)


@pytest.fixture(scope="module")
def server():
    with demo_server(max_streams=2, api_key=KEY) as live:
        yield live


def plain_pcm(server, text: str, seed: int) -> bytes:
    """The audio of a plain OpenAI-style request: the reference the plugin must reproduce."""
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        res = c.post("/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm"})
    assert res.status_code == 200, res.text
    return res.content


def pieces(text: str) -> list[str]:
    """The text as an LLM streams it: one word (with its trailing space) per piece."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


@dataclass
class Heard:
    """What a LiveKit consumer got: the audio, and each timed word with the start (s) of the frame carrying it."""

    pcm: bytearray = field(default_factory=bytearray)
    rates: set = field(default_factory=set)
    channels: set = field(default_factory=set)
    words: list = field(default_factory=list)  # (TimedString, seconds of audio before its frame)
    audio_before_end: bool = False
    seed: int | None = None

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / 24000

    def add(self, ev) -> None:
        frame = ev.frame
        self.words += [(w, self.seconds) for w in frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
        self.pcm += bytes(frame.data)
        self.rates.add(frame.sample_rate)
        self.channels.add(frame.num_channels)


@pytest.fixture(scope="module")
def streamed(server) -> Heard:
    """``tts.stream()`` fed word by word: three quarters of the text, then wait for audio, then the rest."""

    async def run() -> Heard:
        heard = Heard()
        tts = TTS(base_url=f"{server.url}/v1", api_key=KEY, seed=SEED)
        try:
            stream = tts.stream(conn_options=NO_RETRY)
            parts = pieces(TEXT)
            split = len(parts) * 3 // 4
            for part in parts[:split]:
                stream.push_text(part)
                await asyncio.sleep(0.005)
            heard.add(await asyncio.wait_for(anext(stream), timeout=60))  # the input is still open
            heard.audio_before_end = True
            for part in parts[split:]:
                stream.push_text(part)
            stream.end_input()
            async for ev in stream:
                heard.add(ev)
            heard.seed = stream.seed
            await stream.aclose()
        finally:
            await tts.aclose()
        return heard

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def test_stream_audio_is_the_plain_request_audio(server, streamed):
    assert streamed.rates == {24000} and streamed.channels == {1}
    assert streamed.seed == SEED
    reference = plain_pcm(server, TEXT, SEED)
    assert len(reference) > 2 * 24000, "several seconds of speech"
    assert bytes(streamed.pcm) == reference, "word-by-word streaming must give the one-request audio, bit for bit"


def test_stream_speaks_before_the_text_ends(streamed):
    """True text streaming: audio came while a quarter of the text had not even been pushed."""
    assert streamed.audio_before_end
    assert streamed.seconds > 2.0


def check_word_timings(heard: Heard, text: str) -> None:
    words = [w for w, _ in heard.words]
    assert words, "no aligned transcript came"
    assert "".join(words) == text, "the timed words add up to the text as sent, spaces and punctuation included"
    assert [w.strip() for w in words] == text.split()
    starts = [w.start_time for w in words]
    ends = [w.end_time for w in words]
    assert all(isinstance(t, float) for t in starts + ends)
    assert starts == sorted(starts) and ends == sorted(ends), "word times increase"
    assert all(0.0 <= s <= e for s, e in zip(starts, ends))
    assert ends[-1] <= heard.seconds + 0.05, "no word ends after the audio"
    assert ends[-1] > 0.5 * heard.seconds, "the words span the speech"
    for word, carried_at in heard.words:  # LiveKit shows a word when its frame plays: it must not come late
        assert carried_at <= word.end_time + 1e-3, f"{word!r} (ends {word.end_time:.3f} s) came at {carried_at:.3f} s"


def test_stream_word_timings_arrive_with_the_audio(streamed):
    check_word_timings(streamed, TEXT)


def test_synthesize_gives_the_same_audio_and_timings(server, streamed):
    async def run() -> Heard:
        heard = Heard()
        tts = TTS(base_url=server.url, api_key=KEY, seed=SEED)
        try:
            async for ev in tts.synthesize(TEXT, conn_options=NO_RETRY):
                heard.add(ev)
        finally:
            await tts.aclose()
        return heard

    heard = asyncio.run(asyncio.wait_for(run(), timeout=120))
    assert heard.rates == {24000} and heard.channels == {1}
    assert bytes(heard.pcm) == bytes(streamed.pcm), "synthesize() and stream() speak the same audio"
    check_word_timings(heard, TEXT)
    streamed_times = [(str(w), w.start_time, w.end_time) for w, _ in streamed.words]
    assert [(str(w), w.start_time, w.end_time) for w, _ in heard.words] == streamed_times


def stream_pieces(server, pieces: list[str], **tts_options) -> Heard:
    """What ``tts.stream()`` gives for ``pieces`` pushed at once, then end of input."""

    async def run() -> Heard:
        heard = Heard()
        tts = TTS(base_url=server.url, api_key=KEY, seed=SEED, **tts_options)
        try:
            stream = tts.stream(conn_options=NO_RETRY)
            for piece in pieces:
                stream.push_text(piece)
            stream.end_input()
            async for ev in stream:
                heard.add(ev)
            await stream.aclose()
        finally:
            await tts.aclose()
        return heard

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def test_a_japanese_text_is_aligned_phrase_by_phrase(server):
    text = "今日は良い天気ですね。明日は雨でしょう。"
    heard = stream_pieces(server, [text[i : i + 3] for i in range(0, len(text), 3)])
    words = [str(w) for w, _ in heard.words]
    assert "".join(words) == text and len(words) >= 4, "phrases as written, no spaces added"
    assert all(w.end_time <= heard.seconds + 0.05 for w, _ in heard.words)


def test_without_word_timestamps_the_audio_is_the_same(server, streamed):
    assert not TTS(base_url=server.url, api_key=KEY, word_timestamps=False).capabilities.aligned_transcript
    heard = stream_pieces(server, [TEXT], word_timestamps=False)  # all at once this time
    assert bytes(heard.pcm) == bytes(streamed.pcm) and heard.words == []


def test_closing_the_stream_mid_utterance_stops_generation(server, caplog):
    """An interruption: LiveKit closes the stream while text is still coming and audio is playing."""
    caplog.set_level(logging.INFO, logger="tadastream.server")
    long_text = " ".join([TEXT] * 3)
    parts = pieces(long_text)

    async def run() -> tuple[int, float]:
        tts = TTS(base_url=server.url, api_key=KEY, seed=SEED)
        try:
            stream = tts.stream(conn_options=NO_RETRY)
            for part in parts[: len(parts) * 3 // 4]:
                stream.push_text(part)
            first = await asyncio.wait_for(anext(stream), timeout=60)
            start = time.perf_counter()
            await stream.aclose()
            return first.frame.samples_per_channel, time.perf_counter() - start
        finally:
            await tts.aclose()

    heard, closing = asyncio.run(asyncio.wait_for(run(), timeout=120))
    assert heard > 0 and closing < 5.0
    server.wait_for(lambda s: s["active"] == 0, timeout=10)
    (record,) = logged_requests(caplog, "/v1/audio/stream")
    assert record["outcome"] in ("cancelled", "disconnected"), record
    # three quarters of three TEXTs would be about 2.25 times the TEXT's audio: it stopped long before
    made = record.get("audio_seconds", record["bytes_out"] / 2 / 24000)
    assert made < len(plain_pcm(server, TEXT, SEED)) / 2 / 24000, record


def test_server_errors_surface_as_livekit_api_errors(server):
    async def stream_error(tts: TTS) -> APIStatusError:
        stream = tts.stream(conn_options=NO_RETRY)
        stream.push_text("Hello there. ")
        stream.end_input()
        with pytest.raises(APIStatusError) as caught:
            async for _ in stream:
                pass
        await stream.aclose()
        return caught.value

    async def run() -> list[APIStatusError]:
        errors = []
        for key, voice, first_chunk_ms in ((KEY, "no-such-voice", None), ("wrong-key", None, None), (KEY, None, -1)):
            tts = TTS(base_url=server.url, api_key=key, voice=voice, min_first_chunk_ms=first_chunk_ms)
            try:
                errors.append(await stream_error(tts))
                with pytest.raises(APIStatusError) as caught:
                    await tts.synthesize("Hello there.", conn_options=NO_RETRY).collect()
                errors.append(caught.value)
            finally:
                await tts.aclose()
        return errors

    ws_voice, http_voice, ws_key, http_key, ws_chunk, http_chunk = asyncio.run(asyncio.wait_for(run(), timeout=60))
    for error in (ws_voice, http_voice):
        assert error.status_code == 400 and not error.retryable and "no-such-voice" in error.message
    for error in (ws_chunk, http_chunk):  # the setting reaches the server both ways
        assert error.status_code == 400 and not error.retryable and "min_first_chunk_ms" in error.message
    for error in (ws_key, http_key):
        assert error.status_code == 401 and not error.retryable and "API key" in error.message
    server.wait_for(lambda s: s["active"] == 0, timeout=10)


def test_uses_livekits_http_session_in_a_job_and_its_own_outside():
    async def run() -> None:
        async with utils.http_context.open() as shared:
            tts = TTS()
            assert tts._ensure_session() is shared
            await tts.aclose()
            assert not shared.closed, "LiveKit's session is LiveKit's to close"
        tts = TTS(base_url="http://127.0.0.1:9/v1/")
        own = tts._ensure_session()
        assert tts._opts.base_url == "http://127.0.0.1:9"
        await tts.aclose()
        assert own.closed

    asyncio.run(run())


def test_capabilities_and_missing_livekit_message(monkeypatch):
    tts = TTS()
    assert tts.capabilities.streaming and tts.capabilities.aligned_transcript
    assert (tts.sample_rate, tts.num_channels) == (24000, 1)
    monkeypatch.setitem(sys.modules, "livekit.agents", None)  # as if LiveKit were not installed
    monkeypatch.delitem(sys.modules, "tadastream.integrations.livekit")
    with pytest.raises(ImportError, match=r'pip install "tadastream\[livekit\]"') as caught:
        importlib.import_module("tadastream.integrations.livekit")
    assert "\n" not in str(caught.value)
