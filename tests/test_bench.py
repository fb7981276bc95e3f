"""The bench scripts run (tiny mode) and write the figures the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_streaming_bench_tiny_writes_its_figures(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_streaming.py"), "--mode", "tiny", "--texts", "short"]
    cmd += ["--no-mem", "--no-incremental", "--repeat", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*-tiny-fp32-optimized.json")
    result = json.loads(path.read_text())
    row = result["texts"]["short"]
    assert row["stream_samples"] / 24000 == row["audio_s"]  # streamed as much audio as generated
    assert row["ttfa_s"] < row["stream_total_s"]
    assert row["llm_s_per_token"] > 0 and row["flow_s_per_token"] > 0
    assert result["ratios"]["stream_total_over_nonstream_total"]["short"] > 0
    assert result["layout"] == "optimized" and "bench_streaming.py" in result["command"]
