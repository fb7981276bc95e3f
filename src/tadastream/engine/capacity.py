"""How many streams an engine can keep ahead of playback, learned from its own ticks.

Every tick advances each running stream by one LLM step, so a stream stays real time while the
tick takes less than the audio one of its steps settles. Two things are learned as the engine runs:

* **tick time against LLM rows**: ``seconds ~ intercept + per_row * rows``, a recency-weighted
  least-squares fit over :attr:`Engine.tick_log <tadastream.engine.core.Engine.tick_log>`;
* **each stream's audio per tick**: the audio frames (50 a second) it settled per LLM step since
  the model first saw it make audio (TADA's durations vary with the voice and the text, so the
  streams' own figures win). Its whole-life ``frames_settled / 50 / steps`` stands in until then,
  once it has settled a second of audio: that counts the prefill and the steps before the first
  frame, which settle nothing, so it underestimates (a short stream's by half), erring on the safe
  side.

A newcomer is expected to add the running streams' typical rows and to settle what they settle. It
is admitted while ``margin x predicted tick time`` with it stays below every stream's audio per
tick (:meth:`CapacityModel.admits`). Nothing here blocks or writes to the engine: the
server's event loop reads while the engine's worker ticks, so every shared container is copied
before it is read.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import FRAME_RATE
from ..limits import REALTIME_MARGIN
from ..nn.kv_cache import ROWS_PER_SLOT

if TYPE_CHECKING:
    from .core import Engine, EngineStream, TickRecord

__all__ = ["CapacityModel", "TickFit", "fit_ticks"]

#: Seconds of audio one LLM step (one token) settles, assumed until some stream has shown its own
#: (:meth:`CapacityModel.rate`); after that the streams seen last stand in for newcomers. A default,
#: on the safe side of English speech at about 3-4 tokens a second (0.25-0.3 s a token).
DEFAULT_AUDIO_PER_STEP = 0.2
#: LLM rows a newcomer is assumed to add when no stream runs: the spoken row and the guidance row.
DEFAULT_ROWS = 2
#: A stream's whole-life audio per step counts once it has settled this much audio (1 s): before
#: that its prefill steps, which settle nothing, weigh too much.
TRUSTED_FRAMES = FRAME_RATE
#: Steps since the model first saw a stream make audio after which its audio per step since then counts.
MARGINAL_STEPS = 8
#: Ticks after which a tick's weight in the fit halves: the fit follows a changed load within seconds.
HALF_LIFE_TICKS = 32.0


@dataclasses.dataclass(frozen=True)
class TickFit:
    """Tick seconds as ``intercept + per_row * rows`` (both >= 0), fitted over ``ticks`` ticks."""

    intercept: float
    per_row: float
    ticks: int

    def seconds(self, rows: float) -> float:
        return self.intercept + self.per_row * rows


def fit_ticks(records: Sequence[TickRecord], half_life: float = HALF_LIFE_TICKS) -> TickFit | None:
    """Fit tick time to rows, the newest ticks weighing most; None without any tick.

    Ticks where a stream prefills (more rows than :data:`ROWS_PER_SLOT` per stream: several
    positions each) are left out while there are others: they are a joining stream's one-off, and
    their rows would steer the fit's slope. When the rows never varied, or the straight line comes
    out with a negative part (noise), tick time is taken as proportional to rows, which over- rather
    than under-estimates larger batches.
    """
    steady = [r for r in records if r.rows <= ROWS_PER_SLOT * r.streams] or list(records)
    if not steady:
        return None
    n = len(steady)
    weights = [0.5 ** ((n - 1 - i) / half_life) for i in range(n)]
    total = sum(weights)
    mean_rows = sum(w * r.rows for w, r in zip(weights, steady)) / total
    mean_seconds = sum(w * r.seconds for w, r in zip(weights, steady)) / total
    spread = sum(w * (r.rows - mean_rows) ** 2 for w, r in zip(weights, steady))
    if spread > 1e-9 * total:
        per_row = sum(w * (r.rows - mean_rows) * (r.seconds - mean_seconds) for w, r in zip(weights, steady)) / spread
        intercept = mean_seconds - per_row * mean_rows
        if per_row >= 0 and intercept >= 0:
            return TickFit(intercept, per_row, n)
    if mean_rows <= 0:  # no rows at all (not an LLM tick): a flat cost
        return TickFit(max(0.0, mean_seconds), 0.0, n)
    return TickFit(0.0, max(0.0, mean_seconds) / mean_rows, n)


@dataclasses.dataclass(frozen=True)
class _Load:
    """One consistent reading of the engine: its fit, and its running streams' rows and rates."""

    fit: TickFit | None
    streams: int
    rows: int  # LLM rows per tick of the running streams
    rates: list[float]  # audio seconds per tick each running stream settles (measured or assumed)
    newcomer_rate: float
    newcomer_rows: float

    def budget(self, extra: int, margin: float) -> float:
        """The longest tick that keeps every stream (and ``extra`` newcomers) real time, with the margin."""
        rates = self.rates + ([self.newcomer_rate] if extra > 0 else [])
        return min(rates, default=math.inf) / margin


class CapacityModel:
    """Admission by real-time capacity over one engine; see the module docstring.

    ``margin``: predicted tick time is multiplied by it before the comparison (1.25: a stream's
    audio must come 25 % faster than it plays), room for noise and for a prefill now and then.
    """

    def __init__(self, engine: Engine, *, margin: float = REALTIME_MARGIN):
        if not margin >= 1.0:
            raise ValueError(f"margin must be >= 1 (below 1 admits streams predicted to fall behind), got {margin!r}")
        self.engine, self.margin = engine, margin
        self._typical_rate: float | None = None  # the median rate since first audio, when streams last showed one
        # (steps, frames) of each running stream when this model first saw it with audio
        self._first_audio: weakref.WeakKeyDictionary[EngineStream, tuple[int, int]] = weakref.WeakKeyDictionary()

    def fit(self) -> TickFit | None:
        return fit_ticks(self.engine.tick_log.copy())

    def running(self) -> int:
        """Streams running in the engine now (holding a slot, parked ones included)."""
        return len(self.engine._running)

    def rate(self, stream: EngineStream) -> tuple[float | None, bool]:
        """Seconds of audio ``stream`` settles per tick (None while it has not shown it), and whether
        that is its rate since the model first saw it make audio (else its whole-life figure, low).
        Each call is also an observation: the first with audio is remembered."""
        steps, frames = stream.steps, stream.frames_settled
        if frames <= 0 or steps <= 0:
            return None, False
        first_steps, first_frames = self._first_audio.setdefault(stream, (steps, frames))
        if steps - first_steps >= MARGINAL_STEPS:
            return (frames - first_frames) / FRAME_RATE / (steps - first_steps), True
        return (frames / FRAME_RATE / steps if frames >= TRUSTED_FRAMES else None), False

    def _load(self) -> _Load:
        streams = list(self.engine._running)
        rates = [self.rate(s) for s in streams]
        marginal = [r for r, since_audio in rates if since_audio]
        if marginal:
            self._typical_rate = statistics.median(marginal)
        # a newcomer settles what the running streams do: the best evidence first
        whole_life = [r for r, _ in rates if r is not None]
        if self._typical_rate is not None:
            newcomer = self._typical_rate
        else:
            newcomer = statistics.median(whole_life) if whole_life else DEFAULT_AUDIO_PER_STEP
        rows = [s.program.rows for s in streams]
        return _Load(
            fit=self.fit(),
            streams=len(streams),
            rows=sum(rows),
            rates=[newcomer if r is None else r for r, _ in rates],
            newcomer_rate=newcomer,
            newcomer_rows=statistics.median(rows) if rows else DEFAULT_ROWS,
        )

    def admits(self, extra: int = 1) -> bool:
        """Whether the running streams plus ``extra`` newcomers are all predicted to stay real time.
        Before the first tick there is nothing to predict from: admit (the slots still cap)."""
        load = self._load()
        if load.fit is None:
            return True
        return load.fit.seconds(load.rows + extra * load.newcomer_rows) <= load.budget(extra, self.margin)

    def capacity(self) -> int | None:
        """The most streams predicted to stay real time: the running ones plus as many newcomers as
        fit (fewer than run now when the load is already past it); None before the first tick."""
        return self._capacity(self._load())

    def _capacity(self, load: _Load) -> int | None:
        if load.fit is None:
            return None
        budget = load.budget(1, self.margin)
        if load.fit.per_row <= 0:  # ticks took no time: nothing learned about growth
            return self.engine.max_streams if load.fit.intercept <= budget else 0
        rows_allowed = (budget - load.fit.intercept) / load.fit.per_row
        return max(0, load.streams + math.floor((rows_allowed - load.rows) / load.newcomer_rows))

    def snapshot(self) -> dict[str, Any]:
        """What ``/health`` shows: the fit, the slowest stream's audio per tick, the capacity."""
        load = self._load()
        fit = load.fit
        return {
            "policy": "realtime",
            "margin": self.margin,
            "capacity": self._capacity(load),
            "streams": load.streams,
            "tick_seconds": None
            if fit is None
            else {"intercept": round(fit.intercept, 6), "per_row": round(fit.per_row, 6), "ticks": fit.ticks},
            "predicted_tick_seconds": None if fit is None else round(fit.seconds(load.rows), 6),
            "audio_seconds_per_tick": round(min(load.rates, default=load.newcomer_rate), 4),
        }
