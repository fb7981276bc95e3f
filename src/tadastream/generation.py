"""The generation loop: a generator of per-token steps, and ``generate()`` on top of it.

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
    """Everything the loop needs, validated, built before any model work."""

    input_ids: torch.Tensor
    prompt_features: torch.Tensor
    prompt_masks: torch.Tensor
    prompt_time_before: torch.Tensor
    prompt_time_after: torch.Tensor
    num_steps: int
    decode_start: int
    options: InferenceOptions
    use_text_in_prompt: bool
    text: str


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


def tokenize_joint(tokenizer, prompt_text: str, text: str, prompt_tokens: list[int] | None) -> list[int]:
    """Prompt transcript and new text tokenized together, one space between them.

    Tokenizing them separately loses BPE merges at the seam. The joint ids must start with the
    prompt's own tokens (their positions come from the aligner); when they cannot (a transcript
    ending in whitespace, say) the new text is tokenized after its space on its own.
    """
    prompt_text, text = prompt_text.rstrip(), text.strip()
    if not prompt_text:
        return tokenizer.encode(text, add_special_tokens=False)
    if prompt_tokens is None:
        prompt_tokens = tokenizer.encode(prompt_text, add_special_tokens=False)
    joint = tokenizer.encode(prompt_text + " " + text, add_special_tokens=False)
    if joint[: len(prompt_tokens)] == list(prompt_tokens):
        return joint
    return list(prompt_tokens) + tokenizer.encode(" " + text, add_special_tokens=False)


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
    if not isinstance(text, str) or not text.strip():
        raise GenerationInputError("text is empty: pass the words to speak")
    if num_transition_steps < 0 or num_extra_steps < 0:
        raise GenerationInputError("num_transition_steps and num_extra_steps must be >= 0")
    if prompt is None:
        from .codec.encoder import EncoderOutput

        prompt = EncoderOutput.empty(model.device, model.config.acoustic_dim)
    p = _prompt_on(model, prompt)
    tok = model.tokenizer
    shift = model.config.shift_acoustic
    text = normalize_text_fn(text) if normalize_text else text
    prompt_text = (p["text"] or [""])[0] or ""
    n_prompt = (
        int(p["text_tokens_len"][0]) if p.get("text_tokens_len") is not None and p["text_tokens_len"].numel() else 0
    )
    known = None
    if p.get("text_tokens") is not None and p["text_tokens"].numel() and n_prompt:
        known = p["text_tokens"].reshape(-1)[:n_prompt].tolist()
    ids = tokenize_joint(tok, prompt_text, text, known)
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
    input_ids = torch.tensor([[bos] + ids + [eot] * shift], device=model.device)

    classes = model.config.num_time_classes
    # Gap before each prompt token, in frames; index 0 is a pad so time_before[k] is token k-1's.
    gaps = (positions - torch.nn.functional.pad(positions, [1, 0], value=1)[:, :-1]).clamp(0, classes - 1)
    gaps = torch.nn.functional.pad(gaps, [1, 0], value=0)
    time_before, time_after = gaps[:, :-1], gaps[:, 1:]
    masks = torch.ones(features.shape[:2], device=model.device, dtype=torch.long)
    if num_extra_steps > 0:
        input_ids = input_ids[:, :-shift]

    prefix = (
        f"<|start_header_id|>system<|end_header_id|>{system_prompt or ''}<|eot_id|>"
        + (f"<|start_header_id|>user<|end_header_id|>{user_turn_prompt}<|eot_id|>" if user_turn_prompt else "")
        + "<|start_header_id|>assistant<|end_header_id|>"
    )
    prefix_ids = torch.tensor([tok.encode(prefix, add_special_tokens=False)], device=model.device)
    n_prefix = prefix_ids.shape[1]
    input_ids = torch.cat([input_ids[:, :1], prefix_ids, input_ids[:, 1:]], dim=1)
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
    num_steps = input_ids.shape[1] + num_extra_steps
    limit = model.config.max_position_embeddings
    if num_steps > limit:
        raise GenerationInputError(
            f"text too long: {num_steps} positions with the prompt, the model allows {limit}; split the text"
        )
    masks = torch.cat([masks[:, 1:], torch.ones_like(masks[:, :1])], dim=1)
    decode_start = features.shape[1] + num_transition_steps - 1
    if num_steps - shift <= decode_start:
        raise GenerationInputError("nothing to speak after the prompt: pass more text or fewer transition steps")
    return GenerationPlan(
        input_ids,
        features,
        masks,
        time_before,
        time_after,
        num_steps,
        decode_start,
        opts,
        use_text_in_prompt,
        text,
    )


def _mask_prompt_text(input_ids: torch.Tensor, n: int, tok) -> torch.Tensor:
    """Replace prompt-transcript tokens by the pad token, keeping the chat structure."""
    start, end, eot = (_special_id(tok, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    pad = _special_id(tok, "<|finetune_right_pad_id|>")
    keep_always = {eot, tok.bos_token_id, tok.eos_token_id}
    out = input_ids.clone()
    for row in range(out.shape[0]):
        in_header = False
        for t in range(min(n, out.shape[1])):
            token = int(out[row, t])
            if token == start:
                in_header = True
            elif token == end:
                in_header = False
            elif not in_header and token not in keep_always:
                out[row, t] = pad
    return out


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


def velocity(model, x, t, cond, neg_cond, acoustic_cfg: float, duration_cfg: float) -> torch.Tensor:
    head, proj, split = model.prediction_head, model.bottleneck_proj, model.config.acoustic_dim
    if acoustic_cfg == 1.0:
        return head(x, t.repeat(x.shape[0]).to(x), proj(cond.squeeze(1)))
    conds = torch.cat([cond.squeeze(1), neg_cond.squeeze(1).to(cond)], dim=0)
    both = head(torch.cat([x, x], dim=0), t.repeat(x.shape[0] * 2).to(x), proj(conds))
    pos, neg = both.chunk(2, dim=0)
    return torch.cat(
        [(neg + acoustic_cfg * (pos - neg))[..., :split], (neg + duration_cfg * (pos - neg))[..., split:]],
        dim=-1,
    )


def solve_flow(model, x, cond, neg_cond, opts: InferenceOptions) -> torch.Tensor:
    grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, cond.device)
    t = grid[0]
    for i in range(1, len(grid)):
        dt = grid[i] - t
        t_val = t.item()
        a = scheduled_cfg(opts.acoustic_cfg_scale, t_val, opts.cfg_schedule)
        d = scheduled_cfg(opts.duration_cfg_scale, t_val, opts.cfg_schedule)
        x = x + dt * velocity(model, x, t, cond, neg_cond, a, d)
        t = grid[i]
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
    model, plan: GenerationPlan, rng: Rng | None = None
) -> Iterator[StepOutput | SyncTokGenerationOutput]:
    """Yield a StepOutput per settled frame, then the final SyncTokGenerationOutput."""
    opts = plan.options
    rng = rng or Rng()
    first_pass = _run_pass(
        model,
        plan.input_ids,
        plan.prompt_features,
        plan.prompt_masks,
        plan.prompt_time_before,
        plan.prompt_time_after,
        plan.num_steps,
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
    # As in the reference, the second pass masks the prompt text whatever use_text_in_prompt said.
    yield from _run_pass(
        model,
        first.input_ids,
        plan.prompt_features,
        plan.prompt_masks,
        forced_before,
        forced_after,
        first.input_ids.shape[1] - 1,
        replace(opts, speed_up_factor=None),
        False,
        rng,
        final_pass=True,
    )


def _run_pass(model, input_ids, p_feat, p_mask, p_tb, p_ta, num_steps, opts, use_text_in_prompt, rng, final_pass):
    tok, cfg = model.tokenizer, model.config
    shift, dev, B = cfg.shift_acoustic, model.device, input_ids.shape[0]
    if not use_text_in_prompt:
        input_ids = _mask_prompt_text(input_ids, p_feat.shape[1], tok)
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

    L = input_ids.shape[1]
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
        ids = input_ids[:, :prefill_len]
        embeds = model.embed(ids, feats, masks, pre_tb, pre_ta)
        batch = [embeds, embeds] if need_neg_batch else [embeds]
        if text_only:
            z = torch.zeros_like(masks)
            batch.append(model.embed(ids, torch.zeros_like(feats), z, z, z))
        hidden = model.backbone(torch.cat(batch, dim=0), cache, 0)
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
    for step in range(step_start, num_steps):
        current = input_ids[:, step : step + 1] if step < input_ids.shape[1] else input_ids[:, -1:]
        t0 = clock.now()
        need_logits = step >= input_ids.shape[1] - 1
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
        if opts.num_acoustic_candidates > 1:
            speech = solve_flow_ranked(model, cond, neg_cond, opts, ref_spkr, rng)
        else:
            noise = torch.randn(B, cfg.acoustic_dim, generator=rng.cpu).to(cond) * opts.noise_temperature
            noise_t = torch.randn(B, model.time_dim, generator=rng.cpu).to(cond) * opts.noise_temperature
            speech = solve_flow(model, torch.cat([noise, noise_t], dim=-1), cond, neg_cond, opts)
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
            nxt = sample_next_token(logits, input_ids, opts, rng.device)
            input_ids = torch.cat([input_ids, nxt.long()], dim=1)
            token_out.append(nxt)
        else:
            token_out.append(input_ids[:, step + 1 : step + 2])

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
        input_ids=input_ids,
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
        prompt_text_tokens=plan.input_ids,
        input_text_ids=plan.input_ids,
        input_str=[tok.decode(row) for row in plan.input_ids],
        output_text_ids=raw.text_token_ids,
        text_token_ids=raw.text_token_ids,
        output_str=[tok.decode(row) for row in raw.text_token_ids] if raw.text_token_ids is not None else None,
        llm_time=torch.tensor(raw.llm_time),
        diffusion_time=torch.tensor(raw.diffusion_time),
        step_logs=raw.step_logs,
    )


@torch.inference_mode()
def decode_audio(model, vectors: torch.Tensor, time_before: torch.Tensor) -> torch.Tensor:
    """One-pass decode of one utterance, leading silence trimmed (at least 5 frames)."""
    from .codec.decoder import expand_tokens

    decoder = model.require_decoder()
    param = decoder.decoder_proj.weight
    frames = expand_tokens(vectors.to(param), time_before[: vectors.shape[0] + 1])
    wav = decoder(frames.unsqueeze(0))[0, 0]
    return wav[leading_trim_frames(time_before[0]) * decoder.samples_per_frame :]


def generate(
    model,
    prompt=None,
    text: str | list[str] = "",
    num_transition_steps: int = 5,
    num_extra_steps: int = 0,
    system_prompt: str | None = None,
    user_turn_prompt: str | None = None,
    inference_options: InferenceOptions | None = None,
    use_text_in_prompt: bool = False,
    normalize_text: bool = True,
    verbose: bool = False,
    stream: bool = False,
    streaming_cnn_window_size: int = 100,
) -> Any:
    """Speak ``text`` in the voice of ``prompt``.

    Returns a :class:`GenerationOutput` (``audio[i]``: 1-D float tensor at 24 kHz), or with
    ``stream=True`` an :class:`~tadastream.stream.AudioStream` yielding ``(chunk, sample_rate)``.
    """
    kwargs = dict(
        num_transition_steps=num_transition_steps,
        num_extra_steps=num_extra_steps,
        system_prompt=system_prompt,
        user_turn_prompt=user_turn_prompt,
        inference_options=inference_options,
        use_text_in_prompt=use_text_in_prompt,
        normalize_text=normalize_text,
    )
    if stream:
        from .stream import AudioStream

        if not isinstance(text, str) and not hasattr(text, "__iter__"):
            raise GenerationInputError("text must be a string or an iterable of string pieces")
        if isinstance(text, list):
            if len(text) != 1:
                raise GenerationInputError("stream=True speaks one text at a time: pass a string")
            text = text[0]
        model.require_decoder()
        return AudioStream(model, prompt, text, window_size=streaming_cnn_window_size, **kwargs)
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise GenerationInputError("text is empty: pass the words to speak")
    plans = [plan_generation(model, prompt, t, **kwargs) for t in texts]  # validate all before any work
    model.require_decoder()
    outputs = []
    for plan in plans:
        raw = None
        for item in generate_steps(model, plan):
            raw = item
        vectors, time_before = decode_frames(model, plan, raw)
        audio = decode_audio(model, vectors[0], time_before[0])
        outputs.append(finish_output(model, plan, raw, [audio]))
    if len(outputs) == 1:
        return outputs[0]
    merged = outputs[0]
    merged.audio = [o.audio[0] for o in outputs]
    merged.text = [o.text[0] for o in outputs]
    return merged
