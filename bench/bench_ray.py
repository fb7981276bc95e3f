"""Ray Serve replicas: does a second replica of the model add throughput on this machine?

    python bench/bench_ray.py                                  # demo model, 8 concurrent requests, 1 and 2 replicas
    python bench/bench_ray.py --replicas 1,2,4 --concurrency 16 --rounds 3
    python bench/bench_ray.py --threads auto,1                 # also 1 torch thread per replica whatever the count
    python bench/bench_ray.py --model DIR/llm --codec DIR/codec --tokenizer DIR/llm --concurrency 8 --rounds 1
                                                               # a checkpoint (bench_concurrency.py's 1B shapes)

A local Ray cluster serves the model with :mod:`tadastream.deploy.ray` (Ray's HTTP proxy in front,
``--replicas`` K replicas, each with one batched engine of ``--concurrency`` slots, so one replica
could take every request alone). By default (``--threads auto``) each replica gets ``cores // K``
torch threads, so every configuration has the whole machine: the comparison is one process batching
N streams against K processes batching N/K each (``--threads auto,1`` adds 1 thread per replica).
A ``tadastream serve`` child with all the cores runs the same load without Ray (``--no-baseline``
skips it), which prices the proxy hop.

For each configuration, ``--rounds`` rounds of N concurrent SSE requests of the same text (request
i always uses seed i, so every configuration speaks exactly the same audio) after one warm-up
request per replica; reported per round and as the median round: audio seconds made per wall
second, output tokens (frames) per second, mean and p95 time to first audio, and how the requests
spread over replicas (the ``x-replica`` header). Writes JSON (with the command) to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
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
sys.path.insert(0, str(HERE.parent / "src"))

from bench_concurrency import speak  # noqa: E402  (one SSE request, timed)

from tadastream.config import DEFAULT_CODEC  # noqa: E402

TEXT = " ".join(["Every replica holds one model and batches its own streams."] * 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_round(url: str, text: str, n: int) -> dict:
    results: list[dict | None] = [None] * n
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            results[i] = speak(url, text, i)
        except Exception as exc:  # reported: a failed request fails the bench
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} of {n} requests failed: {errors[0]}")
    ttfa = sorted(r["ttfa_s"] for r in results)
    audio = sum(r["audio_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "wall_s": round(wall, 3),
        "audio_s": round(audio, 3),
        "audio_s_per_s": round(audio / wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "ttfa_mean_s": round(statistics.mean(ttfa), 3),
        "ttfa_p95_s": round(ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))], 3),
        "per_replica": dict(collections.Counter(r["replica"] for r in results)),
    }


def summarize(name: str, rounds: list[dict], **fields) -> dict:
    best = sorted(rounds, key=lambda r: r["audio_s_per_s"])[len(rounds) // 2]  # the median round
    return {"config": name, **fields, "median": best, "rounds": rounds}


def warm_up(url: str, replicas: int) -> None:
    """Requests until every replica has answered one (first calls pay one-off costs)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(seen)} of {replicas} replicas answered")
        pair = [threading.Thread(target=lambda: seen.add(speak(url, "Warm up.", 0)["replica"])) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()


def bench_ray(args, replicas: int, threads: int) -> dict:
    from ray import serve

    from tadastream.deploy.ray import application, ray_options

    opts = ray_options(
        model=args.model,
        codec=args.codec,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        threads=threads,
        num_replicas=replicas,
        max_streams=args.concurrency,
        replica_queue=0,
        queue=args.concurrency,
        log_level="warning",
    )
    started = time.perf_counter()
    serve.run(application(opts), name="bench", route_prefix="/")
    deploy_s = time.perf_counter() - started
    try:
        warm_up(args.url, replicas)
        rounds = [run_round(args.url, args.text, args.concurrency) for _ in range(args.rounds)]
    finally:
        serve.delete("bench")
    return summarize(
        f"ray {replicas} replica(s) x {threads} thread(s)",
        rounds,
        replicas=replicas,
        threads_per_replica=threads,
        deploy_s=round(deploy_s, 1),
    )


def bench_serve(args, threads: int) -> dict:
    """The same load on ``tadastream serve`` (one process, no Ray) with every core."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "tadastream.server", "--model", args.model, "--dtype", args.dtype]
    cmd += ["--codec", args.codec] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
    cmd += ["--threads", str(threads), "--max-streams", str(args.concurrency), "--queue", str(args.concurrency)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tadastream serve did not come up: {' '.join(cmd)}")
            try:
                if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        warm_up(url, 1)
        rounds = [run_round(url, args.text, args.concurrency) for _ in range(args.rounds)]
    finally:
        proc.terminate()
        proc.wait(30)
    command = " ".join(["python -m tadastream.server", *cmd[3:]])
    return summarize(
        f"tadastream serve x {threads} thread(s)", rounds, replicas=1, threads_per_replica=threads, command=command
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="what each replica loads (default demo)")
    ap.add_argument("--codec", default=DEFAULT_CODEC, help="codec of a checkpoint --model (not used by demo)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer of a checkpoint --model (default: its own)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--replicas", default="1,2", help="replica counts to compare (default 1,2)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests per round (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per configuration; the median is reported (3)")
    ap.add_argument(
        "--threads", default="auto", help="torch threads per replica, comma-separated: auto (cores // replicas) or N"
    )
    ap.add_argument("--text", default=TEXT, help="what every request speaks")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip tadastream serve without Ray")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ray_replicas.json")
    args = ap.parse_args(argv)
    counts = sorted({int(x) for x in args.replicas.split(",") if x.strip()})
    if not counts or counts[0] < 1 or args.concurrency < 1 or args.rounds < 1:
        ap.error("--replicas, --concurrency and --rounds take positive integers")
    settings = [x.strip() for x in args.threads.split(",") if x.strip()]
    if not settings or not all(x == "auto" or (x.isdigit() and int(x) >= 1) for x in settings):
        ap.error("--threads takes 'auto' or positive integers, comma-separated")

    import ray
    from ray import serve

    from tadastream.loading import cpu_budget

    cores = cpu_budget()
    rows = []
    # (replicas, threads per replica), each once, in order
    configs = list(dict.fromkeys((k, max(1, cores // k) if t == "auto" else int(t)) for t in settings for k in counts))
    if args.baseline:
        rows.append(bench_serve(args, cores))
        print(f"{rows[-1]['config']}: {rows[-1]['median']['audio_s_per_s']} audio s/s", file=sys.stderr)
    # logical CPUs: Ray only needs them to place the replicas; the threads decide what runs
    ray.init(
        address="local",
        num_cpus=max(cores, max(k * t for k, t in configs)),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE.parent / "src")}},
    )
    try:
        args.port = free_port()
        args.url = f"http://127.0.0.1:{args.port}"
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        for k, threads in configs:
            rows.append(bench_ray(args, k, threads))
            print(f"{rows[-1]['config']}: {rows[-1]['median']['audio_s_per_s']} audio s/s", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()

    # relative to one replica with every core: the whole machine in one process
    whole = [
        r for r in rows if r["config"].startswith("ray") and r["replicas"] == 1 and r["threads_per_replica"] == cores
    ]
    one = whole[0]["median"]["audio_s_per_s"] if whole else None
    print(
        f"{'config':<34}{'audio s/s':>11}{'x 1 replica':>12}{'tok/s':>9}{'TTFA s':>8}{'p95 s':>7}  requests per replica"
    )
    for r in rows:
        m = r["median"]
        gain = f"{m['audio_s_per_s'] / one:12.2f}" if one else f"{'-':>12}"
        print(
            f"{r['config']:<34}{m['audio_s_per_s']:11.2f}{gain}{m['tokens_per_s']:9.1f}"
            f"{m['ttfa_mean_s']:8.2f}{m['ttfa_p95_s']:7.2f}  {sorted(m['per_replica'].values())}"
        )
    import bench_streaming as bs

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": bs.machine_name(),
        "cores": cores,
        "ray": ray.__version__,
        "model": args.model,
        "dtype": args.dtype,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "text": args.text,
        "configs": rows,
        "command": " ".join(["python", "bench/bench_ray.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
