"""Key/value caches for the LLM, one per stream slot, reused across streams.

A stream holds one :class:`SlotCache`: its rows (the spoken row, and the guidance and text-only
rows when its options need them) share positions, so one tensor per layer and kind holds them:
``(rows, kv_heads, capacity, head_dim)``. Positions are written by index, so a step is a
fixed-shape write plus a view of the filled part; capacity grows in whole blocks, and only when
a stream outgrows its slot (a slot keeps its buffer for the next stream).

:class:`SlotPool` bounds how many slots exist (``max_slots``) and hands them out. A *static*
pool (``static_positions``) instead preallocates one arena for every slot, per layer ``(slots *
rows_per_slot, kv_heads, static_positions + 1, head_dim)``, and its slots are views of it: the
addresses and shapes never change, which is what a captured CUDA graph or a compiled step over all
slots at once needs. Its last position is scratch that rows without work write to (never read).
(One tensor per layer, not one for all: a compiled step writes each in place, where a write to a
view of a larger input would make the compiler copy the whole cache every step.)
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


def _layers(spec: CacheSpec, rows: int, positions: int) -> list[torch.Tensor]:
    shape = (rows, spec.kv_heads, positions, spec.head_dim)
    return [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.layers)]


def _nbytes(layers: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in layers)


class CacheFullError(ValueError):
    """A stream needs more positions than its static slot holds."""


class SlotCache:
    """Keys and values of one stream's rows, positions ``[0, length)`` filled."""

    def __init__(self, spec: CacheSpec, rows: int, capacity: int, index: int = 0):
        self.spec = spec
        self.index = index
        self.rows = rows
        self.length = 0
        self.first_row: int | None = None  # in a static pool's arena
        self.keys = _layers(spec, rows, _round_up(capacity))
        self.values = _layers(spec, rows, _round_up(capacity))

    @classmethod
    def in_arena(
        cls,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        spec: CacheSpec,
        index: int,
        first_row: int,
        rows: int,
    ):
        """A slot that is rows ``first_row ..`` of an arena: fixed capacity (the last position is the
        arena's scratch), no allocation."""
        slot = cls.__new__(cls)
        slot.spec, slot.index, slot.rows, slot.length, slot.first_row = spec, index, rows, 0, first_row
        slot.keys = [k[first_row : first_row + rows] for k in keys]
        slot.values = [v[first_row : first_row + rows] for v in values]
        return slot

    @property
    def static(self) -> bool:
        return self.first_row is not None

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] - (1 if self.static else 0)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.keys) + _nbytes(self.values)

    def fits(self, rows: int, positions: int) -> bool:
        return rows <= self.rows and positions <= self.capacity

    def reserve(self, positions: int) -> None:
        """Make room for ``positions`` positions, keeping what is filled."""
        if positions <= self.capacity:
            return
        if self.static:
            raise CacheFullError(
                f"this stream needs {positions} positions but the compiled engine's slots hold "
                f"{self.capacity}: compile with a larger max_positions (--max-positions)"
            )
        grown = _round_up(max(positions, 2 * self.capacity))
        for layers in (self.keys, self.values):
            for i, old in enumerate(layers):
                new = old.new_zeros(old.shape[:2] + (grown, old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                layers[i] = new

    def reset(self) -> None:
        """Start over at position 0 (a second pass, or the next stream); the buffer is kept."""
        self.length = 0

    def write(self, layer: int, rows: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``(rows, kv_heads, T, head_dim)`` keys and values at positions ``start..start+T``."""
        end = start + keys.shape[2]
        self.keys[layer][:rows, :, start:end] = keys
        self.values[layer][:rows, :, start:end] = values

    def view(self, layer: int, rows: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions ``[0, end)`` for the first ``rows`` rows (views, no copy)."""
        return self.keys[layer][:rows, :, :end], self.values[layer][:rows, :, :end]

    def copy_row(self, source: int, target: int, start: int, end: int) -> None:
        """Every layer's positions ``[start, end)`` of row ``source`` into row ``target``."""
        for layer in self.keys + self.values:
            layer[target, :, start:end] = layer[source, :, start:end]


#: Rows a slot of a static pool has: the spoken row, a text-only row and a guidance row at most.
ROWS_PER_SLOT = 3


class SlotPool:
    """At most ``max_slots`` slot caches; released slots keep their buffers for the next stream.

    With ``static_positions``, every slot is a fixed view of one preallocated arena (see the module
    docstring) and a stream gets the lowest free slot, so busy rows stay packed at the front.
    """

    def __init__(
        self, spec: CacheSpec, max_slots: int, static_positions: int | None = None, arena_rows: int | None = None
    ):
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.spec = spec
        self.max_slots = max_slots
        self._free: list[SlotCache] = []
        self._used: dict[int, SlotCache] = {}
        self._next_index = 0
        self.arena: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # per layer
        if static_positions is not None:
            if static_positions < 1:
                raise ValueError(f"static_positions must be at least 1, got {static_positions}")
            rows = max(arena_rows or 0, max_slots * ROWS_PER_SLOT)  # rows past the slots' are scratch
            self.arena = (_layers(spec, rows, static_positions + 1), _layers(spec, rows, static_positions + 1))
            self._free = [
                SlotCache.in_arena(*self.arena, spec, i, i * ROWS_PER_SLOT, ROWS_PER_SLOT) for i in range(max_slots)
            ]
            self._next_index = max_slots

    @property
    def static(self) -> bool:
        return self.arena is not None

    @property
    def capacity(self) -> int:
        """Positions a static pool's slots hold (0 for a growing pool: no fixed bound)."""
        return self.arena[0][0].shape[2] - 1 if self.arena is not None else 0

    @property
    def arena_rows(self) -> int:
        """Arena rows up to the last one a slot in use holds (0 when none is used)."""
        return max((s.first_row + ROWS_PER_SLOT for s in self._used.values()), default=0)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return self.max_slots - len(self._used)

    @property
    def nbytes(self) -> int:
        """Bytes held by slot buffers, in use or kept for reuse."""
        if self.arena is not None:
            return _nbytes(self.arena[0]) + _nbytes(self.arena[1])
        return sum(s.nbytes for s in self._free) + sum(s.nbytes for s in self._used.values())

    def acquire(self, rows: int, positions: int) -> SlotCache:
        """A slot with ``rows`` rows and room for ``positions`` positions; raises when none is free."""
        if not self.available:
            raise RuntimeError(f"all {self.max_slots} slots are in use")
        if self.static:
            if rows > ROWS_PER_SLOT:
                raise ValueError(f"a static slot has {ROWS_PER_SLOT} rows, {rows} asked")
            slot = min(self._free, key=lambda s: s.index)
            self._free.remove(slot)
            slot.reset()
            self._used[slot.index] = slot
            return slot
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
        """Drop the buffers of free slots (memory back to the allocator); returns the bytes freed.
        A static pool keeps its arena (that is its point)."""
        if self.static:
            return 0
        freed = sum(s.nbytes for s in self._free)
        self._free.clear()
        return freed
