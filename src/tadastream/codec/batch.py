"""Streaming decode calls of many streams, computed together.

A :class:`~tadastream.codec.streaming.StreamingDecoder` decides *when* a stream decodes and what
goes into the call (:class:`DecodeCall`); :func:`decode_calls` computes any number of such calls
at once over the shared :class:`~tadastream.codec.decoder.Decoder`:

- the transformer over every call's new blocks in one pass (each linear layer reads its weights
  once for all rows; attention stays per stream, against that stream's cached block), its rows
  padded to a multiple of :data:`ROW_BUCKET`;
- the waveform CNN over every call's frames in pieces of power-of-two lengths (at most
  :data:`CNN_PIECE_FRAMES`), the pieces of streams whose CNN states have the same shape stacked
  as one batch.

A stream's pieces and rows depend on its own call alone, never on its neighbours, so a call
computes the same numbers in any company where the kernels give a row the same result at any
batch size. The shapes are a bounded set (row buckets, power-of-two pieces), which keeps
oneDNN's per-shape kernel cache bounded over hours of audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..nn.attention import BlockCache, BlockRun
from .decoder import Decoder

#: Most frames one waveform-CNN piece takes: its activations (up to 96 x 480 samples a frame) are
#: what a decode call's memory is, and larger pieces are not cheaper per frame on a CPU.
CNN_PIECE_FRAMES = 32
#: The transformer's rows are padded to a multiple of this (a bounded set of matmul shapes).
ROW_BUCKET = 16


@dataclass
class DecodeCall:
    """One stream's decode call: its new complete blocks, through the transformer (continuing
    ``cache``), then ``cnn_frames`` frames of decoder states (``backlog`` first, then the new ones)
    through the waveform CNN (continuing ``cnn``); the rest waits as the next call's backlog.
    ``final``: the utterance ends with this call, so the CNN's right-hand padding goes too.

    :func:`decode_calls` updates ``cache``, ``cnn`` (in place) and fills ``audio`` (1, 1, samples)
    and ``backlog_out``.
    """

    blocks: list[torch.Tensor]
    cache: BlockCache
    cnn: list
    backlog: torch.Tensor | None
    cnn_frames: int
    final: bool = False
    audio: torch.Tensor | None = None
    backlog_out: torch.Tensor | None = field(default=None, repr=False)

    @property
    def block_frames(self) -> int:
        return sum(b.shape[0] for b in self.blocks)


def pieces(frames: int, largest: int = CNN_PIECE_FRAMES) -> list[int]:
    """``frames`` cut into pieces of ``largest`` and then powers of two, longest first."""
    out = [largest] * (frames // largest)
    rest = frames % largest
    bit = largest
    while rest:
        bit //= 2
        if rest >= bit:
            out.append(bit)
            rest -= bit
    return out


@torch.no_grad()
def decode_calls(decoder: Decoder, calls: list[DecodeCall]) -> None:
    """Compute every call (see the module docstring); results land in the calls."""
    hidden = _transformer(decoder, calls)
    _waveform(decoder, calls, hidden)


def _transformer(decoder: Decoder, calls: list[DecodeCall]) -> list[torch.Tensor]:
    """Per call, the decoder states (1, C, n) its CNN part reads: the backlog, then the new blocks'."""
    param = decoder.decoder_proj.weight
    runs, frames, start = [], [], 0
    for call in calls:
        if call.blocks:
            run = BlockRun(start, [b.shape[0] for b in call.blocks], call.cache)
            runs.append(run)
            frames.extend(call.blocks)
            start += run.length
    new: list[torch.Tensor | None] = [None] * len(calls)
    if runs:
        rows = -(-start // ROW_BUCKET) * ROW_BUCKET
        x = torch.cat(frames + [param.new_zeros(rows - start, param.shape[1])]).to(param)
        out = decoder.local_attention_decoder.forward_runs(decoder.decoder_proj(x), runs)
        it = iter(runs)
        for i, call in enumerate(calls):
            if call.blocks:
                run = next(it)
                new[i] = out[run.start : run.start + run.length].t().unsqueeze(0)
    states = []
    for call, fresh in zip(calls, new):
        parts = [p for p in (call.backlog, fresh) if p is not None]
        if not parts:
            states.append(param.new_zeros(1, decoder.config.hidden_dim, 0))
        else:
            states.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return states


def _waveform(decoder: Decoder, calls: list[DecodeCall], hidden: list[torch.Tensor]) -> None:
    cnn = decoder.wav_decoder
    plans = []
    for call, states in zip(calls, hidden):
        take = min(call.cnn_frames, states.shape[2])
        call.backlog_out = states[:, :, take:] if take < states.shape[2] else None
        plans.append((pieces(take), states[:, :, :take]))
    outputs: list[list[torch.Tensor]] = [[] for _ in calls]
    offsets = [0] * len(calls)
    for r in range(max((len(p) for p, _ in plans), default=0)):
        groups: dict[tuple, list[int]] = {}
        for i, (lengths, _) in enumerate(plans):
            if r < len(lengths):
                groups.setdefault((lengths[r], cnn.state_signature(calls[i].cnn)), []).append(i)
        for (length, _), members in groups.items():
            x = torch.cat([plans[i][1][:, :, offsets[i] : offsets[i] + length] for i in members])
            if len(members) == 1:
                y = cnn.push(calls[members[0]].cnn, x)
            else:
                stacked = cnn.stack_states([calls[i].cnn for i in members])
                y = cnn.push(stacked, x)
                for i, state in zip(members, cnn.unstack_states(stacked, len(members))):
                    calls[i].cnn[:] = state
            for row, i in enumerate(members):
                outputs[i].append(y[row : row + 1])
                offsets[i] += length
    for call, out, (_, states) in zip(calls, outputs, plans):
        if call.final:
            out.append(cnn.flush(call.cnn, states[:, :, :0]))
        call.audio = torch.cat(out, dim=2) if out else states.new_zeros(1, 1, 0)
