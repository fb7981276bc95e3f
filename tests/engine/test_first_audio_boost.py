"""First audio under load: a stream joining a busy engine gets a boost pass per tick before its
first frame, bounded by the heard streams' lead over playback, and its audio does not change."""

from __future__ import annotations

import time

import pytest
import torch

from tadastream.engine import Engine, core

from .test_decode_phase import stream
from .test_engine import TEXTS


def ahead(handle, seconds: float) -> bool:
    """Whether the stream has been heard and is ``seconds`` ahead of its playback."""
    lead = handle.lead(time.perf_counter())
    return lead is not None and lead >= seconds


def join_busy_engine(model, voice, policy: str):
    """One stream plays; a second joins once the first is 1 s ahead of its playback (the demo model
    makes audio far faster than it plays, so this holds however busy the machine). Returns (engine,
    the busy stream, the joiner, regular ticks from the join to the joiner's first frame)."""
    engine = Engine(model, max_streams=2, first_audio_boost=policy)
    busy = stream(model, voice, TEXTS[2] * 3, engine, seed=1)
    while not ahead(busy._handle, 1.0):
        assert engine.tick()
    joiner = stream(model, voice, TEXTS[0], engine, seed=2)
    joined_at = engine.ticks
    while joiner._delivery.decoder.frames_in == 0:
        assert engine.tick()
    ticks = engine.ticks - joined_at
    while not (busy.finished and joiner.finished):
        engine.tick()
    return engine, busy, joiner, ticks


def audio(s) -> torch.Tensor:
    return torch.cat([chunk for chunk, _ in s])


def test_a_joining_stream_is_boosted_to_its_first_frame_and_its_audio_is_unchanged(demo_model, demo_voice):
    plain, _, _, plain_ticks = join_busy_engine(demo_model, demo_voice, "off")
    boosted, busy, joiner, boosted_ticks = join_busy_engine(demo_model, demo_voice, "always")
    assert plain.boost_passes == 0
    assert boosted.boost_passes == plain_ticks - boosted_ticks > 0
    assert boosted_ticks <= (plain_ticks + 1) // 2 + 1, "one boost pass per tick halves the ticks to the first frame"
    assert boosted.stats()["boost_passes"] == boosted.boost_passes
    # bit for bit what each speaks alone: batch composition never reaches a stream's rows
    assert torch.equal(audio(joiner), audio(stream(demo_model, demo_voice, TEXTS[0], None, seed=2)))
    assert torch.equal(audio(busy), audio(stream(demo_model, demo_voice, TEXTS[2] * 3, None, seed=1)))


def test_guarded_boosts_while_the_heard_stream_is_ahead_of_playback(demo_model, demo_voice):
    engine, *_ = join_busy_engine(demo_model, demo_voice, "guarded")
    assert engine.boost_passes > 0


def test_guarded_does_not_boost_when_a_heard_stream_would_fall_behind(demo_model, demo_voice, monkeypatch):
    monkeypatch.setattr(core, "BOOST_LEAD_MARGIN", 1e9)  # no lead is ever enough
    engine, *_ = join_busy_engine(demo_model, demo_voice, "guarded")
    assert engine.boost_passes == 0


def test_streams_joining_together_get_no_boost(demo_model, demo_voice):
    engine = Engine(demo_model, max_streams=3, first_audio_boost="always")
    streams = [stream(demo_model, demo_voice, TEXTS[i], engine, seed=i) for i in range(3)]
    while not all(s.finished for s in streams):
        engine.tick()
    assert engine.boost_passes == 0, "with no one else running, a boost pass is just another tick"


def test_an_unknown_policy_is_refused_with_the_choices():
    from tadastream.demo import build_demo_model

    engine = Engine(build_demo_model(), max_streams=1)
    with pytest.raises(ValueError, match="guarded, always, off"):
        engine.first_audio_boost = "eager"
    with pytest.raises(ValueError, match="first_audio_boost must be one of"):
        Engine(build_demo_model(), max_streams=1, first_audio_boost="sometimes")


def test_a_stream_parked_for_text_does_not_hold_back_the_boost(demo_model, demo_voice):
    from tadastream.generation.text_input import TextInput

    engine = Engine(demo_model, max_streams=3, first_audio_boost="guarded")
    text = TextInput(["Hello there, how are you doing on this fine morning? "])  # the rest never comes
    parked = demo_model.generate(demo_voice, text, stream=True, seed=5, engine=engine)
    busy = stream(demo_model, demo_voice, TEXTS[2] * 3, engine, seed=1)
    while not (parked._handle.waiting_for_text and ahead(busy._handle, 1.0)):
        assert engine.tick()
    assert parked._handle.first_audio_at is not None, "the parked stream was heard"
    parked._handle.first_audio_at -= 1000.0  # long silent: far behind a playback that never paused
    joiner = stream(demo_model, demo_voice, TEXTS[0], engine, seed=2)
    while joiner._delivery.decoder.frames_in == 0:
        assert engine.tick()
    assert engine.boost_passes > 0, "the playing stream's lead, not the parked one's, decides"
    parked.close()
    engine.close()


def test_no_boost_beside_a_stream_that_only_waits_for_text(demo_model, demo_voice):
    from tadastream.generation.text_input import TextInput

    engine = Engine(demo_model, max_streams=2, first_audio_boost="always")
    parked = demo_model.generate(demo_voice, TextInput(["Hello there, "]), stream=True, seed=5, engine=engine)
    while not parked._handle.waiting_for_text:
        assert engine.tick()
    joiner = stream(demo_model, demo_voice, TEXTS[0], engine, seed=2)
    while not joiner.finished:
        engine.tick()
    assert engine.boost_passes == 0, "the joiner steps alone: a boost pass would only be another tick"
    parked.close()
    engine.close()
