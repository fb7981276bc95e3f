"""The codec's waveform CNN, written as stateful streaming layers.

Every layer exposes ``init`` (its per-stream state), ``push`` (new input samples in, the output
samples they finalise out) and ``flush`` (end of input: the right-hand padding). The one-pass
decode is simply ``push(all) + flush()``, so streaming and one-pass run the same arithmetic.
State lives in plain objects owned by the caller, never on the modules, so one loaded decoder
serves any number of concurrent streams.

What a state holds is bounded by the kernels: a convolution keeps its last
``dilation * (kernel - 1)`` input samples, a transposed convolution one input frame, a residual
unit the inputs still waiting for its branch (``3 * dilation`` samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn.conv import Snake, WNConv1d, WNConvTranspose1d


def _empty_like(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], channels, 0)


@dataclass
class ConvState:
    buffer: torch.Tensor | None = None


@dataclass
class TransposeState:
    prev: torch.Tensor | None = None
    to_crop: int = 0


@dataclass
class ResidualState:
    pending: torch.Tensor | None = None
    branch: list = field(default_factory=list)


def conv_push(conv: WNConv1d, state: ConvState, x: torch.Tensor) -> torch.Tensor:
    if state.buffer is None:  # left edge: the layer's own zero padding
        state.buffer = x.new_zeros(x.shape[0], conv.in_channels, conv.padding)
    buf = torch.cat((state.buffer, x), dim=2) if x.shape[2] else state.buffer
    if buf.shape[2] <= conv.receptive:
        state.buffer = buf
        return _empty_like(x, conv.out_channels)
    state.buffer = buf[:, :, buf.shape[2] - conv.receptive :]
    return conv.forward_unpadded(buf)


def conv_flush(conv: WNConv1d, state: ConvState, like: torch.Tensor) -> torch.Tensor:
    pad = like.new_zeros(like.shape[0], conv.in_channels, conv.padding)
    return conv_push(conv, state, pad)


def transpose_push(conv: WNConvTranspose1d, state: TransposeState, x: torch.Tensor) -> torch.Tensor:
    if state.prev is None:  # the frame before the first one is zero
        state.prev = x.new_zeros(x.shape[0], conv.in_channels, 1)
        state.to_crop = conv.padding
    if not x.shape[2]:
        return _empty_like(x, conv.out_channels)
    y = conv.forward_frames(torch.cat((state.prev, x), dim=2))
    state.prev = x[:, :, -1:]
    if state.to_crop:
        cut = min(state.to_crop, y.shape[2])
        y, state.to_crop = y[:, :, cut:], state.to_crop - cut
    return y


def transpose_flush(conv: WNConvTranspose1d, state: TransposeState, like: torch.Tensor) -> torch.Tensor:
    if state.prev is None:
        return _empty_like(like, conv.out_channels)
    tail = transpose_push(conv, state, like.new_zeros(like.shape[0], conv.in_channels, 1))
    return tail[:, :, : tail.shape[2] - conv.padding]


class ResidualUnit(nn.Module):
    """Snake, dilated conv k7, Snake, conv k1, plus the input (keys ``block.0..3``)."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(dim),
            WNConv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Snake(dim),
            WNConv1d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pass over a whole signal (the encoder's use)."""
        return x + self.block(x)

    def init(self) -> ResidualState:
        return ResidualState(branch=[ConvState(), ConvState()])

    def _join(self, state: ResidualState, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        if x is None:
            pending = state.pending
        else:
            pending = x if state.pending is None else torch.cat((state.pending, x), dim=2)
        n = y.shape[2]
        state.pending = pending[:, :, n:]
        return pending[:, :, :n] + y

    def push(self, state: ResidualState, x: torch.Tensor) -> torch.Tensor:
        snake1, conv1, snake2, conv2 = self.block
        y = conv_push(conv1, state.branch[0], snake1(x))
        y = conv_push(conv2, state.branch[1], snake2(y))
        return self._join(state, x, y)

    def flush(self, state: ResidualState, like: torch.Tensor) -> torch.Tensor:
        snake1, conv1, snake2, conv2 = self.block
        y = conv_flush(conv1, state.branch[0], like)
        y = conv_push(conv2, state.branch[1], snake2(y))
        y = torch.cat((y, conv_flush(conv2, state.branch[1], like)), dim=2)
        return self._join(state, None, y)


class DecoderBlock(nn.Module):
    """Snake, upsampling transposed conv, three dilated residual units (keys ``block.N``)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(in_dim),
            WNConvTranspose1d(in_dim, out_dim, stride),
            ResidualUnit(out_dim, 1),
            ResidualUnit(out_dim, 3),
            ResidualUnit(out_dim, 9),
        )


class WaveDecoder(nn.Module):
    """Frames (B, hidden, T) -> waveform (B, 1, 480 T - 6) for strides (4, 4, 5, 6)."""

    def __init__(self, in_channels: int, channels: int, strides: list[int]):
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(in_channels, channels, 7, padding=3)]
        dim = channels
        for stride in strides:
            layers.append(DecoderBlock(dim, dim // 2, stride))
            dim //= 2
        layers += [Snake(dim), WNConv1d(dim, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self._ops = self._flatten()

    def _flatten(self) -> list[nn.Module]:
        ops: list[nn.Module] = [self.model[0]]
        for block in list(self.model)[1:-3]:
            ops.extend(block.block)
        ops.extend(list(self.model)[-3:])
        return ops

    def init_state(self) -> list:
        states = []
        for op in self._ops:
            if isinstance(op, WNConv1d):
                states.append(ConvState())
            elif isinstance(op, WNConvTranspose1d):
                states.append(TransposeState())
            elif isinstance(op, ResidualUnit):
                states.append(op.init())
            else:
                states.append(None)
        return states

    @staticmethod
    def _push_op(op: nn.Module, state, x: torch.Tensor) -> torch.Tensor:
        if isinstance(op, WNConv1d):
            return conv_push(op, state, x)
        if isinstance(op, WNConvTranspose1d):
            return transpose_push(op, state, x)
        if isinstance(op, ResidualUnit):
            return op.push(state, x)
        return op(x)

    @staticmethod
    def _finish_op(op: nn.Module, state, like: torch.Tensor) -> torch.Tensor:
        if isinstance(op, WNConv1d):
            return conv_flush(op, state, like)
        if isinstance(op, WNConvTranspose1d):
            return transpose_flush(op, state, like)
        if isinstance(op, ResidualUnit):
            return op.flush(state, like)
        return like[:, :, :0]

    def frames_before_output(self, samples: int = 0) -> int:
        """Input frames the streaming layers need before more than ``samples`` output samples are
        final (the CNN's right-hand look-ahead, plus what covers ``samples``); by lengths alone."""
        held = [None] * len(self._ops)  # per conv: buffered samples; per transpose: cropping left
        out_total, frames = 0, 0
        while out_total <= samples:
            frames += 1
            n = 1
            for i, op in enumerate(self._ops):
                n = self._length_after(op, held, i, n)
            out_total += n
        return frames

    @staticmethod
    def _conv_length(conv: WNConv1d, held: list, key, n: int) -> int:
        buf = (conv.padding if held[key] is None else held[key]) + n
        held[key] = min(buf, conv.receptive)
        return max(0, buf - conv.receptive)

    def _length_after(self, op: nn.Module, held: list, i: int, n: int) -> int:
        if isinstance(op, WNConv1d):
            return self._conv_length(op, held, i, n)
        if isinstance(op, WNConvTranspose1d):
            crop = op.padding if held[i] is None else held[i]
            out = n * op.stride
            cut = min(crop, out)
            held[i] = crop - cut
            return out - cut
        if isinstance(op, ResidualUnit):
            if held[i] is None:
                held[i] = [None, None]
            n = self._conv_length(op.block[1], held[i], 0, n)
            return self._conv_length(op.block[3], held[i], 1, n)
        return n

    @staticmethod
    def state_signature(states: list) -> tuple:
        """What a state's tensor shapes are, by lengths: streams with equal signatures (and equal
        input lengths) can be pushed as one batch."""
        key: list = []
        for state in states:
            if isinstance(state, ConvState):
                key.append(-1 if state.buffer is None else state.buffer.shape[2])
            elif isinstance(state, TransposeState):
                key.append((state.prev is None, state.to_crop))
            elif isinstance(state, ResidualState):
                pending = -1 if state.pending is None else state.pending.shape[2]
                key.append((pending, *(-1 if b.buffer is None else b.buffer.shape[2] for b in state.branch)))
        return tuple(key)

    @staticmethod
    def stack_states(group: list[list]) -> list:
        """Several streams' states (equal signatures) as one batched state, rows in ``group`` order."""
        def cat(tensors):
            return None if tensors[0] is None else torch.cat(tensors, dim=0)

        stacked: list = []
        for parts in zip(*group):
            first = parts[0]
            if isinstance(first, ConvState):
                stacked.append(ConvState(cat([p.buffer for p in parts])))
            elif isinstance(first, TransposeState):
                stacked.append(TransposeState(cat([p.prev for p in parts]), first.to_crop))
            elif isinstance(first, ResidualState):
                branch = [ConvState(cat([p.branch[i].buffer for p in parts])) for i in range(len(first.branch))]
                stacked.append(ResidualState(cat([p.pending for p in parts]), branch))
            else:
                stacked.append(None)
        return stacked

    @staticmethod
    def unstack_states(stacked: list, rows: int) -> list[list]:
        """The inverse of :meth:`stack_states`: one state per row, each owning its (small) tensors."""
        def row(t, i):
            return None if t is None else t[i : i + 1].clone()

        out: list[list] = [[] for _ in range(rows)]
        for state in stacked:
            for i in range(rows):
                if isinstance(state, ConvState):
                    out[i].append(ConvState(row(state.buffer, i)))
                elif isinstance(state, TransposeState):
                    out[i].append(TransposeState(row(state.prev, i), state.to_crop))
                elif isinstance(state, ResidualState):
                    branch = [ConvState(row(b.buffer, i)) for b in state.branch]
                    out[i].append(ResidualState(row(state.pending, i), branch))
                else:
                    out[i].append(None)
        return out

    def push(self, states: list, x: torch.Tensor) -> torch.Tensor:
        for op, state in zip(self._ops, states):
            x = self._push_op(op, state, x)
        return x

    def flush(self, states: list, like: torch.Tensor) -> torch.Tensor:
        """Emit what the right-hand padding releases; ``like`` gives batch, dtype and device."""
        out: torch.Tensor | None = None
        for op, state in zip(self._ops, states):
            out = self._push_op(op, state, out) if out is not None else None
            tail = self._finish_op(op, state, like)
            if tail.shape[2]:
                out = tail if out is None else torch.cat((out, tail), dim=2)
        return out if out is not None else like.new_zeros(like.shape[0], 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = self.init_state()
        head = self.push(states, x)
        return torch.cat((head, self.flush(states, x)), dim=2)
