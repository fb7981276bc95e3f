"""A picture of one streamed generation: was audio ready before playback needed it?

:func:`plot_timeline` draws two panels from a streamed :class:`~tadastream.generation.GenerationOutput`:

1. cumulative audio produced against wall time, next to the audio a player needs if it starts at
   the first chunk and never pauses; where production falls behind, playback stalls (shaded).
   The time to playable audio is marked: a player starting then never pauses;
2. the duration the model gave each token (``time_before``, in 50 Hz codec frames).

matplotlib is optional (``pip install 'tadastream[plot]'``) and imported only here, through its
object-oriented Agg canvas, so plotting never changes the caller's pyplot backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import FRAME_RATE
from .files import replacing
from .playback import Playback, playable_start, simulate_playback

__all__ = ["MissingMatplotlibError", "Playback", "plot_timeline", "require_matplotlib", "simulate_playback"]


class MissingMatplotlibError(ImportError):
    """matplotlib is not installed; the message says how to get it."""


def require_matplotlib() -> None:
    """Raise :class:`MissingMatplotlibError` now, so a caller can fail before doing expensive work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingMatplotlibError(
            "plotting a timeline needs matplotlib: pip install 'tadastream[plot]' (or pip install matplotlib)"
        ) from exc


def _atomic_savefig(figure: Any, path: Path) -> None:
    """Render to a temporary file beside ``path`` and rename it in, so no half-written PNG remains."""
    with replacing(path) as temp, open(temp, "xb") as handle:
        figure.savefig(handle, format="png", dpi=110)
        handle.flush()
        os.fsync(handle.fileno())


def plot_timeline(result: Any, path: str | os.PathLike[str], sample_rate: int = 24000) -> Path:
    """Draw the timeline of a streamed generation into a PNG at ``path`` (written atomically).

    ``result`` is ``stream.result`` (chunk timings and ``time_before``); a non-streamed result has
    no chunk timings, so only the durations panel is filled. Returns the path written.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"timeline {target.name}: the file name must end in .png")
    if not target.parent.is_dir():
        raise ValueError(f"cannot save timeline {target}: folder {target.parent} does not exist; create it first")

    figure = Figure(figsize=(9, 7), layout="constrained")
    FigureCanvasAgg(figure)
    ax_time, ax_tokens = figure.subplots(2, 1, height_ratios=[3, 2])
    _draw_chunks(ax_time, result, sample_rate)
    _draw_durations(ax_tokens, result)
    _atomic_savefig(figure, target)
    return target


def _draw_chunks(ax: Any, result: Any, sample_rate: int) -> None:
    times = list(getattr(result, "chunk_times", None) or [])
    samples = list(getattr(result, "chunk_samples", None) or [])
    ax.set_xlabel("wall time since the call (s)")
    ax.set_ylabel("audio (s)")
    ax.grid(True, alpha=0.3)
    if not times or len(times) != len(samples):
        ax.set_title("no chunk timings: this result was not streamed")
        return
    seconds = [n / sample_rate for n in samples]
    produced, total = [], 0.0
    for s in seconds:
        total += s
        produced.append(total)
    ax.step([0.0, *times], [0.0, *produced], where="post", color="tab:blue", lw=2, label="audio produced")
    ax.plot(times, produced, "o", color="tab:blue", ms=3)

    start = times[0]
    ax.plot(
        [start, start + total],
        [0.0, total],
        "--",
        color="tab:gray",
        label="audio playback needs (no pauses, from the first chunk)",
    )
    play = simulate_playback(times, seconds)
    ax.plot(play.wall, play.audio, color="tab:green", lw=1.5, label="actual playback")
    for i, (a, b) in enumerate(play.stalls):
        ax.axvspan(a, b, color="tab:red", alpha=0.2, label="stall (buffer empty)" if i == 0 else None)
    ax.axvline(start, color="tab:orange", lw=1, ls=":")
    ax.annotate(f"first audio {start:.2f} s", (start, 0), xytext=(4, 4), textcoords="offset points", fontsize=8)
    playable = playable_start(times, seconds)
    if playable is not None and playable > start + 1e-3:
        ax.axvline(playable, color="tab:green", lw=1, ls=":")
        ax.annotate(f"playable {playable:.2f} s", (playable, 0), xytext=(4, 16), textcoords="offset points", fontsize=8)
    wall = getattr(result, "total_time", None) or times[-1]
    stalls = f", {len(play.stalls)} stall(s) totalling {play.stall_time:.2f} s" if play.stalls else ", no stalls"
    if playable is not None and playable > start + 1e-3:
        stalls += f"; playable from {playable:.2f} s"
    ax.set_title(
        f"{len(times)} chunks, {total:.2f} s of audio in {wall:.2f} s "
        f"({total / wall if wall > 0 else float('inf'):.2f}x real time){stalls}"
    )
    ax.legend(loc="upper left", fontsize=8)
    _draw_start(ax, times, produced, play, max(start, playable or start))


def _draw_start(ax: Any, times: list[float], produced: list[float], play: Any, playable: float) -> None:
    """An inset on the first moments, where a short first chunk and the wait after it show; on the
    whole stream's scale they are a few pixels wide."""
    end = playable + max(0.25, playable)
    if end >= 0.5 * (play.wall[-1] or 1.0):
        return  # the whole stream is short: the main panel already shows its start
    inset = ax.inset_axes([0.55, 0.08, 0.42, 0.42])
    inset.step([0.0, *times], [0.0, *produced], where="post", color="tab:blue", lw=2)
    inset.plot(play.wall, play.audio, color="tab:green", lw=1.5)
    for a, b in play.stalls:
        inset.axvspan(a, b, color="tab:red", alpha=0.2)
    inset.axvline(times[0], color="tab:orange", lw=1, ls=":")
    inset.axvline(playable, color="tab:green", lw=1, ls=":")
    shown = [p for t, p in zip(times, produced) if t <= end]
    inset.set_xlim(0.0, end)
    inset.set_ylim(0.0, max(0.3, 1.2 * (shown[-1] if shown else produced[0])))
    inset.set_title("the first moments", fontsize=8)
    inset.tick_params(labelsize=7)
    inset.grid(True, alpha=0.3)


def _draw_durations(ax: Any, result: Any) -> None:
    ax.set_xlabel("token")
    ax.set_ylabel("frames before token (50 Hz)")
    ax.grid(True, axis="y", alpha=0.3)
    time_before = getattr(result, "time_before", None)
    if time_before is None:
        ax.set_title("no token durations in this result")
        return
    if getattr(time_before, "dim", lambda: 1)() == 2:
        time_before = time_before[0]  # (batch, N + 1): the first utterance
    frames = [int(v) for v in time_before]
    ax.bar(range(len(frames)), frames, color="tab:purple", width=0.8)
    ax.set_title(
        f"per-token durations: {len(frames)} entries, {sum(frames)} frames = {sum(frames) / FRAME_RATE:.2f} s"
        " (last entry: trailing frames)"
    )
    ms = ax.secondary_yaxis("right", functions=(lambda f: f * 1000 / FRAME_RATE, lambda m: m * FRAME_RATE / 1000))
    ms.set_ylabel("ms")
