"""Compiled fixed-shape steps (issue 16's CPU-side checks): the LLM step and the flow solve compile
with fullgraph=True, never recompile across positions or batch sizes within a bucket, and give the
numbers of the eager engine. Backends "eager"/"aot_eager" run dynamo's tracing (and aot's
functionalization of the cache writes) without generating code, which CI cannot afford."""

from __future__ import annotations

import pytest
import torch

from tadastream import InferenceOptions
from tadastream.demo import build_demo_model, demo_voice
from tadastream.engine import CompileOptions, Engine
from tadastream.engine.flow import pack_solves, solve_flows, solve_rows
from tadastream.engine.graphs import ROW_BUCKETS, StepGraphs, bucket_for
from tadastream.generation.requests import FlowSolve, LlmStep
from tadastream.nn.kv_cache import ROWS_PER_SLOT, CacheFullError, CacheSpec, SlotPool
from tadastream.nn.linear import packing_available
from tadastream.nn.llama import Segment
from tests.helpers.streams import take_turns

TEXT = "Hello there, this is a test of the engine."


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_demo_model().optimize_for_inference(prepack=False)


@pytest.fixture(scope="module")
def voice(model):
    return demo_voice(model)


def _pool(model, slots=2, positions=64):
    spec = CacheSpec.for_config(model.config, model.dtype, model.device)
    return SlotPool(spec, slots, static_positions=positions, arena_rows=bucket_for(slots * ROWS_PER_SLOT))


def _step(model, rows, start, seed):
    g = torch.Generator().manual_seed(seed)
    vocab, dim = model.config.vocab_size, model.config.acoustic_dim
    ids = torch.randint(0, vocab, (rows, 1), generator=g)
    acoustic = torch.randn(rows, 1, dim, generator=g)
    masks = torch.randint(0, 2, (rows, 1), generator=g)
    before, after = (torch.randint(0, 5, (rows, 1), generator=g) for _ in range(2))
    return LlmStep(ids, acoustic, masks, before, after, start=start)


@torch.inference_mode()
def test_decode_rows_equals_the_segment_forward_and_writes_the_same_cache(model):
    eager, static = _pool(model), _pool(model)
    slots = [(eager.acquire(3, 1), static.acquire(3, 1)), (eager.acquire(2, 1), static.acquire(2, 1))]
    lengths = (7, 3)
    for (a, b), length in zip(slots, lengths):  # prefill both pools the same way
        x = torch.randn(a.rows * length, model.config.hidden_size)
        model.model(x, [Segment(a, a.rows, 0, length)])
        model.model(x, [Segment(b, b.rows, 0, length)])
    assert all(torch.equal(a, b) for a, b in zip(eager.arena[0] + eager.arena[1], static.arena[0] + static.arena[1]))
    for _ in range(3):
        steps = [_step(model, slot.rows, slot.length, i + slot.length) for i, (slot, _) in enumerate(slots)]
        xs = [model.embed(s.ids, s.acoustic, s.masks, s.time_before, s.time_after).reshape(s.rows, -1) for s in steps]
        expected = model.model(torch.cat(xs), [Segment(a, s.rows, s.start, 1) for (a, _), s in zip(slots, steps)])
        bucket = bucket_for(static.arena_rows)
        x = torch.zeros(bucket, model.config.hidden_size)
        positions = torch.full((bucket,), static.capacity, dtype=torch.long)  # the scratch position
        index = [b.first_row + r for (_, b), s in zip(slots, steps) for r in range(s.rows)]
        x[index] = torch.cat(xs)
        positions[index] = torch.tensor([s.start for s in steps for _ in range(s.rows)])
        got = model.model.decode_rows(x, positions, *static.arena)[index]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        for (a, b), s in zip(slots, steps):
            b.length = max(b.length, s.start + 1)
            for got_layer, want_layer in zip(b.keys + b.values, a.keys + a.values):
                torch.testing.assert_close(got_layer[: s.rows, :, : a.length], want_layer[: s.rows, :, : a.length])


def _solves(model, n, guided_every=2, steps=(10, 4)):
    g = torch.Generator().manual_seed(n)
    width = model.config.acoustic_dim + model.time_dim
    hidden = model.config.hidden_size
    solves = []
    for i in range(n):
        options = InferenceOptions(
            acoustic_cfg_scale=1.6 if guided_every and i % guided_every == 0 else 1.0,  # 0: none
            duration_cfg_scale=1.3,
            num_flow_matching_steps=steps[i % len(steps)],
            time_schedule=("logsnr", "cosine", "uniform")[i % 3],
        )
        solves.append(
            FlowSolve(
                torch.randn(1, width, generator=g),
                torch.randn(1, hidden, generator=g),
                torch.randn(1, hidden, generator=g),
                options,
            )
        )
    return solves


@torch.inference_mode()
@pytest.mark.parametrize("guided_every", [1, 2, 0])
def test_solve_rows_equals_the_eager_solve(model, guided_every):
    solves = _solves(model, 5, guided_every)
    expected = solve_flows(model, solves)
    packed = pack_solves(model, solves, bucket_for(5))
    assert packed.guided == (guided_every > 0) and packed.t.shape == (10, (2 if packed.guided else 1) * 8)
    latents = solve_rows(model, packed.x, packed.t, packed.cond, packed.dt, packed.scale, packed.guided)
    for i, want in enumerate(expected):
        torch.testing.assert_close(latents[i : i + 1], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        pack_solves(model, solves, 4)


@torch.inference_mode()
def test_the_step_and_the_solve_compile_fullgraph_and_never_recompile_within_a_bucket(model):
    """50 steps of changing positions and 1-4 streams (one bucket of arena rows); the solve for
    1-4 solves: one graph each, built once. fullgraph=True makes any graph break an error."""
    backend = CountingBackend()
    pool = _pool(model, slots=4, positions=64)
    graphs = StepGraphs(model, pool.arena, CompileOptions(max_positions=64, backend=backend))
    slots = [pool.acquire(ROWS_PER_SLOT, 1) for _ in range(4)]
    seen_buckets = set()
    for i in range(50):
        active = slots[: 1 + i % 2] if i < 25 else slots[2 + i % 2 : 4]  # rows 0-5, then rows 6-11
        work = [(slot, _step(model, 1 + (i + k) % 3, i, i)) for k, slot in enumerate(active)]
        seen_buckets.add(bucket_for(max(s.first_row + st.rows for s, st in work)))
        out = graphs.llm(work)
        assert [o.shape for o in out] == [(st.rows, 1, model.config.hidden_size) for _, st in work]
    assert backend.graphs == len(seen_buckets) == 3  # buckets 4, 8 and 16: one graph each, nothing more
    before = backend.graphs
    for n in (1, 2, 3, 4, 4, 1):
        graphs.flow(_solves(model, n, guided_every=1, steps=(10,)))
    assert backend.graphs == before + 1  # one guided solve graph for bucket 4
    graphs.flow(_solves(model, 3, guided_every=0, steps=(10,)))
    assert backend.graphs == before + 2  # the unguided solve is a graph of its own


def test_buckets():
    assert [bucket_for(n) for n in (1, 4, 5, 9, 512, 513)] == [4, 4, 8, 16, 512, 1024]
    assert list(ROW_BUCKETS) == sorted(ROW_BUCKETS)


@pytest.fixture(scope="module")
def compiled(model):
    backend = CountingBackend()
    engine = Engine(model, max_streams=2, compile=CompileOptions(max_positions=512, backend="aot_eager"))
    engine.graphs = StepGraphs(model, engine.pool.arena, CompileOptions(max_positions=512, backend=backend))
    engine.runner.graphs = engine.graphs
    engine.backend = backend
    return engine


def test_warmup_builds_every_bucket_and_generation_then_compiles_nothing(model, voice, compiled):
    compiled.warmup()
    built = compiled.backend.graphs
    assert built == 3  # the step for 4 and 8 arena rows (2 slots x 3 rows), the default solve for 4
    out = model.generate(voice, TEXT, seed=3, engine=compiled)
    assert out.audio[0].numel() > 0
    assert compiled.backend.graphs == built


def test_compiled_generation_equals_the_eager_engine_streamed_or_not(model, voice, compiled):
    expected = model.generate(voice, TEXT, seed=5)
    whole = model.generate(voice, TEXT, seed=5, engine=compiled)
    stream = model.generate(voice, TEXT, seed=5, engine=compiled, stream=True)
    streamed = torch.cat([chunk for chunk, _ in stream])
    assert torch.equal(whole.time_before, expected.time_before)
    assert whole.audio[0].shape == expected.audio[0].shape == streamed.shape
    assert (whole.audio[0] - expected.audio[0]).abs().max() <= 1e-4
    assert (streamed - whole.audio[0]).abs().max() <= 1e-4


def test_two_streams_on_the_compiled_engine_equal_each_alone_on_the_eager_one(model, voice, compiled):
    texts = [TEXT, "Five shots may have been fired, the experts said."]
    alone = [model.generate(voice, t, seed=9 + i).audio[0] for i, t in enumerate(texts)]
    streams = [model.generate(voice, t, seed=9 + i, engine=compiled, stream=True) for i, t in enumerate(texts)]
    audio = take_turns(streams)  # both consumers take turns ticking
    assert compiled.pool.in_use == 0
    for got, want in zip(audio, alone):
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4


def test_a_text_longer_than_the_slots_fails_before_any_work(model, voice):
    engine = Engine(model, max_streams=1, compile=CompileOptions(max_positions=16, backend="eager"))
    with pytest.raises(CacheFullError, match=r"needs \d+ positions .* hold 16: .*--max-positions"):
        model.generate(voice, TEXT, seed=1, engine=engine)
    assert engine.ticks == 0 and engine.pool.in_use == 0


def test_model_compile_sets_the_shared_engine_and_refuses_prepacked_weights(voice):
    model = build_demo_model().optimize_for_inference(prepack=False)
    model.compile(max_streams=1, max_positions=256, warmup=False, backend="eager")
    assert model.engine is not None and model.engine.graphs is not None
    out = model.generate(demo_voice(model), TEXT, seed=2)  # runs on model.engine
    assert model.engine.ticks > 0 and out.audio[0].numel() > 0
    if packing_available(torch.float32):
        packed = build_demo_model().optimize_for_inference()
        with pytest.raises(RuntimeError, match="prepack=False"):
            packed.compile(warmup=False)


def test_static_pool_hands_out_the_lowest_free_slot_and_keeps_its_arena(model):
    pool = _pool(model, slots=3)
    a, b, c = (pool.acquire(1, 1) for _ in range(3))
    assert [s.first_row for s in (a, b, c)] == [0, 3, 6] and pool.arena_rows == 9
    pool.release(b)
    assert pool.arena_rows == 9 and pool.acquire(2, 1).first_row == 3
    pool.release(c)
    assert pool.arena_rows == 6 and pool.trim() == 0 and pool.arena is not None
    assert a.keys[0].data_ptr() == pool.arena[0][0].data_ptr()
    with pytest.raises(CacheFullError, match="max_positions"):
        a.reserve(65)


@pytest.mark.gpu
def test_cuda_graphs_generation_matches_the_eager_engine_on_gpu():
    # float32: bf16 rounding could flip a predicted duration between two correct runs
    model = build_demo_model().to("cuda").optimize_for_inference()
    voice = demo_voice(model)
    expected = model.generate(voice, TEXT, seed=4)
    model.compile(max_streams=2, max_positions=512)
    graphs = model.engine.graphs
    assert graphs.cuda_graphs and {key[0] for key in graphs._captured} == {"llm", "flow"}  # warm-up captured both
    got = model.generate(voice, TEXT, seed=4)
    streamed = torch.cat([chunk for chunk, _ in model.generate(voice, TEXT, seed=4, stream=True)])
    assert torch.equal(got.time_before, expected.time_before)
    assert got.audio[0].shape == expected.audio[0].shape == streamed.shape
    assert (got.audio[0] - expected.audio[0]).abs().max() <= 1e-3
    assert (streamed - got.audio[0].cpu()).abs().max() <= 1e-4  # chunks come on the CPU, for sinks


def test_the_server_uses_the_models_engine_and_leaves_it_usable(voice):
    from tadastream.service import SpeechService

    model = build_demo_model().optimize_for_inference(prepack=False)
    model.compile(max_streams=2, max_positions=256, warmup=False, backend="eager")
    with pytest.raises(ValueError, match="max_streams=3 exceeds the 2 slots"):
        SpeechService(model, max_streams=3)
    service = SpeechService(model, max_streams=2)
    assert service.engine is model.engine and model.engine.has_worker
    service.shutdown()
    assert not model.engine.has_worker
    assert model.generate(demo_voice(model), TEXT, seed=1).audio[0].numel() > 0  # still usable after


def test_cli_checks_max_positions_before_loading(capsys):
    from tadastream.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["speak", "--model", "demo", "--compile", "--max-positions", "0", "Hello.", "-o", "x.wav"])
    assert exit_info.value.code == 2
    assert "--max-positions: must be at least 1, got 0" in capsys.readouterr().err


def cpu_capture(run):
    """A stand-in for CUDA graph capture with its contract: one output buffer, rewritten at each
    replay from the capture's own input buffers (what a captured graph reads)."""
    output = run().clone()

    def replay():
        output.copy_(run())

    return replay, output


def test_captured_calls_replay_from_their_buffers_and_write_the_engines_arena(model, voice):
    engine = Engine(model, max_streams=2, compile=CompileOptions(max_positions=512, backend="eager"))
    engine.graphs = StepGraphs(model, engine.pool.arena, CompileOptions(512, "eager"), capture=cpu_capture)
    engine.runner.graphs = engine.graphs
    expected = model.generate(voice, TEXT, seed=6)
    got = model.generate(voice, TEXT, seed=6, engine=engine)
    assert {key[0] for key in engine.graphs._captured} == {"llm", "flow"}
    assert got.audio[0].shape == expected.audio[0].shape
    assert (got.audio[0] - expected.audio[0]).abs().max() <= 1e-4
    assert engine.pool.arena[0][0][:1, :, :10].abs().sum() > 0  # the replays wrote the engine's own arena


def test_a_streamed_text_that_outgrows_its_slot_fails_alone(model, voice):
    from tadastream.generation import TextInput

    engine = Engine(model, max_streams=2, compile=CompileOptions(max_positions=160, backend="eager"))
    pieces = TextInput()
    growing = model.generate(voice, pieces, stream=True, seed=1, engine=engine)
    keeper = model.generate(voice, "Short.", stream=True, seed=2, engine=engine)
    pieces.put("and again " * 60)
    pieces.end()
    with pytest.raises(CacheFullError, match="160 positions"):
        for _ in growing:
            pass
    audio = torch.cat([chunk for chunk, _ in keeper])
    assert audio.numel() > 0 and keeper.result is not None and engine.pool.in_use == 0


def test_a_boosted_joiner_on_captured_calls_equals_it_alone(model, voice):
    """A boost pass replays the same captured buckets as the tick before it, in the same tick: each
    call's output is consumed before the next replay rewrites its buffer."""
    from tadastream.drivers.stream import AudioStream
    from tadastream.generation import SpeechRequest

    engine = Engine(model, max_streams=2, compile=CompileOptions(max_positions=512, backend="eager"))
    engine.first_audio_boost = "always"
    engine.graphs = StepGraphs(model, engine.pool.arena, CompileOptions(512, "eager"), capture=cpu_capture)
    engine.runner.graphs = engine.graphs
    long_text = " ".join([TEXT] * 3)
    busy = AudioStream(model, SpeechRequest(long_text, voice, seed=1), engine=engine)
    while busy._handle.first_audio_at is None:
        assert engine.tick()
    joiner = AudioStream(model, SpeechRequest(TEXT, voice, seed=2), engine=engine)
    audio = take_turns([busy, joiner])
    assert engine.boost_passes > 0
    for got, (text, seed) in zip(audio, [(long_text, 1), (TEXT, 2)]):
        want = model.generate(voice, text, seed=seed).audio[0]
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4
