"""Gray-coded durations: exact round trips, reference bit layout, and safe decoding of bad outputs."""

import pytest
import torch

from tadastream.timecode import MAX_BITS, decode_time, encode_time


@pytest.mark.parametrize("num_bits", range(1, 13))
def test_exhaustive_round_trip(num_bits: int) -> None:
    values = torch.arange(2**num_bits)
    bits = encode_time(values, num_bits)
    assert bits.shape == (2**num_bits, num_bits)
    assert bits.dtype == torch.float32
    assert set(bits.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(decode_time(bits, num_bits), values)


@pytest.mark.parametrize("num_bits", range(1, 13))
def test_neighbours_differ_in_one_bit_and_codes_are_unique(num_bits: int) -> None:
    bits = encode_time(torch.arange(2**num_bits), num_bits)
    flips = (bits[1:] != bits[:-1]).sum(dim=-1)
    assert torch.all(flips == 1)
    assert torch.unique(bits, dim=0).shape[0] == 2**num_bits


def test_known_codes_msb_first() -> None:
    # gray(1) = 001, gray(2) = 011, gray(4) = 110, gray(255) = 10000000
    assert encode_time(torch.tensor(1), 3).tolist() == [-1.0, -1.0, 1.0]
    assert encode_time(torch.tensor(2), 3).tolist() == [-1.0, 1.0, 1.0]
    assert encode_time(torch.tensor(4), 3).tolist() == [1.0, 1.0, -1.0]
    assert encode_time(torch.tensor(255), 8).tolist() == [1.0] + [-1.0] * 7


def test_wide_codes_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 2**31, (5000,), generator=gen, dtype=torch.long) * 2 + 1
    values = torch.cat([values, torch.tensor([0, 2**32 - 1])])
    assert torch.equal(decode_time(encode_time(values, MAX_BITS), MAX_BITS), values)


def test_batch_shapes_and_integer_dtypes() -> None:
    frames = torch.arange(24, dtype=torch.int32).reshape(2, 3, 4)
    bits = encode_time(frames, 8)
    assert bits.shape == (2, 3, 4, 8)
    decoded = decode_time(bits, 8)
    assert decoded.dtype == torch.long
    assert torch.equal(decoded, frames.long())
    assert decode_time(torch.empty(0, 8), 8).shape == (0,)


def test_encode_clamps_out_of_range_durations() -> None:
    frames = torch.tensor([-5, -1, 0, 255, 256, 10_000])
    decoded = decode_time(encode_time(frames, 8), 8)
    assert decoded.tolist() == [0, 0, 0, 255, 255, 255]


def test_decode_tolerates_noise_inside_rounding_range() -> None:
    gen = torch.Generator().manual_seed(1)
    values = torch.arange(256)
    bits = encode_time(values, 8)
    noisy = bits * (0.6 + 1.3 * torch.rand(bits.shape, generator=gen))  # magnitudes 0.6 .. 1.9
    assert torch.equal(decode_time(noisy, 8), values)
    assert torch.equal(decode_time(noisy.half(), 8), values)
    assert torch.equal(decode_time(noisy.bfloat16(), 8), values)


def test_decode_ties_follow_round_half_to_even() -> None:
    # (0 + 1) / 2 = 0.5 rounds to 0, as in the reference: an all-zero output decodes to 0.
    assert decode_time(torch.zeros(8), 8).item() == 0
    # -2 gives -0.5 which rounds to 0 as well
    assert decode_time(torch.full((8,), -2.0), 8).item() == 0


def _reference_arithmetic(bits: list[float]) -> int:
    """The reference's decode on Python ints: per-bit round((b+1)/2), shifted sum, XOR chain."""
    n = len(bits)
    gray = sum(round((b + 1) / 2) * (1 << (n - 1 - i)) for i, b in enumerate(bits))
    binary, shift = gray, 1
    while shift < 32:
        binary ^= binary >> shift
        shift <<= 1
    return binary


def test_decode_follows_reference_arithmetic_then_clamps() -> None:
    # Slightly out-of-range bits (a flow sampler's output) decode as the reference does when
    # that lands in range: such values feed the next LLM step, so parity depends on it.
    row = [-2.058, -2.028, 0.662, -0.364]
    expected = _reference_arithmetic(row)
    assert 0 <= expected <= 15
    assert decode_time(torch.tensor(row), 4).item() == expected
    gen = torch.Generator().manual_seed(2)
    wild = torch.randn(10_000, 8, generator=gen) * 50
    wild[0] = torch.tensor([5.0, -7.0, 100.0, float("nan"), float("inf"), -float("inf"), 2.0, 3.0])
    decoded = decode_time(wild, 8)
    assert int(decoded.min()) >= 0 and int(decoded.max()) <= 255
    for row in wild[1:200]:
        ref = _reference_arithmetic(row.tolist())
        assert decode_time(row, 8).item() == min(max(ref, 0), 255)
    assert decode_time(torch.full((8,), float("nan")), 8).item() == 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_bits"):
        encode_time(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="num_bits"):
        decode_time(torch.zeros(33), 33)
    with pytest.raises(TypeError, match="integer"):
        encode_time(torch.tensor([1.0]), 8)
    with pytest.raises(ValueError, match="last dimension"):
        decode_time(torch.zeros(4, 7), 8)
