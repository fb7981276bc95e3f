"""The flow-matching prediction head: an adaLN-modulated SwiGLU MLP conditioned on the LLM state.

Key names follow the published checkpoints (``prediction_head.*``). No biases anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight if self.weight is not None else out


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the ODE time, [cos | sin], computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1).to(t.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, features: int = 256):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, hidden, bias=False)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.features).to(self.mlp[0].weight.dtype))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HeadLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, eps: float):
        super().__init__()
        self.ffn = SwiGLU(dim, ffn_dim)
        self.norm = RMSNorm(dim, eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim, bias=False))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        return x + gate * self.ffn(self.norm(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm_final = RMSNorm(dim, eps, affine=False)
        self.linear = nn.Linear(dim, out_dim, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """Velocity of the flow-matching ODE for (latent, time, condition)."""

    def __init__(self, hidden: int, latent: int, num_layers: int, ffn_ratio: float, eps: float = 1e-5):
        super().__init__()
        self.noisy_images_proj = nn.Linear(latent, hidden, bias=False)
        self.cond_proj = nn.Linear(hidden, hidden, bias=False)
        self.t_embedder = TimestepEmbedder(hidden)
        self.layers = nn.ModuleList(HeadLayer(hidden, int(hidden * ffn_ratio), eps) for _ in range(num_layers))
        self.final_layer = FinalLayer(hidden, latent, eps)

    def forward(self, latent: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.noisy_images_proj(latent)
        c = self.cond_proj(condition) + self.t_embedder(t)
        for layer in self.layers:
            x = layer(x, c)
        return self.final_layer(x, c)
