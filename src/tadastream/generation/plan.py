"""A generation's plan: token layout, prompt frames and options, validated before any model work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..codec.encoder import EncoderOutput
from ..text import IncrementalText, model_text, tokenize_joint
from .options import GenerationInputError, InferenceOptions, TextTooLongError, check_speakable
from .speech_request import SpeechRequest, Text


@dataclass(frozen=True)
class SpecialIds:
    """The Llama 3 chat tokens a generation needs."""

    start_header: int
    end_header: int
    eot: int
    pad: int
    bos: int
    eos: int | None

    @classmethod
    def of(cls, tok) -> SpecialIds:
        bos = tok.bos_token_id
        if bos is None:
            raise GenerationInputError("the tokenizer has no bos token: use a Llama 3 tokenizer")
        return cls(
            *(special_id(tok, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
            special_id(tok, "<|finetune_right_pad_id|>"),
            bos,
            tok.eos_token_id,
        )


def special_id(tokenizer, token: str) -> int:
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == getattr(tokenizer, "unk_token_id", -1):
        raise GenerationInputError(f"the tokenizer has no {token} token: use a Llama 3 tokenizer")
    return int(idx)


@dataclass
class GenerationPlan:
    """Everything the loop needs, validated, built before any model work.

    The LLM input is ``head_ids`` (bos, chat prefix, prompt transcript), the text's ids, then
    ``tail_ids`` (the end tokens). ``text_ids`` is None while the text is still arriving
    (``incremental`` then turns pieces into ids).
    """

    head_ids: list[int]
    text_ids: list[int] | None
    tail_ids: list[int]
    prompt_features: torch.Tensor
    prompt_masks: torch.Tensor
    prompt_time_before: torch.Tensor
    prompt_time_after: torch.Tensor
    num_extra_steps: int
    decode_start: int
    options: InferenceOptions
    use_text_in_prompt: bool
    text: str
    special: SpecialIds
    incremental: Any = None
    max_positions: int = 131072
    shift: int = 5
    speaker_reference: torch.Tensor | None = None  # for the spkr_verification scorer
    source_text: str = ""  # the text as the caller wrote it (``text`` is normalised)
    prompt_text: str = ""  # the voice prompt's transcript, tokenized jointly with the text
    normalize_text: bool = True

    def text_tokens(self, tokenizer):
        """Which characters of the caller's text each new token speaks (for word timestamps)."""
        from ..timestamps import TextTokens

        return TextTokens(
            tokenizer,
            self.prompt_text,
            text=self.source_text,
            ids=self.text_ids,
            incremental=self.incremental,
            normalize=self.normalize_text,
        )

    @property
    def num_steps(self) -> int | None:
        """LLM steps of the (first) pass; None while the text is still arriving."""
        if self.text_ids is None:
            return None
        return len(self.head_ids) + len(self.text_ids) + len(self.tail_ids) + self.num_extra_steps

    @property
    def tokens_spoken(self) -> int | None:
        """Tokens whose frames are decoded into audio; None while the text is still arriving."""
        steps = self.num_steps
        return None if steps is None else max(0, steps - self.shift - self.decode_start)

    @property
    def input_ids(self) -> list[int]:
        return self.head_ids + (self.text_ids or []) + self.tail_ids

    def check_length(self, num_text_ids: int) -> None:
        if num_text_ids == 0:
            check_speakable("")
        self.check_room(len(self.head_ids) + num_text_ids)
        num_steps = len(self.head_ids) + num_text_ids + len(self.tail_ids) + self.num_extra_steps
        if num_steps - self.shift <= self.decode_start:
            raise GenerationInputError("nothing to speak after the prompt: pass more text or fewer transition steps")

    def check_room(self, num_ids: int) -> None:
        """Refuse a text whose ids (``num_ids`` so far, end tokens to come) exceed the context."""
        num_steps = num_ids + len(self.tail_ids) + self.num_extra_steps
        if num_steps > self.max_positions:
            raise TextTooLongError(num_steps, self.max_positions)


def mask_prompt_text(ids: list[int], n: int, special: SpecialIds) -> None:
    """Replace prompt-transcript tokens (first ``n`` ids) by the pad token, keeping the chat structure."""
    keep_always = {special.eot, special.bos, special.eos}
    in_header = False
    for t in range(min(n, len(ids))):
        token = ids[t]
        if token == special.start_header:
            in_header = True
        elif token == special.end_header:
            in_header = False
        elif not in_header and token not in keep_always:
            ids[t] = special.pad


def _prompt_on(model, prompt: EncoderOutput | None) -> dict[str, Any]:
    """A copy of the prompt's tensors on the model's device, floats in the model's dtype (None: an
    empty prompt, to speak without a reference voice)."""
    if prompt is None:
        prompt = EncoderOutput.empty(model.device, model.config.acoustic_dim)
    out = {}
    for f in dataclasses.fields(prompt):
        value = getattr(prompt, f.name)
        if isinstance(value, torch.Tensor):
            value = value.to(model.device, model.dtype if value.is_floating_point() else value.dtype)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class PreparedPrompt:
    """The part of a plan that does not depend on the text: the voice prompt's ids and frames
    behind the chat prefix, made once per request and shared (not copied) by the plan of every
    text spoken with it, so a long text's segments cost their token ids only."""

    model: Any
    request: SpeechRequest
    special: SpecialIds
    head_ids: list[int]
    tail_ids: list[int]
    prompt_text: str
    known_ids: list[int]
    frames: _PromptFrames
    speaker_reference: torch.Tensor | None

    def plan(self, text: Text) -> GenerationPlan:
        """The plan of speaking ``text`` (a string, or text arriving in pieces) after this prompt;
        GenerationInputError when a whole text does not fit one generation."""
        model, request, layout = self.model, self.request, self.request.layout
        whole = isinstance(text, str)
        spoken = model_text(text, layout.normalize_text) if whole else None
        tok = model.tokenizer
        feed_text, text_ids = _text_ids(tok, self.prompt_text, self.known_ids, spoken, layout.normalize_text)
        plan = GenerationPlan(
            head_ids=self.head_ids,
            text_ids=text_ids,
            tail_ids=self.tail_ids,
            prompt_features=self.frames.features,
            prompt_masks=self.frames.masks,
            prompt_time_before=self.frames.time_before,
            prompt_time_after=self.frames.time_after,
            num_extra_steps=layout.num_extra_steps,
            decode_start=self.frames.features.shape[1] + layout.num_transition_steps - 1,
            options=request.options,
            use_text_in_prompt=layout.use_text_in_prompt,
            text=spoken or "",
            special=self.special,
            incremental=feed_text,
            max_positions=model.config.max_position_embeddings,
            shift=model.config.shift_acoustic,
            speaker_reference=self.speaker_reference,
            source_text=text if whole else "",
            prompt_text=self.prompt_text,
            normalize_text=layout.normalize_text,
        )
        if whole:
            plan.check_length(len(text_ids))
        return plan


def prepare_prompt(model, request: SpeechRequest) -> PreparedPrompt:
    """The text-independent part of ``request``'s plans (see :class:`PreparedPrompt`)."""
    layout = request.layout
    p = _prompt_on(model, request.voice)
    tok = model.tokenizer
    special = SpecialIds.of(tok)
    prompt_text, known = _prompt_ids(p, tok)
    prefix_ids = _chat_prefix_ids(tok, layout.system_prompt, layout.user_turn_prompt)
    frames = _frames_after_prefix(_prompt_frames(model, p), len(prefix_ids), layout.num_transition_steps)
    opts = request.options
    reference = None
    if opts.num_acoustic_candidates > 1 and opts.scorer == "spkr_verification":
        reference = _speaker_reference(model, frames.features)
    return PreparedPrompt(
        model=model,
        request=request,
        special=special,
        head_ids=[special.bos] + prefix_ids + known,
        tail_ids=[] if layout.num_extra_steps > 0 else [special.eot] * model.config.shift_acoustic,
        prompt_text=prompt_text,
        known_ids=known,
        frames=frames,
        speaker_reference=reference,
    )


def plan_generation(model, request: SpeechRequest) -> GenerationPlan:
    """Plan speaking ``request.text`` with its voice, as one generation (see :meth:`PreparedPrompt.plan`)."""
    return prepare_prompt(model, request).plan(request.text)


# -- the phases of a plan: prompt ids, text ids, prompt frames, chat prefix ---------------------


def _prompt_ids(p: dict[str, Any], tok) -> tuple[str, list[int]]:
    """(the prompt's transcript, its token ids): the ids the voice was encoded with, else the
    transcript tokenized (none for a prompt without one)."""
    prompt_text = (p["text"] or [""])[0] or ""
    n_prompt = (
        int(p["text_tokens_len"][0]) if p.get("text_tokens_len") is not None and p["text_tokens_len"].numel() else 0
    )
    known = None
    if p.get("text_tokens") is not None and p["text_tokens"].numel() and n_prompt:
        known = p["text_tokens"].reshape(-1)[:n_prompt].tolist()
    if known is None and prompt_text.strip():
        known = tok.encode(prompt_text.rstrip(), add_special_tokens=False)
    return prompt_text, known or []


def _text_ids(
    tok, prompt_text: str, known: list[int], text: str | None, normalize_text: bool
) -> tuple[IncrementalText | None, list[int] | None]:
    """(None, the ids of ``text``) tokenized jointly after the prompt's transcript, or, for text
    still to arrive (``text`` None), (what turns its pieces into ids, None)."""
    if text is None:
        return IncrementalText(tok, prompt_text, known, normalize_text), None
    return None, tokenize_joint(tok, prompt_text, text, known or None)[len(known) :]


class _PromptFrames(NamedTuple):
    """The prompt's acoustic frames as the LLM input carries them, one per input position."""

    features: torch.Tensor
    masks: torch.Tensor
    time_before: torch.Tensor
    time_after: torch.Tensor


def _prompt_frames(model, p: dict[str, Any]) -> _PromptFrames:
    """One frame per prompt token: its vector, and the frames of audio before and after it
    (clamped to the model's time classes); GenerationInputError for a voice from another codec."""
    features = p["token_values"]
    if features.dim() != 3 or features.shape[-1] != model.config.acoustic_dim:
        raise GenerationInputError(
            f"prompt token_values have shape {tuple(features.shape)}, expected (1, N, {model.config.acoustic_dim}):"
            " was the voice encoded with a matching codec?"
        )
    n_values = features.shape[1]
    positions = p["token_positions"][:, :n_values].long()
    if positions.shape[1] != n_values:
        raise GenerationInputError("prompt token_positions and token_values disagree in length: re-encode the voice")
    classes = model.config.num_time_classes
    # Gap before each prompt token, in frames; index 0 is a pad so time_before[k] is token k-1's.
    gaps = (positions - F.pad(positions, [1, 0], value=1)[:, :-1]).clamp(0, classes - 1)
    gaps = F.pad(gaps, [1, 0], value=0)
    masks = torch.ones(features.shape[:2], device=model.device, dtype=torch.long)
    return _PromptFrames(features, masks, gaps[:, :-1], gaps[:, 1:])


def _chat_prefix_ids(tok, system_prompt: str | None, user_turn_prompt: str | None) -> list[int]:
    """The Llama 3 chat turns before the assistant's answer: system (and user) prompts, assistant header."""
    prefix = (
        f"<|start_header_id|>system<|end_header_id|>{system_prompt or ''}<|eot_id|>"
        + (f"<|start_header_id|>user<|end_header_id|>{user_turn_prompt}<|eot_id|>" if user_turn_prompt else "")
        + "<|start_header_id|>assistant<|end_header_id|>"
    )
    return tok.encode(prefix, add_special_tokens=False)


def _frames_after_prefix(frames: _PromptFrames, n_prefix: int, num_transition_steps: int) -> _PromptFrames:
    """``frames`` behind ``n_prefix`` empty ones (the chat prefix has no audio), without the last
    ``num_transition_steps`` (which the model speaks anew), each mask moved one position earlier (the last set)."""
    features = F.pad(frames.features, (0, 0, n_prefix, 0))
    masks = F.pad(frames.masks, (n_prefix, 0))
    time_before, time_after = F.pad(frames.time_before, (n_prefix, 0)), F.pad(frames.time_after, (n_prefix, 0))
    if num_transition_steps > 0:
        cut = max(features.shape[1] - num_transition_steps, 0)
        features, masks = features[:, :cut], masks[:, :cut]
        time_before, time_after = time_before[:, :cut], time_after[:, :cut]
    masks = torch.cat([masks[:, 1:], torch.ones_like(masks[:, :1])], dim=1)
    return _PromptFrames(features, masks, time_before, time_after)


@torch.inference_mode()
def _speaker_reference(model, features: torch.Tensor) -> torch.Tensor:
    """The prompt's mean speaker embedding, for the spkr_verification scorer (loads the model once)."""
    if model.acoustic_spkr_verf is None:
        model.load_acoustic_spkr_verf()
    sv = model.acoustic_spkr_verf
    valid = (features.norm(dim=-1) > 0).unsqueeze(-1).float()
    norm = (features - model.config.acoustic_mean) / model.config.acoustic_std
    b, t, d = norm.shape
    emb = sv(norm.reshape(-1, d).to(next(sv.parameters()).dtype)).view(b, t, -1)
    mean = (emb * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return F.normalize(mean, dim=-1)
