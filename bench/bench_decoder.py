"""Streaming vs one-pass codec decode on the real decoder shapes (random weights).

    python bench/bench_decoder.py                      # ~50, ~250, ~1000 frames; windows 25,100,400
    python bench/bench_decoder.py --lengths 50,1000 --windows 100 --repeat 1 --no-mem

Builds ``Decoder(DecoderConfig())`` (~119 M parameters: 1024-wide 6-layer block-attention
transformer + 1536-channel waveform CNN) on the meta device, materialises it and initialises it
so the signal neither vanishes nor explodes: Linear/conv weights N(0, 0.02), LayerNorm 1/0,
weight-norm g = ||v|| (effective weight = v), Snake alpha U(0.5, 1.5). Utterances are tokens
with a fixed 4-12 frame duration cycle and random acoustic vectors.

Per length: one-pass time (``Decoder.forward`` on the ``expand_tokens`` frames), streaming time
(``StreamingDecoder.decode_block`` per token + ``flush``) per ``window_size``, their ratio, the
number of decode calls, time to the first streamed samples, the largest difference between the
streamed and the one-pass audio, and peak RSS of one streaming decode in a fresh process.
Minimum of ``--repeat`` runs. Writes ``bench/results/<date>-<machine>-decoder.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    import tadastream  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tadastream.codec.decoder import Decoder, expand_tokens  # noqa: E402
from tadastream.codec.streaming import StreamingDecoder  # noqa: E402
from tadastream.config import DecoderConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
_PATTERN = (4, 7, 5, 9, 6, 12, 8, 4, 10, 5, 11, 6)  # frames per token, mean 7.25 (as bench_streaming.py)


@torch.no_grad()
def build_decoder(seed: int = 0) -> Decoder:
    with torch.device("meta"):
        decoder = Decoder(DecoderConfig())
    decoder.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    norm_params = set()
    for module in decoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            if module.weight is not None:
                module.weight.fill_(1.0)
                norm_params.add(id(module.weight))
            if module.bias is not None:
                module.bias.zero_()
                norm_params.add(id(module.bias))
    params = dict(decoder.named_parameters())
    for name, p in params.items():
        if id(p) in norm_params or name.endswith("original0"):
            continue
        if name.endswith("alpha"):
            p.uniform_(0.5, 1.5, generator=g)
        elif p.dim() == 1:
            p.normal_(0.0, 0.02, generator=g)  # biases: small, non-zero like trained ones
        else:
            p.normal_(0.0, 0.02, generator=g)
    for name, p in params.items():
        if name.endswith("original0"):  # weight-norm g := ||v|| over v's non-g dims
            v = params[name[: -len("original0")] + "original1"]
            dims = [i for i in range(v.dim()) if p.shape[i] == 1]
            p.copy_(torch.linalg.vector_norm(v, dim=dims, keepdim=True))
    for name, buf in decoder.named_buffers():  # non-persistent buffers (rope tables, masks) if any
        if buf.is_floating_point() and not torch.isfinite(buf).all():
            raise RuntimeError(f"uninitialised buffer {name}")
    return decoder.eval()


def make_utterance(target_frames: int, embed_dim: int, seed: int = 1):
    """(vectors (N, embed), time_before (N+1,)): tokens of 4-12 frames until ~target_frames."""
    durations = []
    while sum(durations) < target_frames:
        durations.append(_PATTERN[len(durations) % len(_PATTERN)])
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(len(durations), embed_dim, generator=g)
    time_before = torch.tensor(durations + [_PATTERN[len(durations) % len(_PATTERN)]])
    return vectors, time_before


def stream_decode(decoder: Decoder, vectors, time_before, window: int):
    sd = StreamingDecoder(decoder, window_size=window)
    pieces = []
    t0 = time.perf_counter()
    first = None
    for k in range(vectors.shape[0]):
        out = sd.decode_block(vectors[k], int(time_before[k]))
        if out.numel() and first is None:
            first = time.perf_counter() - t0
        pieces.append(out)
    pieces.append(sd.flush(int(time_before[-1])))
    total = time.perf_counter() - t0
    if first is None:
        first = total
    return total, first, sd.calls, torch.cat(pieces)


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mem_child(length: int, window: int, kind: str) -> None:
    decoder = build_decoder()
    vectors, time_before = make_utterance(length, decoder.config.embed_dim)
    with torch.inference_mode():
        w_vec, w_tb = make_utterance(20, decoder.config.embed_dim)  # warm-up: allocator, kernels
        stream_decode(decoder, w_vec, w_tb, window)
        base = _proc_kib("VmRSS") / 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if kind == "stream":
            stream_decode(decoder, vectors, time_before, window)
        else:
            decoder(expand_tokens(vectors, time_before).unsqueeze(0))
    print(json.dumps({"base_mb": base, "peak_mb": _proc_kib("VmHWM") / 1024}))


def peak_memory(length: int, window: int, kind: str, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--_mem", f"{length},{window},{kind}"]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine_name() -> str:
    name = f"{platform.system()}-{platform.machine()}-{os.cpu_count()}cpu-torch{torch.__version__}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="50,250,1000", help="target frames per utterance (50 frames = 1 s)")
    ap.add_argument("--windows", default="100,25,400", help="StreamingDecoder window_size values")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (minimum kept)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the decoder's dtype (default fp32)")
    ap.add_argument("--mem", action=argparse.BooleanOptionalAction, default=True, help="peak RSS per case")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--_mem", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._mem:
        length, window, kind = args._mem.split(",")
        _mem_child(int(length), int(window), kind)
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    windows = [int(x) for x in args.windows.split(",")]

    t0 = time.perf_counter()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    decoder = build_decoder().to(dtype)
    n_params = sum(p.numel() for p in decoder.parameters())
    print(
        f"decoder {n_params / 1e6:.1f} M params, built in {time.perf_counter() - t0:.1f} s, "
        f"threads {torch.get_num_threads()}"
    )
    spf = decoder.samples_per_frame

    rows = []
    with torch.inference_mode():
        w_vec, w_tb = make_utterance(30, decoder.config.embed_dim)
        decoder(expand_tokens(w_vec, w_tb).unsqueeze(0).to(dtype))
        stream_decode(decoder, w_vec, w_tb, 100)
        for length in lengths:
            vectors, time_before = make_utterance(length, decoder.config.embed_dim)
            frames = expand_tokens(vectors, time_before).unsqueeze(0).to(dtype)
            t_one, ref = float("inf"), None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                ref = decoder(frames).reshape(-1).float()
                t_one = min(t_one, time.perf_counter() - t0)
            t_win = float("inf")  # what non-streaming generate() runs: block-wise, window-sized calls
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                StreamingDecoder(decoder, window_size=100).decode(frames[0])
                t_win = min(t_win, time.perf_counter() - t0)
            print(
                f"{frames.shape[1]} frames ({vectors.shape[0]} tokens, {ref.numel() / 24000:.2f} s audio): "
                f"one-pass {t_one:.3f} s, windowed one-pass {t_win:.3f} s, audio std {ref.std().item():.4f}, "
                f"all-zero {bool((ref == 0).all())}",
                flush=True,
            )
            for window in windows:
                best = (float("inf"),)
                for _ in range(args.repeat):
                    res = stream_decode(decoder, vectors, time_before, window)
                    if res[0] < best[0]:
                        best = res
                t_str, t_first, calls, audio = best
                audio = audio.float()
                n = min(audio.numel(), ref.numel())
                rows.append(
                    {
                        "target_frames": length,
                        "frames": int(frames.shape[1]),
                        "tokens": int(vectors.shape[0]),
                        "audio_s": ref.numel() / 24000,
                        "window": window,
                        "onepass_s": t_one,
                        "stream_s": t_str,
                        "stream_over_onepass": t_str / t_one,
                        "windowed_onepass_s": t_win,
                        "stream_over_windowed": t_str / t_win,
                        "first_samples_s": t_first,
                        "calls": calls,
                        "samples_stream": int(audio.numel()),
                        "samples_onepass": int(ref.numel()),
                        "max_abs_diff": (audio[:n] - ref[:n]).abs().max().item(),
                        "audio_std": ref.std().item(),
                        "samples_per_frame": spf,
                    }
                )
                r = rows[-1]
                print(
                    f"  window {window}: stream {t_str:.3f} s ({r['stream_over_onepass']:.3f}x), "
                    f"{calls} calls, max|diff| {r['max_abs_diff']:.2e}",
                    flush=True,
                )

    mem = {}
    if args.mem and Path("/proc/self/status").exists():
        for length in lengths:
            for kind in ("stream", "onepass"):
                m = peak_memory(length, 100, kind, args.threads)
                m["growth_mb"] = m["peak_mb"] - m["base_mb"]
                mem[f"{kind}_{length}"] = m
                print(f"peak RSS {kind} {length} frames: {m['peak_mb']:.0f} MB (growth {m['growth_mb']:.0f} MB)")

    print()
    head = (
        f"{'frames':>7}{'tokens':>7}{'audio s':>8}{'window':>7}{'1pass s':>9}{'stream s':>9}"
        f"{'str/1p':>8}{'win 1p s':>9}{'str/win':>8}{'calls':>6}{'1st s':>7}{'max|diff|':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['frames']:>7}{r['tokens']:>7}{r['audio_s']:>8.2f}{r['window']:>7}{r['onepass_s']:>9.3f}"
            f"{r['stream_s']:>9.3f}{r['stream_over_onepass']:>8.3f}{r['windowed_onepass_s']:>9.3f}"
            f"{r['stream_over_windowed']:>8.3f}{r['calls']:>6}{r['first_samples_s']:>7.3f}"
            f"{r['max_abs_diff']:>10.2e}"
        )
    ratios = {}
    if mem:
        # long vs short, and long vs the next shorter: a short utterance never reaches window-sized
        # calls, so the second pair shows whether streaming memory stops growing with length
        lg = lengths[-1]
        for other in dict.fromkeys((lengths[0], lengths[-2] if len(lengths) > 1 else lengths[0])):
            if other == lg:
                continue
            for kind in ("stream", "onepass"):
                a, b = mem[f"{kind}_{other}"], mem[f"{kind}_{lg}"]
                ratios[f"{kind}_peak_rss_{lg}_over_{other}"] = b["peak_mb"] / a["peak_mb"]
                growth = b["growth_mb"] / a["growth_mb"] if a["growth_mb"] > 0 else None
                ratios[f"{kind}_rss_growth_{lg}_over_{other}"] = growth
        print()
        for k, m in mem.items():
            print(f"{k:>14}: peak {m['peak_mb']:.0f} MB, base {m['base_mb']:.0f} MB, growth {m['growth_mb']:.0f} MB")
        for k, v in ratios.items():
            print(f"{k}: {v:.3f}" if v is not None else f"{k}: n/a")

    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_name(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "decoder_params": n_params,
        "duration_pattern_frames": list(_PATTERN),
        "repeat": args.repeat,
        "rows": rows,
        "memory": mem,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.dtype == "fp32" else f"-{args.dtype}"
    path = args.out / f"{_dt.date.today().isoformat()}-{machine_name()}-decoder{suffix}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
