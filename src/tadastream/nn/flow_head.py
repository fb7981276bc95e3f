"""The flow-matching prediction head: an adaLN-modulated SwiGLU MLP conditioned on the LLM state.

Key names follow the published checkpoints (``prediction_head.*``). No biases anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .linear import FusedGatedMLP, LinearFactory, fused_weight, replace_linears


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

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``dtype``: the weights' (they may be packed or quantized, without a ``weight``)."""
        return self.mlp(timestep_features(t, self.features).to(dtype))


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

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """``modulation``: this layer's adaLN output (shift | scale | gate), see FlowHead.modulations."""
        shift, scale, gate = modulation.chunk(3, dim=-1)
        return x + gate * self.ffn(self.norm(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm_final = RMSNorm(dim, eps, affine=False)
        self.linear = nn.Linear(dim, out_dim, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation.chunk(2, dim=-1)
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
        self.modulation: nn.Module | None = None  # every adaLN in one matmul, after prepare_for_inference
        self.modulation_sizes = [3 * hidden] * num_layers + [2 * hidden]

    def modulations(self, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Every layer's adaLN output, side by side, for rows (t, condition).

        They do not depend on the latent: an ODE solver knows its time grid up front and can get
        them for all its steps in one batch, reading these weights (a fifth of the head) once per
        solve instead of once per step.
        """
        c = self.cond_proj(condition) + self.t_embedder(t, condition.dtype)
        if self.modulation is not None:
            return self.modulation(F.silu(c))
        layers = [*self.layers, self.final_layer]
        return torch.cat([layer.adaLN_modulation(c) for layer in layers], dim=-1)

    def forward(
        self,
        latent: torch.Tensor,
        t: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        modulations: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for ``latent``; pass (t, condition), or their ``modulations`` computed ahead."""
        if modulations is None:
            modulations = self.modulations(t, condition)
        parts = modulations.split(self.modulation_sizes, dim=-1)
        x = self.noisy_images_proj(latent)
        for layer, modulation in zip(self.layers, parts):
            x = layer(x, modulation)
        return self.final_layer(x, parts[-1])

    def prepare_for_inference(self, make: LinearFactory, make_batched: LinearFactory | None = None) -> None:
        """One-way: fuse matmuls that read the same input and build every weight with ``make``.

        All adaLN projections read SiLU(c), so the 7 of them become one matmul (built with
        ``make_batched`` if given: it runs on all ODE steps' rows at once, where an int8 kernel
        made for 1-4 rows is slower than the model's dtype); gate and up read the same normed
        input. The per-layer weights are released (they are not kept twice).
        """
        adaln = [layer.adaLN_modulation[1] for layer in self.layers] + [self.final_layer.adaLN_modulation[1]]
        self.modulation = (make_batched or make)(fused_weight(adaln))
        for layer in self.layers:
            layer.adaLN_modulation = None
            ffn = layer.ffn
            layer.ffn = FusedGatedMLP.fuse(ffn.gate_proj, ffn.up_proj, ffn.down_proj, F.silu, make)
        self.final_layer.adaLN_modulation = None
        replace_linears(self, make)
