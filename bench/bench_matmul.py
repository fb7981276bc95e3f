"""What bounds a TADA step on this machine: weight-reading matmuls at 1-4 rows.

    python bench/bench_matmul.py            # eager variants, a few seconds
    python bench/bench_matmul.py --compile  # also torch.compile (inductor), minutes of compiling

A step multiplies the LLM's 2 rows (text + guidance) and the flow head's 2 rows (its
classifier-free guidance pair) by every weight, so its time is bytes of weights / the rate a
matmul reads them. Times a stack of 2048x8192 weights (the head's and Llama's FFN shape, 8 of
them: larger than any cache) and reports GB/s of weights read; compares with the rate a plain
reduction streams memory. Writes ``bench/results/<date>-<machine>-matmul.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import tadastream  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tadastream.nn.linear import (  # noqa: E402
    DynamicInt8Linear,
    Int8Linear,
    PackedLinear,
    fbgemm_available,
    packing_available,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streaming import machine_name  # noqa: E402

HERE = Path(__file__).resolve().parent
IN, OUT, COUNT = 2048, 8192, 8


def per_call(fn, repeat: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Int4Linear:
    """int4 weight-only, symmetric, one scale per 128 inputs: PyTorch's CPU int4 kernel (for
    comparison only; the package does not ship this layout)."""

    GROUP = 128

    def __init__(self, weight: torch.Tensor):
        groups = weight.float().reshape(weight.shape[0], -1, self.GROUP)
        scale = groups.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 7
        q = (torch.round(groups / scale).clamp(-8, 7) + 8).to(torch.int32).reshape(weight.shape)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        zero = torch.zeros_like(scale)  # the kernel computes (q - 8) * scale + zero
        self.scales = torch.cat([scale, zero], -1).transpose(0, 1).contiguous().to(weight.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.GROUP, self.scales)


def stream_rate(repeat: int) -> float:
    """GB/s a sum over 1 GiB reads: what the memory delivers to a simple streaming kernel."""
    data = torch.ones(2**30 // 4)
    return data.numel() * 4 / per_call(lambda: data.sum(), repeat) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,20", help="batch rows (default 1,2,4,20: 20 as the head's batched adaLN)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per variant, fastest kept")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the stack (slow to compile)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_list = [int(r) for r in args.rows.split(",")]
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(OUT, IN, generator=gen) * 0.02 for _ in range(COUNT)]
    results: list[dict] = []
    memory = stream_rate(args.repeat)
    print(f"memory read by a sum over 1 GiB: {memory:.1f} GB/s; threads {torch.get_num_threads()}")
    print(f"{'variant':<34}{'rows':>5}{'ms / 2048x8192':>16}{'GB/s of bf16 weights':>22}")

    def record(name: str, dtype: torch.dtype, rows: int, layers) -> None:
        x = torch.randn(rows, IN, generator=gen).to(dtype)
        with torch.inference_mode():
            t = per_call(lambda: [layer(x) for layer in layers], args.repeat) / COUNT
        rate = OUT * IN * 2 / t / 1e9  # as if the weights were bf16: comparable across variants
        results.append({"variant": name, "rows": rows, "ms": t * 1e3, "bf16_equiv_gb_s": rate})
        print(f"{name:<34}{rows:>5}{t * 1e3:>16.2f}{rate:>22.1f}")

    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        weights = [w.to(dtype) for w in base]
        plain = [lambda x, w=w: F.linear(x, w) for w in weights]
        packed = [PackedLinear(w) for w in weights] if packing_available(dtype) else None
        int8 = [Int8Linear(w) for w in weights]
        # with float32 activations PyTorch's int4 kernel was ~20x slower here: bf16 only
        int4 = (
            [Int4Linear(w) for w in weights]
            if dtype == torch.bfloat16 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
            else None
        )
        w8a8 = [DynamicInt8Linear(w) for w in weights] if dtype == torch.float32 and fbgemm_available() else None
        for rows in rows_list:
            record(f"{tag} F.linear (ATen)", dtype, rows, plain)
            if packed:
                record(f"{tag} oneDNN prepacked", dtype, rows, packed)
            record(f"{tag} activations, int8 weights", dtype, rows, int8)
            if int4:
                record(f"{tag} activations, int4 weights", dtype, rows, int4)
            if w8a8:
                record("w8a8 (fbgemm, per-row scales)", dtype, rows, w8a8)
        if args.compile:
            import torch._inductor.config as inductor

            inductor.freezing = True
            stack = torch.nn.ModuleList(torch.nn.Linear(IN, OUT, bias=False) for _ in range(COUNT)).to(dtype)
            for lin, w in zip(stack, weights):
                lin.weight.data.copy_(w)
            stack.eval()
            compiled = torch.compile(lambda x, stack=stack: [lin(x) for lin in stack])
            for rows in rows_list:
                # one call runs the whole stack, as COUNT eager layers do: the same per-layer division
                record(f"{tag} torch.compile (freezing)", dtype, rows, [compiled])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{_dt.date.today().isoformat()}-{machine_name()}-matmul.json"
    path.write_text(
        json.dumps(
            {
                "date": _dt.datetime.now().isoformat(timespec="seconds"),
                "machine": machine_name(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "memory_sum_gb_s": memory,
                "shape": [OUT, IN],
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
