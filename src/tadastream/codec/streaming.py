"""Incremental decoding: frames in as the LLM produces them, final audio samples out.

Exactness comes from structure rather than from overlapping windows:
- the decoder transformer's mask lets a frame see only its own block and the previous one, so
  each block is computed once, when its closing (marked) frame arrives, against the cached
  keys/values of the previous block;
- the waveform CNN carries each layer's few samples of context (``codec/wave.py``), so every
  output sample is computed once, as soon as the right-hand context it needs exists.
The concatenated output therefore equals the one-pass decode up to float rounding, and the
work done is the one-pass work plus a small per-call overhead.
"""

from __future__ import annotations

import torch

from ..nn.attention import BlockCache
from .decoder import Decoder


class StreamingDecoder:
    """Per-stream decoding state over a shared :class:`Decoder`.

    Args:
        decoder: the loaded codec decoder (shared, never modified).
        window_size: the most frames pushed through the waveform CNN in one call. It bounds peak
            activation memory; it does not change the audio. The state carried between calls
            is a fixed few frames per layer whatever the utterance length.
        skip_leading_frames: frames of output audio to drop at the start (leading silence).
    """

    def __init__(self, decoder: Decoder, window_size: int = 100, skip_leading_frames: int = 0):
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1 frame, got {window_size}")
        self.decoder = decoder
        self.window_size = int(window_size)
        self.skip_leading_frames = int(skip_leading_frames)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the decoder can start a new utterance."""
        self._pending: list[torch.Tensor] = []
        self._cache = BlockCache()
        self._cnn = self.decoder.wav_decoder.init_state()
        self._to_skip = self.skip_leading_frames * self.decoder.samples_per_frame
        self._like: torch.Tensor | None = None
        self.frames_in = 0
        self.samples_out = 0
        self.finished = False

    def set_skip_leading_frames(self, frames: int) -> None:
        """Change the leading skip before any audio has been produced."""
        if (
            self.samples_out
            or self._like is not None
            and self._to_skip != self.skip_leading_frames * self.decoder.samples_per_frame
        ):
            raise RuntimeError("the leading skip can only be set before audio is produced")
        self.skip_leading_frames = int(frames)
        self._to_skip = self.skip_leading_frames * self.decoder.samples_per_frame

    @property
    def _param(self) -> torch.Tensor:
        return self.decoder.decoder_proj.weight

    def push_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Add decoder input frames (T, embed); returns the newly final samples (1-D)."""
        if self.finished:
            raise RuntimeError("this stream was flushed; call reset() to start a new one")
        frames = frames.reshape(-1, frames.shape[-1]).to(self._param)
        marks = (torch.linalg.vector_norm(frames.float(), dim=-1) != 0).tolist()
        self.frames_in += frames.shape[0]
        out = []
        start = 0
        for i, marked in enumerate(marks):
            if marked:
                self._pending.append(frames[start : i + 1])
                out.append(self._run_block())
                start = i + 1
        if start < frames.shape[0]:
            self._pending.append(frames[start:])
        return self._emit(out)

    def decode_block(self, acoustic: torch.Tensor, time_before: int) -> torch.Tensor:
        """One token: ``time_before - 1`` silent frames, then its (denormalised) vector."""
        vector = acoustic.reshape(1, -1).to(self._param)
        gap = vector.new_zeros(max(int(time_before) - 1, 0), vector.shape[1])
        return self.push_frames(torch.cat((gap, vector), dim=0))

    def flush(self, trailing_frames: int = 0) -> torch.Tensor:
        """End of the utterance: ``trailing_frames`` silent frames, then all remaining samples."""
        if self.finished:
            raise RuntimeError("this stream was already flushed; call reset() to start a new one")
        if trailing_frames:
            self._pending.append(self._param.new_zeros(int(trailing_frames), self._param.shape[1]))
            self.frames_in += int(trailing_frames)
        out = [self._run_block()] if self._pending else []
        self.finished = True
        if self._like is None:  # nothing was ever decoded
            return self._param.new_zeros(0)
        with torch.no_grad():
            out.append(self.decoder.wav_decoder.flush(self._cnn, self._like))
        return self._emit(out)

    @torch.no_grad()
    def _run_block(self) -> torch.Tensor:
        block = torch.cat(self._pending, dim=0).unsqueeze(0)
        self._pending = []
        hidden = self.decoder.local_attention_decoder.forward_block(self.decoder.decoder_proj(block), self._cache)
        hidden = hidden.transpose(1, 2)
        if self._like is None:
            self._like = hidden[:, :, :0]
        pieces = [
            self.decoder.wav_decoder.step(self._cnn, hidden[:, :, i : i + self.window_size])
            for i in range(0, hidden.shape[2], self.window_size)
        ]
        return torch.cat(pieces, dim=2)

    def _emit(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        if not pieces:
            return self._param.new_zeros(0)
        audio = torch.cat(pieces, dim=2).reshape(-1)
        if self._to_skip:
            cut = min(self._to_skip, audio.shape[0])
            audio, self._to_skip = audio[cut:], self._to_skip - cut
        self.samples_out += audio.shape[0]
        return audio
