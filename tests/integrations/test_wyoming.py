"""``tadastream wyoming``: a real Wyoming server (demo model, in a thread), driven by ``wyoming``'s own client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from tadastream.audio import float_to_pcm16
from tadastream.cli import main as cli_main
from tadastream.drivers.stream import AudioStream
from tadastream.generation import SpeechRequest
from tadastream.integrations.wyoming import (
    DEFAULT_EVENT_TIMEOUT,
    DEFAULT_MAX_EVENT_BYTES,
    build_wyoming,
    run_wyoming,
    wyoming_options,
)
from tadastream.limits import REALTIME_MARGIN
from tadastream.optionsets import OptionError, option_namespace
from tadastream.server import add_serve_arguments
from tests.helpers.paths import SRC
from tests.helpers.slow import slow_llm


def main(argv: list[str]) -> int:
    """``tadastream wyoming ARGV``, in this process."""
    return cli_main(["wyoming", *argv])


SEED = 7
SAMPLES_PER_CHUNK = 4096
TEXT = "Hello there, this is a small test of the streaming server with several words."
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs far away."] * 24)


class LiveWyoming:
    """``WyomingTTS.serve`` on a free loopback port, in an event loop of its own thread."""

    def __init__(self, tts):
        self.tts = tts
        with socket.socket() as probe:  # a free port; the server binds it a moment later
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.tts.serve(f"tcp://127.0.0.1:{self.port}"))
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    def __enter__(self) -> LiveWyoming:
        self.thread.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or not self.thread.is_alive():
                    raise RuntimeError("the Wyoming test server did not start") from None
                time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=20)

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, read_timeout=30)

    def wait_idle(self, timeout: float = 5.0) -> float:
        """Seconds until no stream holds a slot or runs in the engine; fails after ``timeout``."""
        service, start = self.tts.service, time.monotonic()
        while time.monotonic() - start < timeout:
            if service.engine.active == 0 and service.engine.queued == 0 and service.admission.active == 0:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"slot not freed: engine {service.engine.stats()}, admission {service.admission.active}")


@contextlib.contextmanager
def served(prepare=None, **options):
    """A live server of ``build_wyoming(model="demo", threads=1, seed=SEED, ...)`` with ``options``;
    ``prepare(tts)`` runs before it listens. Closed, and torch's threads restored, afterwards."""
    threads = torch.get_num_threads()
    tts = build_wyoming(model="demo", threads=1, seed=SEED, samples_per_chunk=SAMPLES_PER_CHUNK, **options)
    try:
        if prepare is not None:
            prepare(tts)
        with LiveWyoming(tts) as live:
            yield live
    finally:
        tts.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices")

    def second_voice(tts) -> None:  # found by the next describe
        tts.voices.default.save(voices / "calm.voice")

    with served(second_voice, voices=str(voices), max_streams=2) as live:
        yield live


@pytest.fixture(scope="module")
def reference(server) -> bytes:
    """TEXT generated directly through tadastream (own engine) with the server's seed and default voice, as PCM16."""
    model, voice = server.tts.service.model, server.tts.voices.default
    audio = torch.cat([chunk for chunk, _rate in AudioStream(model, SpeechRequest(TEXT, voice, seed=SEED))])
    return float_to_pcm16(audio)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def read_until(client: AsyncTcpClient, kind: str) -> list[Event]:
    """Events up to and including the first of type ``kind``."""
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed before {kind!r}; got {[e.type for e in events]}"
        events.append(event)
        if event.type == kind:
            return events


def audio_of(events: list[Event]) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


def test_describe_lists_one_streaming_program_with_its_voices(server):
    async def go():
        async with server.client() as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())

    info = run(go())
    assert info.asr == [] and len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "tadastream" and program.installed
    assert program.supports_synthesize_streaming is True
    assert [v.name for v in program.voices] == ["default", "calm"]
    assert all(v.installed and v.languages == ["en"] for v in program.voices)
    assert program.attribution.name and program.attribution.url.startswith("https://")


def test_synthesize_sends_the_model_audio_in_chunks(server, reference):
    async def go():
        async with server.client() as client:
            await client.write_event(Synthesize(text=TEXT).event())
            return await read_until(client, "audio-stop")

    events = run(go())
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert AudioStop.is_type(events[-1].type)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert all(AudioChunk.is_type(e.type) for e in events[1:-1])
    assert len(chunks) >= 5  # ~6 s of audio, at most SAMPLES_PER_CHUNK samples each
    assert all(0 < c.samples <= SAMPLES_PER_CHUNK and (c.rate, c.width, c.channels) == (24000, 2, 1) for c in chunks)
    sent = 0
    for chunk in chunks:  # timestamps: milliseconds of audio before the chunk
        assert chunk.timestamp == sent * 1000 // 24000
        sent += chunk.samples
    assert audio_of(events) == reference  # same seed, same audio as tadastream makes directly
    assert max(abs(int.from_bytes(reference[i : i + 2], "little", signed=True)) for i in range(0, 4000, 2)) > 0
    server.wait_idle()


def test_streamed_text_is_spoken_before_the_stop_and_matches_one_shot(server, reference):
    words = TEXT.split(" ")

    async def go():
        async with server.client() as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="default")).event())
            for word in words[:-1]:
                await client.write_event(SynthesizeChunk(text=word + " ").event())
            # true streaming: audio for the words so far comes while the stop has not been sent
            early = await asyncio.wait_for(read_until(client, "audio-chunk"), 15)
            await client.write_event(SynthesizeChunk(text=words[-1]).event())
            # as Home Assistant does: the whole text again for old servers, then the stop
            await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="default")).event())
            await client.write_event(SynthesizeStop().event())
            rest = await read_until(client, "synthesize-stopped")
            await asyncio.sleep(0.2)
            ticks = server.tts.service.engine.ticks
            # a plain synthesize after the session is the compat copy too: no second audio
            await client.write_event(Synthesize(text=TEXT).event())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.read_event(), 1.5)
            return early, rest, ticks

    early, rest, ticks = run(go())
    assert [e.type for e in early] == ["audio-start", "audio-chunk"]
    events = early + rest
    kinds = [e.type for e in events]
    assert kinds.count("audio-start") == 1 and kinds.count("audio-stop") == 1
    assert kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert SynthesizeStopped.is_type(events[-1].type)
    assert audio_of(events) == reference
    assert server.tts.service.engine.ticks == ticks  # nothing was generated for the extra synthesize events
    server.wait_idle()


def test_a_stream_stopped_without_words_is_an_empty_utterance(server):
    async def go():
        async with server.client() as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="  ").event())
            await client.write_event(SynthesizeStop().event())
            return await read_until(client, "synthesize-stopped")

    assert [e.type for e in run(go())] == ["audio-start", "audio-stop", "synthesize-stopped"]
    server.wait_idle()


def test_disconnect_mid_stream_frees_the_slot(server):
    async def go():
        client = server.client()
        await client.connect()
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Hello there, this is the start of a sentence ").event())
        await read_until(client, "audio-chunk")
        with contextlib.suppress(TimeoutError):  # take the audio of the words sent, until it stops coming
            while True:
                await asyncio.wait_for(client.read_event(), 0.5)
        # the stream waits for more text (no stop was sent), holding its slot; nothing more is written, so
        # only the server seeing the connection close can free it
        holding = (server.tts.service.engine.active, server.tts.service.admission.active)
        await client.disconnect()
        return holding

    assert run(go()) == (1, 1)
    assert server.wait_idle(5.0) < 5.0


def test_disconnect_mid_synthesize_stops_generation(server):
    async def go():
        client = server.client()
        await client.connect()
        await client.write_event(Synthesize(text=LONG_TEXT).event())
        await read_until(client, "audio-chunk")
        # the first audio came while the rest was still being generated
        running = server.tts.service.engine.active
        await client.disconnect()
        return running

    assert run(go()) == 1
    server.wait_idle(3.0)  # far sooner than the ~1800 characters would take
    ticks = server.tts.service.engine.ticks
    time.sleep(0.3)
    assert server.tts.service.engine.ticks == ticks


@pytest.mark.parametrize("streamed", [False, True], ids=["synthesize", "synthesize-start"])
def test_unknown_voice_is_a_wyoming_error(server, streamed):
    voice = SynthesizeVoice(name="nobody")

    async def go():
        async with server.client() as client:
            if streamed:  # refused at the start, before any text
                await client.write_event(SynthesizeStart(voice=voice).event())
            else:
                await client.write_event(Synthesize(text=TEXT, voice=voice).event())
            events = await read_until(client, "error")
            return events, await client.read_event()

    events, after = run(go())
    assert [e.type for e in events] == ["error"]  # refused before any audio
    error = Error.from_event(events[0])
    assert error.code == "voice_not_found"
    assert "'nobody'" in error.text and "default" in error.text and "calm" in error.text
    assert after is None  # then the server closes the connection: a client waiting for audio is not left hanging
    server.wait_idle()


def test_a_stream_without_new_text_times_out(server):
    tts = server.tts
    tts.idle_timeout = 0.5
    try:

        async def go():
            async with server.client() as client:
                await client.write_event(SynthesizeStart().event())
                await client.write_event(SynthesizeChunk(text="Hello there ").event())
                return await read_until(client, "error")

        started = time.monotonic()
        events = run(go())
    finally:
        tts.idle_timeout = 60.0
    assert events[0].type == "audio-start"
    error = Error.from_event(events[-1])
    assert error.code == "timeout" and "synthesize-stop" in error.text
    assert 0.4 < time.monotonic() - started < 10
    server.wait_idle()


# -- a stream waiting for a slot ------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_slot_server():
    """A server of its own with one stream slot, so a second synthesis waits in the queue."""
    with served(max_streams=1) as live:
        yield live


async def hold_the_slot(live, queued: AsyncTcpClient, seconds: float) -> tuple[list[Event], int]:
    """Hold the only slot with a streamed synthesis that gets a word every 0.1 s (never idle) while
    ``queued`` starts a stream of TEXT, waits in the queue, and sends synthesize-stop once its audio
    starts (as a client that paces its text by the audio would); then stop. Returns ``queued``'s
    events up to its synthesize-stopped or error, and how many waited in the queue at the stop."""
    admission = live.tts.service.admission
    async with live.client() as holder:
        await holder.write_event(SynthesizeStart().event())
        await holder.write_event(SynthesizeChunk(text="Hold ").event())
        while admission.active == 0:
            await asyncio.sleep(0.01)
        await queued.write_event(SynthesizeStart().event())
        await queued.write_event(SynthesizeChunk(text=TEXT).event())

        async def listen() -> list[Event]:
            events: list[Event] = []
            while (event := await queued.read_event()) is not None:
                events.append(event)
                if AudioStart.is_type(event.type):
                    await queued.write_event(SynthesizeStop().event())
                elif event.type in ("synthesize-stopped", "error"):
                    break
            return events

        listening = asyncio.create_task(listen())
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await asyncio.sleep(0.1)
            await holder.write_event(SynthesizeChunk(text="on ").event())
        waited = admission.waiting
        await holder.write_event(SynthesizeStop().event())
        await read_until(holder, "synthesize-stopped")
        return await listening, waited


def test_the_idle_clock_does_not_run_while_a_stream_waits_for_a_slot(one_slot_server):
    live = one_slot_server

    async def go():
        async with live.client() as queued:
            return await hold_the_slot(live, queued, seconds=1.5)

    with limits(live, idle_timeout=0.5):  # the wait in the queue is three times as long
        events, waited = run(go())
    assert waited == 1  # it was still in the queue when the holder stopped
    assert "error" not in [e.type for e in events], [Error.from_event(e).text for e in events if Error.is_type(e.type)]
    assert [e.type for e in events[:1] + events[-2:]] == ["audio-start", "audio-stop", "synthesize-stopped"]
    model, voice = live.tts.service.model, live.tts.voices.default
    reference = torch.cat([chunk for chunk, _rate in AudioStream(model, SpeechRequest(TEXT, voice, seed=SEED))])
    assert audio_of(events) == float_to_pcm16(reference)
    live.wait_idle()


def test_a_stream_waiting_for_a_slot_gets_the_queue_timeout(one_slot_server):
    live = one_slot_server
    admission = live.tts.service.admission

    async def go():
        async with live.client() as queued:
            events, _waited = await hold_the_slot(live, queued, seconds=1.5)
            return events, await queued.read_event()

    admission.timeout = 0.6
    try:
        with limits(live, idle_timeout=0.3):  # the idle clock would have run out first
            events, after = run(go())
    finally:
        admission.timeout = 30.0
    assert [e.type for e in events] == ["error"]  # refused before any audio
    error = Error.from_event(events[0])
    assert error.code == "queue_timeout" and "0.6 s" in error.text, error.text
    assert after is None  # then the connection closes
    live.wait_idle()


# -- admission by real-time capacity --------------------------------------------------------------
MEDIUM = " ".join(["This sentence keeps a stream busy for a good while."] * 2)
PCM_BYTES_PER_SECOND = 2 * 24000


@pytest.fixture
def realtime_server():
    """A server of its own under ``--admission realtime`` with no queue, its LLM slowed by a cost per
    stream row the engine really pays: a demo stream (0.12-0.16 s of audio a step, 2 rows) then
    takes a little over 0.08 s a tick alone, ahead of playback, and two would fall behind."""

    def slowed(tts) -> None:
        assert tts.service.engine.first_audio_boost == "off"  # the option reached the engine
        slow_llm(tts.service.engine, per_row=0.04)

    options = dict(max_streams=4, queue=0, admission="realtime", realtime_margin=1.5, first_audio_boost="off")
    with served(slowed, **options) as live:
        yield live


def test_realtime_admission_refuses_with_an_error_event_while_the_running_synthesis_completes(realtime_server):
    live = realtime_server
    admission = live.tts.service.admission
    assert (admission.policy, admission.capacity.margin) == ("realtime", 1.5)  # the options reached the service

    async def refused(streamed: bool) -> tuple[list[Event], Event | None]:
        async with live.client() as client:
            if streamed:
                await client.write_event(SynthesizeStart().event())
                await client.write_event(SynthesizeChunk(text=TEXT).event())
            else:
                await client.write_event(Synthesize(text=TEXT).event())
            return await read_until(client, "error"), await client.read_event()

    async def go():
        async with live.client() as first:
            started = time.monotonic()
            await first.write_event(Synthesize(text=MEDIUM).event())
            events, heard = [], 0
            while heard < 1.5 * PCM_BYTES_PER_SECOND:  # enough audio for the capacity model to know its rate
                events.append(await first.read_event())
                if AudioChunk.is_type(events[-1].type):
                    heard += len(AudioChunk.from_event(events[-1]).audio)
            others = [await refused(streamed=False), await refused(streamed=True)]
            events += await read_until(first, "audio-stop")
            return events, others, time.monotonic() - started

    events, others, elapsed = run(go())
    # three slots free, yet each newcomer is turned away: one more stream would fall behind playback
    for answer, after in others:
        assert [e.type for e in answer] == ["error"]  # refused before any audio
        error = Error.from_event(answer[0])
        assert error.code == "queue_full"
        assert re.fullmatch(
            r"the server is at its real-time capacity \(1 running\) and the queue is full; retry in \d+ s", error.text
        ), error.text
        assert after is None  # then the connection closes: the client is not left waiting for audio
    # the running synthesis went on, whole and ahead of playback
    assert [e.type for e in events[:1] + events[-1:]] == ["audio-start", "audio-stop"]
    assert "error" not in [e.type for e in events]
    model, voice = live.tts.service.model, live.tts.voices.default
    reference = torch.cat([chunk for chunk, _rate in AudioStream(model, SpeechRequest(MEDIUM, voice, seed=SEED))])
    assert audio_of(events) == float_to_pcm16(reference)
    audio = len(audio_of(events)) / PCM_BYTES_PER_SECOND
    assert audio / elapsed > 1, f"{audio:.2f} s of audio took {elapsed:.2f} s: the running stream fell behind"
    live.wait_idle()


def test_the_admission_and_boost_flags_are_the_servers(capsys):
    serve = option_namespace(add_serve_arguments)
    opts = wyoming_options()
    assert (opts.admission, opts.realtime_margin) == ("slots", REALTIME_MARGIN)
    assert (serve.admission, serve.realtime_margin) == ("slots", REALTIME_MARGIN)
    assert opts.first_audio_boost == serve.first_audio_boost == "guarded"
    with pytest.raises(OptionError, match=r"^--admission must be one of slots, realtime, got 'fast'$"):
        run_wyoming(wyoming_options(model="demo", admission="fast"))
    with pytest.raises(OptionError, match=r"^--first-audio-boost must be one of guarded, always, off, got 'x'$"):
        run_wyoming(wyoming_options(model="demo", first_audio_boost="x"))
    for argv, said in (
        (["--realtime-margin", "0.5"], "--realtime-margin must be a number >= 1, got 0.5"),
        (["--first-audio-boost", "x"], "argument --first-audio-boost: invalid choice: 'x'"),
        (["--admission", "fast"], "argument --admission: invalid choice: 'fast'"),
    ):
        try:
            status = main(["--model", "demo", *argv])
        except SystemExit as exc:  # argparse's own refusal
            status = exc.code
        assert status == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


# -- reading events: size cap, unfinished events, clients that leave ------------------------------
def header(kind: str, **fields) -> bytes:
    """A raw event header line, as a client (well-behaved or not) writes it."""
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


@contextlib.contextmanager
def limits(server, **values):
    """Set the server's per-connection limits (read as each event is read) for one test."""
    before = {name: getattr(server.tts, name) for name in values}
    for name, value in values.items():
        setattr(server.tts, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(server.tts, name, value)


async def refusal(server, sent: bytes, pause: float = 0.0) -> tuple[Error, bool, float]:
    """Write ``sent`` over a raw TCP connection (then wait ``pause`` s, still connected); returns the
    ``error`` event the server answers with, whether it then closed the connection, and the seconds
    from the write to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(sent)
        await writer.drain()
        started = time.monotonic()
        event = await asyncio.wait_for(async_read_event(reader), 5 + pause)
        assert event is not None and Error.is_type(event.type), event
        closed = await asyncio.wait_for(reader.read(1), 5) == b""
        return Error.from_event(event), closed, time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize(
    "sent, code",
    [
        (header("synthesize", data_length=999_999_999), "event_too_large"),
        (header("synthesize", data_length=20, payload_length=DEFAULT_MAX_EVENT_BYTES), "event_too_large"),
        (b"this is not json\n", "bad_event"),
        (header("synthesize", data_length=-5), "bad_event"),
        (header("synthesize", data_length=2) + b"{}", "bad_event"),  # no text
        (header("synthesize", data_length=6) + b"[1, 2]", "bad_event"),
    ],
    ids=["huge-data", "huge-payload", "not-json", "negative-length", "no-text", "data-not-an-object"],
)
def test_a_bad_event_is_refused_from_its_header_and_the_connection_closed(server, sent, code):
    error, closed, seconds = run(refusal(server, sent))
    assert error.code == code
    assert closed and seconds < 2  # refused at once: nothing of a declared body was waited for
    if code == "event_too_large":
        assert "--max-event-bytes" in error.text and str(DEFAULT_MAX_EVENT_BYTES) in error.text
    server.wait_idle()


def test_the_cap_counts_header_data_and_payload(server):
    data, payload = json.dumps({"pad": "x" * 300}).encode(), b"\0" * 200
    event = header("describe", data_length=len(data), payload_length=len(payload)) + data + payload

    async def describe() -> Event | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(event)
            await writer.drain()
            return await asyncio.wait_for(async_read_event(reader), 5)
        finally:
            writer.close()

    with limits(server, max_event_bytes=len(event)):  # exactly at the cap: served
        assert Info.is_type(run(describe()).type)
    with limits(server, max_event_bytes=len(event) - 1):  # one byte over: refused
        answer = run(describe())
    assert Error.is_type(answer.type) and Error.from_event(answer).code == "event_too_large"


@pytest.mark.parametrize(
    "sent",
    [b'{"type": "synth', header("synthesize", data_length=100) + b'{"text": "Hel'],
    ids=["header", "body"],
)
def test_an_event_left_unfinished_is_dropped_after_the_event_timeout(server, sent):
    with limits(server, event_timeout=0.3):
        error, closed, seconds = run(refusal(server, sent, pause=0.3))
    assert error.code == "timeout" and "--event-timeout" in error.text
    assert closed and 0.25 < seconds < 3
    server.wait_idle()


def test_an_idle_connection_is_not_an_unfinished_event(server):
    async def go():
        async with server.client() as client:
            await asyncio.sleep(0.6)  # twice the event timeout, between events: allowed
            await client.write_event(Describe().event())
            return await client.read_event()

    with limits(server, event_timeout=0.3):
        assert Info.is_type(run(go()).type)


@pytest.mark.parametrize("moment", ["mid-event", "mid-synthesis"])
def test_a_client_leaving_is_one_line_in_the_log_and_no_task_error(server, caplog, moment):
    caplog.set_level(logging.INFO)
    unhandled: list[dict] = []  # what asyncio reports on the server's loop ("Task exception was never retrieved")
    server.loop.set_exception_handler(lambda loop, context: unhandled.append(context))

    async def leave():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if moment == "mid-event":  # half of a declared body, then gone
            writer.write(header("synthesize", data_length=200) + b'{"text": "Hello')
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
        else:  # audio is streaming when the connection is reset
            data = json.dumps({"text": LONG_TEXT}).encode()
            writer.write(header("synthesize", data_length=len(data)) + data)
            await writer.drain()
            while not AudioChunk.is_type((await asyncio.wait_for(async_read_event(reader), 30)).type):
                pass
            writer.transport.abort()

    expected = f"client left {moment}"
    try:
        run(leave())
        server.wait_idle()
        deadline = time.monotonic() + 5
        while expected not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        gc.collect()  # a task holding an exception reports it when collected
    finally:
        server.loop.set_exception_handler(None)
    left = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tadastream.wyoming" and "; connection closed" in r.getMessage()
    ]
    assert len(left) == 1 and expected in left[0], left  # one line, said once
    assert unhandled == []
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def test_cli_without_wyoming_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wyoming.server", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r'pip install "tadastream\[wyoming\]"'):
        run_wyoming(wyoming_options(model="demo"))
    assert main(["--model", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "tadastream[wyoming]"' in err


def test_bad_options_fail_before_loading(capsys):
    with pytest.raises(OptionError, match="--queue"):
        run_wyoming(wyoming_options(model="demo", queue=-1))
    assert main(["--model", "demo", "--uri", "http://127.0.0.1:10200"]) == 2
    assert "--uri" in capsys.readouterr().err
    assert main(["--model", "demo", "--samples-per-chunk", "0"]) == 2
    assert "--samples-per-chunk" in capsys.readouterr().err
    for flag, value in (("--max-event-bytes", "100"), ("--max-event-bytes", "-1"), ("--event-timeout", "0")):
        assert main(["--model", "demo", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err, err
    opts = wyoming_options()
    assert (opts.max_event_bytes, opts.event_timeout) == (DEFAULT_MAX_EVENT_BYTES, DEFAULT_EVENT_TIMEOUT) == (2**20, 15)


def test_module_runs_and_imports_no_wyoming_until_served():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = (
        "import argparse, sys\n"
        "from tadastream.integrations.wyoming import add_wyoming_arguments\n"
        "p = argparse.ArgumentParser(); add_wyoming_arguments(p); a = p.parse_args([])\n"
        "assert a.uri == 'tcp://127.0.0.1:10200' and a.max_streams == 4 and a.seed is None, a\n"
        "assert 'wyoming' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    done = subprocess.run(
        [sys.executable, "-m", "tadastream", "wyoming", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--uri" in done.stdout and "--default-voice" in done.stdout


@pytest.mark.parametrize("streamed", [False, True], ids=["synthesize", "synthesize-start"])
def test_the_input_limit_is_the_servers_check_in_its_words(server, streamed):
    """Wyoming refuses a text past --max-input-chars with the HTTP server's check and wording."""
    tts, limit = server.tts, server.tts.max_input_chars
    tts.max_input_chars = 40
    text = "Hello there, this text is longer than forty characters."  # 55

    async def go():
        async with server.client() as client:
            if streamed:
                await client.write_event(SynthesizeStart().event())
                await client.write_event(SynthesizeChunk(text=text[:30]).event())
                await client.write_event(SynthesizeChunk(text=text[30:]).event())
            else:
                await client.write_event(Synthesize(text=text).event())
            return await read_until(client, "error")

    try:
        events = run(go())
    finally:
        tts.max_input_chars = limit
    error = Error.from_event(events[-1])
    assert error.code == "input_too_long"
    assert error.text == "the text is 55 characters; the limit is 40: send the rest in another request"
    server.wait_idle()
