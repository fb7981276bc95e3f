"""The Llama 3 backbone, run over many streams at once against their slot caches.

Parameter names are those of transformers' ``LlamaModel`` (``embed_tokens``, ``layers.N.self_attn.
{q,k,v,o}_proj``, ``layers.N.mlp.{gate,up,down}_proj``, the two norms, ``norm``), so published
checkpoints load unchanged; ``tests/nn/test_llama.py`` holds the forward to transformers'.

One call takes the input rows of several :class:`Segment` s side by side, a matrix of
``(tokens, hidden)``: every matmul reads its weight once for all of them, and only attention runs
per segment, each against its own cache. A segment is one stream's rows (they share positions)
for one step, or a chunk of its prefill.

:meth:`LlamaBackbone.decode_rows` is the same step with fixed shapes, for ``torch.compile`` and
CUDA graphs: one position for each of the first ``n`` rows of a static arena (see
:class:`~tadastream.nn.kv_cache.SlotPool`), attention masked by position instead of sliced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import SlotCache
from .linear import FusedGatedMLP, LinearFactory, fused_weight


@dataclass
class Segment:
    """``rows`` rows of ``cache`` at positions ``start .. start + length``; their input rows are
    ``rows * length`` consecutive rows of the call's input, row by row."""

    cache: SlotCache
    rows: int
    start: int
    length: int

    @property
    def tokens(self) -> int:
        return self.rows * self.length

    @property
    def end(self) -> int:
        return self.start + self.length


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in fp32, scale in the input's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, layer: int):
        super().__init__()
        self.layer = layer
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        hidden, bias = config.hidden_size, bool(getattr(config, "attention_bias", False))
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias)
        self.qkv: nn.Module | None = None  # q, k and v in one matmul, after fuse()

    def fuse(self, make: LinearFactory) -> None:
        """One matmul for q, k and v (they read the same input); the separate weights are released."""
        self.qkv = make(fused_weight([self.q_proj, self.k_proj, self.v_proj]))
        self.q_proj = self.k_proj = self.v_proj = None
        self.o_proj = make(self.o_proj.weight)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv is not None:
            q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
            q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        n = x.shape[0]
        return (
            q.reshape(n, self.heads, self.head_dim),
            k.reshape(n, self.kv_heads, self.head_dim),
            v.reshape(n, self.kv_heads, self.head_dim),
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Sequence[Segment]):
        q, k, v = self.project(x)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out, offset = [], 0
        for seg in segments:
            n = seg.tokens
            # (tokens, heads, dim) -> (rows, heads, length, dim)
            qs, ks, vs = (
                t[offset : offset + n].unflatten(0, (seg.rows, seg.length)).transpose(1, 2) for t in (q, k, v)
            )
            seg.cache.write(self.layer, seg.rows, seg.start, ks, vs)
            keys, values = seg.cache.view(self.layer, seg.rows, seg.end)
            out.append(self._attend(qs, keys, values, seg).transpose(1, 2).reshape(n, -1))
            offset += n
        if offset < x.shape[0]:  # padding rows (see Runner): they attend to nothing
            out.append(x.new_zeros(x.shape[0] - offset, self.heads * self.head_dim))
        return self.o_proj(torch.cat(out) if len(out) > 1 else out[0])

    def decode_rows(self, x, cos, sin, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor):
        """One position for each row of ``x`` (n, hidden): row i is arena row i at ``positions[i]``.
        ``keys``/``values``: this layer's arena ``(rows >= n, kv_heads, capacity, head_dim)``."""
        q, k, v = self.project(x)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        n = x.shape[0]
        rows = torch.arange(n, device=x.device)
        keys[rows, :, positions] = k
        values[rows, :, positions] = v
        capacity = keys.shape[2]
        visible = torch.arange(capacity, device=x.device)[None, :] <= positions[:, None]  # (n, capacity)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),
            keys[:n],
            values[:n],
            attn_mask=visible[:, None, None, :],
            scale=self.scaling,
            enable_gqa=self.heads != self.kv_heads,
        )
        return self.o_proj(out.reshape(n, -1))

    def _attend(self, q, keys, values, seg: Segment) -> torch.Tensor:
        gqa = self.heads != self.kv_heads
        if seg.length == 1:  # one new position sees every cached one
            return F.scaled_dot_product_attention(q, keys, values, scale=self.scaling, enable_gqa=gqa)
        if seg.start == 0:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=self.scaling, enable_gqa=gqa)
        # a later prefill chunk: position start + i sees positions <= start + i
        device = q.device
        mask = torch.arange(seg.end, device=device)[None, :] <= torch.arange(seg.start, seg.end, device=device)[:, None]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (tokens, heads, dim) with per-token ``cos``/``sin`` (tokens, dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp: nn.Module = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, segments: Sequence[Segment]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segments)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    """Token embedding, decoder layers and final norm of a Llama (no LM head)."""

    def __init__(self, config):
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported; Llama uses 'silu'")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention_scaling = 1.0
        self.init_rotary()

    def init_rotary(self, device: torch.device | str | None = None) -> None:
        """Rotary frequencies from the config: scaled ones (llama3, ...) computed by transformers,
        plain ones here (transformers keeps those in modeling_llama, a second of import time)."""
        params = getattr(self.config, "rope_parameters", None) or {}
        kind = params.get("rope_type", "default")
        device = None if device is None else torch.device(device)
        if kind == "default":
            inv_freq, self.attention_scaling = _plain_rope(self.config, device), 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[kind](self.config, device=device)
        # A plain attribute, not a buffer: moving the model to bfloat16 must not round it.
        self.inv_freq = inv_freq.float()

    def fuse(self, make: LinearFactory) -> None:
        """Inference layout: q/k/v and gate/up fused, every matmul built with ``make``."""
        for layer in self.layers:
            if any(getattr(lin, "bias", None) is not None for lin in (layer.self_attn.q_proj, layer.mlp.gate_proj)):
                raise ValueError("Llama layers with biases cannot be fused; load with optimize=False")
            layer.self_attn.fuse(make)
            mlp = layer.mlp
            layer.mlp = FusedGatedMLP.fuse(mlp.gate_proj, mlp.up_proj, mlp.down_proj, F.silu, make)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(dtype), (angles.sin() * self.attention_scaling).to(dtype)

    def decode_rows(
        self, x: torch.Tensor, positions: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Final hidden states of one step for the first ``n`` rows of an arena, fixed shapes only.

        ``x`` (n, hidden) and ``positions`` (n,): row i's input and position; ``keys``/``values``
        the arena, per layer ``(rows >= n, kv_heads, capacity, head_dim)``, written in place. A row
        with no work this step is given the arena's scratch position (its last) and any input.
        No Python branch depends on a value, so a compiled graph holds for every step.
        """
        cos, sin = self.rotary(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            x = x + layer.self_attn.decode_rows(h, cos, sin, keys[i], values[i], positions)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

    def forward(self, x: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
        """Final hidden states of the input rows ``x`` (tokens, hidden) laid out as ``segments``;
        their keys and values are written to the segments' caches. Rows past the segments are
        padding: they go through the matmuls and attend to nothing."""
        positions = torch.cat(
            [torch.arange(s.start, s.end, device=x.device).repeat(s.rows) for s in segments]
            + [torch.zeros(x.shape[0] - sum(s.tokens for s in segments), dtype=torch.long, device=x.device)]
        )
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, segments)
        for seg in segments:
            seg.cache.length = max(seg.cache.length, seg.end)
        return self.norm(x)


def _plain_rope(config, device: torch.device | None) -> torch.Tensor:
    """Unscaled rotary inverse frequencies: theta ** (-2i / head_dim) for i < head_dim / 2."""
    params = getattr(config, "rope_parameters", None) or {}
    base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(dim * params.get("partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (base**exponents)
