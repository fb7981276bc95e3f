"""Concurrent streams through ``tadastream serve``: does throughput grow with the number of users?

    python bench/bench_concurrency.py --dtype bf16                 # TADA-1B shapes, 1..16 streams
    python bench/bench_concurrency.py --dtype fp32 --levels 1,8
    python bench/bench_concurrency.py --mode tiny --levels 1,2,4  # the demo model, seconds

A TADA-1B-shaped checkpoint with random weights (and a codec decoder) is written once to
``--cache``, then served by the real server (``tadastream serve``, in a child process) with
``--max-streams`` at the largest level. For each level N, N clients post the same-length text at
once (``stream_format: sse``, one seed each) and the bench records, per request, time to first
audio and total time from the client's side and the tokens spoken from the server's usage. It
reports aggregate tokens/s (all tokens / wall time of the level) against one stream, each
stream's real-time factor, mean and p95 time to first audio and time to playable audio (the
earliest start from which a client's playback never pauses, from when the audio events arrived),
the stalls of clients that start playing on the first chunk (count and seconds, summed over the
level's streams), the server's peak memory, and from the engine's own counters (``/health``) the
seconds per tick: backbone, flow head, and programs (each stream's logic and its codec decoding).

As in bench_streaming.py the head's durations are replaced by a fixed 4-12 frame pattern (each
stream from its start), so every request speaks the same frames whatever runs beside it. Weights
are random: audio is noise, timings are real. Writes JSON (and ``--plot`` a PNG) to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
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

LEVELS = (1, 2, 4, 8, 16)


# -- the checkpoint -----------------------------------------------------------------------------
def prepare_checkpoint(mode: str, dtype: str, cache: Path) -> tuple[Path, Path]:
    """(llm folder, codec folder) of a random TADA-1B-shaped model in ``dtype``, written once."""
    folder = cache / f"{mode}-{dtype}"
    llm, codec = folder / "llm", folder / "codec"
    if (llm / "model.safetensors").is_file() and (codec / "decoder" / "model.safetensors").is_file():
        return llm, codec
    import bench_streaming as bs
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if mode == "1b":
        model = bs.build_1b(torch_dtype, "cpu")
    else:
        from tadastream.demo import build_demo_model

        model = build_demo_model().to(torch_dtype)
    print(f"writing a random {mode} checkpoint ({dtype}) to {folder} ...", file=sys.stderr)
    model.save_pretrained(llm)
    model.require_decoder().save_pretrained(codec / "decoder")
    return llm, codec


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_child(argv: list[str]) -> int:
    """``tadastream serve`` with the bench's fixed durations (the only change to the server)."""
    import bench_streaming as bs  # puts src/ on the path when tadastream is not installed

    bs.fix_durations()
    from tadastream.cli import main

    return main(["serve", *argv])


class Server:
    def __init__(self, llm: Path, codec: Path, args, max_streams: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--_serve", "--model", str(llm), "--codec", str(codec)]
        cmd += ["--tokenizer", str(llm), "--dtype", {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]]
        cmd += ["--device", args.device, "--port", str(self.port), "--max-streams", str(max_streams)]
        cmd += ["--queue", str(4 * max_streams), "--queue-timeout", "3600", "--log-level", "warning"]
        if args.compile:  # compiled steps (CUDA graphs on cuda), built before the server answers
            cmd += ["--compile", "--warmup"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.command = cmd
        self.proc = subprocess.Popen(cmd)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}): {' '.join(self.command)}")
            try:
                if httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit("the server did not come up")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def speak(self, text: str, seed: int) -> dict:
        return speak(self.url, text, seed)

    def rss_mb(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        except OSError:
            pass

    def peak_mb(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def engine(self) -> dict:
        """The engine's counters from ``/health``: ticks and seconds per phase so far."""
        import httpx

        return httpx.get(self.url + "/health", timeout=30, trust_env=False).json()["engine"]


class InProcess:
    """The same streams on one engine in this process, without HTTP: for machines without the
    server's packages (a GPU box), and to see the engine alone. Same model, durations and counters."""

    def __init__(self, args, max_streams: int):
        import bench_streaming as bs

        from tadastream.demo import demo_voice
        from tadastream.engine import Engine

        bs.fix_durations()
        # compiled below for every level's slots (on a CPU torch.compile cannot trace prepacked weights)
        plain = argparse.Namespace(
            **{**vars(args), "compile": False, "layout": "plain" if args.compile else "optimized"}
        )
        self.model, _ = bs.build_model(plain)
        if args.compile:
            self.model.optimize_for_inference(prepack=False)
        if args.compile:  # compiled steps (CUDA graphs on cuda) over a slot arena for every level
            self.model.compile(max_streams=max_streams, warmup=True)
            self.engine_ = self.model.engine.start()
        else:
            self.engine_ = Engine(self.model, max_streams=max_streams).start()
        self.voice = demo_voice(self.model)
        self.command = [sys.executable, __file__, "--in-process", f"--max-streams {max_streams}"]

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.engine_.close()

    def speak(self, text: str, seed: int) -> dict:
        start = time.perf_counter()
        stream = self.model.generate(self.voice, text, stream=True, seed=seed, engine=self.engine_)
        times, sizes, first = [], [], None
        for chunk, _ in stream:
            now = time.perf_counter() - start
            first = now if first is None else first
            times.append(now)
            sizes.append(chunk.numel())
        total = time.perf_counter() - start
        return request_figures(seed, "in-process", first, times, sizes, total, stream.tokens_done, None)

    def engine(self) -> dict:
        return self.engine_.stats()

    def rss_mb(self) -> float:
        return _status_kib(os.getpid(), "VmRSS") / 1024

    def reset_peak(self) -> None:
        try:
            Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
        except OSError:
            pass
        if self.model.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float:
        if self.model.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return _status_kib(os.getpid(), "VmHWM") / 1024


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the clients --------------------------------------------------------------------------------
def speak(url: str, text: str, seed: int) -> dict:
    """One SSE request: client-side time to first audio, time to playable audio, stalls (of a player
    starting on the first audio) and total, the server's usage and timings, and the replica that
    served it (``x-replica`` behind Ray Serve; "serve" for one server)."""
    import httpx

    body = {"input": text, "seed": seed, "response_format": "pcm", "stream_format": "sse"}
    first, done = None, None
    times: list[float] = []  # when each audio event with samples arrived, and its samples
    sizes: list[int] = []
    start = time.perf_counter()
    with httpx.Client(timeout=None, trust_env=False) as client:
        with client.stream("POST", url + "/v1/audio/speech", json=body) as res:
            if res.status_code != 200:
                raise RuntimeError(f"HTTP {res.status_code}: {res.read()[:300]!r}")
            replica = res.headers.get("x-replica", "serve")
            for line in res.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event["type"] == "speech.audio.delta":
                    n = len(base64.b64decode(event["audio"])) // 2
                    now = time.perf_counter() - start
                    if first is None:
                        first = now
                    if n:
                        times.append(now)
                        sizes.append(n)
                elif event["type"] == "speech.audio.done":
                    done = event
    total = time.perf_counter() - start
    tokens = done["usage"]["output_tokens"] if done else None
    return request_figures(seed, replica, first, times, sizes, total, tokens, done["timings"] if done else None)


def request_figures(seed, replica, first, times, sizes, total, tokens, server_timings) -> dict:
    """One request's figures: its first audio and when each chunk came (``times``, seconds since the
    request) with its samples (``sizes``)."""
    from tadastream.playback import playback_figures

    audio_s = sum(sizes) / 24000
    play = playback_figures(times, sizes, 24000)
    return {
        "seed": seed,
        "replica": replica,
        "ttfa_s": first,
        "playable_s": play.time_to_playable_audio,
        "stall_count": play.stall_count,
        "stall_s": play.stall_time,
        "chunks": len(times),
        "total_s": total,
        "audio_s": audio_s,
        "rtf": total / audio_s if audio_s else None,
        "tokens": tokens,
        "server_timings": server_timings,
    }


def run_level(server: Server | InProcess, text: str, n: int, seed0: int) -> dict:
    results: list[dict | None] = [None] * n
    errors: list[str] = []
    peak_rss = [server.rss_mb()]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            peak_rss.append(server.rss_mb())

    def one(i: int) -> None:
        try:
            results[i] = server.speak(text, seed0 + i)
        except Exception as exc:  # reported, and the level is marked failed
            errors.append(repr(exc))

    server.reset_peak()
    before = server.engine()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    if errors:
        raise SystemExit(f"{len(errors)} of {n} requests failed: {errors[0]}")
    after = server.engine()
    ticks = after["ticks"] - before["ticks"]
    # per tick, the server's own split: backbone, flow head, lm_head, programs, the codec's decode phase
    tick_s = {k: (after["seconds"][k] - before["seconds"][k]) / max(ticks, 1) for k in after["seconds"]}
    calls = after.get("decode_calls", 0) - before.get("decode_calls", 0)
    decoded = after.get("decoded_streams", 0) - before.get("decoded_streams", 0)
    tokens = sum(r["tokens"] for r in results)
    ttfa = [r["ttfa_s"] for r in results]
    playable = [r["playable_s"] for r in results]
    return {
        "streams": n,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "audio_s": sum(r["audio_s"] for r in results),
        "rtf_mean": statistics.mean(r["rtf"] for r in results),
        "rtf_max": max(r["rtf"] for r in results),
        "ttfa_mean_s": statistics.mean(ttfa),
        "ttfa_p95_s": p95(ttfa),
        "playable_mean_s": statistics.mean(playable),
        "playable_p95_s": p95(playable),
        "stall_count": sum(r["stall_count"] for r in results),
        "stall_s": sum(r["stall_s"] for r in results),
        "stalled_streams": sum(1 for r in results if r["stall_count"]),
        "peak_rss_mb": max(max(peak_rss), server.peak_mb()),
        "ticks": ticks,
        "tick_s": tick_s,
        "decode_calls": calls,
        "streams_per_decode_call": decoded / calls if calls else None,
        "requests": results,
    }


def median_row(repeats: list[dict]) -> dict:
    """One level's figures: the median of each over its repeats (requests kept from all)."""
    if len(repeats) == 1:
        return repeats[0]
    row = dict(repeats[0])
    for key, value in repeats[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            middle = statistics.median(r[key] for r in repeats if r[key] is not None)
            row[key] = round(middle) if isinstance(value, int) else middle
    row["tick_s"] = {k: statistics.median(r["tick_s"][k] for r in repeats) for k in repeats[0]["tick_s"]}
    row["requests"] = [q for r in repeats for q in r["requests"]]
    row["repeats"] = len(repeats)
    return row


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank of the sorted values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def make_text(tokens: int) -> str:
    import bench_streaming as bs

    from tadastream.demo import demo_tokenizer

    return bs.make_text(demo_tokenizer(), tokens)


# -- output -------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    base = rows[0]["tokens_per_s"] / rows[0]["streams"] if rows[0]["streams"] == 1 else None
    head = "".join(
        f"{h:>{w}}"
        for h, w in [("streams", 8), ("tok/s", 9), ("x one", 8), ("RTF mean", 10), ("RTF max", 9), ("TTFA s", 9)]
        + [("p95 TTFA", 10), ("play s", 8), ("p95 play", 10), ("stalls", 8), ("stall s", 9)]
        + [("peak MB", 9), ("s/tick", 8), ("llm", 7), ("flow", 7), ("progs", 7), ("decode", 8), ("str/call", 9)]
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        gain = f"{r['tokens_per_s'] / base:8.2f}" if base else f"{'-':>8}"
        print(
            f"{r['streams']:>8}{r['tokens_per_s']:9.2f}{gain}{r['rtf_mean']:10.2f}{r['rtf_max']:9.2f}"
            f"{r['ttfa_mean_s']:9.2f}{r['ttfa_p95_s']:10.2f}{r['playable_mean_s']:8.2f}{r['playable_p95_s']:10.2f}"
            f"{r['stall_count']:8d}{r['stall_s']:9.2f}{r['peak_rss_mb']:9.0f}"
            f"{sum(r['tick_s'].values()):8.3f}{r['tick_s']['llm']:7.3f}{r['tick_s']['flow']:7.3f}"
            f"{r['tick_s']['programs']:7.3f}{r['tick_s'].get('decode', 0.0):8.3f}"
            f"{r.get('streams_per_decode_call') or 0:9.2f}"
        )
    if base and len(rows) > 1:
        print("\nagainst one stream (per tick, medians where repeated):")
        one = rows[0]
        for r in rows[1:]:
            ratios = {
                k: r["tick_s"][k] / one["tick_s"][k]
                for k in ("llm", "flow", "programs", "decode")
                if one["tick_s"].get(k)
            }
            print(
                f"  {r['streams']:>3} streams: tokens/s {r['tokens_per_s'] / one['tokens_per_s']:.2f}x, "
                f"p95 TTFA {r['ttfa_p95_s'] / one['ttfa_p95_s']:.2f}x, "
                + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
            )


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["levels"]
    n = [r["streams"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    one = rows[0]["tokens_per_s"] if rows[0]["streams"] == 1 else None
    ax1.plot(n, [r["tokens_per_s"] for r in rows], "o-", label="tadastream (batched engine)")
    if one:
        ax1.plot(n, [one] * len(n), "k--", lw=0.8, label="one stream (streams taking turns)")
        ax1.plot(n, [one * k for k in n], ":", color="gray", lw=0.8, label="perfect scaling")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent streams")
    ax1.set_ylabel("aggregate tokens / s")
    ax1.set_title("throughput")
    ax1.legend(fontsize=8)
    ax2.plot(n, [r["ttfa_mean_s"] for r in rows], "o-", label="mean TTFA")
    ax2.plot(n, [r["ttfa_p95_s"] for r in rows], "s--", label="p95 TTFA")
    ax2.plot(n, [r["playable_mean_s"] for r in rows], "D:", label="mean time to playable audio")
    ax2.plot(n, [r["playable_p95_s"] for r in rows], "v:", label="p95 time to playable audio")
    ax2.plot(n, [r["rtf_mean"] for r in rows], "^-", label="per-stream RTF (mean)")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel("seconds / real-time factor")
    ax2.set_title("latency per stream")
    ax2.legend(fontsize=8)
    fig.suptitle(f"tadastream serve, {result['mode']} {result['dtype']} on {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    if argv is None and "--_serve" in sys.argv:
        rest = sys.argv[sys.argv.index("--_serve") + 1 :]
        return serve_child(rest)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("1b", "tiny"), default="1b")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent streams per level")
    ap.add_argument("--tokens", type=int, default=24, help="text tokens per request (default 24)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the server")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tadastream-bench")
    ap.add_argument("--compile", action="store_true", help="serve with --compile --warmup (for GPUs)")
    ap.add_argument("--plot", action="store_true", help="also write a PNG (needs matplotlib)")
    ap.add_argument("--in-process", action="store_true", help="streams on one engine in this process, no HTTP server")
    ap.add_argument("--repeat", type=int, default=1, help="run the levels this many times; report medians")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        ap.error("--levels takes positive integers, e.g. 1,2,4,8,16")
    import bench_streaming as bs

    text = make_text(args.tokens)
    if args.in_process:
        host = InProcess(args, max(levels))
    else:
        llm, codec = prepare_checkpoint(args.mode, args.dtype, args.cache)
        host = Server(llm, codec, args, max(levels))
    runs: dict[int, list[dict]] = {n: [] for n in levels}
    with host as server:
        server.speak("Warm up.", 0)
        for k in range(max(1, args.repeat)):  # rounds of every level, so drift hits all levels alike
            for n in levels:
                runs[n].append(run_level(server, text, n, seed0=1000 * n + k))
                print(f"{n} streams: {runs[n][-1]['tokens_per_s']:.2f} tok/s", file=sys.stderr)
        command = server.command
    rows = [median_row(runs[n]) for n in levels]
    print_table(rows)
    result, stem = bs.save_result(
        args.out,
        f"concurrency-{args.mode}-{args.dtype}" + ("-compiled" if args.compile else ""),
        "bench_concurrency.py",
        argv,
        mode=args.mode,
        dtype=args.dtype,
        device=args.device,
        compiled=args.compile,
        text=text,
        text_tokens=args.tokens,
        server_command=" ".join(command[:1] + ["bench/bench_concurrency.py"] + command[2:]),
        in_process=args.in_process,
        repeat=args.repeat,
        levels=rows,
    )
    if args.plot and plot(result, Path(f"{stem}.png")):
        print(f"wrote {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
