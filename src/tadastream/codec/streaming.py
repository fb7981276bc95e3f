"""Incremental decoding: frames in as the LLM produces them, final audio samples out.

Exactness comes from structure rather than from overlapping windows:
- the decoder transformer's mask lets a frame see only its own block and the previous one, so
  completed blocks are computed once, against the cached keys/values of the block before them;
- the waveform CNN carries each layer's few samples of context (``codec/wave.py``), so every
  output sample is computed once, as soon as the right-hand context it needs exists.
The concatenated output therefore equals the one-pass decode up to float rounding.

Cost: each decode call reads all the decoder's weights (~0.5 GB in fp32), which on a
memory-bound machine is what a small call pays. So the first call comes exactly when the frames
settled so far can yield the first audible sample (the CNN's look-ahead, about 17 frames, past the
leading skip), and its waveform CNN runs on just the frames that sample needs (the block's later
decoder states wait for the next call). That call yields only a few milliseconds of audio; the
next takes ``FIRST_FLOWING_CALL_FRAMES`` (8) more frames, so a first chunk long enough to play
through is ready soon after, and calls then double up to ``window_size`` frames, which keeps the
total close to the one-pass decode. The schedule depends on the frames alone, never on timing, so
the same inputs give bit-identical audio however busy the machine is. When a stream lets its first
chunk go is decided above this class (:class:`~tadastream.playback.FirstChunkHold`), from
:meth:`StreamingDecoder.upcoming_calls`.
"""

from __future__ import annotations

import torch

from ..nn.attention import BlockCache
from .batch import DecodeCall, decode_calls
from .decoder import Decoder


class StreamingDecoder:
    """Per-stream decoding state over a shared :class:`Decoder`.

    Args:
        decoder: the loaded codec decoder (shared, never modified).
        window_size: the most frames decoded in one call once audio is flowing. Calls grow
            (doubling) after the first audible call up to this size: larger means fewer, larger chunks and a
            total cost closer to the one-pass decode; it bounds peak activation memory and never
            changes the audio. The state carried between calls is a fixed few frames per layer
            plus one block, whatever the utterance length.
        skip_leading_frames: frames of output audio to drop at the start (leading silence).
        deferred: compute nothing here: calls wait in :meth:`take_call` for a caller that decodes
            many streams' calls at once (the engine's decode phase), which hands each back with
            :meth:`complete`. The calls, and so the audio, are the same either way.
    """

    #: Frames of the call after the first audible one; calls double from there. Small, so that a
    #: first chunk long enough to play through is ready soon after the first sample.
    FIRST_FLOWING_CALL_FRAMES = 8
    CALL_GROWTH = 2

    def __init__(
        self, decoder: Decoder, window_size: int = 100, skip_leading_frames: int = 0, *, deferred: bool = False
    ):
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1 frame, got {window_size}")
        self.decoder = decoder
        self.deferred = deferred
        self.window_size = int(window_size)
        self.skip_leading_frames = int(skip_leading_frames)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the decoder can start a new utterance."""
        self._pending: list[torch.Tensor] = []  # frames of the block still open
        self._blocks: list[torch.Tensor] = []  # complete blocks waiting for a decode call
        self._queued_frames = 0
        self._next_call_frames = 0  # grows once audio flows
        self._cache = BlockCache()
        self._cnn = self.decoder.wav_decoder.init_state()
        self._to_skip = self.skip_leading_frames * self.decoder.samples_per_frame
        self.frames_in = 0
        self.samples_out = 0
        self.calls = 0
        self._audio_flowing = False
        self._batch = False
        self._decoded_frames = 0
        self._cnn_backlog: torch.Tensor | None = None  # decoder states (1, C, n) the CNN has yet to take
        self._frames_for_first_audio: int | None = None
        self._outstanding: DecodeCall | None = None  # taken, not yet completed
        self._ending = False  # flushed: the tail's calls are left
        self.finished = False

    def set_skip_leading_frames(self, frames: int) -> None:
        """Change the leading skip before any frame has been decoded."""
        if self.calls:
            raise RuntimeError("the leading skip can only be set before decoding starts")
        self.skip_leading_frames = int(frames)
        self._to_skip = self.skip_leading_frames * self.decoder.samples_per_frame
        self._frames_for_first_audio = None

    @property
    def _param(self) -> torch.Tensor:
        return self.decoder.decoder_proj.weight

    def push_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Add decoder input frames (T, embed); returns the newly final samples (1-D). A deferred
        decoder returns none: its calls wait in :meth:`take_call` for whoever decodes in batches."""
        if self.finished or self._ending:
            raise RuntimeError("this stream was flushed; call reset() to start a new one")
        frames = frames.reshape(-1, frames.shape[-1]).to(self._param)
        marks = (torch.linalg.vector_norm(frames.float(), dim=-1) != 0).tolist()
        self.frames_in += frames.shape[0]
        out = []
        start = 0
        for i, marked in enumerate(marks):
            if marked:  # a marked frame closes its block
                self._pending.append(frames[start : i + 1])
                self._blocks.append(torch.cat(self._pending, dim=0))
                self._queued_frames += self._blocks[-1].shape[0]
                self._pending = []
                start = i + 1
                if not self.deferred and self._should_decode():
                    out.append(self._run(self._make_call()))
        if start < frames.shape[0]:
            self._pending.append(frames[start:])
        return self._emit(out)

    def decode_block(self, acoustic: torch.Tensor, time_before: int) -> torch.Tensor:
        """One token: ``time_before - 1`` silent frames, then its (denormalised) vector."""
        vector = acoustic.reshape(1, -1).to(self._param)
        gap = vector.new_zeros(max(int(time_before) - 1, 0), vector.shape[1])
        return self.push_frames(torch.cat((gap, vector), dim=0))

    def flush(self, trailing_frames: int = 0) -> torch.Tensor:
        """End of the utterance: ``trailing_frames`` silent frames, then all remaining samples (a
        deferred decoder queues them as calls no longer than its current ones, and returns none)."""
        if self.finished or self._ending:
            raise RuntimeError("this stream was already flushed; call reset() to start a new one")
        if trailing_frames:
            self._pending.append(self._param.new_zeros(int(trailing_frames), self._param.shape[1]))
            self.frames_in += int(trailing_frames)
        if self._pending:  # the last block: frames after the last token, closed by the end
            self._blocks.append(torch.cat(self._pending, dim=0))
            self._queued_frames += self._blocks[-1].shape[0]
            self._pending = []
        self._ending = True
        if self._decoded_frames + self._queued_frames == 0:  # nothing was ever decoded
            self.finished = True
            return self._param.new_zeros(0)
        if self.deferred:
            return self._param.new_zeros(0)
        out = []
        while (call := self.take_call()) is not None:
            out.append(self._run(call))
        return self._emit(out)

    # -- calls, for whoever computes them (one stream alone, or the engine for all at once) ----------
    @property
    def idle(self) -> bool:
        """Nothing to decode now (no call due, no tail left to flush)."""
        return self._outstanding is None and not self._due()

    def take_call(self) -> DecodeCall | None:
        """The call due now, if any: compute it (:func:`~tadastream.codec.batch.decode_calls`), then
        :meth:`complete` it before taking another. An ending stream's tail comes in several calls."""
        if self._outstanding is not None or self.finished or not self._due():
            return None
        return self._make_call()

    def complete(self, call: DecodeCall) -> torch.Tensor:
        """Samples a computed call made final (after the leading skip)."""
        if call is not self._outstanding:
            raise RuntimeError("complete() takes the call this decoder's take_call() gave")
        return self._emit([self._finish_call(call)])

    def _due(self) -> bool:
        if self._ending:
            return not self.finished
        return bool(self._blocks) and self._should_decode()

    def _make_call(self) -> DecodeCall:
        if self._ending:  # the tail, in calls no longer than the stream's current ones
            limit = self.window_size if self._batch else max(self._next_call_frames, self.FIRST_FLOWING_CALL_FRAMES)
            blocks, frames = [], 0
            while self._blocks and (not blocks or frames + self._blocks[0].shape[0] <= limit):
                frames += self._blocks[0].shape[0]
                blocks.append(self._blocks.pop(0))
            self._queued_frames -= frames
            final = not self._blocks
        else:
            blocks, self._blocks = self._blocks, []
            frames, self._queued_frames = self._queued_frames, 0
            final = False
        self._decoded_frames += frames
        self.calls += 1
        backlog = 0 if self._cnn_backlog is None else self._cnn_backlog.shape[2]
        cnn_frames = backlog + frames
        if not (self._audio_flowing or self._batch or self._ending):
            # the first audible call: the CNN stops at the last frame its first sample needs
            consumed = self._decoded_frames - cnn_frames  # frames the CNN took in earlier calls
            keep = self._first_audio_frames() - consumed
            if 0 < keep < cnn_frames:
                cnn_frames = keep
        call = DecodeCall(blocks, self._cache, self._cnn, self._cnn_backlog, cnn_frames, final)
        self._cnn_backlog = None
        self._outstanding = call
        return call

    def _run(self, call: DecodeCall) -> torch.Tensor:
        """Compute one call alone and settle it (the immediate path)."""
        # oneDNN keeps a compiled kernel per shape: decode_calls keeps shapes to a bounded set
        decode_calls(self.decoder, [call])
        return self._finish_call(call)

    def _finish_call(self, call: DecodeCall) -> torch.Tensor:
        self._outstanding = None
        self._cnn_backlog = call.backlog_out
        audio = call.audio
        if call.final:
            self.finished = True
        if audio.shape[2] > self._to_skip:  # audio is flowing: gather more per call from now on
            frames = call.block_frames
            grown = round(self.CALL_GROWTH * frames) if self._next_call_frames else self.FIRST_FLOWING_CALL_FRAMES
            self._next_call_frames = min(self.window_size, max(grown, self._next_call_frames))
        return audio

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """A whole utterance's frames at once, in calls of about ``window_size`` frames: the one-pass
        result with bounded memory. Returns all samples (after the leading skip)."""
        self._batch = True  # nobody is listening yet: never decode early
        head = self.push_frames(frames)
        return torch.cat((head, self.flush(0)))

    def upcoming_calls(self, limit: int = 12) -> list[tuple[int, int]]:
        """The decode calls ahead, by lengths alone: ``(frames pushed when the call runs, samples it
        adds)``, until calls have reached ``window_size`` frames (or ``limit`` calls). Empty before
        audio flows. A prediction for pacing, ignoring where blocks end."""
        if not self._audio_flowing or self.finished:
            return []
        spf = self.decoder.samples_per_frame
        size, at = self._next_call_frames, self._decoded_frames
        calls: list[tuple[int, int]] = []
        full_sized = 0  # calls of window_size: after two, every call is the same
        while len(calls) < limit and full_sized < 2:
            at += size
            # the CNN's output trails its input by the frames before the first sample
            added = max(0, (at - self._first_audio_frames()) * spf - self.samples_out) if not calls else size * spf
            calls.append((at, added))
            full_sized += size == self.window_size
            size = min(self.window_size, round(self.CALL_GROWTH * size))
        return calls

    def _should_decode(self) -> bool:
        if self._batch:
            return self._queued_frames >= self.window_size
        if not self._audio_flowing:  # decode as soon as it yields the first audible sample
            return self._decoded_frames + self._queued_frames >= self._first_audio_frames()
        return self._queued_frames >= self._next_call_frames

    def _first_audio_frames(self) -> int:
        if self._frames_for_first_audio is None:
            skip = self.skip_leading_frames * self.decoder.samples_per_frame
            self._frames_for_first_audio = self.decoder.wav_decoder.frames_before_output(skip)
        return self._frames_for_first_audio

    def _emit(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        if not pieces:
            return self._param.new_zeros(0)
        audio = torch.cat(pieces, dim=2).reshape(-1)
        if self._to_skip:
            cut = min(self._to_skip, audio.shape[0])
            audio, self._to_skip = audio[cut:], self._to_skip - cut
        self._audio_flowing = self._audio_flowing or audio.shape[0] > 0
        self.samples_out += audio.shape[0]
        return audio
