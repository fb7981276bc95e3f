"""Where a generate() spends its time: torch.profiler over one generation, by operator.

    python bench/bench_profile.py --mode 1b --dtype bf16            # TADA-1B shapes, short text
    python bench/bench_profile.py --mode tiny --layout plain
    python bench/bench_profile.py --mode 1b --dtype fp32 --layout w8a8

Same models, fixed durations and texts as ``bench_streaming.py``; prints the share of matmuls
(every kernel that multiplies activations by weights) and the top operators by own time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_streaming as bs  # noqa: E402  (also puts src/ on the path when not installed)

from tadastream.demo import demo_voice  # noqa: E402

MATMUL_OPS = (
    "mkldnn::_linear_pointwise",
    "aten::_weight_int8pack_mm",
    "quantized::linear_dynamic",
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("tiny", "1b"), default="1b")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--layout", choices=("optimized", "plain", "int8", "w8a8"), default="optimized")
    ap.add_argument("--text", choices=tuple(bs.TEXT_TOKENS), default="short")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    bs.fix_durations()
    model, _ = bs.build_model(args)
    voice = demo_voice(model)
    text = bs.make_text(model.tokenizer, bs.TEXT_TOKENS[args.text])
    bs.reset_durations()
    model.generate(voice, "Hello there.")  # warm-up
    bs.reset_durations()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.generate(voice, text)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"{args.mode} {args.dtype} {args.layout}, {args.text} text: {total / 1e6:.2f} s of operator time")
    print(f"matmuls ({', '.join(MATMUL_OPS)}): {100 * matmul / total:.1f} %")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"  {100 * e.self_cpu_time_total / total:5.1f} %  {e.count:6d} calls  {e.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
