"""Configurations with the published defaults.

Codec configs are plain dataclasses: a ``config.json`` may omit any field (absent means the
default) and may carry fields we do not use (kept, so a round trip loses nothing). The LLM
config is transformers' ``LlamaConfig`` plus TADA's fields, read the same tolerant way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing transformers is slow: keep this module light for `--help`
    from transformers import LlamaConfig

#: TADA's audio: 24 kHz mono, 50 acoustic frames per second, 480 samples per frame.
SAMPLE_RATE = 24000
FRAME_RATE = 50
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAME_RATE
MIN_LEADING_TRIM_FRAMES = 5  # the proposal's fix: never expose the decoder's start-up transient


def leading_trim_frames(first_time_before: int) -> int:
    """Frames cut from the start of an utterance's audio: the first decoded token's gap, at least 5."""
    return max(int(first_time_before), MIN_LEADING_TRIM_FRAMES)


DEFAULT_MODEL = "HumeAI/tada-1b"
DEFAULT_CODEC = "HumeAI/tada-codec"
DEFAULT_TOKENIZER = "meta-llama/Llama-3.2-1B"

#: The CPU quantized layouts and the activation dtype each one's kernel takes: "int8", int8 weights
#: in PyTorch's weight-only kernel; "w8a8", int8 weights times int8 activations quantized per row at
#: run time (fbgemm). By name, so the torch-free CLI parser can use it.
QUANTIZE_ACTIVATIONS = {"int8": "bfloat16", "w8a8": "float32"}


@dataclass
class _JsonConfig:
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out


@dataclass
class DecoderConfig(_JsonConfig):
    embed_dim: int = 512
    hidden_dim: int = 1024
    num_attn_layers: int = 6
    num_attn_heads: int = 8
    attn_dim_feedforward: int = 4096
    wav_decoder_channels: int = 1536
    strides: list[int] = field(default_factory=lambda: [4, 4, 5, 6])
    block_attention: str = "v2"

    def __post_init__(self):
        if self.block_attention != "v2":
            raise ValueError(f"decoder block_attention {self.block_attention!r} is not supported; only 'v2' is")

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.strides)


@dataclass
class EncoderConfig(_JsonConfig):
    hidden_dim: int = 1024
    embed_dim: int = 512
    strides: list[int] = field(default_factory=lambda: [6, 5, 4, 4])
    num_attn_layers: int = 6
    num_attn_heads: int = 8
    attn_dim_feedforward: int = 4096
    dist_type: str = "fixed"
    block_attention: str = "v2"
    num_frames_per_second: int = 50
    std: float = 0.5
    acoustic_mean: float = 0.0
    acoustic_std: float = 1.5

    def __post_init__(self):
        if self.block_attention != "v2":
            raise ValueError(f"encoder block_attention {self.block_attention!r} is not supported; only 'v2' is")
        if self.dist_type not in ("fixed", "gaussian"):
            raise ValueError(f"encoder dist_type {self.dist_type!r} is not supported; use 'fixed' or 'gaussian'")


@dataclass
class AlignerConfig(_JsonConfig):
    base_model_name: str = "facebook/wav2vec2-large"
    tokenizer_name: str = "meta-llama/Llama-3.2-1B"
    emb_dim: int = 4096


@dataclass
class AcousticSpkrVerfConfig(_JsonConfig):
    input_dim: int = 512
    hidden_dim: int = 768
    embed_dim: int = 192
    num_layers: int = 3


TADA_DEFAULTS: dict[str, Any] = {
    "acoustic_dim": 512,
    "num_time_classes": 1024,
    "shift_acoustic": 5,
    "head_layers": 4,
    "head_ffn_ratio": 3.0,
    "bottleneck_dim": None,
    "acoustic_mean": 0.0,
    "acoustic_std": 1.5,
    "diffusion_head_type": "vibevoice",
}


# HumeAI/tada-1b's published LLM config (FACTS: Llama 3.2 1B + TADA head), for building its shapes.
TADA_1B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "acoustic_dim": 512,
    "num_time_classes": 256,
    "shift_acoustic": 5,
    "head_layers": 6,
    "head_ffn_ratio": 4.0,
    "tokenizer_name": "meta-llama/Llama-3.2-1B",
}


def tada_config(data: dict[str, Any] | None = None, **overrides: Any) -> LlamaConfig:
    """A ``LlamaConfig`` carrying TADA's extra fields (defaults as in the reference)."""
    from transformers import LlamaConfig

    merged = {**TADA_DEFAULTS, **(data or {}), **overrides}
    merged["model_type"] = "llama"
    config = LlamaConfig(**merged)
    if config.diffusion_head_type != "vibevoice":
        raise ValueError(f"diffusion_head_type {config.diffusion_head_type!r} is not supported; use 'vibevoice'")
    return config


def checkpoint_languages(config: LlamaConfig) -> tuple[str, ...]:
    """The languages a checkpoint speaks: its config's ``languages`` where it names them, else those of
    the published checkpoint of its size (the 3B one is TADA-3B-ML's ten, the 1B one English)."""
    from .scripts import LANGUAGES

    named = getattr(config, "languages", None)
    if named:
        return tuple(named)
    return LANGUAGES if config.hidden_size >= 3072 else ("en",)


def num_time_bits(config: LlamaConfig) -> int:
    return math.ceil(math.log2(config.num_time_classes))
