"""Would a decode worker thread help on this CPU? Model work and decode work, one after the other
against side by side.

    python bench/bench_decode_worker.py                 # bf16, 1 GB of weights a tick, 32-frame decode calls
    python bench/bench_decode_worker.py --dtype fp32 --frames 8

A tick's model work stands in as reading ``--weights-gb`` of prepacked weights with 4 rows (what
a TADA-1B step costs: reading its weights); the decode work is the real codec decoder's shapes
(random weights) decoding ``--frames`` frames of one stream. Each round runs both one after the
other, then both at once (the decode on a second thread, as a decode worker would), and the
report gives the median seconds of each and the ratio: below 1, a worker would shorten a tick.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_streaming as bs  # noqa: E402  (puts src/ on the path when not installed)
from bench_decoder import build_decoder  # noqa: E402

from tadastream.codec.batch import decode_calls  # noqa: E402
from tadastream.codec.streaming import StreamingDecoder  # noqa: E402
from tadastream.nn.linear import PackedLinear, packing_available  # noqa: E402


def model_work(weights: list, x: torch.Tensor) -> None:
    for w in weights:
        w(x)


def decode_work(decoder, frames: int) -> None:
    sd = StreamingDecoder(decoder, deferred=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(frames // 4 + 6):  # past the first audible call, then one call of ``frames``
        sd.decode_block(torch.randn(decoder.config.embed_dim, generator=g), 4)
        if (call := sd.take_call()) is not None:
            decode_calls(decoder, [call])
            sd.complete(call)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--weights-gb", type=float, default=1.0)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    size = 2048
    count = max(1, int(args.weights_gb * 2**30 / (size * 4 * size * dtype.itemsize)))
    make = PackedLinear if packing_available(dtype) else (lambda w: torch.nn.Linear(size, 4 * size, bias=False))
    weights = [make(torch.randn(4 * size, size, dtype=dtype) * 0.02) for _ in range(count)]
    x = torch.randn(4, size, dtype=dtype)
    decoder = build_decoder().to(dtype).eval()
    serial, parallel, model_s, decode_s = [], [], [], []
    with torch.inference_mode():
        model_work(weights, x)
        decode_work(decoder, args.frames)
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            model_work(weights, x)
            t1 = time.perf_counter()
            decode_work(decoder, args.frames)
            t2 = time.perf_counter()
            worker = threading.Thread(target=lambda: decode_work(decoder, args.frames))
            worker.start()
            model_work(weights, x)
            worker.join()
            t3 = time.perf_counter()
            model_s.append(t1 - t0)
            decode_s.append(t2 - t1)
            serial.append(t2 - t0)
            parallel.append(t3 - t2)
    row = {
        "model_s": statistics.median(model_s),
        "decode_s": statistics.median(decode_s),
        "serial_s": statistics.median(serial),
        "side_by_side_s": statistics.median(parallel),
    }
    row["ratio"] = row["side_by_side_s"] / row["serial_s"]
    gb = count * size * 4 * size * dtype.itemsize / 2**30
    print(
        f"{args.dtype}, {torch.get_num_threads()} threads, {count} weights ({gb:.2f} GB): "
        f"model {row['model_s']:.3f} s, decode ({args.frames} frames) {row['decode_s']:.3f} s; one after the other "
        f"{row['serial_s']:.3f} s, side by side {row['side_by_side_s']:.3f} s ({row['ratio']:.2f}x)"
    )
    fields = {k: v for k, v in vars(args).items() if k != "out"}
    bs.save_result(args.out, f"decode-worker-{args.dtype}", "bench_decode_worker.py", argv, **fields, **row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
