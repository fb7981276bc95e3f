"""Peak memory of reading a long text into a file: does it stay that of one sentence?

    python bench/bench_book_memory.py                      # a 2-hour text, demo model, wav
    python bench/bench_book_memory.py --hours 0.5 --output m4b --subtitles

Runs ``tadastream speak -f TEXT -o OUT --model demo`` as a child process, once for one sentence
and once for a text that takes ``--hours`` to read aloud (bench_longform's narration, about 150
words a minute), and reports each child's peak resident memory (the kernel's ``ru_maxrss``),
the audio it wrote and the ratio long / sentence. Reading a file into files keeps only a few
segments' audio in memory, whatever the length, so the ratio should stay near 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_longform  # noqa: E402
import bench_streaming as bs  # noqa: E402


def run(text_file: Path, out: Path, extra: list[str]) -> dict:
    """One ``speak`` child: its peak RSS (MiB), wall time and what it wrote."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    cmd = [sys.executable, "-m", "tadastream", "speak", "-f", str(text_file), "-o", str(out), "--model", "demo"]
    cmd += ["--seed", "1", "-q", *extra]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    error = child.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"speak failed: {error}")
    return {"rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1), "bytes": out.stat().st_size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0, help="reading time of the long text (default 2)")
    ap.add_argument("--output", default="wav", help="output extension: wav, flac, mp3, m4b ... (default wav)")
    ap.add_argument("--subtitles", action="store_true", help="also write .srt subtitles and .json timestamps")
    ap.add_argument("--flow-steps", type=int, default=2, help="flow-matching steps (default 2: memory, not sound)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON result")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        texts = {
            "one sentence": "The river keeps running past old stone bridges.",
            f"{args.hours:g}-hour text": bench_longform.narration(args.hours * 60),
        }
        for name, text in texts.items():
            source = folder / "text.txt"
            source.write_text(text, encoding="utf-8")
            extra = ["--flow-steps", str(args.flow_steps)]
            if args.subtitles:
                extra += ["--subtitles", str(folder / "out.srt"), "--timestamps", str(folder / "out.json")]
            row = run(source, folder / f"out.{args.output}", extra)
            row["chars"] = len(text)
            rows[name] = row
            print(
                f"{name:>16}: {row['chars']:7d} chars, peak RSS {row['rss_mib']} MiB, {row['wall_s']} s, "
                f"{row['bytes'] / 2**20:.1f} MiB written"
            )
    short, long = rows.values()
    ratio = long["rss_mib"] / short["rss_mib"]
    print(f"peak RSS, long / one sentence: {ratio:.2f}x")
    bs.save_result(
        args.out,
        f"book-memory-{args.output}",
        "bench_book_memory.py",
        argv,
        hours=args.hours,
        rows=rows,
        rss_ratio=round(ratio, 3),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
