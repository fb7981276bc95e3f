"""Generation: options, plans, one stream's program and its pieces (the engine runs the programs).

- :mod:`.speech_request`: SpeechRequest, what to speak as one typed value checked on creation
- :mod:`.options`: InferenceOptions (the reference's defaults) and GenerationInputError
- :mod:`.plan`: token layout and prompt frames, validated before any model work
- :mod:`.text_input`: TextInput, text arriving in pieces from any thread
- :mod:`.feed`: input ids, complete or growing as text arrives
- :mod:`.rng`: the one home of a stream's randomness
- :mod:`.requests`: what a program asks the engine for
- :mod:`.program`: SpeechProgram, TADA's per-token logic
- :mod:`.flow`, :mod:`.sampling`: flow matching (batched over streams) and text sampling
- :mod:`.outputs`: StepOutput, GenerationOutput and the one-pass decode
"""

from .feed import TokenFeed
from .options import EmptyTextError, GenerationInputError, InferenceOptions, TextTooLongError
from .outputs import (
    MIN_LEADING_TRIM_FRAMES,
    GenerationOutput,
    StepOutput,
    SyncTokGenerationOutput,
    decode_audio,
    decode_frames,
    finish_output,
    leading_trim_frames,
    merge_outputs,
)
from .plan import GenerationPlan, PreparedPrompt, SpecialIds, mask_prompt_text, plan_generation, prepare_prompt
from .program import PREFILL_CHUNK, ModelShape, SpeechProgram
from .requests import Computed, FlowSolve, LlmStep, Logits, NeedText
from .rng import StreamRng
from .sampling import sample_next_token
from .speech_request import SEGMENT_CHARS, SpeechRequest, Text, TextLayout
from .text_input import TextCancelled, TextInput

__all__ = [
    "MIN_LEADING_TRIM_FRAMES",
    "PREFILL_CHUNK",
    "SEGMENT_CHARS",
    "Computed",
    "EmptyTextError",
    "FlowSolve",
    "GenerationInputError",
    "GenerationOutput",
    "GenerationPlan",
    "InferenceOptions",
    "LlmStep",
    "Logits",
    "ModelShape",
    "PreparedPrompt",
    "NeedText",
    "SpecialIds",
    "SpeechProgram",
    "SpeechRequest",
    "StepOutput",
    "StreamRng",
    "SyncTokGenerationOutput",
    "TextTooLongError",
    "Text",
    "TextCancelled",
    "TextLayout",
    "TextInput",
    "TokenFeed",
    "decode_audio",
    "decode_frames",
    "finish_output",
    "leading_trim_frames",
    "mask_prompt_text",
    "merge_outputs",
    "plan_generation",
    "prepare_prompt",
    "sample_next_token",
]
