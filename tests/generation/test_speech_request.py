"""SpeechRequest: what to speak, checked once when it is made and handed down unchanged; each
long-form segment planned once, every plan sharing the request's prepared voice prompt."""

from __future__ import annotations

import pytest
import torch

from tadastream.drivers.longform import LongFormPlan, LongFormStream, plan_request
from tadastream.drivers.stream import AudioStream
from tadastream.generation import (
    GenerationInputError,
    GenerationPlan,
    InferenceOptions,
    SpeechRequest,
    TextInput,
    TextLayout,
)
from tadastream.generation import plan as plan_module

FAST = InferenceOptions(num_flow_matching_steps=2)
LONG = " ".join(f"Sentence number {i} is here, and it says a few more words." for i in range(12))


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"text": 42}, "text must be"),
        ({"text": b"bytes"}, "decode it"),
        ({"text": "  !!  "}, "nothing to speak"),
        ({"text": "bad \ud800"}, "surrogate"),
        ({"options": {"text_temperature": 0.5}}, "options must be InferenceOptions"),
        ({"options": InferenceOptions(num_flow_matching_steps=0)}, "num_flow_matching_steps"),
        ({"layout": "x"}, "layout must be"),
        ({"seed": -1}, "seed must be"),
        ({"seed": True}, "seed must be"),
        ({"long_form": "yes"}, "long_form must be"),
        ({"segment_chars": 5}, "segment_chars"),
        ({"min_first_chunk_ms": -3}, "min_first_chunk_ms"),
        ({"window_size": 0}, "window_size"),
        ({"text": iter(["a ", "b"]), "long_form": True}, "whole text as a string"),
    ],
)
def test_a_bad_field_is_refused_when_the_request_is_made(fields, names):
    fields = {"text": "Hello there.", **fields}
    with pytest.raises(GenerationInputError, match=names):
        SpeechRequest(**fields)


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"num_transition_steps": -1}, "num_transition_steps"),
        ({"num_extra_steps": 1.5}, "num_extra_steps"),
        ({"system_prompt": 3}, "system_prompt"),
        ({"normalize_text": "no"}, "normalize_text"),
    ],
)
def test_a_bad_layout_is_refused(fields, names):
    with pytest.raises(GenerationInputError, match=names):
        TextLayout(**fields)


def test_the_request_keeps_its_own_checked_options():
    options = InferenceOptions(text_temperature=0.7)
    request = SpeechRequest("Hello.", options=options)
    options.text_temperature = -5.0  # the caller's object changes; the request's copy does not
    assert request.options.text_temperature == 0.7 and request.options is not options
    with pytest.raises(AttributeError):
        request.seed = 3  # frozen: what was checked stays so


def test_text_in_pieces_is_accepted_in_every_form():
    async def pieces():
        yield "Hello "

    for text in (TextInput(), iter(["Hello ", "there."]), ["Hello ", "there."], pieces()):
        assert not SpeechRequest(text).whole
    assert SpeechRequest("Hello.").whole


def test_with_voice_adds_the_voice_and_keeps_the_rest(demo_voice):
    request = SpeechRequest("Hello.", seed=4, options=FAST)
    voiced = request.with_voice(demo_voice)
    assert voiced.voice is demo_voice and request.voice is None
    assert (voiced.text, voiced.seed, voiced.options) == (request.text, request.seed, request.options)


def test_each_segment_is_planned_once_and_shares_the_prepared_prompt(demo_model, demo_voice, monkeypatch):
    prepared, planned = [], []
    real_prepare, real_plan = plan_module.prepare_prompt, plan_module.PreparedPrompt.plan

    def count_prepare(*args):
        prepared.append(1)
        return real_prepare(*args)

    def count_plan(self, text):
        planned.append(text)
        return real_plan(self, text)

    monkeypatch.setattr("tadastream.drivers.longform.prepare_prompt", count_prepare)
    monkeypatch.setattr(plan_module.PreparedPrompt, "plan", count_plan)
    request = SpeechRequest(LONG, demo_voice, options=FAST, long_form=True, segment_chars=120, seed=2)
    with demo_model.stream(request) as stream:
        assert isinstance(stream, LongFormStream) and len(stream.segments) >= 4
        segments = [s.text for s in stream.segments]
        audio = torch.cat([chunk for chunk, _ in stream])
    assert audio.numel() > 0
    assert planned == segments, "every segment planned exactly once, in order"
    assert len(prepared) == 1, "the voice prompt is prepared once for the whole text"


def test_segment_plans_share_the_prompt_tensors(demo_model, demo_voice):
    plan = plan_request(demo_model, SpeechRequest(LONG, demo_voice, long_form=True, segment_chars=120))
    assert isinstance(plan, LongFormPlan) and len(plan.plans) >= 4
    first = plan.plans[0]
    assert all(p.prompt_features is first.prompt_features for p in plan.plans)
    assert plan.tokens_total == sum(p.tokens_spoken for p in plan.plans)


def test_a_text_that_fits_is_one_generation_and_the_decision_is_made_once(demo_model, demo_voice):
    assert isinstance(plan_request(demo_model, SpeechRequest("Hello there.", demo_voice)), GenerationPlan)
    whole_text = "word " * 5000  # over the demo model's 4096 positions
    assert isinstance(plan_request(demo_model, SpeechRequest(whole_text, demo_voice)), LongFormPlan)
    with pytest.raises(GenerationInputError, match="long form"):
        plan_request(demo_model, SpeechRequest(whole_text, demo_voice, long_form=False))


def test_the_stream_carries_the_request_it_was_given(demo_model, demo_voice):
    request = SpeechRequest("Hello there.", demo_voice, options=FAST, seed=9, min_first_chunk_ms=0)
    with demo_model.stream(request) as stream:
        assert isinstance(stream, AudioStream) and stream.request is request
        chunks = [chunk for chunk, _ in stream]
    again = demo_model.generate(demo_voice, "Hello there.", inference_options=FAST, seed=9).audio[0]
    assert (torch.cat(chunks) - again).abs().max() <= 1e-4


def test_stream_and_speak_refuse_what_they_cannot_take(demo_model, demo_voice):
    with pytest.raises(GenerationInputError, match="at least one"):
        demo_model.speak([])
    with pytest.raises(GenerationInputError, match="use stream"):
        demo_model.speak([SpeechRequest(iter(["Hello ", "there."]), demo_voice)])
    with pytest.raises(GenerationInputError, match="SpeechRequest"):
        demo_model.speak(["Hello."])
    with pytest.raises(GenerationInputError, match="SpeechRequest"):
        demo_model.stream("Hello.")
