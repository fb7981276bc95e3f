"""What a listener hears from chunks that arrive over time, and when a stream's first chunk goes out.

Time to first audio counts until the first chunk exists; a player that starts on it runs dry if
the next chunk is late. Two figures say what a listener gets:

* **time to playable audio** (:func:`playable_start`): the earliest moment a player could start
  and never run dry, given when each chunk arrived;
* **stalls** (:func:`simulate_playback`): how often, and for how long, a player that starts on
  the first chunk waits for audio.

:class:`FirstChunkHold` decides when a stream lets its first chunk go: once the audio it holds
lasts until the following chunks are expected at the production rate measured so far (adaptive),
or once it holds a fixed amount. Only the first chunk is held: afterwards a chunk that is ready
is never kept back, since sending sooner can only help a player that is already playing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .config import FRAME_RATE, SAMPLE_RATE

__all__ = [
    "FirstChunkHold",
    "Playback",
    "PlaybackFigures",
    "playable_start",
    "playback_figures",
    "plays_through",
    "simulate_playback",
]

#: Expected waits are stretched by this factor and this many seconds, so that a machine a little
#: busier than measured still keeps the player fed.
WAIT_MARGIN = 1.1
WAIT_SLACK = 0.02
#: How much the frames one token brings vary, relative to their mean (1 to 15 frames, about 6 on
#: average): the mean over n tokens is trusted only to within this over sqrt(n).
FRAMES_PER_TOKEN_SPREAD = 0.5


@dataclass
class Playback:
    """Where a player that starts at the first chunk would be: ``(wall, audio)`` points and its stalls."""

    wall: list[float]
    audio: list[float]
    stalls: list[tuple[float, float]]

    @property
    def stall_time(self) -> float:
        return sum(end - start for start, end in self.stalls)


def simulate_playback(chunk_times: Sequence[float], chunk_seconds: Sequence[float]) -> Playback:
    """Play chunks as they arrive, from the first one on, pausing whenever the buffer runs dry.

    ``chunk_times[i]`` is when chunk ``i`` was ready (seconds since the call) and
    ``chunk_seconds[i]`` how much audio it holds.
    """
    if not chunk_times:
        return Playback([], [], [])
    now, played, available = float(chunk_times[0]), 0.0, float(chunk_seconds[0])
    wall, audio, stalls = [now], [0.0], []
    for ready, seconds in zip(chunk_times[1:], chunk_seconds[1:]):
        runs_dry = now + (available - played)
        if runs_dry < ready:  # the buffer empties before this chunk arrives: a stall
            wall += [runs_dry, ready]
            audio += [available, available]
            stalls.append((runs_dry, float(ready)))
            now, played = float(ready), available
        elif ready > now:
            played += ready - now
            now = float(ready)
        available += float(seconds)
    wall.append(now + (available - played))
    audio.append(available)
    return Playback(wall, audio, stalls)


def playable_start(chunk_times: Sequence[float], chunk_seconds: Sequence[float]) -> float | None:
    """The earliest moment a player can start and never run dry: chunk ``i`` must arrive before
    the audio of the chunks ahead of it has played. None without chunks."""
    start, before = None, 0.0
    for ready, seconds in zip(chunk_times, chunk_seconds):
        needed_from = float(ready) - before
        start = needed_from if start is None else max(start, needed_from)
        before += float(seconds)
    return start


@dataclass(frozen=True)
class PlaybackFigures:
    """What a listener of a stream got, in seconds since the call.

    ``time_to_playable_audio`` is never before ``time_to_first_audio``; the difference is the
    buffering a player needs to play through without a pause. ``stall_count`` and ``stall_time``
    are for a player that starts on the first chunk instead.
    """

    time_to_first_audio: float | None
    time_to_playable_audio: float | None
    stall_count: int
    stall_time: float

    @property
    def buffering(self) -> float:
        """Seconds a player should wait after the first chunk to play through."""
        if self.time_to_first_audio is None or self.time_to_playable_audio is None:
            return 0.0
        return self.time_to_playable_audio - self.time_to_first_audio


def playback_figures(
    chunk_times: Sequence[float], chunk_samples: Sequence[int], sample_rate: int = SAMPLE_RATE
) -> PlaybackFigures:
    """The figures of chunks that arrived at ``chunk_times`` holding ``chunk_samples`` samples each."""
    seconds = [n / sample_rate for n in chunk_samples]
    play = simulate_playback(chunk_times, seconds)
    first = float(chunk_times[0]) if chunk_times else None
    return PlaybackFigures(first, playable_start(chunk_times, seconds), len(play.stalls), play.stall_time)


def plays_through(buffered: float, arrivals: Sequence[tuple[float, float]]) -> bool:
    """Whether a player starting now with ``buffered`` seconds of audio never runs dry, when chunk
    ``k`` arrives ``arrivals[k][0]`` seconds from now holding ``arrivals[k][1]`` seconds."""
    runway = buffered
    for wait, seconds in arrivals:
        if wait > runway:
            return False
        runway += seconds
    return True


class FirstChunkHold:
    """When one stream's first chunk may go out. Fed on the engine's thread as frames settle.

    ``min_first_chunk_ms``: ``None`` adapts to the stream (see :meth:`should_release`); a number
    holds the first chunk until it lasts at least that long; ``0`` never holds. The end of the
    utterance, or the stream waiting for more text, always lets the held audio go: nothing that
    is final waits on something that may never come.
    """

    def __init__(self, min_first_chunk_ms: float | None = None, clock=time.perf_counter):
        self.fixed = None if min_first_chunk_ms is None else float(min_first_chunk_ms) / 1000
        self.clock = clock
        self.released = self.fixed == 0
        self._first: tuple[float, int, int] | None = None  # (time, frames, tokens) at the first settled token
        self._last: tuple[float, int, int] | None = None
        self.decode_seconds = 0.0  # the costliest decoder call seen: a call's wait includes it

    def produced(self, frames: int, tokens: int) -> None:
        """Frames and tokens settled so far (cumulative), now."""
        mark = (self.clock(), frames, tokens)
        if self._first is None:
            self._first = mark
        self._last = mark

    def decoded(self, seconds: float) -> None:
        """One decoder call took ``seconds``."""
        self.decode_seconds = max(self.decode_seconds, seconds)

    def _since_first(self) -> tuple[float, int, int] | None:
        """(seconds, frames, tokens) settled after the first token; None until a second one has, a
        moment later."""
        if self._first is None or self._last is None or self._last[2] <= self._first[2]:
            return None
        elapsed, frames, tokens = (last - first for last, first in zip(self._last, self._first))
        return (elapsed, frames, tokens) if elapsed > 0 else None

    @property
    def token_rate(self) -> float | None:
        """Tokens settled per second of wall time since the first one; None before two."""
        span = self._since_first()
        return None if span is None else span[2] / span[0]

    @property
    def frames_per_token(self) -> float | None:
        """Frames a token brings, at the low end of what the tokens so far suggest (few tokens say
        little), so that waits are not underestimated. None before two tokens."""
        span = self._since_first()
        if span is None:
            return None
        _, frames, tokens = span
        return frames / tokens * max(0.0, 1 - FRAMES_PER_TOKEN_SPREAD / math.sqrt(tokens))

    @property
    def frame_rate(self) -> float | None:
        """Frames settled per second of wall time (a cautious estimate); None before two tokens."""
        tokens, per_token = self.token_rate, self.frames_per_token
        return None if tokens is None or per_token is None else tokens * per_token

    @property
    def realtime_factor(self) -> float | None:
        """Seconds of audio made per second of wall time so far; None before two tokens."""
        span = self._since_first()
        return None if span is None else span[1] / span[0] / FRAME_RATE

    def should_release(
        self, held_seconds: float, calls: Sequence[tuple[int, int]], frames_in: int, tokens_left: int | None
    ) -> bool:
        """Whether the held ``held_seconds`` of audio may go now.

        ``calls``: the decoder's next calls, ``(frames pushed when it runs, samples it adds)``
        (:meth:`~tadastream.codec.streaming.StreamingDecoder.upcoming_calls`); ``frames_in``: frames
        pushed so far; ``tokens_left``: tokens still to speak, None while the text arrives.

        Adaptive: yes once a player starting now stays fed through the calls ahead (or until the
        utterance ends) at the measured rate, with a margin. A stream slower than real time can
        never promise that, so it holds nothing: a player then needs the buffering that the
        result's ``time_to_playable_audio`` reports.
        """
        if self.released:
            return True
        if self.fixed is not None:
            return held_seconds >= self.fixed
        span = self._since_first()
        if span is None:
            return False  # one token so far: nothing to predict from; the next one will tell
        frame_rate, token_rate, per_token = self.frame_rate, self.token_rate, self.frames_per_token
        assert frame_rate is not None and token_rate is not None and per_token is not None
        realtime = span[1] / span[0] / FRAME_RATE
        # below real time even if the frames per token so far were on the low side: a few short
        # first tokens alone must not end the hold of a stream that is, in fact, fast enough
        if realtime * (1 + FRAMES_PER_TOKEN_SPREAD / math.sqrt(span[2])) < 1:
            return True
        end_frames = None if tokens_left is None else frames_in + tokens_left * per_token
        arrivals = []
        for frames_at, samples in calls:
            if end_frames is not None and frames_at >= end_frames:  # the end comes first and brings the rest
                arrivals.append((self._expected(tokens_left / token_rate), math.inf))
                break
            # a call runs at the first token that closes a block past its size: half a token late, on average
            production = (frames_at + per_token / 2 - frames_in) / frame_rate
            arrivals.append((self._expected(production), samples / SAMPLE_RATE))
        return plays_through(held_seconds, arrivals)

    def _expected(self, production_seconds: float) -> float:
        """Seconds until a call's audio is out: its frames' production, then the call, with a margin."""
        return (production_seconds + self.decode_seconds) * WAIT_MARGIN + WAIT_SLACK

    def release(self) -> None:
        self.released = True
