"""Long-form narration: is a 10-minute text's first audio as soon as a short text's, and memory flat?

    python bench/bench_longform.py                                  # demo model, a 10-minute text
    python bench/bench_longform.py --mode 1b --dtype bf16 --max-seconds 120
    python bench/bench_longform.py --mode 1b --dtype bf16 --parallel 1,2,4,8   # book segments at once

Speaks one sentence (a single generation), then a text that takes ``--minutes`` to read aloud
(about 150 words a minute, in paragraphs) through long-form streaming, and reports time to first
audio of both, the audio made, the real-time factor, stalls a player starting at the first
chunk would hit, and the process's resident memory and KV cache at every segment start (flat
means the document's length does not cost memory). Durations follow bench_streaming's fixed
pattern, so the audio length is the same on every machine. ``--max-seconds`` stops the long
text early (the TADA-1B shapes on a CPU need minutes per minute of audio); the figures then
cover the part spoken.

``--parallel 1,2,4,8`` instead narrates a book of ``--segments`` segments with the book narrator
at each level (that many segments generating at once on one engine) and reports wall time,
tokens per second and the speed-up over one at a time, and checks that every level made the
same audio (batched segments are their solo audio).
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

from tadastream import InferenceOptions  # noqa: E402
from tadastream.config import SAMPLE_RATE  # noqa: E402
from tadastream.demo import demo_voice  # noqa: E402
from tadastream.timeline import simulate_playback  # noqa: E402

WORDS_PER_MINUTE = 150


def narration(minutes: float) -> str:
    """Sentences of 9-15 words, five to a paragraph, about ``minutes`` of reading."""
    words, sentences, i = round(minutes * WORDS_PER_MINUTE), [], 0
    while sum(len(s.split()) for s in sentences) < words:
        n = 9 + len(sentences) % 7
        sentences.append(" ".join(bs.WORDS[(i + k) % len(bs.WORDS)] for k in range(n)).capitalize() + ".")
        i += n
    paragraphs = [" ".join(sentences[p : p + 5]) for p in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs)


def speak(model, voice, text: str, options, max_seconds: float | None, long_form: bool) -> dict:
    bs.reset_durations(0)
    stream = model.generate(voice, text, stream=True, seed=1, inference_options=options, long_form=long_form)
    samples, segment, memory = 0, -1, []
    start = time.perf_counter()
    times, seconds = [], []
    for chunk, _ in stream:
        times.append(time.perf_counter() - start)
        seconds.append(chunk.numel() / SAMPLE_RATE)
        samples += chunk.numel()
        index = getattr(stream, "segment_index", 0)
        if index != segment:
            segment = index
            kv = stream.engine.stats()["kv_cache_bytes"]
            memory.append({"segment": index, "rss_mib": round(bs._proc_kib("VmRSS") / 1024, 1), "kv_mib": kv / 2**20})
        if max_seconds is not None and times[-1] > max_seconds:
            stream.close()
            break
    wall = time.perf_counter() - start
    audio = samples / SAMPLE_RATE
    segments = len(getattr(stream, "segments", [text]))
    rss = [m["rss_mib"] for m in memory]
    return {
        "chars": len(text),
        "segments": segments,
        "segments_spoken": segment + 1,
        "time_to_first_audio_s": round(times[0], 3),
        "audio_s": round(audio, 2),
        "wall_s": round(wall, 2),
        "rtf": round(wall / audio, 3) if audio else None,
        "stall_s": round(simulate_playback(times, seconds).stall_time, 3),
        "rss_mib_first_last_max": [rss[0], rss[-1], max(rss)],
        "kv_mib_max": round(max(m["kv_mib"] for m in memory), 2),
        "memory_by_segment": memory,
    }


def narrate_book(model, voice, options, segments: int, levels: list[int]) -> list[dict]:
    """The same book narrated with 1, 2, 4 ... segments at once: wall time, tokens/s, equal audio."""
    from tadastream.books import Book, Chapter
    from tadastream.books.narrate import Audio, Narrator, plan_book
    from tadastream.engine import Engine
    from tadastream.generation import SpeechRequest

    sentences = narration(segments * 0.2).replace("\n\n", " ").split(". ")
    text = "\n\n".join(". ".join(sentences[i : i + 2]) + "." for i in range(0, 2 * segments, 2))
    book = Book("bench", (Chapter("bench", text),))
    rows, reference = [], None
    for level in levels:
        bs.reset_durations(0)
        request = SpeechRequest(text, voice=voice, options=options, seed=1, segment_chars=200)
        plan = plan_book(model, book, request)
        engine = Engine(model, max_streams=level)
        start = time.perf_counter()
        with Narrator(model, plan, request, engine, parallel=level) as narrator:
            audio = torch.cat([e.samples for e in narrator if isinstance(e, Audio)])
        wall = time.perf_counter() - start
        reference = audio if reference is None else reference
        same = float((audio - reference).abs().max()) if audio.shape == reference.shape else None
        rows.append(
            {
                "parallel": level,
                "segments": plan.total,
                "tokens": sum(plan.tokens),
                "audio_s": round(audio.numel() / SAMPLE_RATE, 2),
                "wall_s": round(wall, 2),
                "tokens_per_s": round(sum(plan.tokens) / wall, 2),
                "rtf": round(wall / (audio.numel() / SAMPLE_RATE), 3),
                "max_diff_vs_1": same,
            }
        )
        print(f"parallel {level}: {wall:.2f} s", flush=True)
    for row in rows:
        row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
        print(
            f"parallel {row['parallel']}: {row['segments']} segments, {row['tokens']} tokens, {row['audio_s']} s audio "
            f"in {row['wall_s']} s ({row['tokens_per_s']} tokens/s, RTF {row['rtf']}), speed-up {row['speedup']}x, "
            f"max |diff| vs parallel 1: {row['max_diff_vs_1']}"
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("tiny", "1b"), default="tiny")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=10.0, help="reading time of the long text (default 10)")
    ap.add_argument("--flow-steps", type=int, default=10, help="flow-matching steps per token (default 10)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop the long text after this wall time")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON result")
    ap.add_argument("--parallel", default=None, help="narrate a book at these levels instead, e.g. 1,2,4,8")
    ap.add_argument("--segments", type=int, default=16, help="segments of the --parallel book (default 16)")
    args = ap.parse_args(argv)
    args.layout = "optimized"
    if args.threads:
        torch.set_num_threads(args.threads)
    bs.fix_durations()
    model, _ = bs.build_model(args)
    voice = demo_voice(model)
    options = InferenceOptions(num_flow_matching_steps=args.flow_steps)
    if args.parallel:
        levels = [int(x) for x in args.parallel.split(",")]
        rows = narrate_book(model, voice, options, args.segments, levels)
        name = f"longform-parallel-{args.mode}-{args.dtype}"
        bs.save_result(args.out, name, "bench_longform.py", argv, mode=args.mode, dtype=args.dtype, levels=rows)
        return 0
    short = speak(model, voice, "The river keeps running past old stone bridges.", options, None, long_form=False)
    long = speak(model, voice, narration(args.minutes), options, args.max_seconds, long_form=True)
    for name, row in (("one sentence", short), (f"{args.minutes:g}-minute text", long)):
        print(
            f"{name:>16}: {row['chars']:6d} chars, {row['segments_spoken']}/{row['segments']} segments, "
            f"first audio {row['time_to_first_audio_s']:.3f} s, {row['audio_s']:.1f} s audio in {row['wall_s']:.1f} s "
            f"(RTF {row['rtf']}), stalls {row['stall_s']} s, RSS first/last/max {row['rss_mib_first_last_max']} MiB, "
            f"KV max {row['kv_mib_max']} MiB"
        )
    ratio = long["time_to_first_audio_s"] / short["time_to_first_audio_s"]
    print(f"first audio, long / short: {ratio:.2f}x")
    bs.save_result(
        args.out,
        f"longform-{args.mode}-{args.dtype}",
        "bench_longform.py",
        argv,
        mode=args.mode,
        dtype=args.dtype,
        minutes=args.minutes,
        short=short,
        long=long,
        first_audio_ratio=round(ratio, 3),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
