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
batch size. On a CPU that is measured once per decoder (:func:`batch_invariance`: oneDNN's
float32 convolutions with few channels, and MKL's matmuls past 128 rows on some CPUs, round a row
differently in a batch): a part that would change a stream's audio runs stream by stream there.
On CUDA every part is batched, and a stream's audio may differ from its solo decode by float
rounding. The shapes are a bounded set (row buckets, power-of-two pieces), which keeps oneDNN's
per-shape kernel cache bounded over hours of audio.
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
#: Most rows one transformer pass takes: row invariance is measured up to here.
MAX_ROWS = 1024


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
    rows_batch, cnn_batch = batch_invariance(decoder) if len(calls) > 1 else (True, True)
    groups: list[list[DecodeCall]] = []
    rows = 0
    for call in calls:  # one pass per group of calls (one call each, where rows are not invariant)
        if not groups or not rows_batch or rows + call.block_frames > MAX_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(call)
        rows += call.block_frames
    hidden = [state for group in groups for state in _transformer(decoder, group)]
    _waveform(decoder, calls, hidden, stack=cnn_batch)


@torch.no_grad()
def batch_invariance(decoder: Decoder) -> tuple[bool, bool]:
    """Whether the transformer's rows and the CNN's stacked streams compute the same numbers as
    alone, in the decoder's dtype on its device: measured once on a CPU, assumed on CUDA."""
    param = decoder.decoder_proj.weight
    key = (param.device, param.dtype)
    known = getattr(decoder, "_batch_invariance", {})
    if key not in known:
        if param.device.type == "cuda":
            known[key] = (True, True)
        else:
            known[key] = (_rows_invariant(decoder), _stacking_invariant(decoder))
        decoder._batch_invariance = known
    return known[key]


def _rows_invariant(decoder: Decoder) -> bool:
    param = decoder.decoder_proj.weight
    g = torch.Generator(device="cpu").manual_seed(0)
    layer = decoder.local_attention_decoder.layers[0]
    linears = [decoder.decoder_proj, layer.self_attn.qkv, layer.self_attn.out_proj, layer.ffn[0], layer.ffn[3]]
    for linear in linears:
        x = torch.randn(MAX_ROWS, linear.in_features, generator=g).to(param)
        alone = linear(x[:ROW_BUCKET])
        if not all(torch.equal(alone, linear(x[:rows])[:ROW_BUCKET]) for rows in (32, 64, 144, 272, 528, MAX_ROWS)):
            return False
    return True


def _stacking_invariant(decoder: Decoder) -> bool:
    cnn, param = decoder.wav_decoder, decoder.decoder_proj.weight
    g = torch.Generator(device="cpu").manual_seed(0)
    pair = [cnn.init_state(), cnn.init_state()]
    alone = [cnn.init_state(), cnn.init_state()]
    for length in (4, 1, 32):
        x = torch.randn(2, decoder.config.hidden_dim, length, generator=g).to(param)
        stacked = cnn.stack_states(pair)
        together = cnn.push(stacked, x)
        pair = cnn.unstack_states(stacked, 2)
        for i in range(2):
            if not torch.equal(together[i : i + 1], cnn.push(alone[i], x[i : i + 1])):
                return False
    return True


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


def _waveform(decoder: Decoder, calls: list[DecodeCall], hidden: list[torch.Tensor], stack: bool) -> None:
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
                key = (lengths[r], cnn.state_signature(calls[i].cnn)) if stack else i
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            length = plans[members[0]][0][r]
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
