"""Voice-agent frameworks' own OpenAI TTS clients, with their default settings, against a real server.

LiveKit's ``openai.TTS`` asks for mp3 over SSE; Pipecat's ``OpenAITTSService`` for raw pcm. Both
frameworks come with the ``test`` extra.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from tests.helpers.server_harness import demo_server, logged_requests

TEXT = "Hello from a voice agent. This reply is spoken while it is still being made."


@pytest.fixture(scope="module")
def server():
    with demo_server(max_streams=2) as live:
        yield live


def test_livekit_openai_tts_with_its_defaults(server, caplog):
    from livekit.plugins import openai as lk_openai
    caplog.set_level(logging.INFO, logger="tadastream.server")

    async def synthesize():
        tts = lk_openai.TTS(base_url=f"{server.url}/v1", api_key="unused")  # defaults: mp3 over SSE
        try:
            return [event.frame async for event in tts.synthesize(TEXT)]
        finally:
            await tts.aclose()

    frames = asyncio.run(synthesize())
    samples = sum(f.samples_per_channel for f in frames)
    assert frames and {f.sample_rate for f in frames} == {24000} and {f.num_channels for f in frames} == {1}
    pcm = torch.frombuffer(bytearray(b"".join(bytes(f.data) for f in frames)), dtype=torch.int16).float()
    assert float(pcm.abs().max()) > 1000, "LiveKit decoded audible speech"
    (request,) = logged_requests(caplog, "/v1/audio/speech")
    assert request["status"] == 200 and request["outcome"] == "ok"
    assert request["format"] == "mp3" and request["stream_format"] == "sse", "LiveKit's default request"
    # the mp3 decodes to the audio made, plus the encoder's delay of a few frames
    assert 0 <= samples - request["audio_seconds"] * 24000 <= 4 * 576 + 24


def test_pipecat_openai_tts_service_with_its_defaults(server, caplog):
    from pipecat.frames.frames import EndFrame, ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.services.openai.tts import OpenAITTSService
    from pipecat.workers.runner import WorkerRunner

    caplog.set_level(logging.INFO, logger="tadastream.server")

    class Collect(FrameProcessor):
        def __init__(self):
            super().__init__()
            self.audio, self.rates, self.errors = bytearray(), set(), []

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                self.audio += frame.audio
                self.rates.add(frame.sample_rate)
            elif isinstance(frame, ErrorFrame):
                self.errors.append(frame.error)
            await self.push_frame(frame, direction)

    async def speak() -> Collect:
        sink = Collect()
        tts = OpenAITTSService(api_key="unused", base_url=f"{server.url}/v1")  # defaults: pcm at 24 kHz
        worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=24000))
        await worker.queue_frames([TTSSpeakFrame(TEXT), EndFrame()])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await asyncio.wait_for(runner.run(), timeout=120)
        return sink

    sink = asyncio.run(speak())
    assert not sink.errors and sink.rates == {24000}
    (request,) = logged_requests(caplog, "/v1/audio/speech")
    assert request["status"] == 200 and request["outcome"] == "ok" and request["format"] == "pcm"
    assert len(sink.audio) == request["bytes_out"], "every byte sent became audio"
    seed = request["seed"]
    with server.client() as c:
        again = c.post("/v1/audio/speech", json={"input": TEXT, "seed": seed, "response_format": "pcm"})
    assert bytes(sink.audio) == again.content, "the same seed gives the same audio as a plain request"
