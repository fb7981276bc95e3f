"""The engine's decode phase: every stream's due decode call in one batched call, tails after the slot."""

from __future__ import annotations

import torch

from tadastream.drivers.stream import AudioStream
from tadastream.engine import Engine
from tadastream.generation import SpeechRequest

from .test_engine import TEXTS


def stream(model, voice, text, engine, seed=3, window=100):
    return AudioStream(model, SpeechRequest(text, voice, seed=seed, window_size=window), engine=engine)


def test_streams_decode_together_and_each_gets_its_solo_audio(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=3)
    streams = [stream(demo_model, demo_voice, TEXTS[i], engine, seed=i) for i in range(3)]
    while not all(s.finished for s in streams):
        assert engine.tick()
    assert engine.seconds["decode"] > 0
    assert engine.decoded_streams > engine.decode_calls > 0, "some decode calls held several streams"
    for i, s in enumerate(streams):
        together = torch.cat([chunk for chunk, _ in s])
        alone = torch.cat([chunk for chunk, _ in stream(demo_model, demo_voice, TEXTS[i], None, seed=i)])
        assert torch.equal(together, alone)


def test_a_streams_tail_is_decoded_after_its_slot_goes_to_the_next(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=1)
    first = stream(demo_model, demo_voice, TEXTS[0], engine)
    # nothing decodes before the text ends: the whole utterance is the tail, in calls of 8 frames
    first._delivery.decoder._should_decode = lambda: False
    second = stream(demo_model, demo_voice, TEXTS[1], engine)
    overlapped = False
    for _ in range(2000):
        if first.finished and second.finished:
            break
        engine.tick()
        # the first stream's program has ended and its slot runs the second, while its tail decodes
        overlapped |= engine.active == 1 and bool(engine._draining) and not first.finished
    assert first.finished and second.finished and overlapped
    assert not engine._draining and engine.pool.in_use == 0
    audio = torch.cat([chunk for chunk, _ in first])
    alone = stream(demo_model, demo_voice, TEXTS[0], None)
    alone._delivery.decoder._should_decode = lambda: False
    assert torch.equal(audio, torch.cat([chunk for chunk, _ in alone]))


def test_closing_the_engine_ends_a_stream_whose_tail_was_still_decoding(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=1)
    s = stream(demo_model, demo_voice, TEXTS[2], engine)
    s._delivery.decoder._should_decode = lambda: False
    for _ in range(2000):
        engine.tick()
        if engine._draining:
            break
    assert engine._draining and not s.finished
    engine.close()
    assert s.finished and not engine._draining
    list(s)  # what was decoded before the close; no wait, no error


def test_warmup_measures_which_decode_parts_batch_exactly(demo_voice):
    from tadastream.codec import batch
    from tadastream.demo import build_demo_model

    model = build_demo_model().optimize_for_inference()  # a fresh decoder: nothing measured yet
    assert not getattr(model.decoder, "_batch_invariance", None)
    Engine(model, max_streams=2).warmup()
    key = (model.decoder.decoder_proj.weight.device, model.decoder.decoder_proj.weight.dtype)
    assert model.decoder._batch_invariance[key] == batch.batch_invariance(model.decoder)


def test_a_stream_whose_end_fails_after_its_tail_raises_instead_of_waiting(demo_model, demo_voice, monkeypatch):
    import pytest

    from tadastream.drivers import stream as stream_module

    def broken(*args, **kwargs):
        raise RuntimeError("timestamps went astray")

    monkeypatch.setattr(stream_module, "finish_output", broken)
    engine = Engine(demo_model, max_streams=1)
    s = stream(demo_model, demo_voice, TEXTS[0], engine)
    with pytest.raises(RuntimeError, match="astray"):
        for _ in s:  # the consumer ticks the engine; without the failure it would wait for an end
            pass
    assert s.finished and not engine._draining and engine.active == 0
