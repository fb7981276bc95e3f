"""The codec decoder: acoustic frames -> 24 kHz waveform."""

from __future__ import annotations

import torch
from torch import nn

from ..config import DecoderConfig
from ..hub import PretrainedModule
from ..nn.attention import LocalAttentionStack, decoder_attention_mask
from .wave import WaveDecoder

# Stored in the published files, recomputed here on the fly.
CODEC_IGNORED_KEYS = (r".*\.rope_freqs", r".*\._precomputed_mask")


def frame_marks(frames: torch.Tensor) -> torch.Tensor:
    """A frame is "marked" (carries a token's vector) where it is non-zero."""
    return (torch.linalg.vector_norm(frames.float(), dim=-1) != 0).long()


def expand_tokens(vectors: torch.Tensor, time_before: torch.Tensor) -> torch.Tensor:
    """Decoder input for one utterance: per token ``time_before - 1`` zero frames then its vector,
    then ``time_before[-1]`` trailing zero frames. ``time_before`` has one more entry than ``vectors``.
    """
    counts = time_before.tolist()
    pieces = []
    for vector, before in zip(vectors, counts):
        pieces.append(vectors.new_zeros(max(int(before) - 1, 0), vectors.shape[-1]))
        pieces.append(vector.unsqueeze(0))
    pieces.append(vectors.new_zeros(max(int(counts[len(vectors)]), 0), vectors.shape[-1]))
    return torch.cat(pieces, dim=0)


class Decoder(PretrainedModule):
    config_class = DecoderConfig
    default_subfolder = "decoder"
    ignore_keys = CODEC_IGNORED_KEYS

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        self.config = config = config or DecoderConfig()
        self.decoder_proj = nn.Linear(config.embed_dim, config.hidden_dim)
        self.local_attention_decoder = LocalAttentionStack(
            config.hidden_dim, config.num_attn_layers, config.num_attn_heads, config.attn_dim_feedforward
        )
        self.wav_decoder = WaveDecoder(config.hidden_dim, config.wav_decoder_channels, config.strides)

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    def hidden(self, encoded_expanded: torch.Tensor, token_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer output (B, T, hidden) for decoder frames (B, T, embed)."""
        if token_masks is None:
            token_masks = frame_marks(encoded_expanded)
        x = self.decoder_proj(encoded_expanded)
        return self.local_attention_decoder(x, decoder_attention_mask(token_masks))

    @torch.no_grad()
    def forward(self, encoded_expanded: torch.Tensor, token_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Waveform (B, 1, samples) for frames (B, T, embed)."""
        return self.wav_decoder(self.hidden(encoded_expanded, token_masks).transpose(1, 2))

    def generate(self, encoded_expanded: torch.Tensor, token_masks: torch.Tensor | None = None, **_):
        return self.forward(encoded_expanded, token_masks)
