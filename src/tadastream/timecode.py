"""Gray-coded token durations.

TADA's flow-matching head predicts each token's durations (in 50 Hz codec frames) as
``num_bits`` continuous values that are read as the bits of a Gray code, most significant bit
first, with -1 for 0 and +1 for 1. Gray coding makes neighbouring durations differ in a single
bit, so a small error in the head's output moves the duration by a small amount.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_BITS", "decode_time", "encode_time"]

#: Largest supported code width. The reference converts Gray to binary with shifts up to 16,
#: which is exact only below 2**32; wider codes are never used by TADA (8 bits).
MAX_BITS = 32


def _check_bits(num_bits: int) -> None:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 1 <= num_bits <= MAX_BITS:
        raise ValueError(f"num_bits must be an integer in [1, {MAX_BITS}], got {num_bits!r}")


def _weights(num_bits: int, device: torch.device) -> torch.Tensor:
    """Bit shifts from the most significant bit down to bit 0."""
    return torch.arange(num_bits - 1, -1, -1, dtype=torch.long, device=device)


def encode_time(frames: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Durations ``frames`` (integers, any shape) to Gray-code bits of shape ``(..., num_bits)``.

    Values are clamped to ``[0, 2**num_bits - 1]`` first, so a duration the code cannot hold
    saturates instead of wrapping. Returns float32 values in {-1, +1}, MSB first.
    """
    _check_bits(num_bits)
    if frames.is_floating_point() or frames.is_complex():
        raise TypeError(f"frames must be an integer tensor, got {frames.dtype}")
    value = frames.to(torch.long).clamp(0, 2**num_bits - 1)
    gray = value ^ (value >> 1)
    bits = (gray.unsqueeze(-1) >> _weights(num_bits, value.device)) & 1
    return bits.to(torch.float32) * 2.0 - 1.0


def decode_time(bits: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Gray-code bits ``(..., num_bits)`` (ideally +-1, MSB first) back to durations ``(...)``.

    The integer arithmetic is the reference's (``round((b + 1) / 2)`` per bit, Gray to binary by
    shifted XORs), so every value it produces in range is reproduced, including those from
    slightly out-of-range bits, which feed back into the next LLM step. Only the final value is
    clamped to ``[0, 2**num_bits - 1]`` (the reference then indexes out of range); NaN reads as 0.
    Returns int64.
    """
    _check_bits(num_bits)
    if bits.shape[-1:] != (num_bits,):
        raise ValueError(f"expected a last dimension of {num_bits} bits, got shape {tuple(bits.shape)}")
    if not bits.is_floating_point():
        bits = bits.to(torch.float32)
    rounded = ((bits.float().nan_to_num(0.0).clamp(-1e6, 1e6) + 1.0) / 2.0).round().to(torch.long)
    gray = (rounded * (1 << _weights(num_bits, bits.device))).sum(dim=-1)
    binary, shift = gray, 1
    while shift < 32:
        binary = binary ^ (binary >> shift)
        shift <<= 1
    return binary.clamp(0, (1 << num_bits) - 1)
