"""generate(stream=True) end to end on the tiny demo model."""

import asyncio
import threading

import pytest
import torch

from tadastream import AudioStream, GenerationInputError, InferenceOptions

TEXTS = ["Please call Stella. Ask her to bring these things.", "Five shots may have been fired, the experts said."]


def full_audio(model, voice, text, seed, **kw):
    torch.manual_seed(seed)
    return model.generate(prompt=voice, text=text, **kw).audio[0]


def streamed(model, voice, text, seed, **kw):
    torch.manual_seed(seed)
    stream = model.generate(prompt=voice, text=text, stream=True, **kw)
    chunks = [c for c, sr in stream]
    return chunks, stream


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_non_stream(demo_model, demo_voice, text, seed):
    ref = full_audio(demo_model, demo_voice, text, seed)
    # first final samples at once: how many chunks an adaptive first chunk gathers depends on the load
    chunks, stream = streamed(demo_model, demo_voice, text, seed, min_first_chunk_ms=0)
    audio = torch.cat(chunks)
    assert audio.shape == ref.shape
    assert (audio - ref).abs().max() <= 1e-4
    assert len(chunks) >= 3
    assert all(c.dtype == torch.float32 and c.dim() == 1 for c in chunks)
    result = stream.result
    assert result.audio is None and result.time_to_first_audio is not None
    assert len(result.chunk_times) == len(chunks) and result.chunk_times == sorted(result.chunk_times)
    assert result.time_to_first_audio < result.total_time


def test_first_chunk_setting_is_checked_before_any_work(demo_model, demo_voice):
    with pytest.raises(GenerationInputError, match="stream=True"):
        demo_model.generate(prompt=demo_voice, text="Hello.", min_first_chunk_ms=100)
    for bad in (-1, float("nan"), "100", True, 10**9, 10**400):
        with pytest.raises(GenerationInputError, match="min_first_chunk_ms"):
            demo_model.generate(prompt=demo_voice, text="Hello.", stream=True, min_first_chunk_ms=bad)
    with pytest.raises(GenerationInputError, match="min_first_chunk_ms"):  # long form checks it first too
        demo_model.generate(prompt=demo_voice, text="Hello. " * 50, stream=True, long_form=True, min_first_chunk_ms=-1)


def test_stream_equals_non_stream_with_options(demo_model, demo_voice):
    opts = InferenceOptions(
        text_do_sample=False,
        cfg_schedule="linear",
        time_schedule="cosine",
        num_acoustic_candidates=2,
        negative_condition_source="prompt",
    )
    ref = full_audio(demo_model, demo_voice, TEXTS[0], 3, inference_options=opts, num_transition_steps=2)
    chunks, _ = streamed(demo_model, demo_voice, TEXTS[0], 3, inference_options=opts, num_transition_steps=2)
    assert (torch.cat(chunks) - ref).abs().max() <= 1e-4


def test_speed_up_streams_the_second_pass(demo_model, demo_voice):
    opts = InferenceOptions(speed_up_factor=1.5)
    ref = full_audio(demo_model, demo_voice, TEXTS[1], 2, inference_options=opts)
    chunks, _ = streamed(demo_model, demo_voice, TEXTS[1], 2, inference_options=opts)
    assert (torch.cat(chunks) - ref).abs().max() <= 1e-4


def test_first_chunk_arrives_before_generation_ends(demo_model, demo_voice):
    torch.manual_seed(0)
    stream = demo_model.generate(prompt=demo_voice, text=TEXTS[0] + " " + TEXTS[1], stream=True)
    it = iter(stream)
    next(it)
    assert stream.result is None and not stream.finished  # the LLM is still mid-utterance
    rest = list(it)
    assert rest and stream.result is not None


def test_early_break_frees_state_and_model_stays_usable(demo_model, demo_voice):
    torch.manual_seed(1)
    stream = demo_model.generate(prompt=demo_voice, text=TEXTS[0], stream=True)
    for _chunk, _sr in stream:
        break
    stream.close()
    assert stream.finished and stream.engine.pool.in_use == 0  # the slot (KV cache) is free
    assert list(stream) == []
    ref = full_audio(demo_model, demo_voice, TEXTS[1], 4)
    again = torch.cat(streamed(demo_model, demo_voice, TEXTS[1], 4)[0])
    assert (again - ref).abs().max() <= 1e-4


def test_context_manager_closes(demo_model, demo_voice):
    with demo_model.generate(prompt=demo_voice, text=TEXTS[0], stream=True) as stream:
        next(iter(stream))
    assert stream.finished and stream.engine.pool.in_use == 0


def test_interleaved_streams_match_solo(demo_model, demo_voice):
    solo = [torch.cat(streamed(demo_model, demo_voice, t, s)[0]) for t, s in zip(TEXTS, (11, 12))]
    torch.manual_seed(11)
    a = demo_model.generate(prompt=demo_voice, text=TEXTS[0], stream=True)
    torch.manual_seed(12)
    b = demo_model.generate(prompt=demo_voice, text=TEXTS[1], stream=True)
    out = {0: [], 1: []}
    its = [iter(a), iter(b)]
    live = [0, 1]
    while live:
        for i in list(live):
            try:
                out[i].append(next(its[i])[0])
            except StopIteration:
                live.remove(i)
    for i in (0, 1):
        assert (torch.cat(out[i]) - solo[i]).abs().max() <= 1e-4


def test_threaded_streams_match_solo(demo_model, demo_voice):
    solo = [torch.cat(streamed(demo_model, demo_voice, t, s)[0]) for t, s in zip(TEXTS, (21, 22))]
    streams = []
    for t, s in zip(TEXTS, (21, 22)):
        torch.manual_seed(s)
        streams.append(demo_model.generate(prompt=demo_voice, text=t, stream=True))
    results = {}

    def run(i):
        results[i] = torch.cat([c for c, _ in streams[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for i in (0, 1):
        assert (results[i] - solo[i]).abs().max() <= 1e-4


def test_async_iteration_matches_sync(demo_model, demo_voice):
    ref = torch.cat(streamed(demo_model, demo_voice, TEXTS[0], 5)[0])

    async def consume():
        torch.manual_seed(5)
        stream = demo_model.generate(prompt=demo_voice, text=TEXTS[0], stream=True)
        return [c async for c, _ in stream]

    chunks = asyncio.run(consume())
    assert (torch.cat(chunks) - ref).abs().max() <= 1e-4


def test_async_cancellation_stops_generation(demo_model, demo_voice):
    stream = demo_model.generate(prompt=demo_voice, text=" ".join(TEXTS * 3), stream=True)

    async def consume():
        async for _chunk, _sr in stream:
            await asyncio.sleep(10)  # a slow consumer, cancelled while holding the stream

    async def main():
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the worker finishes at most the step in progress
            if stream.finished:
                break
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert stream.finished and stream.result is None and stream.engine.pool.in_use == 0


def test_bad_input_fails_at_call_time(demo_model, demo_voice):
    with pytest.raises(GenerationInputError, match="empty"):
        demo_model.generate(prompt=demo_voice, text="   ", stream=True)
    with pytest.raises(GenerationInputError, match="cfg_schedule"):
        demo_model.generate(
            prompt=demo_voice, text="Hi.", stream=True, inference_options=InferenceOptions(cfg_schedule="bogus")
        )
    assert isinstance(demo_model.generate(prompt=demo_voice, text="Hi there.", stream=True), AudioStream)
