"""First audio when joining a busy engine: what the boost pass buys the newcomer, and what it costs the others.

    python bench/bench_first_audio.py --mode tiny --busy 1,3,7 --repeat 3    # the demo model: faster than real time
    python bench/bench_first_audio.py --dtype bf16 --busy 1,3 --policies off,always
    python bench/bench_first_audio.py --device cuda --compile --busy 1,7,31

For each number of busy streams N and each ``first_audio_boost`` policy, N streams (``--busy-tokens``
each) start on one in-process engine; once every one of them is heard (has its first chunk), one more
joins with ``--tokens``. Recorded: the joiner's time to first audio (TTFA) from its request, against
one stream alone on the idle engine; what it costs the busy streams while the joiner warms up (from the
join to its first audio): their LLM steps a second, and the playback stalls of listeners that start on
their first chunk; and the boost passes the engine ran. The busy streams are cancelled once the joiner
has its first audio. Same random TADA-1B-shaped (or demo) model and fixed durations as
bench_concurrency.py; medians over ``--repeat``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import tadastream  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))

POLICIES = ("off", "guarded", "always")


class Listener:
    """One stream consumed on its own thread, recording when each chunk came (seconds since ``t0``)."""

    def __init__(self, bench, text: str, seed: int, t0: float, on_first=None):
        self.t0, self.times, self.sizes, self.on_first = t0, [], [], on_first
        self.heard = threading.Event()
        self.error: BaseException | None = None
        self.stream = bench.model.generate(bench.voice, text, stream=True, seed=seed, engine=bench.engine_)
        self.requested = time.perf_counter() - t0
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        try:
            for chunk, _ in self.stream:
                if chunk.numel():
                    if not self.times and self.on_first is not None:
                        self.on_first()
                    self.times.append(time.perf_counter() - self.t0)
                    self.sizes.append(chunk.numel())
                    self.heard.set()
        except BaseException as exc:  # reported by the trial
            self.error = exc
        finally:
            self.heard.set()

    @property
    def ttfa(self) -> float:
        return self.times[0] - self.requested

    def stalls_until(self, moment: float) -> tuple[int, float]:
        """Stalls (count, seconds) of a player that starts on the first chunk, up to ``moment``."""
        from tadastream.playback import playback_figures

        kept = [(t, n) for t, n in zip(self.times, self.sizes) if t <= moment]
        figures = playback_figures([t for t, _ in kept], [n for _, n in kept], 24000)
        return figures.stall_count, figures.stall_time


def trial(bench, busy: int, policy: str, args, seed0: int) -> dict:
    """N busy streams, then one joiner once all are heard."""
    import bench_streaming as bs

    bench.engine_.first_audio_boost = policy
    boosts_before = bench.engine_.boost_passes
    t0 = time.perf_counter()
    tok = bench.model.tokenizer
    others = [Listener(bench, bs.make_text(tok, args.busy_tokens), seed0 + i, t0) for i in range(busy)]
    for listener in others:
        listener.heard.wait()

    def busy_steps() -> tuple[float, int, int]:
        """(now, the busy streams' LLM steps so far, how many still generate)."""
        handles = [listener.stream._handle for listener in others]
        return time.perf_counter(), sum(h.steps for h in handles), sum(not h.done for h in handles)

    at_join = busy_steps()
    at_heard: list[tuple[float, int, int]] = []
    joiner = Listener(bench, bs.make_text(tok, args.tokens), seed0 + busy, t0, lambda: at_heard.append(busy_steps()))
    joiner.heard.wait()
    heard_at = joiner.times[0] if joiner.times else time.perf_counter() - t0
    for listener in others:
        listener.stream.close()
    for listener in [*others, joiner]:
        listener.thread.join()
        if listener.error is not None:
            raise SystemExit(f"a stream failed: {listener.error!r}")
    stalls = [listener.stalls_until(heard_at) for listener in others]
    (t_join, steps_join, _), (t_heard, steps_heard, generating) = at_join, at_heard[0]
    return {
        "ttfa_s": joiner.ttfa,
        # what the boost costs the others: their LLM steps a second while the joiner warms up
        "busy_steps_per_s": (steps_heard - steps_join) / busy / (t_heard - t_join),
        # a join into a busy engine: the others still generated when the joiner was first heard
        "busy_generating_at_first_audio": generating,
        "busy_stalls": sum(n for n, _ in stalls),
        "busy_stall_s": sum(s for _, s in stalls),
        "boost_passes": bench.engine_.boost_passes - boosts_before,
    }


def solo(bench, args, seed: int) -> float:
    import bench_streaming as bs

    bench.engine_.first_audio_boost = "off"
    t0 = time.perf_counter()
    listener = Listener(bench, bs.make_text(bench.model.tokenizer, args.tokens), seed, t0)
    listener.thread.join()
    return listener.ttfa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("1b", "tiny"), default="1b")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="compiled steps (CUDA graphs on cuda)")
    ap.add_argument("--busy", default="1,3,7", help="busy streams before the join, per level")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"boost policies ({', '.join(POLICIES)})")
    ap.add_argument("--tokens", type=int, default=12, help="text tokens of the joiner (default 12)")
    ap.add_argument("--busy-tokens", type=int, default=60, help="text tokens of each busy stream (default 60)")
    ap.add_argument("--repeat", type=int, default=2, help="trials per level and policy; medians reported")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    levels = [int(x) for x in args.busy.split(",")]
    policies = args.policies.split(",")
    if unknown := sorted(set(policies) - set(POLICIES)):
        raise SystemExit(f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if min(levels) < 1:
        raise SystemExit("--busy: each level needs at least one busy stream")

    import bench_streaming as bs
    import torch
    from bench_concurrency import InProcess

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = InProcess(args, max(levels) + 1)
    print(f"{bs.machine_name()}: mode {args.mode} {args.dtype} on {args.device}; joiner {args.tokens} tokens")
    solo(bench, args, 999)  # warm the kernels before anything is timed
    rows = []
    with bench:
        for level in levels:
            for policy in policies:
                trials = [trial(bench, level, policy, args, 100 * r) for r in range(args.repeat)]
                alone = [solo(bench, args, 7 + r) for r in range(args.repeat)]
                row = {"busy": level, "policy": policy, "solo_ttfa_s": statistics.median(alone)}
                for key in trials[0]:
                    row[key] = statistics.median(t[key] for t in trials)
                row["ttfa_over_solo"] = row["ttfa_s"] / row["solo_ttfa_s"]
                rows.append(row)
                print(
                    f"busy {level:>3} {policy:>8}: joiner TTFA {row['ttfa_s']:.3f} s "
                    f"({row['ttfa_over_solo']:.2f}x solo {row['solo_ttfa_s']:.3f} s), boost passes "
                    f"{row['boost_passes']:.0f}; each busy stream {row['busy_steps_per_s']:.2f} steps/s, stalls "
                    f"{row['busy_stalls']:.0f} ({row['busy_stall_s']:.3f} s)"
                )
    bs.save_result(args.out, f"first-audio-{args.mode}-{args.dtype}", "bench_first_audio.py", None, rows=rows)


if __name__ == "__main__":
    main()
