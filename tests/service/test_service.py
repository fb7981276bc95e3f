"""The framework-free service's checks: one wording per refusal, whichever front end asks."""

from __future__ import annotations

import pytest

from tadastream.generation import InferenceOptions, SpeechRequest, TextInput
from tadastream.service import RequestRefused, check_input_length, speech_request


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
