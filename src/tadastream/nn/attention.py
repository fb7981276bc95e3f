"""Block-masked local attention (the codec's transformer) with an incremental path.

The codec masks attention by blocks of frames delimited by "marked" frames (frames that carry
a token's acoustic vector). The masks are built per call from the marks, never as a dense
8192x8192 table. For the decoder rule (a frame sees its own block and the previous one),
``LocalAttentionStack.forward_runs`` computes completed blocks (of any number of streams) against
each stream's cached keys/values of the block before them, which is what lets the streaming
decoder run the transformer exactly once per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos/sin tables (len(positions), head_dim/2) in fp32, for interleaved-pair RoPE."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (x[2i], x[2i+1]) pairs of ``x`` (B, H, T, D) by the position angles."""
    b, h, t, d = x.shape
    pairs = x.reshape(b, h, t, d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.reshape(b, h, t, d).to(x.dtype)


def decoder_block_ids(marks: torch.Tensor) -> torch.Tensor:
    """Block index per frame: a marked frame closes its block."""
    marks = marks.long()
    return torch.cumsum(marks, dim=-1) - marks


def decoder_attention_mask(marks: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool, True where frame i may attend to frame j (own or previous block)."""
    ids = decoder_block_ids(marks)
    diff = ids.unsqueeze(2) - ids.unsqueeze(1)
    return (diff == 0) | (diff == 1)


def encoder_attention_mask(marks: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool for the encoder's rule, True where frame i may attend to frame j.

    A marked frame opens its block. Unmarked frames see the unmarked frames of their block;
    a marked frame sees its whole block and the unmarked frames of the previous block.
    """
    marked = marks.bool()
    ids = torch.cumsum(marks.long(), dim=-1)
    diff = ids.unsqueeze(2) - ids.unsqueeze(1)
    marked_i, marked_j = marked.unsqueeze(2), marked.unsqueeze(1)
    same = diff == 0
    return (same & (~marked_j | marked_i)) | (marked_i & (diff == 1) & ~marked_j)


class LocalSelfAttention(nn.Module):
    """Multi-head self-attention with RoPE, post-norm residual (``layer_norm(x + attn(x))``)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.layer_norm = nn.LayerNorm(d_model)

    def heads(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated queries and keys, and values (B, H, T, D), from the ``qkv`` projection (B, T, 3 C)
        and the positions' RoPE tables (:func:`rope_cos_sin`)."""
        b, t, _ = qkv.shape
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn.shape
        return self.layer_norm(x + self.out_proj(attn.transpose(1, 2).reshape(b, t, -1)))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        cos, sin = rope_cos_sin(torch.arange(x.shape[1], device=x.device), self.head_dim)
        q, k, v = self.heads(self.qkv(x), cos, sin)
        mask = None if allowed is None else allowed.unsqueeze(1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim))
        return self._finish(x, attn)


class LocalAttentionLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = LocalSelfAttention(d_model, num_heads)
        # Indices 0 and 3 match the checkpoints' ffn.0 / ffn.3 (dropouts sat in between).
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Identity(), nn.Linear(d_ff, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn(x, allowed)
        return self.norm(x + self.ffn(x))


@dataclass
class BlockCache:
    """Keys/values of the last completed block at every layer, and where the next block starts."""

    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    next_position: int = 0


@dataclass
class BlockRun:
    """One stream's share of a multi-stream decoder call: its complete blocks sit at rows
    ``start .. start + sum(block_lengths)`` of the packed input, after the blocks in ``cache``."""

    start: int
    block_lengths: list[int]
    cache: BlockCache

    @property
    def length(self) -> int:
        return sum(self.block_lengths)

    def allowed(self, device: torch.device) -> torch.Tensor | None:
        """The decoder rule over this call's frames and the cached block (None: a lone block sees all)."""
        if len(self.block_lengths) == 1:
            return None
        prev = 0 if self.cache.kv is None else self.cache.kv[0][0].shape[2]
        ids = torch.repeat_interleave(
            torch.arange(len(self.block_lengths), device=device), torch.tensor(self.block_lengths, device=device)
        )
        key_ids = torch.cat((torch.full((prev,), -1, device=device), ids))
        diff = ids.unsqueeze(1) - key_ids.unsqueeze(0)
        return ((diff == 0) | (diff == 1)).unsqueeze(0).unsqueeze(0)


class LocalAttentionStack(nn.Module):
    def __init__(self, d_model: int, num_layers: int, num_heads: int, d_ff: int):
        super().__init__()
        self.layers = nn.ModuleList(LocalAttentionLayer(d_model, num_heads, d_ff) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, allowed)
        return self.final_norm(x)

    def forward_runs(self, x: torch.Tensor, runs: list[BlockRun]) -> torch.Tensor:
        """Several streams' complete blocks in one pass: ``x`` (rows, d_model) packs every run's frames
        (rows past the last run are padding). Every linear layer reads its weights once for all rows;
        attention runs per stream, against that stream's cached block. Returns (rows, d_model)."""
        masks = [run.allowed(x.device) for run in runs]
        head_dim = self.layers[0].self_attn.head_dim
        tables = [  # every layer rotates a run's frames by the same angles
            rope_cos_sin(
                torch.arange(run.cache.next_position, run.cache.next_position + run.length, device=x.device), head_dim
            )
            for run in runs
        ]
        new_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in runs]
        for i, layer in enumerate(self.layers):
            attn_layer = layer.self_attn
            qkv = attn_layer.qkv(x)
            attn = torch.zeros_like(x)
            for j, run in enumerate(runs):
                rows = slice(run.start, run.start + run.length)
                q, k, v = attn_layer.heads(qkv[rows].unsqueeze(0), *tables[j])
                prev = None if run.cache.kv is None else run.cache.kv[i]
                keys = k if prev is None else torch.cat((prev[0], k), 2)
                values = v if prev is None else torch.cat((prev[1], v), 2)
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=masks[j], scale=1.0 / math.sqrt(attn_layer.head_dim)
                )
                attn[rows] = out[0].transpose(0, 1).reshape(run.length, -1)
                last = run.block_lengths[-1]
                new_kv[j].append((k[:, :, -last:], v[:, :, -last:]))
            x = attn_layer.layer_norm(x + attn_layer.out_proj(attn))
            x = layer.norm(x + layer.ffn(x))
        for run, kv in zip(runs, new_kv):
            run.cache.kv = kv
            run.cache.next_position += run.length
        return self.final_norm(x)
