"""The bench scripts run (tiny mode) and write the figures the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tadastream.playback import playback_figures
from tests.helpers.paths import ROOT

BENCH = ROOT / "bench"


def _assert_playback(row: dict) -> None:
    """A stream's listener figures exist and agree with each other."""
    assert row["playable_s"] >= row["ttfa_s"] > 0
    assert isinstance(row["stall_count"], int) and row["stall_count"] >= 0
    assert row["stall_s"] >= 0 and (row["stall_s"] > 0) == (row["stall_count"] > 0)


def test_streaming_bench_tiny_writes_its_figures(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_streaming.py"), "--mode", "tiny", "--texts", "short"]
    cmd += ["--no-mem", "--no-incremental", "--repeat", "1", "--first-chunk-ms", "0,adaptive", "--out", str(tmp_path)]
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

    # time to playable audio and stalls, for the main row (adaptive) and a row per first-chunk policy
    assert result["first_chunk_policies"] == {"0ms": 0.0, "adaptive": None}
    assert result["first_chunk_policy"] == row["first_chunk_policy"] == "adaptive"
    policies = row["first_chunk_policies"]
    assert list(policies) == ["0ms", "adaptive"]
    assert {k: policies["adaptive"][k] for k in ("ttfa_s", "playable_s", "stall_count")} == {
        k: row[k] for k in ("ttfa_s", "playable_s", "stall_count")
    }
    for fig in [row, *policies.values()]:
        _assert_playback(fig)
        assert fig["stream_samples"] == row["stream_samples"] == sum(fig["chunk_samples"])  # same audio
        assert fig["chunks"] == len(fig["chunk_times"]) and fig["buffering_s"] >= 0
        again = playback_figures(fig["chunk_times"], fig["chunk_samples"], 24000)
        assert again.time_to_playable_audio == pytest.approx(fig["playable_s"])
        assert (again.stall_count, again.stall_time) == (fig["stall_count"], pytest.approx(fig["stall_s"]))
    # min_first_chunk_ms=0 sends the first final samples at once: a first chunk no longer than the held one
    assert policies["0ms"]["first_chunk_s"] <= policies["adaptive"]["first_chunk_s"]
    table = proc.stdout[proc.stdout.index("first-chunk policies") :]
    assert "playable s" in proc.stdout and "stalls" in table
    assert [line.split()[1] for line in table.splitlines()[3:5]] == ["0ms", "adaptive"]


def _run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_exactness_bench_tiny_reports_batched_equal_to_solo(tmp_path):
    _run("bench_exactness.py", "--dtypes", "fp32", "--streams", "3", "--tokens", "8", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-exactness-tiny-optimized.json")
    row = json.loads(path.read_text())["results"]["fp32"]
    assert row["streams"] == 3
    assert row["same_durations_streams"] == 3 and row["same_token_ids_streams"] == 3
    assert row["max_audio_diff"] <= 1e-4


def test_concurrency_bench_tiny_serves_concurrent_streams(tmp_path):
    args = ["--mode", "tiny", "--dtype", "fp32", "--levels", "1,2", "--tokens", "8"]
    _run("bench_concurrency.py", *args, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-concurrency-tiny-fp32.json")
    levels = json.loads(path.read_text())["levels"]
    assert [lv["streams"] for lv in levels] == [1, 2]
    one, two = levels
    assert two["tokens"] == 2 * one["tokens"] > 0  # same text, same fixed durations: same tokens each
    for level in levels:
        assert all(r["ttfa_s"] < r["total_s"] for r in level["requests"])
        for r in level["requests"]:
            _assert_playback(r)
            assert r["chunks"] >= 1
        # each stream's playable >= its first audio, so the mean and the p95 are too
        assert level["playable_mean_s"] >= level["ttfa_mean_s"] and level["playable_p95_s"] >= level["ttfa_p95_s"]
        assert level["stall_count"] == sum(r["stall_count"] for r in level["requests"])
        assert level["stall_s"] == pytest.approx(sum(r["stall_s"] for r in level["requests"]))
        assert 0 <= level["stalled_streams"] <= level["streams"]
        assert level["tokens_per_s"] > 0 and level["peak_rss_mb"] > 0
        assert level["ticks"] > 0 and level["tick_s"]["llm"] > 0 and level["tick_s"]["flow"] > 0
        assert {r["audio_s"] for r in level["requests"]} == {one["requests"][0]["audio_s"]}


def test_ab_bench_tiny_compares_against_a_commit(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("bench_ab.py extracts a commit: needs the git checkout")
    _run("bench_ab.py", "--rev", "HEAD", "--mode", "tiny", "--rounds", "1", "--tokens", "6", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-ab-HEAD-tiny-fp32-6tok.json")
    result = json.loads(path.read_text())
    for kind in ("nonstream", "stream"):
        assert result["summary"][kind]["wall_new_s"] > 0 and result["summary"][kind]["wall_old_s"] > 0
    assert len(result["runs"]["old-stream"]) == len(result["runs"]["new-stream"]) == 1
    # what a listener got, per side: medians of the streams in runs
    for name in ("old", "new"):
        side, (run,) = result["listener"][name], result["heard"][name]
        assert side == dict(zip(("first_audio_s", "first_chunk_s", "playable_s", "stall_s"), run))
        assert 0 < side["first_audio_s"] <= side["playable_s"] and side["first_chunk_s"] > 0 and side["stall_s"] >= 0


def test_longform_bench_tiny_reports_first_audio_and_memory(tmp_path):
    _run("bench_longform.py", "--minutes", "0.4", "--flow-steps", "2", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-longform-tiny-fp32.json")
    result = json.loads(path.read_text())
    short, long = result["short"], result["long"]
    assert short["segments"] == 1 and long["segments"] >= 2 and long["segments_spoken"] == long["segments"]
    assert long["audio_s"] > short["audio_s"] > 0 and long["time_to_first_audio_s"] > 0
    assert len(long["memory_by_segment"]) == long["segments"] and long["kv_mib_max"] > 0
    assert result["first_audio_ratio"] == round(long["time_to_first_audio_s"] / short["time_to_first_audio_s"], 3)


def test_first_audio_bench_tiny_joins_a_busy_engine(tmp_path):
    args = ["--mode", "tiny", "--dtype", "fp32", "--busy", "1", "--policies", "off,always", "--repeat", "1"]
    _run("bench_first_audio.py", *args, "--tokens", "8", "--busy-tokens", "60", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-first-audio-tiny-fp32.json")
    rows = {row["policy"]: row for row in json.loads(path.read_text())["rows"]}
    assert rows["off"]["boost_passes"] == 0 < rows["always"]["boost_passes"]
    for row in rows.values():
        assert row["busy"] == row["busy_generating_at_first_audio"] == 1, "the joiner ran beside the busy stream"
        assert 0 < row["ttfa_s"] and 0 < row["solo_ttfa_s"] and row["busy_steps_per_s"] > 0
        assert row["ttfa_over_solo"] == pytest.approx(row["ttfa_s"] / row["solo_ttfa_s"])
