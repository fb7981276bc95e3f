"""Batched against solo: is each stream's output what it is alone, in fp32 and in bf16?

    python bench/bench_exactness.py                      # demo model, fp32 and bf16, 8 streams
    python bench/bench_exactness.py --mode 1b --streams 4 --tokens 12

Runs N streams (different texts, seeds and options; half of them join while the others run)
on one engine, then each alone, and reports how many streams and frames got the same
durations and token ids, and the largest audio difference. The head's own durations are used
(not bench_streaming's fixed pattern): a rounding difference would show as a changed duration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_streaming as bs  # noqa: E402  (puts src/ on the path when not installed)

from tadastream import InferenceOptions  # noqa: E402
from tadastream.demo import demo_voice  # noqa: E402
from tadastream.engine import Engine  # noqa: E402

OPTIONS = [
    InferenceOptions(),
    InferenceOptions(acoustic_cfg_scale=1.0, num_flow_matching_steps=4),
    InferenceOptions(num_acoustic_candidates=2, cfg_schedule="linear"),
    InferenceOptions(text_only_logit_scale=0.5, time_schedule="cosine"),
]


def run(model, voice, jobs, engine: Engine | None) -> list[tuple[torch.Tensor, object]]:
    """(audio, result) per job; with ``engine`` all at once (half joining later), else each alone."""
    if engine is None:
        out = []
        for text, seed, opts in jobs:
            stream = model.generate(voice, text, stream=True, seed=seed, inference_options=opts)
            out.append((torch.cat([c for c, _ in stream]), stream.result))
        return out
    streams, chunks, iters, done = [], [], [], set()

    def join(i):
        text, seed, opts = jobs[i]
        streams.append(model.generate(voice, text, stream=True, seed=seed, inference_options=opts, engine=engine))
        chunks.append([])
        iters.append(iter(streams[-1]))

    first = len(jobs) // 2
    for i in range(first):
        join(i)
    rounds = 0
    while len(streams) < len(jobs) or len(done) < len(streams):
        rounds += 1
        if len(streams) < len(jobs) and rounds % 3 == 0:  # the second half joins one by one
            join(len(streams))
        for i, it in enumerate(iters):  # each next() ticks the shared engine when it has nothing queued
            if i not in done:
                chunk = next(it, None)
                if chunk is None:
                    done.add(i)
                else:
                    chunks[i].append(chunk[0])
    return [(torch.cat(c), s.result) for c, s in zip(chunks, streams)]


def compare(batched, solo) -> dict:
    same_streams = same_frames = frames = same_ids = 0
    max_diff = 0.0
    for (a, ra), (b, rb) in zip(batched, solo):
        ta, tb = ra.time_before[0], rb.time_before[0]
        same_streams += torch.equal(ta, tb)
        n = min(len(ta), len(tb))
        same_frames += int((ta[:n] == tb[:n]).sum())
        frames += max(len(ta), len(tb))
        same_ids += torch.equal(ra.output_text_ids, rb.output_text_ids)
        if a.shape == b.shape:
            max_diff = max(max_diff, float((a - b).abs().max()))
        else:
            max_diff = float("nan")
    return {
        "streams": len(solo),
        "same_durations_streams": same_streams,
        "same_durations_frames": f"{same_frames}/{frames}",
        "same_token_ids_streams": same_ids,
        "max_audio_diff": max_diff,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("tiny", "1b"), default="tiny")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--layout", choices=("optimized", "plain"), default="optimized")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=20, help="text tokens per stream")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    rows = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        ns = argparse.Namespace(mode=args.mode, dtype=dtype, device=args.device, layout=args.layout)
        model, _ = bs.build_model(ns)
        voice = demo_voice(model)
        words = bs.make_text(model.tokenizer, args.tokens).split()
        jobs = [
            (" ".join(words[i % 5 :] + words[: i % 5]).capitalize() + ".", 10 + i, OPTIONS[i % len(OPTIONS)])
            for i in range(args.streams)
        ]
        batched = run(model, voice, jobs, Engine(model, max_streams=args.streams))
        rows[dtype] = compare(batched, run(model, voice, jobs, None))
        print(dtype, rows[dtype])
    bs.save_result(
        args.out,
        f"exactness-{args.mode}-{args.layout}",
        "bench_exactness.py",
        argv,
        mode=args.mode,
        layout=args.layout,
        results=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
