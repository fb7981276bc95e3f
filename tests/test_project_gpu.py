"""bench/project_gpu.py: the GPU sizing projection counts what the engine reads and computes, and its
arithmetic behaves (more bandwidth, more streams; ticks grow with streams; a bandwidth-bound tick is
bytes / bandwidth; the decoder's counted FLOPs are its analytic count)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import pytest

from tadastream.config import TADA_1B, DecoderConfig
from tests.helpers.paths import ROOT


@pytest.fixture(scope="module")
def pg():
    spec = importlib.util.spec_from_file_location("project_gpu", ROOT / "bench" / "project_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["project_gpu"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TINY_LLM = {
    **TADA_1B,
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "acoustic_dim": 16,
    "num_time_classes": 16,
    "head_layers": 2,
    "head_ffn_ratio": 2.0,
}
TINY_DECODER = DecoderConfig(
    embed_dim=16,
    hidden_dim=32,
    num_attn_layers=2,
    num_attn_heads=2,
    attn_dim_feedforward=64,
    wav_decoder_channels=32,
    strides=[2, 3],
)


@pytest.fixture(scope="module")
def tiny(pg):
    return pg.count_model(TINY_LLM, TINY_DECODER, name="tiny", decoder_frames=12)


@pytest.fixture(scope="module")
def one_b(pg):
    return pg.count_model(TADA_1B, name="TADA-1B")


def test_counts_of_tada_1b_are_the_published_shapes(one_b):
    c = one_b
    # FACTS: about 1.63 B parameters in all, the flow head about 0.39 B; the codec decoder ~119 M
    assert c.params["unique"] == pytest.approx(1.635e9, rel=0.005)
    assert c.params["stored_head_once"] + c.params["stored_head_step"] == pytest.approx(0.397e9, rel=0.005)
    assert c.params["decoder"] == pytest.approx(118.7e6, rel=0.005)
    # the engine's rows with InferenceOptions' defaults: spoken + guidance row, 10 guided ODE steps
    assert (c.rows_per_stream, c.ode_steps, c.cfg_rows) == (2, 10, 2)
    # bf16 weights a token reads (docs/benchmarks.md: ~8.1 GB: head 10 x 0.6 + 0.17 GB, LLM 1.95 GB)
    per_tick = c.backbone_bytes + c.head_once_bytes + c.ode_steps * c.head_step_bytes
    assert 8.0e9 < per_tick < 8.4e9
    assert c.backbone_bytes == pytest.approx(1.95e9, rel=0.01)
    # an LLM row costs 2 FLOPs per backbone weight; a KV position is 16 layers x 2 x 8 heads x 64 x 2 bytes
    assert c.llm_row_flops == pytest.approx(2 * c.backbone_bytes / 2, rel=0.001)
    assert c.kv_bytes_per_position == 16 * 2 * 8 * 64 * 2
    # the decoder, counted by FlopCounterMode, against the analytic count from its shapes
    assert c.decoder_frame_flops == pytest.approx(c.decoder_frame_flops_analytic, rel=0.01)
    assert 0.8e9 < c.decoder_frame_flops < 0.9e9


def test_decoder_flop_count_matches_the_analytic_count_of_a_tiny_decoder(pg):
    frames = 20
    counted = pg.decoder_flops_counted(TINY_DECODER, frames, device="cpu")  # a real fp32 forward
    analytic = pg.decoder_flops_analytic(TINY_DECODER, frames)
    assert counted["samples"] == analytic["samples"]  # the lengths the count assumes are the forward's
    # FlopCounterMode has no formula for SDPA's CPU flash kernel: the CPU count leaves attention scores out
    without_scores = analytic["total"] - analytic["parts"]["attention_scores"]
    assert counted["total"] == pytest.approx(without_scores, rel=0.03)
    # on the meta device SDPA runs its math fallback, whose matmuls are counted
    on_meta = pg.decoder_flops_counted(TINY_DECODER, frames, device="meta")
    assert on_meta["total"] == pytest.approx(analytic["total"], rel=0.03)


def test_bandwidth_bound_tick_is_bytes_over_bandwidth(pg):
    """A synthetic model whose work is all weight reads: one stream's tick is its bytes / bandwidth."""
    synthetic = pg.ModelCounts(
        name="synthetic",
        dtype_bytes=2,
        backbone_bytes=3e9,
        head_once_bytes=0.2e9,
        head_step_bytes=0.5e9,
        lm_head_bytes=0.5e9,
        embed_row_bytes=0.0,
        decoder_bytes=0.25e9,
        weights_bytes=5e9,
        llm_row_flops=1.0,
        attn_flops_per_position=0.0,
        kv_bytes_per_position=0.0,
        head_once_row_flops=1.0,
        head_step_row_flops=1.0,
        lm_head_row_flops=1.0,
        decoder_frame_flops=1.0,
        decoder_frame_flops_analytic=1.0,
        decoder_count={},
        rows_per_stream=2,
        ode_steps=10,
        cfg_rows=2,
        params={},
    )
    gpu = pg.GPU("test", bandwidth=2e12, flops=1e15, memory=80e9)
    for engine in ("compiled", "eager"):
        a = pg.Assumptions(launch_overhead_s=0.0, bandwidth_fraction=0.5, engine=engine)
        t = pg.tick(synthetic, gpu, a, 1)
        nbytes = 3e9 + 0.2e9 + 10 * 0.5e9 + 0.25e9
        assert t["bytes"] == nbytes
        assert t["tick_s"] == pytest.approx(nbytes / (2e12 * 0.5), rel=1e-12)
        assert all(p["bound"] == "bandwidth" for p in t["phases"].values()) and t["bound"] == "bandwidth"
        # the launch overhead adds as it is
        b = dataclasses.replace(a, launch_overhead_s=1e-3)
        assert pg.tick(synthetic, gpu, b, 1)["tick_s"] == pytest.approx(t["tick_s"] + 1e-3, rel=1e-12)


@pytest.mark.parametrize("engine", ["compiled", "eager"])
def test_tick_time_grows_with_streams(pg, tiny, one_b, engine):
    a = pg.Assumptions(engine=engine)
    for counts in (tiny, one_b):
        for gpu in pg.GPUS.values():
            ticks = [pg.tick(counts, gpu, a, n)["tick_s"] for n in range(1, 301)]
            assert all(later >= earlier for earlier, later in zip(ticks, ticks[1:]))
            assert ticks[-1] > ticks[0]
            # and so per-stream audio over tick time only falls
            assert pg.tick(counts, gpu, a, 300)["audio_over_tick"] < pg.tick(counts, gpu, a, 1)["audio_over_tick"]


def test_more_bandwidth_serves_more_streams(pg, one_b):
    a = pg.Assumptions(engine="eager")
    base = pg.GPUS["l40s"]
    streams = []
    for factor in (1, 1.5, 2, 4, 8):
        gpu = dataclasses.replace(base, bandwidth=base.bandwidth * factor, memory=1e15)  # memory out of the way
        streams.append(pg.project_gpu(one_b, gpu, a)["max_streams_time"])
    assert all(later >= earlier for earlier, later in zip(streams, streams[1:]))
    assert streams[-1] > streams[0] > 0
    # at one stream the 1B tick is bandwidth-bound, so doubling bandwidth nearly halves it
    t1 = pg.tick(one_b, base, a, 1)
    t2 = pg.tick(one_b, dataclasses.replace(base, bandwidth=2 * base.bandwidth), a, 1)
    assert t1["bound"] == "bandwidth"
    assert (t2["tick_s"] - a.launch_overhead_s) == pytest.approx((t1["tick_s"] - a.launch_overhead_s) / 2, rel=0.05)


def test_limits_are_where_real_time_and_memory_end(pg, one_b):
    for engine in ("compiled", "eager"):
        a = pg.Assumptions(engine=engine)
        for gpu in pg.GPUS.values():
            r = pg.project_gpu(one_b, gpu, a)
            n_time, n_mem = r["max_streams_time"], r["max_streams_memory"]
            assert r["max_streams"] == min(n_time, n_mem) > 0
            assert pg.real_time(one_b, gpu, a, n_time) and not pg.real_time(one_b, gpu, a, n_time + 1)
            assert pg.fits_memory(one_b, gpu, a, n_mem) and not pg.fits_memory(one_b, gpu, a, n_mem + 1)
            at = r["at_max"]
            assert at["audio_over_tick"] >= a.margin
            assert at["tokens_per_s"] == pytest.approx(r["max_streams"] / at["tick_s"])
            # a bigger margin never allows more streams, shorter audio per token neither
            for stricter in (dataclasses.replace(a, margin=2.0), dataclasses.replace(a, audio_per_token=0.1)):
                assert pg.project_gpu(one_b, gpu, stricter)["max_streams_time"] <= n_time


def test_measured_single_stream_table_sits_beside_the_projection(pg, one_b):
    (path,) = sorted((ROOT / "bench" / "results").glob("*NVIDIA_H200-1b-bf16-optimized-compiled.txt"))
    measured = pg.load_measured(path)
    assert measured["gpu"] == "h200" and measured["compiled"] is True and measured["kind"] == "streaming"
    assert [r["streams"] for r in measured["rows"]] == [1, 1, 1]
    assert [r["label"].split()[0] for r in measured["rows"]] == ["short", "medium", "long"]
    long = measured["rows"][-1]
    assert long["s"] == pytest.approx(1.175 / 151) and long["audio_per_token"] == pytest.approx(22.42 / 151)
    rows = pg.compare(measured, one_b, pg.GPUS["h200"], pg.Assumptions())
    assert all(
        r["engine"] == "compiled" and r["measured_over_projected"] > 1 for r in rows
    )  # the projection is a ceiling


def test_measured_concurrency_json_reads_seconds_per_tick(pg, tmp_path):
    levels = [
        {
            "streams": n,
            "tokens_per_s": 10.0 * n,
            "tokens": 24 * n,
            "audio_s": 3.5 * n,
            "tick_s": {"llm": 0.01, "flow": 0.02},
        }
        for n in (1, 8)
    ]
    path = tmp_path / "2026-12-05-Linux-x86_64-16cpu-torch2.11.0+cu130-NVIDIA_H100_80GB_HBM3-concurrency-1b-bf16.json"
    path.write_text(json.dumps({"machine": path.name[11:60], "compiled": True, "levels": levels}))
    measured = pg.load_measured(path)
    assert measured["gpu"] == "h100" and measured["kind"] == "concurrency"
    assert [(r["streams"], r["s"], r["decode_inside"]) for r in measured["rows"]] == [(1, 0.03, True), (8, 0.03, True)]


def test_command_prints_a_labelled_projection_and_writes_json(pg, tmp_path, capsys):
    assert pg.main(["--gpus", "h200,rtx4090", "--levels", "1,8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert pg.LABEL in out and "H200" in out and "RTX 4090" in out
    (path,) = tmp_path.glob("*-gpu-projection-1b.json")
    result = json.loads(path.read_text())
    assert result["label"] == pg.LABEL and "project_gpu.py" in result["command"]
    assert set(result["gpus"]) == {"h200", "rtx4090"}
    h200, rtx = result["gpus"]["h200"], result["gpus"]["rtx4090"]
    assert h200["max_streams"] > rtx["max_streams"] > 0
    assert h200["levels"]["8"]["tick_s"] >= h200["levels"]["1"]["tick_s"]
    assert result["assumptions"]["bandwidth_fraction"] == 0.7 and result["assumptions"]["audio_per_token"] == 0.2

    assert pg.main(["--gpus", "l40s", "--json-only", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["label"] == pg.LABEL and list(printed["gpus"]) == ["l40s"]


def test_measured_engine_ticks_fit_a_gap_per_tick_and_per_stream(pg, one_b):
    (path,) = sorted((ROOT / "bench" / "results").glob("*NVIDIA_H200-engine-ticks-1b-bf16-compiled.json"))
    measured = pg.load_measured(path)
    assert measured["gpu"] == "h200" and measured["kind"] == "engine_ticks" and measured["compiled"] is True
    assert [r["streams"] for r in measured["rows"]] == [1, 2, 4, 8, 16, 32]
    assert not any(r["decode_inside"] for r in measured["rows"])  # generate() decodes after the ticks
    rows = pg.compare(measured, one_b, pg.GPUS["h200"], pg.Assumptions())
    fit = pg.fit_gap(rows)
    assert fit["per_stream_s"] > 0
    # the calibrated projection passes through the measured ticks on average
    launch, host = pg.calibrated(fit, pg.Assumptions())
    calibrated = pg.Assumptions(launch_overhead_s=launch, host_per_stream_s=host)
    again = pg.compare(measured, one_b, pg.GPUS["h200"], calibrated)
    assert abs(sum(r["unexplained_s"] for r in again)) < 1e-9
