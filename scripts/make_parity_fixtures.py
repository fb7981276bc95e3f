#!/usr/bin/env python
"""Generate parity fixtures from the published reference implementation (hume-tada 0.1.9).

The fixtures under ``tests/fixtures/parity/`` let tadastream's tests compare its modules with the
reference numerically, without network access and without the reference installed.  They use
tiny, randomly initialised models (fp32, eval mode) and the tiny tokenizer from
``src/tadastream/assets/tiny_tokenizer`` (see ``scripts/build_tiny_tokenizer.py``).

This script must run in a separate virtual environment that has the reference package::

    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 "transformers<5,>=4.57.1" safetensors numpy soundfile
    /tmp/refvenv/bin/pip install --no-deps hume-tada==0.1.9
    /tmp/refvenv/bin/python scripts/make_parity_fixtures.py            # write tests/fixtures/parity
    /tmp/refvenv/bin/python scripts/make_parity_fixtures.py --check    # byte-identical rebuild?
    /tmp/refvenv/bin/python scripts/make_parity_fixtures.py --verify   # recompute from the files

(a CPU build of torch 2.13 is enough; the fixtures were produced with torch 2.13.0+cpu,
transformers 4.57.6 and tokenizers 0.22.2, with one torch thread).

``descript-audio-codec`` and ``torchaudio`` are NOT needed: the reference only uses ``dac``'s
Snake1d and ``torchaudio.functional.resample``/``load``, and this script installs small import
shims of its own for them (``Snake1d`` computes ``x + (alpha + 1e-9).reciprocal() * sin(alpha *
x) ** 2`` like dac 1.0.0; ``resample`` refuses to run unless the rates are equal). Nothing is
downloaded: the reference ``Aligner`` is never constructed, token positions are passed
explicitly, and ``_tokenizer``/``_decoder`` are set on the reference ``TadaForCausalLM`` by
hand.

Output is deterministic: running the script twice produces byte-identical files (checked with
``--check``, which regenerates into a temporary directory and compares).
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import importlib.machinery
import json
import math
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

# transformers must be imported before the shims are installed: it probes for torchaudio at
# import time, and the shim module must not make it believe torchaudio is installed.
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "src" / "tadastream" / "assets" / "tiny_tokenizer"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "parity"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Buffers of the reference LocalSelfAttention that are constant functions of the architecture
# (RoPE table 8192 x head_dim/2 x 2 and an all-True 8192 x 8192 bool mask).  They would make the
# fixture files ~130 MB, so they are removed from every saved checkpoint.
STRIPPED_BUFFER_SUFFIXES = (".rope_freqs", "._precomputed_mask")

# The reference Encoder hard-codes the first width of its waveform CNN to 64 channels (doubling
# at every stride, 1024 at the end): ~19 M parameters even for a tiny config.  The fixture
# encoder is built with this base width instead (recorded as `wav_encoder_base_channels` in its
# config.json, a key the reference itself does not read).
ENCODER_BASE_CHANNELS = 4


# --------------------------------------------------------------------------------------------
# Import shims for `dac` and `torchaudio`
# --------------------------------------------------------------------------------------------
class ShimSnake1d(torch.nn.Module):
    """Snake activation with a learned per-channel frequency, as in descript-audio-codec."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], shape[1], -1)
        out = flat + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * flat).pow(2)
        return out.reshape(shape)


def _shim_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, *args, **kwargs) -> torch.Tensor:
    if orig_freq != new_freq:
        raise RuntimeError("torchaudio shim: resampling is not available in the fixture environment")
    return waveform


def _shim_load(*args, **kwargs):
    raise RuntimeError("torchaudio shim: torchaudio.load is not available in the fixture environment")


def install_import_shims() -> None:
    def new_module(name: str, package: bool) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
        if package:
            module.__path__ = []
        sys.modules[name] = module
        return module

    for name in ("dac", "dac.model", "dac.nn"):
        new_module(name, package=True)
    for name in ("dac.model.dac", "dac.nn.layers"):
        new_module(name, package=False).Snake1d = ShimSnake1d
    sys.modules["dac"].model = sys.modules["dac.model"]
    sys.modules["dac"].nn = sys.modules["dac.nn"]
    sys.modules["dac.model"].dac = sys.modules["dac.model.dac"]
    sys.modules["dac.nn"].layers = sys.modules["dac.nn.layers"]

    torchaudio = new_module("torchaudio", package=True)
    functional = new_module("torchaudio.functional", package=False)
    functional.resample = _shim_resample
    torchaudio.functional = functional
    torchaudio.load = _shim_load


install_import_shims()

import tada.modules.encoder as ref_encoder_module  # noqa: E402
import tada.modules.tada as ref_tada_module  # noqa: E402
from tada.modules.acoustic_spkr_verf import AcousticSpkrVerf, AcousticSpkrVerfConfig  # noqa: E402
from tada.modules.aligner import _align_text_tokens  # noqa: E402
from tada.modules.decoder import Decoder, DecoderConfig  # noqa: E402
from tada.modules.encoder import Encoder, EncoderConfig, EncoderOutput  # noqa: E402
from tada.modules.tada import InferenceOptions, TadaConfig, TadaForCausalLM  # noqa: E402
from tada.utils.gray_code import decode_gray_code_to_time, encode_time_with_gray_code  # noqa: E402
from tada.utils.text import normalize_text  # noqa: E402

# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------
DECODER_CONFIG = dict(
    embed_dim=32,
    hidden_dim=64,
    num_attn_layers=2,
    num_attn_heads=4,
    attn_dim_feedforward=128,
    wav_decoder_channels=64,
    strides=[4, 4, 5, 6],
    block_attention="v2",
)
ENCODER_CONFIG = dict(
    hidden_dim=64,
    embed_dim=32,
    strides=[6, 5, 4, 4],
    num_attn_layers=2,
    num_attn_heads=4,
    attn_dim_feedforward=128,
)
LLAMA3_ROPE_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def tiny_llm_config(tokenizer) -> TadaConfig:
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    return TadaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE_SCALING),
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        acoustic_dim=32,
        num_time_classes=16,
        shift_acoustic=5,
        head_layers=2,
        head_ffn_ratio=2.0,
        bottleneck_dim=None,
        acoustic_std=1.5,
        tokenizer_name="meta-llama/Llama-3.2-1B",
    )


def real_llm_config() -> TadaConfig:
    return TadaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=dict(LLAMA3_ROPE_SCALING),
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
        acoustic_dim=512,
        num_time_classes=256,
        shift_acoustic=5,
        head_layers=6,
        head_ffn_ratio=4.0,
        bottleneck_dim=None,
        acoustic_std=1.5,
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def randomize_parameters(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter of `module` with seeded random values that keep activations O(1).

    Snake alphas ~ U[0.5, 1.5]; weight-norm magnitudes ~ U[0.8, 1.5] (U[0.3, 0.6] inside residual
    units) with standard-normal directions; embeddings ~ N(0, 0.3^2); other 1-D weights
    (LayerNorm/RMSNorm scales) ~ 1 + N(0, 0.1^2); biases ~ N(0, 0.02^2); matrices ~ N(0, 1/fan_in).
    """
    gen = torch.Generator().manual_seed(seed)
    owners = dict(module.named_modules())
    residual_prefixes = tuple(
        name + "." for name, mod in owners.items() if isinstance(mod, ref_encoder_module.ResidualUnit)
    )
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = owners[owner_name]
            if leaf == "alpha":
                value = torch.rand(param.shape, generator=gen) + 0.5
            elif leaf == "original0" and name.startswith(residual_prefixes):
                # residual branches get a small gain so the CNN's activations stay O(1)
                value = torch.rand(param.shape, generator=gen) * 0.3 + 0.3
            elif leaf == "original0":
                value = torch.rand(param.shape, generator=gen) * 0.7 + 0.8
            elif leaf == "original1":
                value = torch.randn(param.shape, generator=gen)
            elif isinstance(owner, torch.nn.Embedding):
                value = torch.randn(param.shape, generator=gen) * 0.3
            elif leaf == "bias":
                value = torch.randn(param.shape, generator=gen) * 0.02
            elif param.ndim == 1:
                value = 1.0 + 0.1 * torch.randn(param.shape, generator=gen)
            elif param.ndim == 2:
                value = torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[1])
            else:
                raise ValueError(f"no randomisation rule for {name} {tuple(param.shape)}")
            param.copy_(value)


def shape_flow_head(
    llm: TadaForCausalLM,
    seed: int,
    contraction: float = 8.0,
    bias_gain: float = 0.6,
    shift_gain: float = 0.25,
    msb_bias: float = 1.0,
) -> None:
    """Give the (already randomised) flow-matching head a stable, contracting velocity field.

    With unstructured random weights the ODE output's gray-code bits land far outside [-2, 2)
    and decode to durations outside [0, num_time_classes), which crash the reference (embedding
    index out of range).  The head is therefore built so that, for the time bits, the velocity
    is approximately ``-k * (x - m(condition))``; the acoustic part stays unstructured.

    Layout of the head's hidden space (H dims): the first D = latent dims carry the noisy input
    through an orthogonal map Q (``noisy_images_proj = [Q; 0]``); the SwiGLU layers only write
    to the remaining H - D dims (``down_proj`` rows < D are zero), so the final non-affine
    RMSNorm sees ``[Q x ; C(condition)]``; the time rows of ``final_layer.linear`` read
    ``-k * rho0 * Q^T`` from the first D dims plus small random weights on the rest.
    """
    head = llm.prediction_head
    gen = torch.Generator().manual_seed(seed)
    hidden = head.noisy_images_proj.weight.shape[0]
    latent = head.noisy_images_proj.weight.shape[1]
    acoustic_dim = llm.config.acoustic_dim
    assert hidden > latent, "shape_flow_head needs hidden_size > latent size"
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(latent, latent, generator=gen, dtype=torch.float64))
        q = q.float()
        w_in = torch.zeros(hidden, latent)
        w_in[:latent] = q
        head.noisy_images_proj.weight.copy_(w_in)
        for layer in head.layers:
            layer.ffn.down_proj.weight[:latent].zero_()
            ada = layer.adaLN_modulation[1].weight  # rows: shift, scale, gate
            scales = (2.0, 0.3, 1.5)
            for i, s in enumerate(scales):
                rows = slice(i * hidden, (i + 1) * hidden)
                ada[rows] = torch.randn(hidden, hidden, generator=gen) * (s / math.sqrt(hidden))
        final_ada = head.final_layer.adaLN_modulation[1].weight  # rows: shift, scale
        final_ada[:hidden] = torch.randn(hidden, hidden, generator=gen) * (shift_gain / math.sqrt(hidden))
        final_ada[hidden:] = torch.randn(hidden, hidden, generator=gen) * (0.1 / math.sqrt(hidden))
        # silu(c) has a positive mean, so this rank-1 term adds a nearly constant push of both
        # most-significant gray-code bits towards -1 (durations mostly < num_time_classes / 2).
        bits = llm.num_time_bits
        push = torch.zeros(hidden)
        push[:latent] = q[:, acoustic_dim] + q[:, acoustic_dim + bits]
        final_ada[:hidden] += msb_bias * push[:, None] * torch.full((1, hidden), 1.0 / hidden)
        w_out = torch.randn(latent, hidden, generator=gen) / math.sqrt(hidden)
        rho0 = 1.0
        w_out[acoustic_dim:, :latent] = -contraction * rho0 * q.T[acoustic_dim:]
        w_out[acoustic_dim:, latent:] *= bias_gain
        head.final_layer.linear.weight.copy_(w_out)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_json(path: Path, obj, compact: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compact:
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def strip_checkpoint_buffers(model_dir: Path) -> list[str]:
    """Remove the constant attention buffers from a saved model.safetensors; return removed keys."""
    path = model_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    removed = sorted(k for k in tensors if k.endswith(STRIPPED_BUFFER_SUFFIXES))
    kept = {k: v for k, v in tensors.items() if k not in removed}
    save_file(kept, str(path), metadata=metadata)
    return removed


def save_model(model, model_dir: Path, extra_config: dict | None = None) -> list[str]:
    model.save_pretrained(str(model_dir), safe_serialization=True)
    removed = strip_checkpoint_buffers(model_dir)
    if extra_config:
        cfg_path = model_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(extra_config)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return removed


def load_tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def safetensors_keys(path: Path) -> dict[str, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: {"shape": list(f.get_slice(k).get_shape()), "dtype": f.get_slice(k).get_dtype()} for k in f.keys()}


# --------------------------------------------------------------------------------------------
# 1. Decoder
# --------------------------------------------------------------------------------------------
def build_tiny_decoder() -> Decoder:
    decoder = Decoder(DecoderConfig(**DECODER_CONFIG))
    randomize_parameters(decoder, seed=1001)
    return decoder.eval()


def expand_tokens(values: torch.Tensor, durations: list[int], trailing: int) -> torch.Tensor:
    """Frame sequence as the reference `_decode_wav` builds it: (d-1) zero frames then the vector."""
    frames = []
    for vec, dur in zip(values, durations):
        frames.append(torch.zeros(max(dur - 1, 0), values.shape[-1]))
        frames.append(vec[None])
    frames.append(torch.zeros(trailing, values.shape[-1]))
    return torch.cat(frames)[None]


def make_decoder_fixture(out: Path, decoder: Decoder) -> dict:
    ddir = out / "decoder"
    removed = save_model(decoder, ddir)
    gen = torch.Generator().manual_seed(2001)
    durations = [1, 3, 6, 2, 9, 4, 1, 5, 7, 3, 8, 2]  # 51 frames, plus 9 trailing zero frames
    values = torch.randn(len(durations), DECODER_CONFIG["embed_dim"], generator=gen) * 1.5
    encoded_expanded = expand_tokens(values, durations, trailing=9)
    token_masks = (torch.norm(encoded_expanded, dim=-1) != 0).long()
    captured = {}
    hook = decoder.local_attention_decoder.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    with torch.no_grad():
        audio = decoder.generate(encoded_expanded, token_masks=token_masks)
    hook.remove()
    save_tensors(
        ddir / "decoder_io.safetensors",
        {
            "encoded_expanded": encoded_expanded,
            "token_masks": token_masks,
            "token_values": values,
            "durations": torch.tensor(durations),
            "attention_hidden": captured["h"],
            "audio": audio,
        },
    )
    return {"stripped_buffers": removed, "frames": encoded_expanded.shape[1], "audio_samples": audio.shape[-1]}


# --------------------------------------------------------------------------------------------
# 2. Encoder
# --------------------------------------------------------------------------------------------
def build_tiny_encoder() -> Encoder:
    original = ref_encoder_module.WavEncoder

    def narrow_wav_encoder(d_model, strides, d_latent):
        return original(d_model=ENCODER_BASE_CHANNELS, strides=strides, d_latent=d_latent)

    ref_encoder_module.WavEncoder = narrow_wav_encoder
    try:
        encoder = Encoder(EncoderConfig(**ENCODER_CONFIG))
    finally:
        ref_encoder_module.WavEncoder = original
    randomize_parameters(encoder, seed=1002)
    return encoder.eval()


ENCODER_TEXT = "Please call Stella."


def synthetic_audio(num_samples: int, sample_rate: int = 24000) -> torch.Tensor:
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    envelope = 0.5 * (1 - torch.cos(2 * math.pi * 1.5 * t))
    signal = 0.3 * torch.sin(2 * math.pi * (180 * t + 40 * t**2)) + 0.15 * torch.sin(2 * math.pi * 523.0 * t)
    signal = signal * envelope + 0.02 * torch.sin(2 * math.pi * 3100.0 * t) * torch.sin(2 * math.pi * 7 * t)
    return signal.float()[None]


def make_encoder_fixture(out: Path, encoder: Encoder, tokenizer) -> dict:
    edir = out / "encoder"
    removed = save_model(encoder, edir, extra_config={"wav_encoder_base_channels": ENCODER_BASE_CHANNELS})
    audio = synthetic_audio(24000)
    ids = tokenizer.encode(ENCODER_TEXT, add_special_tokens=False)
    num_frames = math.ceil(audio.shape[-1] / 24000 * 50)  # what the aligner's mask length would be
    gen = torch.Generator().manual_seed(2002)
    gaps = torch.randint(2, 6, (len(ids),), generator=gen)
    positions = torch.cumsum(gaps, 0)  # 1-based frame positions
    assert int(positions[-1]) <= num_frames
    token_masks = torch.zeros(1, num_frames, dtype=torch.long)
    token_masks[0, positions - 1] = 1
    text_tokens = torch.tensor([ids])
    text_token_len = torch.tensor([len(ids)])
    with torch.no_grad():
        result = encoder(
            audio,
            text=[ENCODER_TEXT],
            text_tokens=text_tokens,
            text_token_len=text_token_len,
            token_positions=positions[None],
            token_masks=token_masks,
            audio_length=torch.tensor([audio.shape[-1]]),
            sample_rate=24000,
            sample=False,
        )
        enc_out, padded_masks = encoder.get_encoder_outputs(audio, token_masks)
    save_tensors(
        edir / "encoder_io.safetensors",
        {
            "audio": audio,
            "text_tokens": text_tokens,
            "text_token_len": text_token_len,
            "token_positions": positions[None],
            "token_masks": token_masks,
            "token_values": result.token_values,
            "encoded_expanded": result.encoded_expanded,
            "encoder_outputs": enc_out,
            "padded_token_masks": padded_masks,
        },
    )
    write_json(
        edir / "encoder_io.json",
        {
            "text": ENCODER_TEXT,
            "sample_rate": 24000,
            "sample": False,
            "wav_encoder_base_channels": ENCODER_BASE_CHANNELS,
        },
    )
    return {"stripped_buffers": removed}


# --------------------------------------------------------------------------------------------
# 3. LLM
# --------------------------------------------------------------------------------------------
def build_tiny_llm(tokenizer, decoder: Decoder) -> TadaForCausalLM:
    llm = TadaForCausalLM(tiny_llm_config(tokenizer))
    randomize_parameters(llm, seed=1003)
    shape_flow_head(llm, seed=1004)
    llm._decoder = decoder
    llm._tokenizer = tokenizer
    return llm.eval()


def make_llm_fixture(out: Path, llm: TadaForCausalLM) -> dict:
    ldir = out / "llm"
    removed = save_model(llm, ldir)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, ldir / name)
    cfg = llm.config
    gen = torch.Generator().manual_seed(2003)
    batch, length = 2, 12
    input_ids = torch.randint(0, 518, (batch, length), generator=gen)
    acoustic_features = torch.randn(batch, length, cfg.acoustic_dim, generator=gen)
    acoustic_masks = (torch.rand(batch, length, generator=gen) > 0.3).long()
    acoustic_features = acoustic_features * acoustic_masks[..., None]
    time_before = torch.randint(0, cfg.num_time_classes, (batch, length), generator=gen)
    time_after = torch.randint(0, cfg.num_time_classes, (batch, length), generator=gen)
    latent = cfg.acoustic_dim + 2 * llm.num_time_bits
    noisy = torch.randn(3, latent, generator=gen)
    t = torch.tensor([0.0, 0.37, 0.9])
    condition = torch.randn(3, cfg.hidden_size, generator=gen)
    with torch.no_grad():
        step = llm.forward_one_step(
            input_ids=input_ids,
            acoustic_features=acoustic_features,
            acoustic_masks=acoustic_masks,
            time_len_before=time_before,
            time_len_after=time_after,
            use_cache=False,
        )
        velocity = llm.prediction_head(noisy, t, condition=condition)
    save_tensors(
        ldir / "llm_io.safetensors",
        {
            "input_ids": input_ids,
            "acoustic_features": acoustic_features,
            "acoustic_masks": acoustic_masks,
            "time_len_before": time_before,
            "time_len_after": time_after,
            "last_hidden_state": step.hidden_states[-1],
            "logits": step.logits,
            "head_noisy": noisy,
            "head_t": t,
            "head_condition": condition,
            "head_velocity": velocity,
        },
    )
    return {"stripped_buffers": removed, "attn_implementation": cfg._attn_implementation}


# --------------------------------------------------------------------------------------------
# 4. End-to-end generate()
# --------------------------------------------------------------------------------------------
PROMPT_TEXT = "The examination and testimony of the experts, enabled the commission to conclude."
NEW_TEXT = "Bring these things."
SYSTEM_PROMPT = "You are a calm narrator."
USER_TURN_PROMPT = "Read the text aloud."

GENERATE_CASES: list[tuple[str, dict, dict]] = [
    ("default", {}, {}),
    ("greedy_linear_cosine", {"text_do_sample": False, "cfg_schedule": "linear", "time_schedule": "cosine"}, {}),
    ("no_guidance", {"acoustic_cfg_scale": 1.0}, {}),
    ("negative_prompt", {"negative_condition_source": "prompt"}, {}),
    ("negative_zero", {"negative_condition_source": "zero"}, {}),
    ("candidates_likelihood", {"num_acoustic_candidates": 3, "scorer": "likelihood"}, {}),
    ("candidates_duration_median", {"num_acoustic_candidates": 3, "scorer": "duration_median"}, {}),
    ("text_only_logit_scale", {"text_only_logit_scale": 0.5}, {"num_extra_steps": 3}),
    ("extra_steps", {}, {"num_extra_steps": 4}),
    ("speed_up", {"speed_up_factor": 1.3}, {}),
    ("system_user_prompt", {}, {"system_prompt": SYSTEM_PROMPT, "user_turn_prompt": USER_TURN_PROMPT}),
    ("transition_steps_2", {}, {"num_transition_steps": 2}),
]
MAX_SEED_TRIES = 200
MIN_GRAY_MARGIN = 1e-3


def build_prompt(tokenizer, acoustic_dim: int) -> tuple[EncoderOutput, dict]:
    ids = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    gen = torch.Generator().manual_seed(2004)
    gaps = torch.randint(2, 6, (len(ids),), generator=gen)
    positions = torch.cumsum(gaps, 0)[None]
    num_frames = int(positions[0, -1]) + 3
    audio_len = num_frames * 480
    token_values = torch.randn(1, len(ids), acoustic_dim, generator=gen)
    tensors = {
        "text_tokens": torch.tensor([ids]),
        "text_tokens_len": torch.tensor([len(ids)]),
        "token_positions": positions,
        "token_values": token_values,
        "audio_len": torch.tensor([audio_len]),
    }
    return tensors, {"text": PROMPT_TEXT, "sample_rate": 24000, "audio_len": audio_len}


def prompt_from_tensors(tensors: dict) -> EncoderOutput:
    audio_len = int(tensors["audio_len"][0])
    return EncoderOutput(
        audio=torch.zeros(1, audio_len),
        audio_len=tensors["audio_len"].clone(),
        text=[PROMPT_TEXT],
        token_positions=tensors["token_positions"].clone(),
        token_values=tensors["token_values"].clone(),
        sample_rate=24000,
        text_tokens=tensors["text_tokens"].clone(),
        text_tokens_len=tensors["text_tokens_len"].clone(),
    )


def check_joint_tokenization(tokenizer) -> None:
    separate = tokenizer.encode(PROMPT_TEXT, add_special_tokens=False) + tokenizer.encode(
        " " + NEW_TEXT, add_special_tokens=False
    )
    joint = tokenizer.encode(PROMPT_TEXT + " " + NEW_TEXT, add_special_tokens=False)
    assert separate == joint, "prompt/new-text seam changes the tokenization; pick other texts"


def gray_rounding_margin(gray_bits: torch.Tensor) -> float:
    """Distance of the closest value to a rounding threshold: round((x + 1) / 2) jumps at x = 2k."""
    y = (gray_bits.double() + 1.0) / 2.0
    return float(2.0 * ((y - y.floor()) - 0.5).abs().min())


def run_generate(llm, prompt_tensors, seed, options, kwargs):
    """Run the reference generate(); also return the smallest distance of any decoded gray-code
    value to a rounding threshold (a tiny margin would make the fixture numerically fragile)."""
    margins = []
    original = ref_tada_module.decode_gray_code_to_time

    def observed_decode(gray_bits, num_bits):
        margins.append(gray_rounding_margin(gray_bits))
        return original(gray_bits, num_bits)

    ref_tada_module.decode_gray_code_to_time = observed_decode
    try:
        torch.manual_seed(seed)
        result = llm.generate(
            prompt_from_tensors(prompt_tensors),
            text=" " + NEW_TEXT,
            normalize_text=False,
            inference_options=options,
            **kwargs,
        )
    finally:
        ref_tada_module.decode_gray_code_to_time = original
    return result, min(margins)


def make_generate_fixture(out: Path, llm: TadaForCausalLM, tokenizer) -> dict:
    gdir = out / "generate"
    check_joint_tokenization(tokenizer)
    prompt_tensors, prompt_meta = build_prompt(tokenizer, llm.config.acoustic_dim)
    save_tensors(gdir / "prompt.safetensors", prompt_tensors)
    write_json(gdir / "prompt.json", prompt_meta)
    cases = []
    for name, option_overrides, kwargs in GENERATE_CASES:
        options = InferenceOptions(**option_overrides)
        rejected = 0
        for seed in range(MAX_SEED_TRIES):
            try:
                result, margin = run_generate(llm, prompt_tensors, seed, options, kwargs)
            except (IndexError, RuntimeError):
                rejected += 1
                continue
            audio = result.audio[0]
            if audio is None or int(result.time_before[0, 0]) < 5 or margin < MIN_GRAY_MARGIN:
                rejected += 1
                continue
            break
        else:
            raise RuntimeError(f"no usable seed for case {name}")
        save_tensors(
            gdir / f"case_{name}.safetensors",
            {
                "audio": audio,
                "acoustic_features": result.acoustic_features,
                "time_before": result.time_before,
                "output_text_ids": result.output_text_ids,
                "input_text_ids": result.input_text_ids,
            },
        )
        cases.append(
            {
                "name": name,
                "seed": seed,
                "rejected_seeds": rejected,
                "min_gray_margin": round(margin, 6),
                "options": dataclasses.asdict(options),
                "option_overrides": option_overrides,
                "generate_kwargs": kwargs,
                "text": NEW_TEXT,
                "audio_samples": int(audio.shape[-1]),
                "time_before": result.time_before[0].tolist(),
                "output_text_ids": result.output_text_ids[0].tolist(),
            }
        )
    write_json(gdir / "cases.json", {"prompt_text": PROMPT_TEXT, "text": NEW_TEXT, "cases": cases})
    return {"seeds": {c["name"]: c["seed"] for c in cases}}


# --------------------------------------------------------------------------------------------
# 5. Aligner dynamic programme
# --------------------------------------------------------------------------------------------
def make_align_fixture(out: Path) -> dict:
    gen = torch.Generator().manual_seed(2005)
    vocab = 50
    tensors: dict[str, torch.Tensor] = {}
    descriptions = []

    def add(probs: torch.Tensor, tokens: torch.Tensor, kind: str) -> None:
        index = len(descriptions)
        positions = _align_text_tokens(probs.clone(), tokens.clone())
        tensors[f"case{index}.probs"] = probs
        tensors[f"case{index}.text_tokens"] = tokens
        tensors[f"case{index}.positions"] = torch.tensor(positions, dtype=torch.long)
        descriptions.append({"case": index, "kind": kind, "L": probs.shape[0], "T": int(tokens.shape[0])})

    # Uniform random scores.
    for length, count in ((20, 3), (37, 9), (60, 15), (25, 7)):
        add(torch.rand(length, vocab, generator=gen), torch.randint(0, vocab, (count,), generator=gen), "uniform")
    # Log-softmax of Gaussian logits (all negative, like log-probabilities).
    for length, count in ((45, 12), (30, 5)):
        logits = torch.randn(length, vocab, generator=gen) * 2.0
        add(torch.log_softmax(logits, dim=-1), torch.randint(0, vocab, (count,), generator=gen), "log_softmax")
    # T == L (forced diagonal).
    for length in (3, 10):
        add(torch.rand(length, vocab, generator=gen), torch.randint(0, vocab, (length,), generator=gen), "T_equals_L")
    # Peaked, realistic: each token has a bump at its true frame; repeated tokens included; and the
    # way the reference Aligner calls it (scores of tokens absent from the text set to -inf).
    for length, count, masked in ((48, 10, False), (56, 14, True)):
        tokens = torch.randint(1, vocab, (count,), generator=gen)
        tokens[3] = tokens[2]  # a repeated token
        true_frames = torch.sort(torch.randperm(length - 2, generator=gen)[:count] + 1).values
        logits = torch.randn(length, vocab, generator=gen) - 4.0
        logits[:, 0] += 3.0  # CTC blank-like column
        for tok_id, frame in zip(tokens.tolist(), true_frames.tolist()):
            logits[frame, tok_id] += 8.0
            logits[max(frame - 1, 0), tok_id] += 3.0
        scores = torch.log_softmax(logits, dim=-1)
        if masked:
            valid = torch.nn.functional.pad(tokens, (1, 0))
            masked_scores = torch.full_like(scores, -float("inf"))
            masked_scores[:, valid] = scores[:, valid]
            scores = masked_scores
        add(scores, tokens, "peaked_masked" if masked else "peaked")
    save_tensors(out / "align.safetensors", tensors)
    return {"cases": descriptions}


# --------------------------------------------------------------------------------------------
# 6. Text normalisation
# --------------------------------------------------------------------------------------------
NORMALIZATION_INPUTS = [
    "",
    " ",
    "hello world",
    "Hello World.",
    "  leading and trailing spaces  ",
    "HELLO. WORLD! HOW are you? FINE.",
    "“Smart double quotes”, she said.",
    "„Low double quote‟ and ‘single’ ‚quotes‛.",
    "It’s John’s book.",
    "Wait — what – really ― yes ‐ no ‑ maybe.",
    "And then… nothing.",
    "Well... okay",
    "First; second; third",
    "Time: 10:30; place: home.",
    "Note (in parentheses) here.",
    "((double)) parentheses",
    "A -- B --- C",
    "well-known state-of-the-art",
    "Numbers 1, 2, 3 and 4.5 and 1,000,000.",
    "The year 1963: a report.",
    "Spaces  between   words",
    "Space before punctuation , here . and ! there ?",
    "question?answer!excl.next",
    "what? who! why. when",
    "‹angle› «double angle» quotes",
    "'quoted' words 'here'",
    "don't 'start' it's end'",
    'He said "hi" to me.',
    "mIxEd CaSe TeXt. aNoThEr SeNtEnCe!",
    "ÉCOLE française. Élan vital!",
    "snake_case and CamelCase words",
    "email@example.com and https://example.com/path",
    "Tabs\tand\nnewlines.\nNew line starts",
    "1st, 2nd; 3rd: 4th.",
    "Multiple!!! marks??? here...",
    "a.b.c d.e",
    "- leading dash",
    "trailing dash -",
    ",, double commas ,,",
    "Please call Stella.  Ask her to bring these things with her from the store.",
    "The examination and testimony of the experts, enabled the commission to conclude that five shots "
    "may have been fired.",
    "123",
]


def make_text_normalization_fixture(out: Path) -> dict:
    cases = [{"input": text, "output": normalize_text(text)} for text in NORMALIZATION_INPUTS]
    write_json(out / "text_normalization.json", {"function": "tada.utils.text.normalize_text", "cases": cases})
    return {"count": len(cases)}


# --------------------------------------------------------------------------------------------
# 7. Gray code
# --------------------------------------------------------------------------------------------
def make_gray_code_fixture(out: Path) -> dict:
    result: dict[str, object] = {}
    for bits in (4, 8):
        patterns = []
        for n in range(2**bits):
            vec = [1.0 if (n >> (bits - 1 - i)) & 1 else -1.0 for i in range(bits)]
            value = int(decode_gray_code_to_time(torch.tensor([vec]), bits)[0])
            patterns.append({"bits": vec, "value": value})
        result[f"decode_{bits}bit"] = patterns
    gen = torch.Generator().manual_seed(2006)
    soft = []
    fixed_soft = [
        (4, [0.2, -0.3, 0.9, -1.1]),
        (4, [-0.2, 0.3, -0.9, 1.1]),
        (4, [0.49, -0.49, 0.01, -0.01]),
        (8, [0.2, -0.3, 0.7, -0.8, 1.3, -1.4, 0.05, -0.05]),
    ]
    for bits, vec in fixed_soft:
        soft.append({"bits": vec, "num_bits": bits})
    for _ in range(12):
        bits = 8
        vec = (torch.sign(torch.randn(bits, generator=gen)) * (0.3 + 0.9 * torch.rand(bits, generator=gen))).tolist()
        soft.append({"bits": [round(v, 4) for v in vec], "num_bits": bits})
    for item in soft:
        item["value"] = int(decode_gray_code_to_time(torch.tensor([item["bits"]]), item["num_bits"])[0])
    result["decode_soft"] = soft
    # Out-of-range inputs: rounding gives bit values outside {0, 1}; recorded for information.
    edge = []
    for vec in ([0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, 2.5], [-2.0, 1.0, 1.0, 1.0]):
        edge.append({"bits": vec, "num_bits": 4, "value": int(decode_gray_code_to_time(torch.tensor([vec]), 4)[0])})
    result["decode_edge"] = edge
    values = torch.arange(0, 301)
    encoded = encode_time_with_gray_code(values, 8)
    result["encode_8bit"] = [{"value": int(v), "bits": e.tolist()} for v, e in zip(values, encoded)]
    write_json(out / "gray_code.json", result, compact=True)
    return {}


# --------------------------------------------------------------------------------------------
# 8. Real-size state-dict shapes
# --------------------------------------------------------------------------------------------
def state_dict_shapes(module: torch.nn.Module) -> dict[str, dict]:
    return {
        key: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        for key, t in module.state_dict(keep_vars=False).items()
    }


def make_real_shapes_fixture(out: Path, tiny_llm_dir: Path) -> dict:
    with torch.device("meta"):
        llm = TadaForCausalLM(real_llm_config())
        decoder = Decoder(DecoderConfig())
        encoder = Encoder(EncoderConfig())
        spkr = AcousticSpkrVerf(AcousticSpkrVerfConfig())
    tiny_keys = safetensors_keys(tiny_llm_dir / "model.safetensors")
    tiny_decoder_keys = safetensors_keys(tiny_llm_dir.parent / "decoder" / "model.safetensors")
    tiny_encoder_keys = safetensors_keys(tiny_llm_dir.parent / "encoder" / "model.safetensors")
    shapes = {
        "tada_1b": {
            "config": {k: v for k, v in real_llm_config().to_diff_dict().items() if k != "transformers_version"},
            "num_parameters": sum(p.numel() for p in llm.parameters()),
            "num_parameters_prediction_head": sum(p.numel() for p in llm.prediction_head.parameters()),
            "state_dict": state_dict_shapes(llm),
            "lm_head_is_embed_tokens": llm.lm_head.weight is llm.model.embed_tokens.weight,
        },
        "decoder_default": {
            "num_parameters": sum(p.numel() for p in decoder.parameters()),
            "state_dict": state_dict_shapes(decoder),
        },
        "encoder_default": {
            "num_parameters": sum(p.numel() for p in encoder.parameters()),
            "state_dict": state_dict_shapes(encoder),
        },
        "acoustic_spkr_verf_default": {
            "num_parameters": sum(p.numel() for p in spkr.parameters()),
            "state_dict": state_dict_shapes(spkr),
        },
        "tiny_llm_checkpoint": {
            "has_lm_head_weight": "lm_head.weight" in tiny_keys,
            "has_decoder_keys": any(k.startswith("_decoder.") for k in tiny_keys),
            "stripped_buffer_suffixes": list(STRIPPED_BUFFER_SUFFIXES),
            "keys": tiny_keys,
        },
        "tiny_decoder_checkpoint": {"keys": tiny_decoder_keys},
        "tiny_encoder_checkpoint": {"keys": tiny_encoder_keys},
    }
    write_json(out / "real_shapes.json", shapes, compact=True)
    return {"tiny_llm_has_lm_head_weight": shapes["tiny_llm_checkpoint"]["has_lm_head_weight"]}


README_INTRO = """\
# Parity fixtures from the reference implementation (hume-tada 0.1.9)

Generated by `scripts/make_parity_fixtures.py` (read its docstring for the reference venv); do not
edit by hand.  Everything is fp32, CPU, eval mode, tiny random models, produced with
{versions}.

Regenerate: `/tmp/refvenv/bin/python scripts/make_parity_fixtures.py`
Check byte-for-byte reproducibility: `... make_parity_fixtures.py --check`
Recompute everything from these files with freshly built reference modules:
`... make_parity_fixtures.py --verify [--threads N]` (prints max abs differences).  With the
generation thread count (1) all differences are exactly 0.  With 2 threads, or with eager
attention instead of SDPA, every discrete output (durations, token ids) is unchanged and the
largest float difference is ~5e-5 (generated audio), ~2e-5 (generated acoustic features); module
outputs differ by < 1e-5.  Reasonable test tolerances: atol 1e-4 for module outputs, 2e-4 for
generated audio, exact equality for `time_before` / token ids.

## How the tiny models were made
* Parameters are random (seeded, `torch.Generator`), not the reference initialisation (which zero-inits
  the flow head's adaLN and final linear and `acoustic_mask_emb`, and sets Snake alphas to 1):
  Snake alphas ~ U[0.5, 1.5]; weight-norm g ~ U[0.8, 1.5] (U[0.3, 0.6] in residual units),
  v ~ N(0, 1); embeddings ~ N(0, 0.3^2); norm scales ~ 1 + N(0, 0.1^2); biases ~ N(0, 0.02^2); other
  matrices ~ N(0, 1/fan_in).
* The LLM's flow-matching head is then *structured* (`shape_flow_head`) so that its time bits
  contract towards a condition-dependent value: unstructured random heads produce gray-code bits
  outside [-2, 2), which decode to durations outside [0, 16) and crash the reference.  The
  structure is only in the weight values; the architecture is the reference's.
* The checkpoints (`*/model.safetensors`) do NOT contain the constant attention buffers
  `*.self_attn.rope_freqs` and `*.self_attn._precomputed_mask` (8192x8192 bool per layer): they
  were stripped after `save_pretrained`.  The reference's own `from_pretrained` recomputes them
  (it warns they are "newly initialized") and reproduces the outputs exactly.
* `encoder/`: the reference `Encoder` hard-codes the first width of its waveform CNN to 64
  (`WavEncoder(d_model=64, ...)`).  The fixture encoder was built with 4 instead (channels
  4, 8, 16, 32, 64) and `config.json` records this as `wav_encoder_base_channels: 4`, a key the
  reference does not read (a real checkpoint has 64).  Everything else is the reference code.
* `llm/`: `_decoder` (the same tiny decoder as `decoder/`) was attached before `save_pretrained`,
  so `llm/model.safetensors` contains `_decoder.*` keys (minus the stripped buffers).  The
  embeddings are tied and `save_pretrained` drops `lm_head.weight`: the file has
  `model.embed_tokens.weight` only.  The attention implementation used by the reference run was
  `{attn}`.  `config.json` has `tokenizer_name: meta-llama/Llama-3.2-1B`; the tiny tokenizer files
  are copied next to it (ids: bos 512, eos 513, `<|start_header_id|>` 514, `<|end_header_id|>`
  515, `<|eot_id|>` 516, `<|finetune_right_pad_id|>` 517; no pad token; vocab padded to 576 in the
  model, so the model can sample ids 518..575 that the tokenizer does not know).

## Files

| file | bytes |
| --- | ---: |
{file_table}

## Tensor files (key: dtype [shape])

{tensor_listing}

## Contents and JSON schemas

* `decoder/` - reference `Decoder` (config.json + model.safetensors).  `decoder_io.safetensors`:
  `token_values` (12 x 32) and `durations` (12) were expanded like the reference `_decode_wav`
  ((d - 1) zero frames, then the vector; then 9 trailing zero frames) into `encoded_expanded`;
  `token_masks` = (norm != 0); `attention_hidden` = output of `local_attention_decoder` (forward
  hook); `audio` = `Decoder.generate(encoded_expanded, token_masks=token_masks)`, shape
  (1, 1, 480 * frames - 6).
* `encoder/` - reference `Encoder` (see the base-width note).  `encoder_io.safetensors`: `audio` (1 s
  synthetic 24 kHz signal, (1, 24000)), `text_tokens` / `text_token_len` / `token_positions`
  (1-based frame positions) / `token_masks` (1, 50) as passed to `Encoder.forward(..., sample=False)`;
  outputs `token_values` (gathered at positions - 1 and divided by acoustic_std 1.5),
  `encoded_expanded` (zero except at marked frames, (1, 52, 32)); `encoder_outputs` and
  `padded_token_masks` are the two outputs of `get_encoder_outputs(audio, token_masks)` (audio is
  padded by 960 samples, so 52 frames; masks padded to 52).  `encoder_io.json`:
  `{{"text", "sample_rate", "sample", "wav_encoder_base_channels"}}`.
* `llm/llm_io.safetensors` - `forward_one_step(input_ids, acoustic_features, acoustic_masks,
  time_len_before, time_len_after, use_cache=False)` for batch 2 x 12 positions (no attention mask,
  positions 0..11): `last_hidden_state` (2, 12, 64), `logits` (2, 12, 576).  Flow head:
  `head_velocity = prediction_head(head_noisy (3, 40), head_t (3,) = [0, 0.37, 0.9],
  condition=head_condition (3, 64))`.  Latent layout: 32 acoustic values, 4 gray bits time_before,
  4 gray bits time_after.
* `generate/` - end-to-end `TadaForCausalLM.generate()` with the tiny LLM and decoder.
  `prompt.safetensors`: `text_tokens` (1, N) (tiny tokenizer, no special tokens), `text_tokens_len`
  (1,), `token_positions` (1, N) strictly increasing 1-based frame positions, `token_values`
  (1, N, 32) ~ N(0, 1), `audio_len` (1,) samples; the prompt audio is zeros of that length.
  `prompt.json`: `{{"text", "sample_rate", "audio_len"}}`.  The reference prompt is an
  `EncoderOutput(audio=zeros(1, audio_len), audio_len, text=[text], token_positions, token_values,
  sample_rate=24000, text_tokens, text_tokens_len)`.
  `cases.json`: `{{"prompt_text", "text", "cases": [{{"name", "seed", "options" (all
  InferenceOptions fields), "option_overrides", "generate_kwargs" (num_extra_steps,
  num_transition_steps, system_prompt, user_turn_prompt when not default), "text",
  "audio_samples", "time_before", "output_text_ids", "rejected_seeds", "min_gray_margin"}}]}}`.
  Each case ran `torch.manual_seed(seed)` immediately before
  `generate(prompt, text=" " + text, normalize_text=False, inference_options=..., **generate_kwargs)`.
  `case_<name>.safetensors`: `audio` = `output.audio[0]` (1-D, after the reference removed
  `time_before[0]` frames of leading samples), `acoustic_features` = `output.acoustic_features`
  (whole sequence, de-normalised: x * 1.5 + 0), `time_before` = `output.time_before` (already
  sliced from the last prompt token on), `output_text_ids`, `input_text_ids` (the prompt layout
  the reference built, before prompt text was replaced by the pad token).
  The inputs avoid the two reference defects tadastream fixes: the new text starts with a space
  and is not normalised, and the script asserts tok(prompt) + tok(" " + text) ==
  tok(prompt + " " + text); seeds were tried from 0 upwards and a seed was kept only if the run
  succeeded, `time_before[0] >= 5` and every decoded gray-code value is at least 1e-3 away from
  a rounding threshold (`min_gray_margin`).
* `align.safetensors` - module-level `tada.modules.aligner._align_text_tokens(probs, text_tokens)`:
  for case i: `case{{i}}.probs` (L, 50) float32, `case{{i}}.text_tokens` (T,) int64,
  `case{{i}}.positions` (T,) int64 (0-based frames, as returned).  Kinds: {align_kinds}.
* `text_normalization.json` - `{{"function", "cases": [{{"input", "output"}}]}}` for
  `tada.utils.text.normalize_text`.
* `gray_code.json` - `decode_4bit` / `decode_8bit`: `[{{"bits": [+-1.0 ...] (MSB first), "value"}}]`
  for every pattern; `decode_soft`: `[{{"bits": floats, "num_bits", "value"}}]` (values near 0
  round like `torch.round`); `decode_edge`: out-of-range inputs (|x| >= 2 or exactly 0, where the
  reference rounds half to even and bit values outside {{0, 1}} leak into the sum) - informative
  only; `encode_8bit`: `[{{"value": 0..300, "bits"}}]` (`encode_time_with_gray_code`, clamps at 255).
* `real_shapes.json` - real-size reference modules built on the meta device:
  `{{"tada_1b": {{"config", "num_parameters", "num_parameters_prediction_head", "state_dict":
  {{key: {{"shape", "dtype"}}}}, "lm_head_is_embed_tokens"}}, "decoder_default": {{...}},
  "encoder_default": {{...}}, "acoustic_spkr_verf_default": {{...}}, "tiny_llm_checkpoint": {{
  "has_lm_head_weight", "has_decoder_keys", "stripped_buffer_suffixes", "keys": {{key: {{"shape",
  "dtype"}}}}}}, "tiny_decoder_checkpoint": {{"keys"}}, "tiny_encoder_checkpoint": {{"keys"}}}}`.
  Module `state_dict()`s include tied `lm_head.weight` and the two attention buffers
  (`rope_freqs` F32 [8192, head_dim / 2, 2], `_precomputed_mask` BOOL [8192, 8192]); checkpoints
  written by `save_pretrained` drop the former, and the fixture files also lack the latter.
* `manifest.json` - versions, seeds and the sha256 of every other file.

## Reference behaviour worth knowing (observed while generating)
* RNG: `generate` draws from the global torch RNG only.  For every step from the end of the
  prefill on (including steps whose acoustic features/durations are then overridden by the prompt):
  with 1 candidate, `randn(B, acoustic_dim)` then `randn(B, 2 * bits)`, both times
  noise_temperature; with N candidates one `randn(N * B, acoustic_dim + 2 * bits)`; then, on
  steps that sample text (`step >= len(input_ids) - 1` and `text_do_sample`), one
  `torch.multinomial(probs, 1)`.  With `speed_up_factor` the second pass continues the same RNG
  stream.
* `output_text_ids` (`GenerationOutput.output_text_ids`) holds, for each position, the next
  input token of the *pad-replaced* sequence, but it skips the token at index `prefill_len`
  (the prefill appends `input_ids[1:prefill_len]`, the step loop then starts appending at
  `input_ids[prefill_len + 1]`), so it is one shorter than expected.  Only the first
  `prompt_acoustic_features.shape[1]` positions (bos + system/assistant header + prompt tokens,
  minus `num_transition_steps`) have their text replaced by `<|finetune_right_pad_id|>`; the last
  `num_transition_steps` prompt-text tokens keep their ids.
* `negative_condition_source="zero"` builds the negative condition with the dtype of `input_ids`
  (int64 zeros), promoted to float by `torch.cat`; `"prompt"` uses the prefill hidden state at
  `step % prefill_len`.  `duration_median` picks the first candidate among ties (`argmin`).
* The prompt's durations come from `token_positions` only (first gap measured from frame 1).
  `audio_len` is never used by `generate()` in 0.1.9: the code meant to replace the position after
  the last prompt token by the audio length compares `arange(len(prompt tokens))` with the total
  (prompt + new) token count, which never matches.
"""


def write_readme(out: Path, summary: dict) -> None:
    import hashlib

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("README.md", "manifest.json"))
    manifest = {
        "versions": summary["versions"],
        "generate_seeds": summary["generate"]["seeds"],
        "files": {
            str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in files
        },
    }
    write_json(out / "manifest.json", manifest)
    files.append(out / "manifest.json")
    table = "\n".join(f"| `{p.relative_to(out)}` | {p.stat().st_size} |" for p in files)
    total = sum(p.stat().st_size for p in files)
    table += f"\n| total (without README.md) | {total} |"
    listing = []
    for p in files:
        if p.suffix != ".safetensors" or p.name == "model.safetensors":
            continue
        listing.append(f"`{p.relative_to(out)}`\n")
        for key, info in safetensors_keys(p).items():
            listing.append(f"- `{key}`: {info['dtype']} {info['shape']}")
        listing.append("")
    for p in files:
        if p.name == "model.safetensors":
            keys = safetensors_keys(p)
            dtypes = sorted({info["dtype"] for info in keys.values()})
            listing.append(
                f"- `{p.relative_to(out)}`: {len(keys)} tensors ({', '.join(dtypes)}); every key and shape is "
                f"listed in `real_shapes.json` under `tiny_{p.parent.name}_checkpoint`."
            )
    listing.append("")
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    kinds = ", ".join(f"{d['case']}: {d['kind']} L={d['L']} T={d['T']}" for d in summary["align"]["cases"])
    text = README_INTRO.format(
        versions=versions,
        attn=summary["llm"]["attn_implementation"],
        file_table=table,
        tensor_listing="\n".join(listing),
        align_kinds=kinds,
    )
    (out / "README.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def generate_all(out: Path) -> dict:
    torch.set_num_threads(1)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tokenizer = load_tokenizer()
    summary: dict[str, object] = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "hume_tada": "0.1.9",
        }
    }
    decoder = build_tiny_decoder()
    summary["decoder"] = make_decoder_fixture(out, decoder)
    summary["encoder"] = make_encoder_fixture(out, build_tiny_encoder(), tokenizer)
    llm = build_tiny_llm(tokenizer, decoder)
    summary["llm"] = make_llm_fixture(out, llm)
    summary["generate"] = make_generate_fixture(out, llm, tokenizer)
    summary["align"] = make_align_fixture(out)
    summary["text_normalization"] = make_text_normalization_fixture(out)
    summary["gray_code"] = make_gray_code_fixture(out)
    summary["real_shapes"] = make_real_shapes_fixture(out, out / "llm")
    write_readme(out, summary)
    return summary


def _load_reference_checkpoint(model: torch.nn.Module, model_dir: Path, allowed_unexpected: str | None = None):
    state = load_file(str(model_dir / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(STRIPPED_BUFFER_SUFFIXES)]
    if isinstance(model, TadaForCausalLM):
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in result.unexpected_keys if not (allowed_unexpected and k.startswith(allowed_unexpected))]
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


def verify_fixtures(out: Path) -> dict[str, float]:
    """Rebuild the reference modules from the fixture files alone and recompute every output.

    Returns the max abs difference per output (0.0 when run with the thread count used for
    generation; small nonzero values with another thread count show how sensitive each output is).
    """
    diffs: dict[str, float] = {}

    def record(name, got, want):
        if got.dtype.is_floating_point:
            diffs[name] = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
        else:
            diffs[name] = 0.0 if torch.equal(got, want) else float("inf")

    tokenizer = AutoTokenizer.from_pretrained(str(out / "llm"))
    decoder = _load_reference_checkpoint(Decoder(DecoderConfig.from_pretrained(str(out / "decoder"))), out / "decoder")
    io = load_file(str(out / "decoder" / "decoder_io.safetensors"))
    with torch.no_grad():
        record("decoder.audio", decoder.generate(io["encoded_expanded"], token_masks=io["token_masks"]), io["audio"])

    enc_cfg = EncoderConfig.from_pretrained(str(out / "encoder"))
    original = ref_encoder_module.WavEncoder
    ref_encoder_module.WavEncoder = lambda d_model, strides, d_latent: original(
        d_model=enc_cfg.wav_encoder_base_channels, strides=strides, d_latent=d_latent
    )
    try:
        encoder = Encoder(enc_cfg)
    finally:
        ref_encoder_module.WavEncoder = original
    encoder = _load_reference_checkpoint(encoder, out / "encoder")
    io = load_file(str(out / "encoder" / "encoder_io.safetensors"))
    with torch.no_grad():
        enc = encoder(
            io["audio"],
            text_tokens=io["text_tokens"],
            text_token_len=io["text_token_len"],
            token_positions=io["token_positions"],
            token_masks=io["token_masks"],
            sample=False,
        )
    record("encoder.token_values", enc.token_values, io["token_values"])
    record("encoder.encoded_expanded", enc.encoded_expanded, io["encoded_expanded"])

    llm = TadaForCausalLM(TadaConfig.from_pretrained(str(out / "llm")))
    llm = _load_reference_checkpoint(llm, out / "llm", allowed_unexpected="_decoder.")
    llm._decoder = decoder
    llm._tokenizer = tokenizer
    io = load_file(str(out / "llm" / "llm_io.safetensors"))
    with torch.no_grad():
        step = llm.forward_one_step(
            input_ids=io["input_ids"],
            acoustic_features=io["acoustic_features"],
            acoustic_masks=io["acoustic_masks"],
            time_len_before=io["time_len_before"],
            time_len_after=io["time_len_after"],
            use_cache=False,
        )
        velocity = llm.prediction_head(io["head_noisy"], io["head_t"], condition=io["head_condition"])
    record("llm.last_hidden_state", step.hidden_states[-1], io["last_hidden_state"])
    record("llm.logits", step.logits, io["logits"])
    record("llm.head_velocity", velocity, io["head_velocity"])

    prompt_tensors = load_file(str(out / "generate" / "prompt.safetensors"))
    cases = json.loads((out / "generate" / "cases.json").read_text())["cases"]
    for case in cases:
        want = load_file(str(out / "generate" / f"case_{case['name']}.safetensors"))
        options = InferenceOptions(**case["option_overrides"])
        result, _ = run_generate(llm, prompt_tensors, case["seed"], options, case["generate_kwargs"])
        for key in ("audio", "acoustic_features", "time_before", "output_text_ids"):
            got = result.audio[0] if key == "audio" else getattr(result, key)
            record(f"generate.{case['name']}.{key}", got, want[key])
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate tadastream parity fixtures from hume-tada 0.1.9")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    parser.add_argument(
        "--verify", action="store_true", help="rebuild reference modules from the files in --out and recompute"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --verify")
    args = parser.parse_args(argv)
    if args.verify:
        torch.set_num_threads(args.threads)
        diffs = verify_fixtures(args.out)
        for name, value in diffs.items():
            print(f"{value:.3g}\t{name}")
        return 0 if all(v == 0.0 for v in diffs.values()) else 1
    if not args.check:
        summary = generate_all(args.out)
        print(json.dumps(summary["generate"], indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "parity"
        generate_all(fresh)
        mismatched = []
        for path in sorted(p for p in fresh.rglob("*") if p.is_file()):
            rel = path.relative_to(fresh)
            other = args.out / rel
            if not other.is_file() or not filecmp.cmp(path, other, shallow=False):
                mismatched.append(str(rel))
        extra = sorted(
            str(p.relative_to(args.out))
            for p in args.out.rglob("*")
            if p.is_file() and not (fresh / p.relative_to(args.out)).exists()
        )
    if mismatched or extra:
        print(f"NOT reproducible: differing={mismatched} extra={extra}")
        return 1
    print("parity fixtures are reproducible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
