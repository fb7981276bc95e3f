"""The generation loop: a generator of per-token steps (``TadaForCausalLM.generate`` drives it).

``generate_steps`` yields one :class:`StepOutput` per acoustic frame it settles (prompted or
predicted) and finally a :class:`SyncTokGenerationOutput`. The non-streaming ``generate`` drains
it and decodes once; ``generate(stream=True)`` hands it to an :class:`~tadastream.stream.AudioStream`
that decodes as it goes. All state (KV cache, sampled ids, noise) lives in the generator, so one
model serves many concurrent generations.

Random numbers are drawn in the reference's order (per step: acoustic noise then duration noise
on the CPU generator, then the text sample), so a seed reproduces the reference's output.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from transformers import DynamicCache

from .text import IncrementalText, tokenize_joint
from .text import normalize_text as normalize_text_fn
from .timecode import decode_time

MIN_LEADING_TRIM_FRAMES = 5  # the proposal's fix: never expose the decoder's start-up transient


class GenerationInputError(ValueError):
    """Bad input to generate(); the message says how to fix it."""


@dataclass
class InferenceOptions:
    text_do_sample: bool = True
    text_temperature: float = 0.6
    text_top_k: int = 0
    text_top_p: float = 0.9
    text_repetition_penalty: float = 1.1
    acoustic_cfg_scale: float = 1.6
    duration_cfg_scale: float = 1.0
    cfg_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    noise_temperature: float = 0.9
    num_flow_matching_steps: int = 10
    time_schedule: Literal["uniform", "cosine", "logsnr"] = "logsnr"
    num_acoustic_candidates: int = 1
    scorer: Literal["spkr_verification", "likelihood", "duration_median"] = "likelihood"
    spkr_verification_weight: float = 1.0
    speed_up_factor: float | None = None
    negative_condition_source: Literal["negative_step_output", "prompt", "zero"] = "negative_step_output"
    text_only_logit_scale: float = 0.0

    _CHOICES = {
        "cfg_schedule": ("constant", "linear", "cosine"),
        "time_schedule": ("uniform", "cosine", "logsnr"),
        "scorer": ("spkr_verification", "likelihood", "duration_median"),
        "negative_condition_source": ("negative_step_output", "prompt", "zero"),
    }

    def validate(self) -> InferenceOptions:
        for name, allowed in self._CHOICES.items():
            if getattr(self, name) not in allowed:
                raise GenerationInputError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.num_flow_matching_steps < 1 or self.num_acoustic_candidates < 1:
            raise GenerationInputError("num_flow_matching_steps and num_acoustic_candidates must be at least 1")
        if self.text_do_sample and self.text_temperature <= 0:
            raise GenerationInputError("text_temperature must be > 0 when text_do_sample is True")
        if not 0.0 <= self.text_top_p <= 1.0 or self.text_top_k < 0:
            raise GenerationInputError("text_top_p must be in [0, 1] and text_top_k >= 0")
        if self.noise_temperature < 0 or self.text_only_logit_scale < 0:
            raise GenerationInputError("noise_temperature and text_only_logit_scale must be >= 0")
        if self.speed_up_factor is not None and not self.speed_up_factor > 0:
            raise GenerationInputError("speed_up_factor must be a positive number (or None)")
        return self


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
    sample_rate: int = 24000
    time_to_first_audio: float | None = None
    chunk_times: list[float] | None = None
    chunk_samples: list[int] | None = None
    total_time: float | None = None


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
    incremental: Any = None
    max_positions: int = 131072
    shift: int = 5

    @property
    def num_steps(self) -> int | None:
        """LLM steps of the (first) pass; None while the text is still arriving."""
        if self.text_ids is None:
            return None
        return len(self.head_ids) + len(self.text_ids) + len(self.tail_ids) + self.num_extra_steps

    @property
    def input_ids(self) -> list[int]:
        return self.head_ids + (self.text_ids or []) + self.tail_ids

    def check_length(self, num_text_ids: int) -> None:
        if num_text_ids == 0:
            raise GenerationInputError("text is empty: pass the words to speak")
        num_steps = len(self.head_ids) + num_text_ids + len(self.tail_ids) + self.num_extra_steps
        if num_steps > self.max_positions:
            raise GenerationInputError(
                f"text too long: {num_steps} positions with the prompt, the model allows {self.max_positions};"
                " split the text"
            )
        if num_steps - self.shift <= self.decode_start:
            raise GenerationInputError("nothing to speak after the prompt: pass more text or fewer transition steps")


class TokenFeed:
    """The LLM's input ids for one generation: complete from the start, or growing as text arrives.

    ``ensure(n)`` pulls text pieces (blocking on the producer, never spinning) until ``n`` ids are
    known or the text has ended; at the end the end tokens follow.
    """

    def __init__(self, plan: GenerationPlan, pull=None):
        self.plan = plan
        self.ids = list(plan.head_ids) + list(plan.text_ids or [])
        self._pull = pull
        self.ended = plan.text_ids is not None
        if self.ended:
            self.ids += plan.tail_ids
        self.final_length = len(self.ids) if self.ended else None

    @classmethod
    def complete(cls, ids: list[int]) -> TokenFeed:
        feed = cls.__new__(cls)
        feed.plan, feed._pull, feed.ended = None, None, True
        feed.ids, feed.final_length = list(ids), len(ids)
        return feed

    def ensure(self, n: int) -> None:
        while not self.ended and len(self.ids) < n:
            try:
                piece = self._pull()
            except StopIteration:
                new = self.plan.incremental.finish()
                self.plan.check_length(len(self.plan.incremental.released))
                self.plan.text = self.plan.incremental.text
                self.plan.text_ids = list(self.plan.incremental.released)
                new += self.plan.tail_ids
                self.ended = True
            else:
                new = self.plan.incremental.push(piece)
            self.ids += new
            if self.ended:
                self.final_length = len(self.ids)

    def tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.ids], device=device)


@dataclass
class Rng:
    """Where a generation draws its random numbers.

    ``None`` means torch's global generators, as the reference does (so ``torch.manual_seed``
    reproduces it). A stream forks the global state into its own generators when it is created,
    so concurrent streams neither disturb nor depend on each other, and a stream gives the same
    audio as the non-streaming call made after the same ``manual_seed``.
    """

    cpu: torch.Generator | None = None
    device: torch.Generator | None = None

    @classmethod
    def fork_global(cls, device: torch.device) -> Rng:
        cpu = torch.Generator()
        cpu.set_state(torch.get_rng_state())
        if device.type == "cpu":
            return cls(cpu, cpu)
        dev = torch.Generator(device=device)
        dev.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else dev.get_state())
        return cls(cpu, dev)


# -- prompt and token layout ------------------------------------------------------------------
def _special_id(tokenizer, token: str) -> int:
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == getattr(tokenizer, "unk_token_id", -1):
        raise GenerationInputError(f"the tokenizer has no {token} token: use a Llama 3 tokenizer")
    return int(idx)


def _prompt_on(model, prompt):
    """A copy of the prompt's tensors on the model's device, floats in the model's dtype."""
    out = {}
    for f in dataclasses.fields(prompt):
        value = getattr(prompt, f.name)
        if isinstance(value, torch.Tensor):
            value = value.to(model.device, model.dtype if value.is_floating_point() else value.dtype)
        out[f.name] = value
    return out


def plan_generation(
    model,
    prompt,
    text: str,
    *,
    num_transition_steps: int = 5,
    num_extra_steps: int = 0,
    system_prompt: str | None = None,
    user_turn_prompt: str | None = None,
    inference_options: InferenceOptions | None = None,
    use_text_in_prompt: bool = False,
    normalize_text: bool = True,
) -> GenerationPlan:
    opts = (inference_options or InferenceOptions()).validate()
    incremental = not isinstance(text, str)
    if not incremental and not text.strip():
        raise GenerationInputError("text is empty: pass the words to speak")
    if num_transition_steps < 0 or num_extra_steps < 0:
        raise GenerationInputError("num_transition_steps and num_extra_steps must be >= 0")
    if prompt is None:
        from .codec.encoder import EncoderOutput

        prompt = EncoderOutput.empty(model.device, model.config.acoustic_dim)
    p = _prompt_on(model, prompt)
    tok = model.tokenizer
    shift = model.config.shift_acoustic
    if not incremental:
        text = normalize_text_fn(text) if normalize_text else text
    prompt_text = (p["text"] or [""])[0] or ""
    n_prompt = (
        int(p["text_tokens_len"][0]) if p.get("text_tokens_len") is not None and p["text_tokens_len"].numel() else 0
    )
    known = None
    if p.get("text_tokens") is not None and p["text_tokens"].numel() and n_prompt:
        known = p["text_tokens"].reshape(-1)[:n_prompt].tolist()
    if known is None and prompt_text.strip():
        known = tok.encode(prompt_text.rstrip(), add_special_tokens=False)
    known = known or []
    if incremental:
        feed_text, text_ids = IncrementalText(tok, prompt_text, known, normalize_text), None
    else:
        feed_text, text_ids = None, tokenize_joint(tok, prompt_text, text, known or None)[len(known) :]
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

    eot = _special_id(tok, "<|eot_id|>")
    bos = tok.bos_token_id
    if bos is None:
        raise GenerationInputError("the tokenizer has no bos token: use a Llama 3 tokenizer")
    tail_ids = [] if num_extra_steps > 0 else [eot] * shift

    classes = model.config.num_time_classes
    # Gap before each prompt token, in frames; index 0 is a pad so time_before[k] is token k-1's.
    gaps = (positions - torch.nn.functional.pad(positions, [1, 0], value=1)[:, :-1]).clamp(0, classes - 1)
    gaps = torch.nn.functional.pad(gaps, [1, 0], value=0)
    time_before, time_after = gaps[:, :-1], gaps[:, 1:]
    masks = torch.ones(features.shape[:2], device=model.device, dtype=torch.long)

    prefix = (
        f"<|start_header_id|>system<|end_header_id|>{system_prompt or ''}<|eot_id|>"
        + (f"<|start_header_id|>user<|end_header_id|>{user_turn_prompt}<|eot_id|>" if user_turn_prompt else "")
        + "<|start_header_id|>assistant<|end_header_id|>"
    )
    prefix_ids = tok.encode(prefix, add_special_tokens=False)
    n_prefix = len(prefix_ids)
    head_ids = [bos] + prefix_ids + known
    F = torch.nn.functional
    features = F.pad(features, (0, 0, n_prefix, 0))
    masks = F.pad(masks, (n_prefix, 0))
    time_before, time_after = F.pad(time_before, (n_prefix, 0)), F.pad(time_after, (n_prefix, 0))
    if num_transition_steps > 0:
        cut = features.shape[1] - num_transition_steps
        if cut < 0:
            cut = 0
        features, masks = features[:, :cut], masks[:, :cut]
        time_before, time_after = time_before[:, :cut], time_after[:, :cut]
    masks = torch.cat([masks[:, 1:], torch.ones_like(masks[:, :1])], dim=1)
    plan = GenerationPlan(
        head_ids,
        text_ids,
        tail_ids,
        features,
        masks,
        time_before,
        time_after,
        num_extra_steps,
        features.shape[1] + num_transition_steps - 1,
        opts,
        use_text_in_prompt,
        text if not incremental else "",
        feed_text,
        model.config.max_position_embeddings,
        shift,
    )
    if not incremental:
        plan.check_length(len(text_ids))
    return plan


def _mask_prompt_text(ids: list[int], n: int, tok) -> None:
    """Replace prompt-transcript tokens (first ``n`` ids) by the pad token, keeping the chat structure."""
    start, end, eot = (_special_id(tok, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    pad = _special_id(tok, "<|finetune_right_pad_id|>")
    keep_always = {eot, tok.bos_token_id, tok.eos_token_id}
    in_header = False
    for t in range(min(n, len(ids))):
        token = ids[t]
        if token == start:
            in_header = True
        elif token == end:
            in_header = False
        elif not in_header and token not in keep_always:
            ids[t] = pad


# -- flow matching ----------------------------------------------------------------------------
def scheduled_cfg(scale: float, t: float, schedule: str) -> float:
    if schedule == "constant" or scale == 1.0:
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * (1.0 - t)
    return 1.0 + (scale - 1.0) * 0.5 * (1.0 + math.cos(math.pi * t))


def time_grid(num_steps: int, schedule: str, device) -> torch.Tensor:
    if schedule == "cosine":
        return 0.5 * (1 - torch.cos(math.pi * torch.linspace(0, 1, num_steps + 1, device=device)))
    if schedule == "logsnr":
        grid = torch.sigmoid(-torch.linspace(5.0, -5.0, num_steps + 1, device=device) / 2)
        grid[0], grid[-1] = 0.0, 1.0
        return grid
    return torch.linspace(0, 1, num_steps + 1, device=device)


def velocity(model, x, modulations, acoustic_cfg: float, duration_cfg: float) -> torch.Tensor:
    """Guided velocity; ``modulations``: the head's for this step, positive rows then negative."""
    head, split, rows = model.prediction_head, model.config.acoustic_dim, x.shape[0]
    if acoustic_cfg == 1.0:
        return head(x, modulations=modulations[:rows])
    pos, neg = head(torch.cat([x, x], dim=0), modulations=modulations).chunk(2, dim=0)
    return torch.cat(
        [(neg + acoustic_cfg * (pos - neg))[..., :split], (neg + duration_cfg * (pos - neg))[..., split:]],
        dim=-1,
    )


def solve_flow(model, x, cond, neg_cond, opts: InferenceOptions) -> torch.Tensor:
    grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, cond.device)
    times = grid[:-1].tolist()
    scales = [
        (
            scheduled_cfg(opts.acoustic_cfg_scale, t, opts.cfg_schedule),
            scheduled_cfg(opts.duration_cfg_scale, t, opts.cfg_schedule),
        )
        for t in times
    ]
    conds = cond.squeeze(1)
    if any(a != 1.0 for a, _ in scales):
        conds = torch.cat([conds, neg_cond.squeeze(1).to(cond)], dim=0)
    # the modulations of every step in one batch (the grid is known): those weights are read once
    rows = conds.shape[0]
    t_rows = grid[:-1].to(x.dtype).repeat_interleave(rows)
    modulations = model.prediction_head.modulations(t_rows, model.bottleneck_proj(conds).repeat(len(times), 1))
    for i, (a, d) in enumerate(scales):
        step_mods = modulations[i * rows : (i + 1) * rows]
        x = x + (grid[i + 1] - grid[i]) * velocity(model, x, step_mods, a, d)
    return x


def _reconstruction_scores(model, samples, noise, cond, points: int = 3) -> torch.Tensor:
    batch = samples.shape[0]
    target = samples - noise
    ts = torch.linspace(0.3, 0.9, points, device=samples.device)
    x_t = torch.cat([(1 - t) * noise + t * samples for t in ts], dim=0)
    t_all = torch.cat([t.expand(batch) for t in ts], dim=0)
    cond_all = model.bottleneck_proj(cond.squeeze(1)).repeat(points, 1)
    pred = model.prediction_head(x_t, t_all, cond_all)
    err = (pred - target.repeat(points, 1))[..., : model.config.acoustic_dim].pow(2).mean(-1)
    return -err.view(points, batch).mean(dim=0)


def solve_flow_ranked(model, cond, neg_cond, opts: InferenceOptions, ref_spkr_emb=None, rng: Rng | None = None):
    batch, n = cond.shape[0], opts.num_acoustic_candidates
    total = model.config.acoustic_dim + model.time_dim
    gen = rng.device if rng else None
    noise = torch.randn(n * batch, total, device=cond.device, dtype=cond.dtype, generator=gen) * opts.noise_temperature
    cond_n = cond.repeat(n, 1, 1)
    if neg_cond.dim() == 2:
        neg_cond = neg_cond.unsqueeze(1)
    neg_n = neg_cond.repeat(n, 1, 1)
    flat = solve_flow(model, noise.clone(), cond_n, neg_n, opts)
    cands = flat.view(n, batch, total)
    if opts.scorer == "spkr_verification" and model.acoustic_spkr_verf is not None and ref_spkr_emb is not None:
        sv = model.acoustic_spkr_verf
        acoustic = (cands[..., : model.config.acoustic_dim] - model.config.acoustic_mean) / model.config.acoustic_std
        emb = sv(acoustic.reshape(-1, acoustic.shape[-1]).to(next(sv.parameters()).dtype)).view(n, batch, -1)
        best = (opts.spkr_verification_weight * torch.einsum("nbe,be->nb", emb, ref_spkr_emb)).argmax(dim=0)
    elif opts.scorer == "spkr_verification":
        best = torch.zeros(batch, dtype=torch.long, device=cond.device)
    elif opts.scorer == "duration_median":
        bits, times = model.num_time_bits, cands[..., -model.time_dim :]
        dur = decode_time(times[..., :bits], bits) + decode_time(times[..., bits:], bits)
        best = (dur - dur.median(dim=0).values.unsqueeze(0)).abs().argmin(dim=0)
    else:
        best = _reconstruction_scores(model, flat, noise, cond_n).view(n, batch).argmax(dim=0)
    return cands[best, torch.arange(batch, device=cond.device)]


def _prompt_speaker_embedding(model, features: torch.Tensor) -> torch.Tensor:
    sv = model.acoustic_spkr_verf
    valid = (features.norm(dim=-1) > 0).unsqueeze(-1).float()
    norm = (features - model.config.acoustic_mean) / model.config.acoustic_std
    b, t, d = norm.shape
    emb = sv(norm.reshape(-1, d).to(next(sv.parameters()).dtype)).view(b, t, -1)
    mean = (emb * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(mean, dim=-1)


# -- text sampling ----------------------------------------------------------------------------
def sample_next_token(logits: torch.Tensor, input_ids: torch.Tensor, opts: InferenceOptions, generator=None):
    if not opts.text_do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    if opts.text_repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, input_ids)
        seen = torch.where(seen < 0, seen * opts.text_repetition_penalty, seen / opts.text_repetition_penalty)
        logits = logits.scatter(1, input_ids, seen)
    logits = logits / opts.text_temperature
    if opts.text_top_k > 0:
        kth = torch.topk(logits, min(opts.text_top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < opts.text_top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = torch.cumsum(probs, dim=-1) - probs >= opts.text_top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)


# -- the loop ---------------------------------------------------------------------------------
class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@torch.inference_mode()
def generate_steps(
    model, plan: GenerationPlan, rng: Rng | None = None, pull=None
) -> Iterator[StepOutput | SyncTokGenerationOutput]:
    """Yield a StepOutput per settled frame, then the final SyncTokGenerationOutput.

    ``pull`` returns the next text piece (raising StopIteration at the end) when the plan's text
    is still arriving.
    """
    opts = plan.options
    rng = rng or Rng()
    feed = TokenFeed(plan, pull)
    first_pass = _run_pass(
        model,
        feed,
        plan,
        None,
        plan.prompt_time_before,
        plan.prompt_time_after,
        opts,
        plan.use_text_in_prompt,
        rng,
        final_pass=opts.speed_up_factor is None,
    )
    if opts.speed_up_factor is None:
        yield from first_pass
        return
    # Two passes: the first settles durations, which are then scaled and forced in the second.
    first = None
    for item in first_pass:
        if isinstance(item, SyncTokGenerationOutput):
            first = item
        else:
            yield item
    scaled = (first.time_before.float() / opts.speed_up_factor).round().long()
    forced_before = torch.cat([torch.zeros_like(scaled[:, :1]), scaled], dim=1)
    forced_after = torch.cat([scaled, torch.ones_like(scaled[:, :1])], dim=1)
    second = TokenFeed.complete(first.input_ids[0].tolist())
    # As in the reference, the second pass masks the prompt text whatever use_text_in_prompt said.
    yield from _run_pass(
        model,
        second,
        plan,
        second.final_length - 1,
        forced_before,
        forced_after,
        replace(opts, speed_up_factor=None),
        False,
        rng,
        final_pass=True,
    )


def _run_pass(
    model, feed: TokenFeed, plan: GenerationPlan, num_steps, p_tb, p_ta, opts, use_text_in_prompt, rng, final_pass
):
    tok, cfg = model.tokenizer, model.config
    shift, dev, B = cfg.shift_acoustic, model.device, 1
    p_feat, p_mask = plan.prompt_features, plan.prompt_masks
    if not use_text_in_prompt:
        _mask_prompt_text(feed.ids, p_feat.shape[1], tok)
    start_h, end_h, eot = (_special_id(tok, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    pad = _special_id(tok, "<|finetune_right_pad_id|>")
    clock = _Clock(dev)
    need_neg_batch = opts.acoustic_cfg_scale != 1.0 and opts.negative_condition_source == "negative_step_output"
    text_only = opts.text_only_logit_scale > 0.0
    zeros_long = torch.zeros(B, 1, device=dev, dtype=torch.long)

    acoustic = torch.zeros(B, 1, cfg.acoustic_dim, device=dev, dtype=model.dtype)
    a_mask, tb, ta = zeros_long, zeros_long, zeros_long
    neg_cond = torch.zeros(B, cfg.hidden_size, device=dev, dtype=model.dtype)
    prefill_cond = None
    features_out: list[torch.Tensor] = []
    time_out: list[torch.Tensor] = []
    token_out: list[torch.Tensor] = []
    llm_times: list[float] = []
    flow_times: list[float] = []
    cache = DynamicCache(config=cfg)

    # Enough ids that the prompt, not the text's length, decides the prefill (as for the whole text).
    feed.ensure(max(p_feat.shape[1], p_tb.shape[1]) + shift + 1)
    L = len(feed.ids)
    n_ac = min(L - shift - 1, p_feat.shape[1] - 1)
    n_t = min(L - shift - 1, p_tb.shape[1] - 1)
    n_pre = min(n_ac, n_t, max(0, p_tb.shape[1] - 2)) if n_ac > 0 and n_t > 0 else 0
    prefill_len = min(L, shift + n_pre + 1) if n_pre > 0 else 0
    step_start = 0

    if prefill_len > 0:
        t0 = clock.now()
        rows = prefill_len - shift - 1
        feats = torch.zeros(B, prefill_len, cfg.acoustic_dim, device=dev, dtype=model.dtype)
        masks = torch.zeros(B, prefill_len, device=dev, dtype=torch.long)
        pre_tb = torch.zeros(B, prefill_len, device=dev, dtype=torch.long)
        pre_ta = torch.zeros_like(pre_tb)
        k = min(rows, p_feat.shape[1])
        feats[:, shift + 1 : shift + 1 + k] = p_feat[:, :k]
        masks[:, shift + 1 : shift + 1 + min(rows, p_mask.shape[1])] = p_mask[:, : min(rows, p_mask.shape[1])]
        k = min(rows, p_tb.shape[1] - 1)
        pre_tb[:, shift + 1 : shift + 1 + k] = p_tb[:, 1 : 1 + k]
        pre_ta[:, shift + 1 : shift + 1 + k] = p_ta[:, 1 : 1 + k]
        input_ids = feed.tensor(dev)
        ids = input_ids[:, :prefill_len]
        embeds = model.embed(ids, feats, masks, pre_tb, pre_ta)
        batch = [embeds]
        if text_only:
            z = torch.zeros_like(masks)
            batch.append(model.embed(ids, torch.zeros_like(feats), z, z, z))
        hidden = model.backbone(torch.cat(batch, dim=0), cache, 0)
        if need_neg_batch:
            # The guidance row's prefill input is the positive row's: run it once, copy its cache.
            order = [0, 0, 1] if text_only else [0, 0]
            cache.batch_select_indices(torch.tensor(order, device=dev))
        llm_times.append(clock.now() - t0)
        if opts.negative_condition_source == "prompt":
            prefill_cond = hidden[:B]
        token_out.extend(input_ids[:, s + 1 : s + 2] for s in range(prefill_len - 1))
        n_frames = prefill_len - shift
        for i in range(n_frames):
            features_out.append(p_feat[:, i].unsqueeze(1))
            time_out.append(p_tb[:, i + 1].unsqueeze(1))
            yield StepOutput(i + shift, i, p_feat[:, i], p_tb[:, i + 1], "prompted", final_pass=final_pass)
        acoustic = p_feat[:, n_frames - 1].unsqueeze(1)
        a_mask = p_mask[:, n_frames - 1].unsqueeze(1)
        tb, ta = p_tb[:, n_frames].unsqueeze(1), p_ta[:, n_frames].unsqueeze(1)
        step_start = prefill_len

    ref_spkr = None
    if opts.num_acoustic_candidates > 1 and opts.scorer == "spkr_verification":
        if model.acoustic_spkr_verf is None:
            model.load_acoustic_spkr_verf()
        if p_feat is not None:
            ref_spkr = _prompt_speaker_embedding(model, p_feat)

    last_tb = None
    step = step_start - 1
    while True:
        step += 1
        feed.ensure(step + 2)  # this step's token, and whether it is the last one
        if feed.ended and step >= (num_steps if num_steps is not None else feed.final_length + plan.num_extra_steps):
            break
        ids = feed.ids
        current = torch.tensor([[ids[step] if step < len(ids) else ids[-1]]], device=dev)
        t0 = clock.now()
        need_logits = step >= len(ids) - 1
        rows = [(current, acoustic, a_mask, tb, ta)]
        if need_neg_batch:
            structural = (current == start_h) | (current == end_h) | (current == eot)
            rows.append((torch.where(structural, current, torch.full_like(current, pad)), acoustic, a_mask, tb, ta))
        if text_only:
            rows.append((current, torch.zeros_like(acoustic), zeros_long, zeros_long, zeros_long))
        cols = [torch.cat(c, dim=0) for c in zip(*rows)]
        hidden = model.backbone(model.embed(*cols), cache, step)
        llm_times.append(clock.now() - t0)
        if need_neg_batch:
            neg_cond = hidden[B : 2 * B]
        elif opts.negative_condition_source == "prompt" and prefill_cond is not None:
            neg_cond = prefill_cond[:, step % prefill_cond.shape[1]].unsqueeze(1)
        cond = hidden[:B]

        t0 = clock.now()
        # The head's output is unused before `shift` steps (no frame yet) and while the prompt
        # still gives both the frame and its duration: draw its noise, so the random stream stays
        # the reference's, but skip the ODE (10 head passes).
        k = step - shift
        used = k >= 0 and (k >= p_feat.shape[1] or k >= p_tb.shape[1] - 1)
        if opts.num_acoustic_candidates > 1:
            if used:
                speech = solve_flow_ranked(model, cond, neg_cond, opts, ref_spkr, rng)
            else:
                n_noise = opts.num_acoustic_candidates * B * (cfg.acoustic_dim + model.time_dim)
                torch.randn(n_noise, device=cond.device, dtype=cond.dtype, generator=rng.device)
        else:
            noise = torch.randn(B, cfg.acoustic_dim, generator=rng.cpu).to(cond) * opts.noise_temperature
            noise_t = torch.randn(B, model.time_dim, generator=rng.cpu).to(cond) * opts.noise_temperature
            if used:
                speech = solve_flow(model, torch.cat([noise, noise_t], dim=-1), cond, neg_cond, opts)
        if used:
            speech = speech.reshape(B, -1)
            bits = model.num_time_bits
            gray = speech[..., -model.time_dim :]
            pred_tb = decode_time(gray[..., :bits], bits).unsqueeze(0)
            pred_ta = decode_time(gray[..., bits:], bits).unsqueeze(0)

        if need_logits:
            logits = model.lm_head(hidden[:B, -1]).float()
            logits[:, pad] = float("-inf")
            if text_only:
                mix = opts.text_only_logit_scale
                logits = (model.lm_head(hidden[-B:, -1]).float() * mix + logits) / (mix + 1)
            nxt = sample_next_token(logits, feed.tensor(dev), opts, rng.device)
            feed.ids.append(int(nxt))
            token_out.append(nxt)
        else:
            token_out.append(torch.tensor([[ids[step + 1]]], device=dev))

        if step >= shift:
            k = step - shift
            if k < p_feat.shape[1]:
                acoustic, a_mask, source = p_feat[:, k].unsqueeze(1), p_mask[:, k].unsqueeze(1), "prompted"
            else:
                acoustic = speech.unsqueeze(0)[..., : cfg.acoustic_dim]
                a_mask, source = torch.ones(B, 1, device=dev, dtype=torch.long), "predicted"
            features_out.append(acoustic)
            if k < p_tb.shape[1] - 1:
                tb, ta = p_tb[:, k + 1].unsqueeze(1), p_ta[:, k + 1].unsqueeze(1)
            else:
                tb, ta = pred_tb, pred_ta
            time_out.append(tb)
            last_tb = tb
            flow_times.append(clock.now() - t0)
            yield StepOutput(
                step,
                len(features_out) - 1,
                acoustic.reshape(B, -1),
                tb.reshape(B),
                source,
                llm_times[-1],
                flow_times[-1],
                final_pass,
            )
        else:
            flow_times.append(clock.now() - t0)

    if last_tb is not None:
        time_out.append(last_tb)
    del cache
    yield SyncTokGenerationOutput(
        acoustic_features=torch.cat([f.reshape(B, 1, -1) for f in features_out], dim=1),
        time_before=torch.cat([t.reshape(B, 1) for t in time_out], dim=1),
        text_token_ids=torch.cat(token_out, dim=1) if token_out else None,
        input_ids=feed.tensor(dev),
        llm_time=sum(llm_times) / max(len(llm_times), 1),
        diffusion_time=sum(flow_times) / max(len(flow_times), 1),
    )


# -- decoding and the public entry point -------------------------------------------------------
def leading_trim_frames(first_time_before: int) -> int:
    return max(int(first_time_before), MIN_LEADING_TRIM_FRAMES)


def decode_frames(model, plan: GenerationPlan, raw: SyncTokGenerationOutput):
    """(denormalised vectors, time_before) of the audible part, as the decoder consumes them."""
    cfg = model.config
    feats = raw.acoustic_features * cfg.acoustic_std + cfg.acoustic_mean
    return feats[:, plan.decode_start :], raw.time_before[:, plan.decode_start :]


def finish_output(model, plan: GenerationPlan, raw: SyncTokGenerationOutput, audio) -> GenerationOutput:
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
    )


@torch.inference_mode()
def decode_audio(model, vectors: torch.Tensor, time_before: torch.Tensor, window_size: int = 100) -> torch.Tensor:
    """Decode one whole utterance, leading silence trimmed (at least 5 frames).

    Runs the block-wise decoder in calls of ``window_size`` frames: the same numbers as one pass
    over all frames (the decoder's block mask makes them equal), with memory that does not grow
    with the utterance and without the cost of a T x T attention mask.
    """
    from .codec.decoder import expand_tokens
    from .codec.streaming import StreamingDecoder

    decoder = model.require_decoder()
    param = decoder.decoder_proj.weight
    frames = expand_tokens(vectors.to(param), time_before[: vectors.shape[0] + 1])
    trim = leading_trim_frames(time_before[0])
    return StreamingDecoder(decoder, window_size, skip_leading_frames=trim).decode(frames)
