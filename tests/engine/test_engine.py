"""The batched engine on the tiny demo model: batched equals solo, whatever joins, leaves or waits."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
import torch

from tadastream import InferenceOptions
from tadastream.demo import build_demo_model
from tadastream.drivers.stream import AudioStream
from tadastream.engine import Engine
from tadastream.generation import SpeechRequest, StreamRng, TextInput

TEXTS = [
    "Please call Stella. Ask her to bring these things.",
    "Five shots may have been fired, the experts said.",
    "Hello there, how are you doing today?",
    "The river keeps running past old stone bridges.",
]
# Streams that differ in everything the runner batches: guidance on/off, flow steps and time
# schedules, candidates, a text-only row, the two-pass speed-up, prompt guidance.
OPTIONS = [
    InferenceOptions(),
    InferenceOptions(acoustic_cfg_scale=1.0, num_flow_matching_steps=4, time_schedule="cosine"),
    InferenceOptions(num_acoustic_candidates=3, cfg_schedule="linear", text_do_sample=False),
    InferenceOptions(text_only_logit_scale=0.5, num_flow_matching_steps=6, time_schedule="uniform"),
    InferenceOptions(speed_up_factor=1.3),
    InferenceOptions(negative_condition_source="prompt", duration_cfg_scale=1.4),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny; a second thread only adds noise on shared CI
    yield
    torch.set_num_threads(threads)


def solo(model, voice, text, seed, options, **kw):
    """(audio, result) of the stream alone on its own engine."""
    stream = model.generate(voice, text, stream=True, seed=seed, inference_options=options, **kw)
    audio = torch.cat([c for c, _ in stream])
    return audio, stream.result


def assert_same(audio, result, expected_audio, expected_result):
    assert torch.equal(result.time_before, expected_result.time_before), "durations differ from the solo run"
    assert torch.equal(result.output_text_ids, expected_result.output_text_ids), "token ids differ"
    assert audio.shape == expected_audio.shape
    assert (audio - expected_audio).abs().max() <= 1e-4


def test_batched_streams_equal_solo_with_streams_joining_mid_way(demo_model, demo_voice):
    jobs = [(TEXTS[i % len(TEXTS)], 40 + i, OPTIONS[i]) for i in range(len(OPTIONS))]
    expected = [solo(demo_model, demo_voice, *job) for job in jobs]
    engine = Engine(demo_model, max_streams=4)  # six streams, four slots: two wait for a free one
    streams, chunks = [], {}

    def join(i):
        text, seed, options = jobs[i]
        streams.append(
            demo_model.generate(demo_voice, text, stream=True, seed=seed, inference_options=options, engine=engine)
        )
        chunks[i] = []

    join(0)
    join(1)
    iters, done, rounds = {}, set(), 0
    while len(chunks) < len(jobs) or len(done) < len(streams):
        rounds += 1
        if rounds in (3, 7, 12, 20) and len(chunks) < len(jobs):  # join while the others run
            join(len(chunks))
        for i, stream in enumerate(streams):
            if i not in done:
                chunk = next(iters.setdefault(i, iter(stream)), None)
                if chunk is None:
                    done.add(i)
                else:
                    chunks[i].append(chunk[0])
        if rounds > 10_000:
            raise AssertionError("streams did not finish")
    assert engine.ticks > 0 and engine.pool.in_use == 0
    for i, stream in enumerate(streams):
        assert_same(torch.cat(chunks[i]), stream.result, *expected[i])


def test_one_tick_makes_one_backbone_call_for_all_streams(demo_model, demo_voice, monkeypatch):
    engine = Engine(demo_model, max_streams=3)
    streams = [demo_model.generate(demo_voice, t, stream=True, seed=i, engine=engine) for i, t in enumerate(TEXTS[:3])]
    calls = []
    backbone = type(demo_model.model).forward

    def counting(self, x, segments):
        calls.append(len(segments))
        return backbone(self, x, segments)

    monkeypatch.setattr(type(demo_model.model), "forward", counting)
    for _ in range(5):  # admission and the three prefills, then decode steps
        engine.tick()
    assert len(calls) == engine.ticks == 5 and calls[-1] == 3
    for s in streams:
        s.close()


def test_cancelling_mid_tick_frees_the_slot_at_the_tick_end(demo_model, demo_voice):
    expected = solo(demo_model, demo_voice, TEXTS[1], 8, InferenceOptions())
    engine = Engine(demo_model, max_streams=2)
    victim = demo_model.generate(demo_voice, TEXTS[0], stream=True, seed=7, engine=engine)
    keeper = demo_model.generate(demo_voice, TEXTS[1], stream=True, seed=8, engine=engine)
    seen, during = [], []

    def cancel_during_the_tick(step):
        seen.append(step.index)
        if len(seen) == 3:
            victim.close()  # on the engine's thread, in the middle of a tick
            during.append((victim.finished, engine.pool.in_use))

    keeper.on_token = cancel_during_the_tick
    audio = torch.cat([c for c, _ in keeper])
    assert during == [(False, 2)], "a cancel inside a tick waits for the tick's end"
    assert victim.finished and victim.result is None
    assert_same(audio, keeper.result, *expected)
    assert engine.pool.in_use == 0 and engine.active == 0


def test_cancel_from_another_thread_while_the_worker_ticks(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=2).start()
    try:
        stream = demo_model.generate(demo_voice, " ".join(TEXTS * 3), stream=True, seed=1, engine=engine)
        first = next(iter(stream))
        assert first[0].numel() > 0
        threading.Thread(target=stream.close).start()
        assert engine.wait(lambda: stream.finished, timeout=10)
        assert stream.result is None and engine.pool.in_use == 0
    finally:
        engine.close()


def test_a_parked_text_stream_does_not_stall_the_others(demo_model, demo_voice):
    expected_text = solo(demo_model, demo_voice, TEXTS[2], 3, InferenceOptions())
    expected_other = solo(demo_model, demo_voice, TEXTS[3], 4, InferenceOptions())
    engine = Engine(demo_model, max_streams=2).start()
    try:
        text = TextInput(["Hello there, "])  # the rest comes later
        waiting = demo_model.generate(demo_voice, text, stream=True, seed=3, engine=engine)
        other = demo_model.generate(demo_voice, TEXTS[3], stream=True, seed=4, engine=engine)
        other_audio = torch.cat([c for c, _ in other])  # finishes while `waiting` is parked
        assert_same(other_audio, other.result, *expected_other)
        assert not waiting.finished and waiting._handle.waiting_for_text
        ticks = engine.ticks
        time.sleep(0.3)
        assert engine.ticks == ticks, "a parked stream alone must not make the engine tick"
        threads = {t.name for t in threading.enumerate()}
        text.put("how are you doing today?")
        text.end()
        audio = torch.cat([c for c, _ in waiting])
        assert_same(audio, waiting.result, *expected_text)
        assert {t.name for t in threading.enumerate()} <= threads | {"tadastream-engine"}
    finally:
        engine.close()


def test_eight_concurrent_streams_equal_eight_sequential(demo_model, demo_voice):
    jobs = [(TEXTS[i % 4], 100 + i) for i in range(8)]
    sequential = [solo(demo_model, demo_voice, t, s, InferenceOptions())[0] for t, s in jobs]
    engine = Engine(demo_model, max_streams=8).start()

    async def consume(text, seed):
        stream = demo_model.generate(demo_voice, text, stream=True, seed=seed, engine=engine)
        return torch.cat([c async for c, _ in stream])

    async def all_at_once():
        return await asyncio.gather(*(consume(t, s) for t, s in jobs))

    try:
        concurrent = asyncio.run(all_at_once())
    finally:
        engine.close()
    for i, (a, b) in enumerate(zip(sequential, concurrent)):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-4, i
    assert engine.tick_rows > 0


def test_slot_reuse_leaks_nothing_over_200_streams(demo_model):
    options = InferenceOptions(num_flow_matching_steps=2)
    engine = Engine(demo_model, max_streams=4).start()
    texts = ["Hi there.", "Yes.", "Good morning to you all.", "One two three."]
    try:

        async def run(i):
            stream = demo_model.generate(
                None, texts[i % 4], stream=True, seed=i, inference_options=options, engine=engine
            )
            if i % 7 == 3:  # some leave early
                async for _ in stream:
                    break
                stream.close()
                return None
            return torch.cat([c async for c, _ in stream]).numel()

        async def main():
            out = []
            for start in range(0, 200, 20):  # 20 at a time: 4 run, 16 queue in the engine
                out += await asyncio.gather(*(run(i) for i in range(start, start + 20)))
            return out

        lengths = asyncio.run(main())
        assert engine.wait(lambda: engine.active == 0 and engine.queued == 0, timeout=30)
    finally:
        engine.close()
    assert sum(n is not None for n in lengths) > 150 and all(n for n in lengths if n is not None)
    pool = engine.pool
    assert pool.in_use == 0 and len(pool._free) <= 4, "slots are reused, never more than max_streams"
    largest = max(s.nbytes for s in pool._free)
    assert pool.nbytes <= 4 * largest
    gc.collect()
    alive = [s for s in gc.get_objects() if type(s) is AudioStream and not s.finished]
    assert not alive


def test_a_list_of_texts_runs_side_by_side_and_each_equals_its_own_run(demo_model, demo_voice):
    out = demo_model.generate(demo_voice, TEXTS[:3], seed=11)
    assert len(out.audio) == 3
    base = StreamRng.from_seed(11)
    for i in range(3):
        stream = AudioStream(demo_model, SpeechRequest(TEXTS[i], demo_voice), rng=base.derive(i))
        alone = torch.cat([c for c, _ in stream])
        assert alone.shape == out.audio[i].shape and (alone - out.audio[i]).abs().max() <= 1e-4
    first_alone = demo_model.generate(demo_voice, TEXTS[0], seed=11).audio[0]
    assert torch.equal(first_alone, out.audio[0])


def test_seeded_streams_leave_the_global_generator_alone(demo_model, demo_voice):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = demo_model.generate(demo_voice, TEXTS[0], seed=5).audio[0]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    b = demo_model.generate(demo_voice, TEXTS[0]).audio[0]  # forks the global state: same draws
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="seed must be an integer"):
        StreamRng.from_seed(-1)


def test_a_failing_stream_fails_alone(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=2)
    text = TextInput(["   "])
    bad = demo_model.generate(demo_voice, text, stream=True, seed=1, engine=engine)
    good = demo_model.generate(demo_voice, TEXTS[0], stream=True, seed=2, engine=engine)
    engine.tick()
    text.end()  # whitespace only: the plan fails when the text ends
    from tadastream import GenerationInputError

    with pytest.raises(GenerationInputError, match="empty"):
        list(bad)
    assert torch.cat([c for c, _ in good]).numel() > 0
    assert engine.pool.in_use == 0


@pytest.mark.parametrize("native", [True, False])
def test_half_precision_pads_rows_only_where_the_cpu_has_native_kernels(demo_model, demo_voice, monkeypatch, native):
    """Padding to 4 rows makes batching bit-exact where rows are nearly free; on a CPU whose bf16
    matmul is compute-bound it would double a lone stream's cost, so there it is skipped."""
    from tadastream.nn import linear

    monkeypatch.setattr(linear, "native_cpu_kernels", lambda dtype: native or dtype == torch.float32)
    model = build_demo_model().to(torch.bfloat16).eval()  # the shared fixture stays fp32
    expected_rows = linear.MIN_ROWS if native else 1
    assert linear.invariant_rows("cpu", torch.bfloat16) == expected_rows
    packed = linear.invariant_rows("cpu", torch.float32, "PackedLinear")
    assert packed == linear.invariant_rows("cuda", torch.bfloat16) == 4
    assert linear.invariant_rows("cpu", torch.float32) == linear.UNPACKED_CPU_MIN_ROWS  # MKL's own row paths
    seen = []
    hook = model.prediction_head.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        options = InferenceOptions(acoustic_cfg_scale=1.0)  # one row per ODE step: padding shows
        audio, _ = solo(model, demo_voice, TEXTS[2], 5, options)
    finally:
        hook.remove()
    assert audio.numel() > 0 and torch.isfinite(audio).all()
    assert seen and set(seen) == {expected_rows}
