"""The framework-free service's checks: one wording per refusal, whichever front end asks."""

from __future__ import annotations

import pytest

from tadastream.generation import GenerationInputError, InferenceOptions, SpeechRequest, TextInput
from tadastream.service import RequestRefused, VoiceStore, check_input_length, speech_request


def test_check_input_length_refuses_past_the_limit_only():
    check_input_length(4096, 4096)
    with pytest.raises(RequestRefused) as refused:
        check_input_length(4097, 4096, "text")
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "input_too_long", "text")
    assert error.message == "the text is 4097 characters; the limit is 4096: send the rest in another request"


def test_speech_request_turns_a_generation_refusal_into_the_requests_words():
    request = speech_request("Hello there.", None, InferenceOptions(), seed=5, min_first_chunk_ms=0)
    assert isinstance(request, SpeechRequest) and (request.seed, request.min_first_chunk_ms) == (5, 0.0)
    assert not speech_request(TextInput(), None, InferenceOptions(), seed=5).whole
    with pytest.raises(RequestRefused) as refused:
        speech_request(" ... ", None, InferenceOptions(), seed=5, param="text")
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, "empty_input", "text")
    with pytest.raises(RequestRefused) as refused:
        speech_request("Hello.", None, InferenceOptions(), seed=-1)
    assert refused.value.code == "invalid_input" and "seed" in refused.value.message


def test_a_voice_the_model_cannot_plan_is_refused_but_a_bug_is_not_dressed_as_one(demo_model, demo_voice, monkeypatch):
    store = VoiceStore(None, demo_voice, demo_model)
    store.check(demo_voice, max_seconds=None)

    def mismatch(model, request):
        raise GenerationInputError("prompt token_values have shape (1, 3, 7)")

    monkeypatch.setattr("tadastream.service.voices.plan_generation", mismatch)
    with pytest.raises(RequestRefused) as refused:
        store.check(demo_voice, max_seconds=None)
    assert refused.value.code == "voice_mismatch" and "shape (1, 3, 7)" in refused.value.message

    def bug(model, request):
        raise TypeError("plan_generation() takes 2 positional arguments but 3 were given")

    monkeypatch.setattr("tadastream.service.voices.plan_generation", bug)
    with pytest.raises(TypeError):  # a 500 in the server's log, not a 400 that blames the voice
        store.check(demo_voice, max_seconds=None)
