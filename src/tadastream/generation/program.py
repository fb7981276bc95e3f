"""One stream's generation as a program: TADA's per-token logic, asking for compute instead of doing it.

:meth:`SpeechProgram.run` is a generator. It yields a request (:mod:`.requests`) whenever it needs
the model (an LLM step, a flow solve, logits) or more text, and is resumed with the result; it
never touches the model, so the engine can answer the requests of many streams with one batched
call each. Per token it asks, in this order, for: the LLM step of its rows (one tick's request),
then maybe a flow solve, then maybe logits. Everything it knows lives in :class:`PassState`
(explicit, inspectable), and it draws random numbers only from its own :class:`StreamRng`, in the
reference's order: flow noise, then the text sample.

Each step consumes one token and settles the frame of the token ``shift`` positions earlier: the
prompt supplies frames (and durations) for its own tokens, the flow head predicts the rest. A
``speed_up_factor`` runs two passes: the first settles durations, the second speaks them scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..timecode import decode_time
from .feed import TokenFeed
from .options import InferenceOptions
from .outputs import StepOutput, SyncTokGenerationOutput
from .plan import GenerationPlan, mask_prompt_text
from .requests import Computed, FlowSolve, LlmStep, Logits, NeedText, Request
from .rng import StreamRng
from .sampling import sample_next_token
from .text_input import TextInput

#: Prefill positions per LLM request. A fixed size, whatever else runs, so a stream's numbers never
#: depend on its neighbours; small enough that a joining stream stalls the others for little.
PREFILL_CHUNK = 64


@dataclass(frozen=True)
class ModelShape:
    """What a program needs to know of the model (never the model itself)."""

    shift: int
    acoustic_dim: int
    hidden_size: int
    time_bits: int
    dtype: torch.dtype
    device: torch.device
    max_time: int  # the longest duration (frames) the time embeddings know

    @classmethod
    def of(cls, model) -> ModelShape:
        cfg = model.config
        return cls(
            cfg.shift_acoustic,
            cfg.acoustic_dim,
            cfg.hidden_size,
            model.num_time_bits,
            model.dtype,
            model.device,
            cfg.num_time_classes - 1,
        )

    @property
    def time_dim(self) -> int:
        return 2 * self.time_bits


@dataclass
class PassState:
    """Where one pass over the token sequence stands."""

    feed: TokenFeed
    forced_before: torch.Tensor  # (1, n): durations given for tokens 0..n-2 (index 0 is a pad)
    forced_after: torch.Tensor
    options: InferenceOptions
    final: bool  # this pass's frames are the audio (a first of two passes only settles durations)
    num_steps: int | None  # a fixed step count (the second pass), else the feed decides
    extra_steps: int = 0  # steps after the text's end tokens (the LLM picks the tokens)
    step: int = 0
    # the next step's acoustic input: the last settled frame, its mask and durations
    acoustic: torch.Tensor | None = None
    acoustic_mask: torch.Tensor | None = None
    time_before: torch.Tensor | None = None
    time_after: torch.Tensor | None = None
    neg_cond: torch.Tensor | None = None
    prefill_cond: torch.Tensor | None = None  # the prefill's hidden states ("prompt" guidance)
    features: list[torch.Tensor] = field(default_factory=list)
    durations: list[torch.Tensor] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)
    last_loop_before: torch.Tensor | None = None  # counts the frames after the last token too
    llm_seconds: list[float] = field(default_factory=list)
    flow_seconds: list[float] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        if not self.feed.ended:
            return False
        last = self.num_steps if self.num_steps is not None else self.feed.final_length + self.extra_steps
        return self.step >= last


class SpeechProgram:
    """The generation of one utterance; see the module docstring.

    ``emit`` receives every settled frame as it settles; :meth:`run` returns the final
    :class:`SyncTokGenerationOutput` (as StopIteration's value).
    """

    def __init__(
        self,
        shape: ModelShape,
        plan: GenerationPlan,
        rng: StreamRng,
        emit: Callable[[StepOutput], None],
        text: TextInput | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.shape, self.plan, self.rng, self.emit, self.text = shape, plan, rng, emit, text
        self.prefill_chunk = prefill_chunk
        opts = plan.options
        # slot rows: the spoken row, then the text-only row, then the guidance row
        self.text_only_row = 1 if opts.text_only else None
        self.rows = 1 + int(opts.text_only) + int(opts.guided)
        self.guidance_row = self.rows - 1 if opts.guided else None
        self.state: PassState | None = None

    @property
    def positions_hint(self) -> int:
        """Positions the first pass needs, when the text is known (a slot's starting capacity)."""
        return self.plan.num_steps or len(self.plan.head_ids) + 64

    # -- the program ------------------------------------------------------------------------
    def run(self) -> Generator[Request, Any, SyncTokGenerationOutput]:
        plan, opts = self.plan, self.plan.options
        first = self._new_pass(
            TokenFeed(plan, self.text),
            plan.prompt_time_before,
            plan.prompt_time_after,
            opts,
            final=opts.speed_up_factor is None,
            use_text_in_prompt=plan.use_text_in_prompt,
        )
        result = yield from self._run_pass(first)
        if opts.speed_up_factor is None:
            return result
        # Two passes: the first settles durations, which are then scaled and forced in the second.
        scaled = (result.time_before.float() / opts.speed_up_factor).round().long()
        forced_before = torch.cat([torch.zeros_like(scaled[:, :1]), scaled], dim=1)
        forced_after = torch.cat([scaled, torch.ones_like(scaled[:, :1])], dim=1)
        feed = TokenFeed.complete(result.input_ids[0].tolist())
        # As in the reference, the second pass masks the prompt text whatever use_text_in_prompt said.
        second = self._new_pass(
            feed,
            forced_before,
            forced_after,
            dataclasses.replace(opts, speed_up_factor=None),
            final=True,
            use_text_in_prompt=False,
            num_steps=feed.final_length - 1,
        )
        return (yield from self._run_pass(second))

    def _new_pass(self, feed, forced_before, forced_after, opts, *, final, use_text_in_prompt, num_steps=None):
        if not use_text_in_prompt:
            mask_prompt_text(feed.ids, self.plan.prompt_features.shape[1], self.plan.special)
        s = self.shape
        zeros = torch.zeros(1, 1, device=s.device, dtype=torch.long)
        state = PassState(feed, forced_before, forced_after, opts, final, num_steps, self.plan.num_extra_steps)
        state.acoustic = torch.zeros(1, 1, s.acoustic_dim, device=s.device, dtype=s.dtype)
        state.acoustic_mask = state.time_before = state.time_after = zeros
        state.neg_cond = torch.zeros(1, s.hidden_size, device=s.device, dtype=s.dtype)
        self.state = state
        return state

    def _run_pass(self, p: PassState):
        # (A second pass rewrites the slot from position 0; attention never reads past a step's position.)
        # Enough ids that the prompt, not the text's length, decides the prefill (as for the whole text).
        yield from self._wait_for_ids(
            p, max(self.plan.prompt_features.shape[1], p.forced_before.shape[1]) + self.shape.shift + 1
        )
        prefill_len = self._prefill_length(p)
        if prefill_len:
            yield from self._prefill(p, prefill_len)
        p.step = prefill_len - 1
        while True:
            p.step += 1
            yield from self._wait_for_ids(p, p.step + 2)  # this step's token, and whether it is the last
            if p.ended:
                break
            yield from self._decode_step(p)
        return self._result(p)

    def _wait_for_ids(self, p: PassState, n: int):
        while not p.feed.available(n):
            yield NeedText()

    # -- prefill: the prompt's positions in chunks ----------------------------------------
    def _prefill_length(self, p: PassState) -> int:
        shift, n_ids = self.shape.shift, len(p.feed.ids)
        n_acoustic = min(n_ids - shift - 1, self.plan.prompt_features.shape[1] - 1)
        n_durations = min(n_ids - shift - 1, p.forced_before.shape[1] - 1)
        if n_acoustic <= 0 or n_durations <= 0:
            return 0
        n_pre = min(n_acoustic, n_durations, max(0, p.forced_before.shape[1] - 2))
        return min(n_ids, shift + n_pre + 1) if n_pre > 0 else 0

    def _prefill_inputs(self, p: PassState, length: int):
        """The spoken row's inputs for positions 0..length: token ids, and from ``shift + 1`` on the
        prompt's frames and durations (position i carries token i - shift - 1's)."""
        s, plan = self.shape, self.plan
        rows, off = length - s.shift - 1, s.shift + 1
        feats = torch.zeros(1, length, s.acoustic_dim, device=s.device, dtype=s.dtype)
        masks = torch.zeros(1, length, device=s.device, dtype=torch.long)
        before, after = torch.zeros_like(masks), torch.zeros_like(masks)
        k = min(rows, plan.prompt_features.shape[1])
        feats[:, off : off + k] = plan.prompt_features[:, :k]
        k = min(rows, plan.prompt_masks.shape[1])
        masks[:, off : off + k] = plan.prompt_masks[:, :k]
        k = min(rows, p.forced_before.shape[1] - 1)
        before[:, off : off + k] = p.forced_before[:, 1 : 1 + k]
        after[:, off : off + k] = p.forced_after[:, 1 : 1 + k]
        ids = torch.tensor([p.feed.ids[:length]], device=s.device)
        return ids, feats, masks, before.clamp_(max=s.max_time), after.clamp_(max=s.max_time)

    def _prefill(self, p: PassState, length: int):
        ids, feats, masks, before, after = self._prefill_inputs(p, length)
        mirror = (self.guidance_row,) if self.guidance_row is not None else ()
        conds, seconds = [], 0.0
        for start in range(0, length, self.prefill_chunk):
            cut = slice(start, min(length, start + self.prefill_chunk))
            rows = [(ids[:, cut], feats[:, cut], masks[:, cut], before[:, cut], after[:, cut])]
            if self.text_only_row is not None:  # text alone: no frames, no durations
                z = torch.zeros_like(masks[:, cut])
                rows.append((ids[:, cut], torch.zeros_like(feats[:, cut]), z, z, z))
            out: Computed = yield LlmStep(*(torch.cat(c) for c in zip(*rows)), start=start, mirror_to=mirror)
            seconds += out.seconds
            conds.append(out.value[0])
        p.llm_seconds.append(seconds)
        if p.options.negative_condition_source == "prompt":
            p.prefill_cond = torch.cat(conds).unsqueeze(0)
        plan, shift = self.plan, self.shape.shift
        p.tokens.extend(torch.tensor([[i]], device=self.shape.device) for i in p.feed.ids[1:length])
        frames = length - shift
        for i in range(frames):
            p.features.append(plan.prompt_features[:, i].unsqueeze(1))
            p.durations.append(p.forced_before[:, i + 1].unsqueeze(1))
            self.emit(
                StepOutput(
                    i + shift, i, plan.prompt_features[:, i], p.forced_before[:, i + 1], "prompted", final_pass=p.final
                )
            )
        p.acoustic = plan.prompt_features[:, frames - 1].unsqueeze(1)
        p.acoustic_mask = plan.prompt_masks[:, frames - 1].unsqueeze(1)
        p.time_before = p.forced_before[:, frames].unsqueeze(1)
        p.time_after = p.forced_after[:, frames].unsqueeze(1)

    # -- one decode step --------------------------------------------------------------------
    def _decode_step(self, p: PassState):
        out: Computed = yield self._llm_step(p)
        hidden = out.value[:, -1]  # (rows, hidden)
        p.llm_seconds.append(out.seconds)
        cond = hidden[:1]
        self._update_negative_condition(p, hidden)
        latent, flow_seconds = yield from self._flow(p, cond)
        if p.step >= len(p.feed.ids) - 1:  # past the known ids: the LLM picks the next token
            yield from self._sample_next(p, hidden)
        else:
            p.tokens.append(torch.tensor([[p.feed.ids[p.step + 1]]], device=self.shape.device))
        p.flow_seconds.append(flow_seconds)
        if p.step >= self.shape.shift:
            self._settle(p, latent)

    def _llm_step(self, p: PassState) -> LlmStep:
        s, ids = self.shape, p.feed.ids
        current = torch.tensor([[ids[p.step] if p.step < len(ids) else ids[-1]]], device=s.device)
        # A slowed-down second pass forces durations past what the time embeddings know: the model
        # sees the longest it knows, while the frames (and so the audio) keep the real length.
        before, after = p.time_before.clamp(max=s.max_time), p.time_after.clamp(max=s.max_time)
        rows = [(current, p.acoustic, p.acoustic_mask, before, after)]
        if self.text_only_row is not None:
            zeros = torch.zeros_like(p.acoustic_mask)
            rows.append((current, torch.zeros_like(p.acoustic), zeros, zeros, zeros))
        if self.guidance_row is not None:  # the guidance row sees only the chat structure of the text
            sp = self.plan.special
            structural = (current == sp.start_header) | (current == sp.end_header) | (current == sp.eot)
            masked = torch.where(structural, current, torch.full_like(current, sp.pad))
            rows.append((masked, p.acoustic, p.acoustic_mask, before, after))
        return LlmStep(*(torch.cat(c) for c in zip(*rows)), start=p.step)

    def _update_negative_condition(self, p: PassState, hidden: torch.Tensor) -> None:
        if self.guidance_row is not None:
            p.neg_cond = hidden[self.guidance_row : self.guidance_row + 1]
        elif p.options.negative_condition_source == "prompt" and p.prefill_cond is not None:
            p.neg_cond = p.prefill_cond[:, p.step % p.prefill_cond.shape[1]]

    def _frame_is_predicted(self, p: PassState, k: int) -> bool:
        """Whether the head's output is used for token ``k``: the prompt gives neither its frame nor
        its duration. (Otherwise the ODE is skipped; its noise is still drawn, so the random
        stream stays the reference's.)"""
        return k >= 0 and (k >= self.plan.prompt_features.shape[1] or k >= p.forced_before.shape[1] - 1)

    def _flow(self, p: PassState, cond: torch.Tensor):
        s, opts = self.shape, p.options
        used = self._frame_is_predicted(p, p.step - s.shift)
        width = s.acoustic_dim + s.time_dim
        n = opts.num_acoustic_candidates
        if n > 1:
            noise = self.rng.candidate_noise(n, width, s.dtype, s.device)
            if not used:
                return None, 0.0
            solve = FlowSolve(
                noise * opts.noise_temperature,
                cond.expand(n, -1),
                p.neg_cond.reshape(1, -1).expand(n, -1),
                opts,
                n,
                self.plan.speaker_reference,
            )
        else:
            noise = self.rng.flow_noise(1, s.acoustic_dim).to(cond) * opts.noise_temperature
            noise_t = self.rng.flow_noise(1, s.time_dim).to(cond) * opts.noise_temperature
            if not used:
                return None, 0.0
            solve = FlowSolve(torch.cat([noise, noise_t], dim=-1), cond, p.neg_cond.reshape(1, -1), opts)
        out: Computed = yield solve
        return out.value, out.seconds

    def _sample_next(self, p: PassState, hidden: torch.Tensor):
        rows = hidden[:1] if self.text_only_row is None else hidden[:2]
        out: Computed = yield Logits(rows)
        p.llm_seconds[-1] += out.seconds
        logits = out.value[:1].clone()
        logits[:, self.plan.special.pad] = float("-inf")
        if self.text_only_row is not None:
            mix = p.options.text_only_logit_scale
            logits = (out.value[1:2] * mix + logits) / (mix + 1)
        nxt = sample_next_token(logits, p.feed.tensor(self.shape.device), p.options, self.rng)
        p.feed.ids.append(int(nxt))
        p.tokens.append(nxt)

    def _settle(self, p: PassState, latent: torch.Tensor | None) -> None:
        """The frame of token ``step - shift``: the prompt's, or the predicted one."""
        s, plan = self.shape, self.plan
        k = p.step - s.shift
        if k < plan.prompt_features.shape[1]:
            p.acoustic, p.acoustic_mask, source = (
                plan.prompt_features[:, k : k + 1],
                plan.prompt_masks[:, k : k + 1],
                "prompted",
            )
        else:
            p.acoustic = latent[:, : s.acoustic_dim].unsqueeze(0)
            p.acoustic_mask, source = torch.ones(1, 1, device=s.device, dtype=torch.long), "predicted"
        p.features.append(p.acoustic)
        if k < p.forced_before.shape[1] - 1:
            p.time_before, p.time_after = p.forced_before[:, k + 1 : k + 2], p.forced_after[:, k + 1 : k + 2]
        else:
            p.time_before, p.time_after = self._predicted_durations(latent)
        p.durations.append(p.time_before)
        p.last_loop_before = p.time_before
        llm = p.llm_seconds[-1] if p.llm_seconds else 0.0
        self.emit(
            StepOutput(
                p.step,
                len(p.features) - 1,
                p.acoustic.reshape(1, -1),
                p.time_before.reshape(1),
                source,
                llm,
                p.flow_seconds[-1],
                p.final,
            )
        )

    def _predicted_durations(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames before and after the token, (1, 1) each, from the latent's gray-coded bits."""
        s = self.shape
        gray = latent[:, -s.time_dim :]
        before = decode_time(gray[:, : s.time_bits], s.time_bits).unsqueeze(0)
        return before, decode_time(gray[:, s.time_bits :], s.time_bits).unsqueeze(0)

    def _result(self, p: PassState) -> SyncTokGenerationOutput:
        durations = p.durations + ([p.last_loop_before] if p.last_loop_before is not None else [])
        return SyncTokGenerationOutput(
            acoustic_features=torch.cat([f.reshape(1, 1, -1) for f in p.features], dim=1),
            time_before=torch.cat([t.reshape(1, 1) for t in durations], dim=1),
            text_token_ids=torch.cat(p.tokens, dim=1) if p.tokens else None,
            input_ids=p.feed.tensor(self.shape.device),
            llm_time=sum(p.llm_seconds) / max(len(p.llm_seconds), 1),
            diffusion_time=sum(p.flow_seconds) / max(len(p.flow_seconds), 1),
        )
