"""This checkout against an earlier commit, in one process, turns alternating: is one stream slower?

    python bench/bench_ab.py --rev 0e2e5f5 --dtype fp32 --tokens 10 --rounds 6
    python bench/bench_ab.py --rev HEAD --mode tiny --rounds 2       # the demo model, seconds
    python bench/bench_ab.py --rev 79f6075 --dtype fp32 --quantize w8a8 --rounds 4

The earlier commit's package is extracted (``git archive``) as ``tadastream_ab`` next to a temp
dir and loaded beside this checkout's; both get the same random TADA-1B-shaped (or demo) weights, voice,
text, seed and fixed durations. Each round runs non-streaming ``generate()`` and a streaming one
on each model, the order flipping every round, so drift on a shared machine hits both; the
report gives medians of wall and CPU time and new / old ratios, and for the streams what a
listener got (``tadastream.playback``, from when each chunk reached the loop): time to first
audio, the first chunk's length, time to playable audio and stalls. Works for commits whose
``generation.decode_time`` (before the engine) or ``SpeechProgram._predicted_durations`` (after)
gives the durations.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_streaming as bs  # noqa: E402  (puts src/ on the path when not installed)

from tadastream.demo import demo_tokenizer, demo_voice  # noqa: E402
from tadastream.playback import playback_figures  # noqa: E402


def extract(rev: str, into: Path) -> None:
    """The package of ``rev`` as ``into/tadastream_ab`` (its imports inside are relative)."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", rev, "src/tadastream"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "src" / "tadastream").rename(into / "tadastream_ab")


def fix_old_durations(package) -> None:
    """The earlier commit's durations: the same per-stream pattern as this checkout's benches."""
    import importlib

    try:
        program = importlib.import_module(package + ".generation.program")
        program.SpeechProgram._predicted_durations = bs._fixed_durations
        return
    except ImportError:
        generation = importlib.import_module(package + ".generation")
    state = {"calls": 0}

    def fixed(bits: torch.Tensor, num_bits: int) -> torch.Tensor:
        value = bs._PATTERN[state["calls"] % len(bs._PATTERN)]
        state["calls"] += 1
        return torch.full(bits.shape[:-1], value, dtype=torch.long, device=bits.device)

    def reset() -> None:
        state["calls"] = 0

    generation.decode_time = fixed
    fix_old_durations.reset = reset


def old_model(new, package: str):
    """The earlier commit's TadaForCausalLM with ``new``'s weights and decoder weights."""
    import importlib

    model_mod = importlib.import_module(package + ".model")
    decoder_mod = importlib.import_module(package + ".codec.decoder")
    with torch.device("meta"):
        old = model_mod.TadaForCausalLM(new.config)
    old.to_empty(device="cpu")
    old._init_non_persistent()
    old.load_state_dict(new.state_dict(), strict=False)
    old.lm_head.weight = old.model.embed_tokens.weight
    decoder = decoder_mod.Decoder(new.require_decoder().config)
    decoder.load_state_dict(new.require_decoder().state_dict())
    old.decoder, old.tokenizer, old._codec_source = decoder.eval(), demo_tokenizer(), None
    return old.to(new.dtype).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the earlier commit (e.g. 0e2e5f5)")
    ap.add_argument("--mode", choices=("1b", "tiny"), default="1b")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument(
        "--quantize", choices=("int8", "w8a8"), default=None, help="both models' optimize_for_inference layout"
    )
    ap.add_argument("--tokens", type=int, default=10, help="text tokens (default 10)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bs.fix_durations()
    tmp = Path(tempfile.mkdtemp(prefix="tadastream-ab-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    extract(args.rev, tmp)
    sys.path.insert(0, str(tmp))
    fix_old_durations("tadastream_ab")
    new, _ = bs.build_model(argparse.Namespace(mode=args.mode, dtype=args.dtype, device="cpu"), layout="plain")
    old = old_model(new, "tadastream_ab")
    new.optimize_for_inference(args.quantize)
    old.optimize_for_inference(args.quantize)
    voice = demo_voice(new)
    text = bs.make_text(new.tokenizer, args.tokens)

    heard: dict[str, list] = {}  # per model: (first audio, first chunk, playable, stalls) of each stream

    def run(model, stream: bool, name: str = "") -> tuple[float, float]:
        getattr(fix_old_durations, "reset", lambda: None)()
        torch.manual_seed(0)
        wall, cpu = time.perf_counter(), time.process_time()
        if stream:
            times, sizes = [], []
            for chunk, _sr in model.generate(voice, text, stream=True):
                if chunk.numel():
                    times.append(time.perf_counter() - wall)
                    sizes.append(chunk.numel())
        else:
            model.generate(voice, text)
        spent = time.perf_counter() - wall, time.process_time() - cpu
        if stream and name:
            figures = playback_figures(times, sizes)
            first_chunk = sizes[0] / bs.SAMPLE_RATE
            heard.setdefault(name, []).append(
                (figures.time_to_first_audio, first_chunk, figures.time_to_playable_audio, figures.stall_time)
            )
        return spent

    run(new, False)
    run(old, False)  # warm-up
    times: dict[str, list] = {}
    for i in range(args.rounds):
        order = [("old", old), ("new", new)] if i % 2 == 0 else [("new", new), ("old", old)]
        for name, model in order:
            for stream in (False, True):
                key = f"{name}-{'stream' if stream else 'nonstream'}"
                times.setdefault(key, []).append(run(model, stream, name))
                print(key, *(f"{t:.2f}" for t in times[key][-1]), file=sys.stderr)
    summary = {}
    for kind in ("nonstream", "stream"):
        o, n = times[f"old-{kind}"], times[f"new-{kind}"]
        row = {}
        for j, clock in enumerate(("wall", "cpu")):
            mo, mn = statistics.median(t[j] for t in o), statistics.median(t[j] for t in n)
            row.update({f"{clock}_old_s": mo, f"{clock}_new_s": mn, f"{clock}_new_over_old": mn / mo})
        summary[kind] = row
        print(f"{kind:>9}: wall {row['wall_old_s']:.2f} -> {row['wall_new_s']:.2f} s ({row['wall_new_over_old']:.3f}),"
              f" cpu {row['cpu_old_s']:.2f} -> {row['cpu_new_s']:.2f} s ({row['cpu_new_over_old']:.3f})")  # fmt: skip
    listener = {}
    for name in ("old", "new"):
        first, chunk, playable, stalled = (statistics.median(run[j] for run in heard[name]) for j in range(4))
        listener[name] = {"first_audio_s": first, "first_chunk_s": chunk, "playable_s": playable, "stall_s": stalled}
        print(f"{name} stream: first audio {first:.3f} s (first chunk {chunk * 1000:.0f} ms),"
              f" playable {playable:.3f} s, stalls {stalled:.3f} s (medians)")  # fmt: skip
    bs.save_result(
        args.out,
        f"ab-{args.rev}-{args.mode}-{args.dtype}{f'-{args.quantize}' if args.quantize else ''}-{args.tokens}tok",
        "bench_ab.py",
        argv,
        rev_old=args.rev,
        mode=args.mode,
        dtype=args.dtype,
        quantize=args.quantize,
        text_tokens=args.tokens,
        rounds=args.rounds,
        summary=summary,
        listener=listener,
        runs=times,
        heard=heard,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
