"""tadastream.integrations.pipecat: a real Pipecat pipeline speaking through a real server (demo model).

Text goes in the way an LLM sends it (a reply start, token frames, a reply end); what comes out is
checked against a plain HTTP request of the same text and seed, for word times, for streaming
(audio before the reply is complete) and for barge-in (generation stops on the server, and the
conversation context keeps only the words that were played).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct

import pytest
import torch
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.utils.errors import ErrorCategory
from pipecat.workers.runner import WorkerRunner
from websockets.asyncio.server import serve

from tadastream.integrations.pipecat import TadaTTSService, stream_url
from tests.helpers.server_harness import demo_server, logged_requests

KEY = "pipecat-test-key"
RATE = 24000
TEXT = (
    "Hello from a voice agent that starts talking while the language model is still writing the rest of "
    "its reply, one word after another. The listener hears the first words long before the last ones arrive."
)
HEAD_WORDS = 14  # the model speaks a few words behind the text: this many let it start


def llm_tokens(text: str) -> list[str]:
    """The text as an LLM streams it: words with their leading space, long words split in two."""
    tokens = []
    for match in re.finditer(r"\s*\S+", text):
        piece = match.group()
        cut = len(piece) // 2 if len(piece.strip()) >= 7 else len(piece)
        tokens += [t for t in (piece[:cut], piece[cut:]) if t]
    assert "".join(tokens) == text
    return tokens


@pytest.fixture(scope="module")
def server():
    with demo_server(max_streams=2, api_key=KEY) as live:
        yield live


class Upstream(FrameProcessor):
    """Head of the pipeline: collects the errors the service pushes upstream."""

    def __init__(self):
        super().__init__()
        self.errors: list[ErrorFrame] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame) and direction == FrameDirection.UPSTREAM:
            self.errors.append(frame)
        await self.push_frame(frame, direction)


class Recorder(FrameProcessor):
    """What reaches the end of the pipeline, in order: audio, words (with the audio already there), markers."""

    def __init__(self):
        super().__init__()
        self.audio = bytearray()
        self.formats: set[tuple[int, int]] = set()
        self.words: list[tuple[str, int, int]] = []  # (text, pts, bytes of audio received before it)
        self.word_clock: list[int] = []  # when each word reached this processor, on the pipeline's clock
        self.events: list[str] = []  # "audio", "word", "started", "stopped", "interruption"
        self.first_audio = asyncio.Event()
        self.first_audio_clock: int | None = None

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, TTSAudioRawFrame):
                if self.first_audio_clock is None:
                    self.first_audio_clock = self.get_clock().get_time()
                self.audio += frame.audio
                self.formats.add((frame.sample_rate, frame.num_channels))
                self.events.append("audio")
                self.first_audio.set()
            elif isinstance(frame, TTSTextFrame):
                self.words.append((frame.text, frame.pts, len(self.audio)))
                self.word_clock.append(self.get_clock().get_time())
                self.events.append("word")
            elif isinstance(frame, TTSStartedFrame):
                self.events.append("started")
            elif isinstance(frame, TTSStoppedFrame):
                self.events.append("stopped")
            elif isinstance(frame, InterruptionFrame):
                self.events.append("interruption")
        await self.push_frame(frame, direction)


class Speaker(BaseOutputTransport):
    """An output transport that plays audio in real time, so words are released as they are heard."""

    BUFFER = 0.06  # seconds a sound card holds ahead of what it plays

    def __init__(self):
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_end_silence_secs=0))
        self.heard = bytearray()
        self.started_clock: int | None = None
        self.plays_until = 0  # clock at which the audio written so far has all played
        self.heard_at_interruption: int | None = None
        self.clock_at_interruption: int | None = None
        self.lag = 0.0  # most seconds playback fell behind the clock (audio arriving slower than real time)
        self.frames_played: list[tuple[int, int]] = []  # (clock when a frame started playing, its first byte)

    async def start(self, frame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame, direction):
        if isinstance(frame, InterruptionFrame) and self.heard_at_interruption is None:
            self.heard_at_interruption = len(self.heard)
            self.clock_at_interruption = self.get_clock().get_time()
        await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame) -> bool:
        # A sound card plays its buffer without gaps: a frame starts when the one before ends, or when it
        # arrives if the buffer ran dry; a write returns once no more than BUFFER seconds are queued.
        now = self.get_clock().get_time()
        if self.started_clock is None:
            self.started_clock = self.plays_until = now
        starts = max(now, self.plays_until)
        self.lag = max(self.lag, (starts - self.started_clock) / 1e9 - len(self.heard) / 2 / frame.sample_rate)
        self.frames_played.append((starts, len(self.heard)))
        self.plays_until = starts + round(len(frame.audio) / 2 / frame.sample_rate * 1e9)
        self.heard += frame.audio
        await asyncio.sleep(max(0.0, (self.plays_until - self.get_clock().get_time()) / 1e9 - self.BUFFER))
        return True


@contextlib.asynccontextmanager
async def pipeline(*processors, sample_rate: int = RATE):
    """A running PipelineWorker around ``processors``; leaving the block sends EndFrame and waits for the end."""
    head = Upstream()
    worker = PipelineWorker(
        Pipeline([head, *processors]),
        params=PipelineParams(audio_out_sample_rate=sample_rate),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    try:
        yield worker, head
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), timeout=60)
    finally:
        if not run.done():  # a failed check: cancel the pipeline, so the test fails instead of hanging
            await worker.cancel(reason="test failed")
            await asyncio.wait_for(run, timeout=10)


def tts_service(server, **kw) -> TadaTTSService:
    kw.setdefault("api_key", KEY)
    return TadaTTSService(base_url=server.url, **kw)


def plain_request(server, text: str, seed: int) -> torch.Tensor:
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.post("/v1/audio/speech", json={"input": text, "seed": seed, "response_format": "pcm"})
    assert r.status_code == 200, r.text
    return pcm(r.content)


def pcm(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.int16).to(torch.int32)


def test_stream_url_accepts_the_forms_people_write():
    assert stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/audio/stream"
    assert stream_url("https://tts.example.com/v1/") == "wss://tts.example.com/v1/audio/stream"
    assert stream_url("ws://h:1/v1/audio/stream") == "ws://h:1/v1/audio/stream"
    assert stream_url("localhost:9000") == "ws://localhost:9000/v1/audio/stream"
    with pytest.raises(ValueError):
        stream_url("ftp://h/")


def test_streams_llm_tokens_and_speaks_them_as_a_plain_request_would(server, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    tokens = llm_tokens(TEXT)
    head_tokens = [t for i, t in enumerate(tokens) if len("".join(tokens[: i + 1]).split()) <= HEAD_WORDS]
    assert not re.search(r"[.!?]", "".join(head_tokens)), "no sentence end: sentence buffering would send nothing"

    async def speak():
        tts, rec, assistant = tts_service(server, seed=1234), Recorder(), LLMAssistantAggregator(LLMContext())
        async with pipeline(tts, rec, assistant) as (worker, head):
            await worker.queue_frames([LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in head_tokens)])
            # true streaming: audio comes while the reply is still being written
            await asyncio.wait_for(rec.first_audio.wait(), timeout=30)
            await worker.queue_frames(
                [*(LLMTextFrame(t) for t in tokens[len(head_tokens) :]), LLMFullResponseEndFrame()]
            )
        return rec, assistant, head

    rec, assistant, head = asyncio.run(speak())
    assert not head.errors, [e.error for e in head.errors]
    assert rec.formats == {(RATE, 1)}, "TTSAudioRawFrames are 24 kHz mono"
    assert rec.events.count("started") == 1 and rec.events.count("stopped") == 1
    assert rec.events.index("started") < rec.events.index("audio") and rec.events[-1] == "stopped"

    (logged,) = logged_requests(caplog, "/v1/audio/stream")
    assert logged["outcome"] == "ok" and logged["seed"] == 1234 and logged["input_chars"] == len(TEXT)
    got, want = pcm(bytes(rec.audio)), plain_request(server, TEXT, seed=1234)
    assert got.numel() == want.numel() > RATE, "the whole reply, as long as the plain request's audio"
    assert int((got - want).abs().max()) <= 1, "same seed and text: the same audio (to int16 rounding)"

    # word times: every word once, in order, each reported before the audio that completes it
    words = [w for w, _, _ in rec.words]
    assert words == TEXT.split()
    starts = [(pts - rec.first_audio_clock) / 1e9 for _, pts, _ in rec.words]
    duration = got.numel() / RATE
    assert starts == sorted(starts) and -0.25 <= starts[0] < 0.5 and starts[-1] < duration
    heard_by = [received / 2 / RATE for _, _, received in rec.words]
    next_starts = starts[1:] + [duration]
    late = [(w, h, s) for w, h, s in zip(words, heard_by, next_starts) if h > s + 0.05]
    assert not late, f"words reported only after their audio had all arrived: {late}"
    assert rec.events.index("word") < len(rec.events) - 1 - rec.events[::-1].index("audio"), "words come with audio"
    # Pipecat's context holds the reply as the words were spoken
    assert assistant.messages[-1] == {"role": "assistant", "content": TEXT}


def played_at(speaker: Speaker, seconds: float) -> float:
    """The clock (seconds) at which the sample ``seconds`` into the audio started playing."""
    offset = int(seconds * RATE) * 2
    clock, first = max(((c, b) for c, b in speaker.frames_played if b <= offset), key=lambda f: f[1])
    return clock / 1e9 + (offset - first) / 2 / RATE


@pytest.mark.parametrize("first_chunk_ms", [None, 0], ids=["adaptive", "at-once"])
def test_words_are_shown_as_their_audio_plays(server, first_chunk_ms):
    """Pipecat shows a word at its start time on a clock that runs from the first audio: if playback
    pauses after a first chunk too short to last, every later word is shown that much before it is heard."""

    async def speak():
        tts = tts_service(server, seed=5, min_first_chunk_ms=first_chunk_ms)
        speaker, rec = Speaker(), Recorder()
        async with pipeline(tts, speaker, rec) as (worker, head):
            await worker.queue_frames(
                [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in llm_tokens(TEXT)), LLMFullResponseEndFrame()]
            )
            async with asyncio.timeout(60):
                while len(rec.words) < len(TEXT.split()):
                    await asyncio.sleep(0.05)
        return speaker, rec, head

    speaker, rec, head = asyncio.run(speak())
    assert not head.errors, [e.error for e in head.errors]
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        timed = c.post("/v1/audio/speech/with-timestamps", json={"input": TEXT, "seed": 5}).json()["words"]
    assert [w for w, _, _ in rec.words] == [w["word"] for w in timed]
    leads = [played_at(speaker, w["start"]) - shown / 1e9 for w, shown in zip(timed, rec.word_clock)]
    print(
        f"\nmin_first_chunk_ms={first_chunk_ms}: word-clock lead (heard minus shown) "
        f"mean {sum(leads) / len(leads):.3f} s, max {max(leads):.3f} s, playback lag {speaker.lag:.3f} s"
    )
    if first_chunk_ms is None:
        assert max(leads) <= 0.05, "a word was shown well before its audio played"


def test_a_japanese_reply_reaches_the_context_as_written(server):
    text = "今日は良い天気ですね。明日は雨でしょう。"

    async def speak():
        tts, rec, assistant = tts_service(server, seed=9), Recorder(), LLMAssistantAggregator(LLMContext())
        async with pipeline(tts, rec, assistant) as (worker, _head):
            pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
            await worker.queue_frames(
                [LLMFullResponseStartFrame(), *(LLMTextFrame(p) for p in pieces), LLMFullResponseEndFrame()]
            )
            await asyncio.wait_for(rec.first_audio.wait(), timeout=30)
        return rec, assistant

    rec, assistant = asyncio.run(speak())
    words = [w for w, _, _ in rec.words]
    assert len(words) >= 4 and "".join(words) == text, "phrases, each with no space before it"
    assert assistant.messages[-1] == {"role": "assistant", "content": text}


def test_interruption_stops_the_server_and_keeps_only_spoken_words(server, caplog):
    caplog.set_level(logging.INFO, logger="tadastream.server")
    tokens = llm_tokens(TEXT)
    streamed = tokens[:-3]  # the reply is still being written when the user barges in

    async def barge_in():
        tts, out, speaker, rec = tts_service(server, seed=7), Recorder(), Speaker(), Recorder()
        assistant = LLMAssistantAggregator(LLMContext())
        async with pipeline(tts, out, speaker, rec, assistant) as (worker, head):
            await worker.queue_frames([LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in streamed)])
            async with asyncio.timeout(30):
                while len(speaker.heard) < 1.5 * 2 * RATE or len(rec.words) < 2:
                    await asyncio.sleep(0.02)
            active_before = (await asyncio.to_thread(server.health))["streams"]["active"]
            await worker.queue_frame(InterruptionFrame())
            stopped_in = await asyncio.to_thread(server.wait_for, lambda s: s["active"] == 0, 5)
            await asyncio.sleep(0.5)  # anything still on its way would show up now
        return tts, out, speaker, rec, assistant, head, active_before, stopped_in

    tts, out, speaker, rec, assistant, head, active_before, stopped_in = asyncio.run(barge_in())
    heard_at = speaker.heard_at_interruption
    assert not head.errors, [e.error for e in head.errors]
    assert active_before == 1, "the server was generating when the user barged in"
    assert stopped_in < 3, "the interruption stopped generation on the server"
    (logged,) = logged_requests(caplog, "/v1/audio/stream")
    assert logged["outcome"] == "cancelled", "the service sent 'cancel'"

    after = out.events[out.events.index("interruption") :]
    assert "audio" not in after and "word" not in after, "the service sends nothing of the interrupted reply after it"
    assert len(speaker.heard) - heard_at <= 0.1 * 2 * RATE, "playback stopped at the interruption"
    assert len(speaker.heard) < logged["audio_seconds"] * 2 * RATE, "audio made but not yet played was dropped"

    spoken = [w for w, _, _ in rec.words]
    all_words = "".join(streamed).split()
    assert 2 <= len(spoken) < len(all_words) and spoken == all_words[: len(spoken)]
    assert all(pts <= speaker.clock_at_interruption for _, pts, _ in rec.words), "no word after the interruption"
    # Pipecat times words from the start of the audio, on its clock: where playback ran dry waiting for audio
    # (speaker.lag: after the short first chunk; more on a starved CPU) the clock is that much ahead of the sound
    starts = [(pts - speaker.started_clock) / 1e9 for _, pts, _ in rec.words]
    assert max(starts) <= heard_at / 2 / RATE + speaker.lag + 0.15, "only words that had started playing were reported"
    assert assistant.messages[-1] == {"role": "assistant", "content": " ".join(spoken)}
    assert not tts._utterances, "the service let go of the interrupted connection"


def said(assistant: LLMAssistantAggregator) -> list[str]:
    """What the conversation context records the assistant as having said, one entry a message."""
    return [m["content"] for m in assistant.messages if m.get("role") == "assistant" and m.get("content")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("kw", "category", "says"),
    [
        ({"voice": "no_such_voice"}, ErrorCategory.INVALID_REQUEST, "voice_not_found"),
        ({"min_first_chunk_ms": -1}, ErrorCategory.INVALID_REQUEST, "invalid_first_chunk"),
        ({"api_key": "wrong"}, ErrorCategory.AUTHENTICATION, "invalid_api_key"),
        ({"base_url": "closed port"}, ErrorCategory.CONNECTIVITY, "cannot speak through"),
    ],
    ids=["unknown-voice", "bad-first-chunk", "wrong-key", "no-server"],
)
def test_refusals_become_error_frames_and_the_pipeline_goes_on(server, kw, category, says):
    if kw.get("base_url") == "closed port":
        kw["base_url"] = f"http://127.0.0.1:{free_port()}"

    async def speak():
        tts, rec = TadaTTSService(**{"base_url": server.url, "api_key": KEY, **kw}), Recorder()
        assistant = LLMAssistantAggregator(LLMContext())
        async with pipeline(tts, rec, assistant) as (worker, head):
            await worker.queue_frames(
                [
                    LLMFullResponseStartFrame(),
                    LLMTextFrame("Nothing"),
                    LLMTextFrame(" comes out."),
                    LLMFullResponseEndFrame(),
                ]
            )
        return rec, assistant, head

    rec, assistant, head = asyncio.run(asyncio.wait_for(speak(), timeout=30))
    assert not rec.audio
    # nothing was spoken, so nothing is recorded as said: the agent must not believe the user heard it
    assert rec.words == []
    assert said(assistant) == []
    refusals = [e for e in head.errors if says in e.error]
    assert len(refusals) == 1, [e.error for e in head.errors]
    assert refusals[0].category == category
    assert server.health()["streams"]["active"] == 0


def test_speak_frame_at_the_telephone_rate(server):
    """A TTSSpeakFrame is one utterance too; audio is resampled to the pipeline's rate."""
    text = "Your table is booked for eight."

    async def speak():
        tts, rec = tts_service(server, seed=3), Recorder()
        async with pipeline(tts, rec, sample_rate=16000) as (worker, head):
            await worker.queue_frame(TTSSpeakFrame(text))
        return rec, head

    rec, head = asyncio.run(speak())
    assert not head.errors, [e.error for e in head.errors]
    assert rec.formats == {(16000, 1)}
    seconds = plain_request(server, text, seed=3).numel() / RATE
    assert abs(len(rec.audio) / 2 / 16000 - seconds) < 0.02


def test_a_model_that_cannot_time_words_still_speaks(server, monkeypatch):
    """Servers whose tokenizer gives no offsets refuse timestamps: the service goes on without them."""
    from tadastream.server import websocket
    from tadastream.service import RequestRefused

    def no_offsets(model, wanted, param="timestamps"):
        if wanted:
            raise RequestRefused(400, "this model's tokenizer gives no character offsets", "unsupported", param)
        return False

    monkeypatch.setattr(websocket, "check_timestamps", no_offsets)
    text = "Your table is booked for eight."

    async def speak():
        tts, rec = tts_service(server, seed=3), Recorder()
        async with pipeline(tts, rec) as (worker, head):
            await worker.queue_frames([LLMFullResponseStartFrame(), LLMTextFrame(text), LLMFullResponseEndFrame()])
        return rec, head

    rec, head = asyncio.run(speak())
    assert not head.errors, [e.error for e in head.errors]
    assert bytes(rec.audio) == bytes(plain_request(server, text, seed=3).to(torch.int16).numpy().tobytes())
    assert " ".join(w for w, _, _ in rec.words) == text, "the reply reaches the context when its audio ends"
    assert rec.events.index("word") > rec.events.index("audio")


class FailingServer:
    """A server speaking the tadastream WebSocket protocol that fails part-way through a reply.

    After ``ready`` and the first text it sends the times of four words and one chunk of audio that
    holds the first three of them whole and only the start of the fourth, then the time of a fifth
    word whose audio never comes, then fails: an ``error`` message (as the real server reports an
    engine failure) or a connection dropped without a close frame (a crash, a network cut).
    """

    WORDS = [("Hello", 0.0, 0.3), ("from", 0.3, 0.55), ("a", 0.55, 0.65), ("voice", 0.65, 1.0)]
    LATER = ("agent", 1.0, 1.4)
    AUDIO_SECONDS = 0.7

    def __init__(self, failure: str):
        self.failure = failure
        self.configs: list[dict] = []

    @staticmethod
    def timed(words) -> str:
        chars = [TEXT.index(w) for w, _, _ in words]
        return json.dumps(
            {
                "type": "timestamps",
                "words": [
                    {"word": w, "start": s, "end": e, "char_start": c, "char_end": c + len(w)}
                    for (w, s, e), c in zip(words, chars)
                ],
            }
        )

    async def speak(self, ws) -> None:
        self.configs.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "ready", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1}))
        await ws.recv()  # the reply's first text
        await ws.send(self.timed(self.WORDS))
        await ws.send(struct.pack("<h", 1000) * int(self.AUDIO_SECONDS * RATE))
        await ws.send(self.timed([self.LATER]))
        if self.failure == "error":
            error = {"message": "the engine failed", "type": "server_error", "code": "internal_error"}
            await ws.send(json.dumps({"type": "error", "error": error}))
            await ws.close(1011)
        else:
            ws.transport.abort()

    async def __aenter__(self) -> str:
        # max_queue=None: the handler reads only the first text, and a full queue would stop the
        # connection from reading the client's close frame (a 10 s close timeout)
        self.server = await serve(self.speak, "127.0.0.1", 0, max_queue=None)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(("failure", "says"), [("error", "internal_error"), ("drop", "lost the tadastream server")])
def test_a_reply_failing_part_way_records_only_the_words_whose_audio_came(failure, says):
    """The context gets the words whose audio arrived whole before the failure: not the word cut off by
    it, not a word timed whose audio never came, nor the rest of the reply."""

    async def speak():
        fake = FailingServer(failure)
        async with fake as url:
            tts, rec, assistant = TadaTTSService(base_url=url), Recorder(), LLMAssistantAggregator(LLMContext())
            async with pipeline(tts, rec, assistant) as (worker, head):
                await worker.queue_frames(
                    [
                        LLMFullResponseStartFrame(),
                        *(LLMTextFrame(t) for t in llm_tokens(TEXT)),
                        LLMFullResponseEndFrame(),
                    ]
                )
        return fake, rec, assistant, head

    fake, rec, assistant, head = asyncio.run(asyncio.wait_for(speak(), timeout=30))
    assert len(fake.configs) == 1 and fake.configs[0]["timestamps"] is True
    assert len(rec.audio) == int(FailingServer.AUDIO_SECONDS * RATE) * 2, "the audio that came is played"
    assert [w for w, _, _ in rec.words] == ["Hello", "from", "a"]
    assert said(assistant) == ["Hello from a"]
    assert [e.error for e in head.errors if says in e.error], [e.error for e in head.errors]
