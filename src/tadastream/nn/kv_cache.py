"""Key/value caches for the LLM, one per stream slot, reused across streams.

A stream holds one :class:`SlotCache`: its rows (the spoken row, and the guidance and text-only
rows when its options need them) share positions, so one tensor per kind holds every layer:
``(layers, rows, kv_heads, capacity, head_dim)``. Positions are written by index, so a step is a
fixed-shape write plus a view of the filled part; capacity grows in whole blocks, and only when
a stream outgrows its slot (a slot keeps its buffer for the next stream).

:class:`SlotPool` bounds how many slots exist (``max_slots``) and hands them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Capacity grows in blocks of this many positions (and at least doubles), so a growing stream
#: reallocates O(log n) times.
BLOCK_POSITIONS = 256


@dataclass(frozen=True)
class CacheSpec:
    """The LLM shape a cache is built for."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def for_config(cls, config, dtype: torch.dtype, device: torch.device) -> CacheSpec:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.num_key_value_heads, head_dim, dtype, torch.device(device))

    def bytes_per_position(self, rows: int) -> int:
        return 2 * self.layers * rows * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


def _round_up(n: int, block: int = BLOCK_POSITIONS) -> int:
    return max(block, -(-n // block) * block)


class SlotCache:
    """Keys and values of one stream's rows, positions ``[0, length)`` filled."""

    def __init__(self, spec: CacheSpec, rows: int, capacity: int, index: int = 0):
        self.spec = spec
        self.index = index
        self.rows = rows
        self.length = 0
        shape = (spec.layers, rows, spec.kv_heads, _round_up(capacity), spec.head_dim)
        self.keys = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        self.values = torch.zeros_like(self.keys)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def fits(self, rows: int, positions: int) -> bool:
        return rows <= self.rows and positions <= self.capacity

    def reserve(self, positions: int) -> None:
        """Make room for ``positions`` positions, keeping what is filled."""
        if positions <= self.capacity:
            return
        grown = _round_up(max(positions, 2 * self.capacity))
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:3] + (grown, old.shape[4]))
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)

    def reset(self) -> None:
        """Start over at position 0 (a second pass, or the next stream); the buffer is kept."""
        self.length = 0

    def write(self, layer: int, rows: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``(rows, kv_heads, T, head_dim)`` keys and values at positions ``start..start+T``."""
        end = start + keys.shape[2]
        self.keys[layer, :rows, :, start:end] = keys
        self.values[layer, :rows, :, start:end] = values

    def view(self, layer: int, rows: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions ``[0, end)`` for the first ``rows`` rows (views, no copy)."""
        return self.keys[layer, :rows, :, :end], self.values[layer, :rows, :, :end]

    def copy_row(self, source: int, target: int, start: int, end: int) -> None:
        """Every layer's positions ``[start, end)`` of row ``source`` into row ``target``."""
        self.keys[:, target, :, start:end] = self.keys[:, source, :, start:end]
        self.values[:, target, :, start:end] = self.values[:, source, :, start:end]


class SlotPool:
    """At most ``max_slots`` slot caches; released slots keep their buffers for the next stream."""

    def __init__(self, spec: CacheSpec, max_slots: int):
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.spec = spec
        self.max_slots = max_slots
        self._free: list[SlotCache] = []
        self._used: dict[int, SlotCache] = {}
        self._next_index = 0

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return self.max_slots - len(self._used)

    @property
    def nbytes(self) -> int:
        """Bytes held by slot buffers, in use or kept for reuse."""
        return sum(s.nbytes for s in self._free) + sum(s.nbytes for s in self._used.values())

    def acquire(self, rows: int, positions: int) -> SlotCache:
        """A slot with ``rows`` rows and room for ``positions`` positions; raises when none is free."""
        if not self.available:
            raise RuntimeError(f"all {self.max_slots} slots are in use")
        fitting = [s for s in self._free if s.fits(rows, positions)]
        if fitting:
            slot = min(fitting, key=lambda s: s.nbytes)
            self._free.remove(slot)
        elif len(self._free) + len(self._used) >= self.max_slots:
            # Every slot exists already: replace the smallest free buffer by one that fits.
            smallest = min(self._free, key=lambda s: s.nbytes)
            self._free.remove(smallest)
            slot = SlotCache(self.spec, max(rows, smallest.rows), max(positions, smallest.capacity), smallest.index)
        else:
            slot = SlotCache(self.spec, rows, positions, self._next_index)
            self._next_index += 1
        slot.reset()
        self._used[slot.index] = slot
        return slot

    def release(self, slot: SlotCache) -> None:
        if self._used.pop(slot.index, None) is None:
            return
        slot.reset()
        self._free.append(slot)

    def trim(self) -> int:
        """Drop the buffers of free slots (memory back to the allocator); returns the bytes freed."""
        freed = sum(s.nbytes for s in self._free)
        self._free.clear()
        return freed
