"""Generation: options, plans, one stream's program and its pieces (the engine runs the programs).

- :mod:`.options`: InferenceOptions (the reference's defaults) and GenerationInputError
- :mod:`.plan`: token layout and prompt frames, validated before any model work
- :mod:`.feed`: input ids, complete or growing as text arrives (TextInput)
- :mod:`.rng`: the one home of a stream's randomness
- :mod:`.requests`: what a program asks the engine for
- :mod:`.program`: SpeechProgram, TADA's per-token logic
- :mod:`.flow`, :mod:`.sampling`: flow matching (batched over streams) and text sampling
- :mod:`.outputs`: StepOutput, GenerationOutput and the one-pass decode
"""

from .feed import TextCancelled, TextInput, TokenFeed
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
from .plan import GenerationPlan, SpecialIds, mask_prompt_text, plan_generation
from .program import PREFILL_CHUNK, ModelShape, SpeechProgram
from .requests import Computed, FlowSolve, LlmStep, Logits, NeedText
from .rng import StreamRng
from .sampling import sample_next_token

__all__ = [
    "MIN_LEADING_TRIM_FRAMES",
    "PREFILL_CHUNK",
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
    "NeedText",
    "SpecialIds",
    "SpeechProgram",
    "StepOutput",
    "StreamRng",
    "SyncTokGenerationOutput",
    "TextTooLongError",
    "TextCancelled",
    "TextInput",
    "TokenFeed",
    "decode_audio",
    "decode_frames",
    "finish_output",
    "leading_trim_frames",
    "mask_prompt_text",
    "merge_outputs",
    "plan_generation",
    "sample_next_token",
]
