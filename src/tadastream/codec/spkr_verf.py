"""Speaker embedding of acoustic vectors, for ranking candidate generations by voice similarity.

A small MLP maps a 512-d token vector to a 192-d L2-normalised embedding, so the dot product of
two embeddings is their cosine similarity. Only the ``spkr_verification`` candidate scorer uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AcousticSpkrVerfConfig
from ..hub import PretrainedModule

__all__ = ["AcousticSpkrVerf"]


class AcousticSpkrVerf(PretrainedModule):
    """``net``: Linear, LayerNorm, GELU, (dropout slot) per hidden layer, then a final Linear.

    The dropout slots are ``Identity`` so the checkpoint's indices (net.0, net.1, net.4, ...) fit.
    """

    config_class = AcousticSpkrVerfConfig
    default_subfolder = "spkr-verf"

    def __init__(self, config: AcousticSpkrVerfConfig | None = None):
        super().__init__()
        self.config = config = config or AcousticSpkrVerfConfig()
        if config.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {config.num_layers}")
        layers: list[nn.Module] = []
        width = config.input_dim
        for _ in range(config.num_layers - 1):
            layers += [nn.Linear(width, config.hidden_dim), nn.LayerNorm(config.hidden_dim), nn.GELU(), nn.Identity()]
            width = config.hidden_dim
        layers.append(nn.Linear(width, config.embed_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) acoustic vectors -> (..., embed_dim) unit-length embeddings."""
        param = self.net[0].weight
        return F.normalize(self.net(x.to(param.dtype)), dim=-1)

    @staticmethod
    def similarity(emb1: torch.Tensor, emb2: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of unit embeddings (1-D inputs count as a batch of one)."""
        if emb1.dim() == 1:
            emb1 = emb1.unsqueeze(0)
        if emb2.dim() == 1:
            emb2 = emb2.unsqueeze(0)
        return (emb1 * emb2).sum(dim=-1)
