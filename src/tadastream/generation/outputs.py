"""What a generation yields: settled frames (StepOutput), the raw result, the public GenerationOutput,
and the one-pass decode of a finished utterance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..config import MIN_LEADING_TRIM_FRAMES, SAMPLE_RATE, leading_trim_frames  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from ..timestamps import CharTiming, WordTiming


@dataclass
class StepOutput:
    """One settled acoustic frame: the vector of token ``index`` and the frames before it."""

    step: int
    index: int
    acoustic_features: torch.Tensor  # (B, acoustic_dim), normalised as the LLM sees it
    time_before: torch.Tensor  # (B,) long
    source: str  # "prompted" or "predicted"
    llm_time: float = 0.0
    flow_time: float = 0.0
    final_pass: bool = True


@dataclass
class SyncTokGenerationOutput:
    acoustic_features: torch.Tensor
    time_before: torch.Tensor
    text_token_ids: torch.Tensor | None
    input_ids: torch.Tensor
    llm_time: float
    diffusion_time: float
    step_logs: list[dict] = field(default_factory=list)


@dataclass
class GenerationOutput:
    audio: list[torch.Tensor | None] | None = None
    text: list[str] | None = None
    acoustic_features: torch.Tensor | None = None
    time_before: torch.Tensor | None = None
    prompt_text_tokens: torch.Tensor | None = None
    text_token_ids: torch.Tensor | None = None
    output_str: list[str] | None = None
    output_text_ids: torch.Tensor | None = None
    input_str: list[str] | None = None
    input_text_ids: torch.Tensor | None = None
    llm_time: torch.Tensor | None = None
    diffusion_time: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    step_logs: list[dict] | None = None
    sample_rate: int = SAMPLE_RATE
    time_to_first_audio: float | None = None
    #: Streamed: the earliest moment a player could start and never run dry (see tadastream.playback);
    #: its distance from time_to_first_audio is the buffering a player needs.
    time_to_playable_audio: float | None = None
    #: Streamed: pauses a player that starts on the first chunk would make, and their total seconds.
    stall_count: int | None = None
    stall_time: float | None = None
    chunk_times: list[float] | None = None
    chunk_samples: list[int] | None = None
    total_time: float | None = None
    #: Per text: when each word (and character) of the text as written is heard; see tadastream.timestamps.
    words: list[list[WordTiming]] | None = None
    characters: list[list[CharTiming]] | None = None


def decode_frames(model, plan, raw: SyncTokGenerationOutput):
    """(denormalised vectors, time_before) of the audible part, as the decoder consumes them."""
    cfg = model.config
    feats = raw.acoustic_features * cfg.acoustic_std + cfg.acoustic_mean
    return feats[:, plan.decode_start :], raw.time_before[:, plan.decode_start :]


def finish_output(model, plan, raw: SyncTokGenerationOutput, audio, clock=None) -> GenerationOutput:
    """The public output; ``clock`` (a finished :class:`~tadastream.timestamps.WordClock`) gives its word times."""
    cfg, tok = model.config, model.tokenizer
    _, time_before = decode_frames(model, plan, raw)
    return GenerationOutput(
        audio=audio,
        text=[plan.text],
        acoustic_features=raw.acoustic_features * cfg.acoustic_std + cfg.acoustic_mean,
        time_before=time_before,
        prompt_text_tokens=torch.tensor([plan.input_ids]),
        input_text_ids=torch.tensor([plan.input_ids]),
        input_str=[tok.decode(plan.input_ids)],
        output_text_ids=raw.text_token_ids,
        text_token_ids=raw.text_token_ids,
        output_str=[tok.decode(row) for row in raw.text_token_ids] if raw.text_token_ids is not None else None,
        llm_time=torch.tensor(raw.llm_time),
        diffusion_time=torch.tensor(raw.diffusion_time),
        step_logs=raw.step_logs,
        words=[list(clock.words)] if clock is not None else None,
        characters=[list(clock.characters)] if clock is not None else None,
    )


#: GenerationOutput fields that hold one entry per text: lists, and tensors with a batch dim first.
PER_TEXT_LISTS = ("audio", "text", "output_str", "input_str", "words", "characters")
PER_TEXT_TENSORS = (
    "acoustic_features",
    "time_before",
    "prompt_text_tokens",
    "text_token_ids",
    "output_text_ids",
    "input_text_ids",
)


def merge_outputs(outputs: list[GenerationOutput]) -> GenerationOutput:
    """One output for several texts, each generated alone: every per-text field has one entry per
    text, in order. Tensors are stacked along their batch dim, right-padded with zeros to the
    longest (a batch's layout; ``audio[i]`` and ``words[i]`` give each text's true length);
    ``llm_time`` and ``diffusion_time`` become one value per text. Timings of a stream (first
    audio, stalls, total) describe one stream, so a merged output has none."""
    if len(outputs) == 1:
        return outputs[0]
    merged = GenerationOutput(sample_rate=outputs[0].sample_rate)
    for name in PER_TEXT_LISTS:
        parts = [getattr(o, name) for o in outputs]
        setattr(merged, name, None if any(p is None for p in parts) else [item for p in parts for item in p])
    for name in PER_TEXT_TENSORS:
        setattr(merged, name, _stack_padded([getattr(o, name) for o in outputs]))
    for name in ("llm_time", "diffusion_time"):
        values = [getattr(o, name) for o in outputs]
        setattr(merged, name, None if any(v is None for v in values) else torch.stack([v.reshape(()) for v in values]))
    logs = [o.step_logs for o in outputs]
    merged.step_logs = None if all(log is None for log in logs) else [entry for log in logs for entry in log or ()]
    return merged


def _stack_padded(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """``(1, T_i, ...)`` tensors as one ``(n, max T_i, ...)``, zeros after each one's end."""
    if any(t is None for t in tensors):
        return None
    longest = max(t.shape[1] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[2:]))
    for row, tensor in enumerate(tensors):
        out[row, : tensor.shape[1]] = tensor[0]
    return out


@torch.inference_mode()
def decode_audio(model, vectors: torch.Tensor, time_before: torch.Tensor, window_size: int = 100) -> torch.Tensor:
    """Decode one whole utterance, leading silence trimmed (at least 5 frames).

    Runs the block-wise decoder in calls of ``window_size`` frames: the same numbers as one pass
    over all frames (the decoder's block mask makes them equal), with memory that does not grow
    with the utterance and without the cost of a T x T attention mask.
    """
    from ..codec.decoder import expand_tokens
    from ..codec.streaming import StreamingDecoder

    decoder = model.require_decoder()
    param = decoder.decoder_proj.weight
    frames = expand_tokens(vectors.to(param), time_before[: vectors.shape[0] + 1])
    trim = leading_trim_frames(time_before[0])
    return StreamingDecoder(decoder, window_size, skip_leading_frames=trim).decode(frames)
