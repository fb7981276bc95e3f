"""The codec's decode phase alone: N streams' decode calls batched, against the same calls one by one.

    python bench/bench_decode_batch.py                            # real decoder shapes, bf16, 1/8/32 streams
    python bench/bench_decode_batch.py --device cuda --streams 1,8,32,64
    python bench/bench_decode_batch.py --dtype fp32 --tokens 40

N streams of the real decoder's shapes (random weights, as bench_decoder.py builds them) each
push one token a tick, durations from bench_streaming's fixed 4-12 frame pattern, every stream
starting at once (the way bench_concurrency.py's clients do), and each tick's due decode calls
are computed either as one batched call (the engine's decode phase) or one after another (what
the engine did before). It reports seconds of decoding per tick (the device synchronised after
each tick), the ratio to one stream, the streams per batched call, and the largest difference
between the two ways' audio (0.0 where the kernels let a batch compute each stream's numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_streaming as bs  # noqa: E402  (puts src/ on the path when not installed)
from bench_decoder import build_decoder  # noqa: E402

from tadastream.codec.batch import batch_invariance, decode_calls  # noqa: E402
from tadastream.codec.streaming import StreamingDecoder  # noqa: E402


def run(decoder, n: int, tokens: int, batched: bool, device: torch.device) -> tuple[float, int, int, list]:
    """(decode seconds, ticks, batched calls, each stream's audio) for ``n`` streams of ``tokens``."""
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(tokens, decoder.config.embed_dim, generator=g).to(device)
    pattern = bs._PATTERN
    streams = [StreamingDecoder(decoder, deferred=True) for _ in range(n)]
    audio: list[list[torch.Tensor]] = [[] for _ in range(n)]
    spent, ticks, calls = 0.0, 0, 0
    while not all(s.finished for s in streams):
        for i, s in enumerate(streams):
            if ticks < tokens:
                s.decode_block(vectors[(ticks + i) % tokens], pattern[ticks % len(pattern)])
            elif ticks == tokens:
                s.flush(3)
        due = [(i, c) for i, s in enumerate(streams) if (c := s.take_call()) is not None]
        start = time.perf_counter()
        if due:
            if batched:
                decode_calls(decoder, [c for _, c in due])
            else:
                for _, c in due:
                    decode_calls(decoder, [c])
            calls += 1 if batched else len(due)
        if device.type == "cuda":
            torch.cuda.synchronize()
        spent += time.perf_counter() - start
        for i, c in due:
            audio[i].append(streams[i].complete(c).float().cpu())
        ticks += 1
    return spent, ticks, calls, [torch.cat(a) for a in audio]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=24, help="tokens per stream (default 24)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per level; the median is reported")
    ap.add_argument(
        "--force-batch",
        action="store_true",
        help="batch every part even where this CPU's kernels give a row other bits in a batch: what "
        "exactness costs (the audio then differs from one by one by float rounding)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    decoder = build_decoder().to(device=device, dtype=dtype).eval()
    levels = sorted({int(x) for x in args.streams.split(",")})
    measured = batch_invariance(decoder)
    if args.force_batch:  # the cache batch_invariance keeps: every part batches from here on
        param = decoder.decoder_proj.weight
        decoder._batch_invariance[(param.device, param.dtype)] = (True, True)
    print(
        f"decoder {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f} M params, {args.dtype} on "
        f"{bs.machine_name()}; batch invariance (rows, CNN stacking): {measured}"
        + ("; every part forced to batch" if args.force_batch else "")
    )
    rows = []
    with torch.inference_mode():
        run(decoder, max(levels), 8, True, device)  # warm-up: kernels, allocator
        run(decoder, 1, 8, False, device)
        for n in levels:
            row = {"streams": n}
            for way in ("one_by_one", "batched"):
                timings = []
                for _ in range(args.repeat):
                    spent, ticks, calls, audio = run(decoder, n, args.tokens, way == "batched", device)
                    timings.append(spent / ticks)
                row[f"{way}_s_per_tick"] = sorted(timings)[len(timings) // 2]
                row[f"{way}_calls"] = calls
                row[f"{way}_audio"] = audio
            row["max_diff"] = max(
                float((a - b).abs().max()) for a, b in zip(row.pop("one_by_one_audio"), row.pop("batched_audio"))
            )
            row["streams_per_call"] = row["one_by_one_calls"] / max(row["batched_calls"], 1)
            row["ticks"] = ticks
            rows.append(row)
            print(
                f"{n} streams: {row['batched_s_per_tick'] * 1000:.2f} ms/tick batched, "
                f"{row['one_by_one_s_per_tick'] * 1000:.2f} one by one",
                file=sys.stderr,
            )
    one = rows[0]
    head = f"{'streams':>8}{'one by one ms/tick':>20}{'batched ms/tick':>17}{'x one (batched)':>17}"
    head += f"{'x one (1-by-1)':>16}{'streams/call':>14}{'max diff':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['streams']:>8}{r['one_by_one_s_per_tick'] * 1000:20.2f}{r['batched_s_per_tick'] * 1000:17.2f}"
            f"{r['batched_s_per_tick'] / one['batched_s_per_tick']:17.2f}"
            f"{r['one_by_one_s_per_tick'] / one['one_by_one_s_per_tick']:16.2f}{r['streams_per_call']:14.2f}"
            f"{r['max_diff']:10.1e}"
        )
    bs.save_result(
        args.out,
        f"decode-batch-{args.dtype}" + ("-forced" if args.force_batch else ""),
        "bench_decode_batch.py",
        argv,
        dtype=args.dtype,
        device=args.device,
        tokens=args.tokens,
        batch_invariance=measured,
        forced=args.force_batch,
        levels=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
