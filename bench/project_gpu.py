"""GPU sizing on paper: how many real-time TADA streams a GPU could serve, projected from published figures.

    python bench/project_gpu.py                                     # TADA-1B shapes: H100, H200, L40S, RTX 4090
    python bench/project_gpu.py --gpus h200 --max-positions 1024    # a smaller compiled KV arena
    python bench/project_gpu.py --measured bench/results/FILE       # a GPU run's figures beside the projection
    python bench/project_gpu.py --measure 1,2,4,8,16,32             # on a CUDA machine: the engine's own ticks

PROJECTION from published figures, not a measurement. The counts come from the model itself: a
TADA-shaped model is built on torch's meta device (nothing allocated) and its parameters are
sorted by what an engine tick (``tadastream.engine.core``) reads: the backbone once per tick for
all rows, the flow head's adaLN/condition weights once per tick (all ODE steps' modulations in one
matmul) and its per-step weights once per ODE step, ``lm_head`` only on ticks that sample a token,
one embedding row per input row; the KV cache as the compiled step reads it (every row of the row
bucket over the whole arena of ``--max-positions``) or as the eager step does (the context so far);
and the codec decoder, batched across streams: its weights once per decode call and FLOPs per frame
counted with ``torch.utils.flop_counter.FlopCounterMode`` over a real decoder forward (cross-checked
with an analytic count from the shapes).

A phase costs max(bytes / (bandwidth x fraction), FLOPs / (peak x fraction)); a tick is the sum of
its phases plus a fixed launch overhead (and, optionally, host time per stream). A stream stays real
time while its audio per tick (one token's audio) is at least ``--margin`` times the tick. The
largest such N, capped by what the GPU's memory holds (weights + KV), and the tokens/s there are
the output. Nothing here models Python, scheduling or kernel efficiency at small sizes beyond the
stated fractions: read the results as a ceiling, and ``--measured`` for how far a real run is below it.

Writes a table to stdout and JSON to ``bench/results/<date>-<machine>-gpu-projection-<mode>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import tadastream  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))

from tadastream.config import FRAME_RATE, TADA_1B, DecoderConfig  # noqa: E402

LABEL = "PROJECTION from published figures, not a measurement"


# -- the GPUs: published figures ------------------------------------------------------------------
@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float  # bytes/s, memory bandwidth
    flops: float  # FLOP/s, dense bf16 tensor-core peak (no sparsity)
    memory: float  # bytes
    note: str = ""


GPUS: dict[str, GPU] = {
    # vendor datasheet (NVIDIA H100 Tensor Core GPU, SXM5): 80 GB HBM3 at 3.35 TB/s; BF16 tensor core
    # 1,979 TFLOPS with sparsity, i.e. 989 dense
    "h100": GPU("H100 SXM", 3.35e12, 989e12, 80e9, "HBM3 3.35 TB/s, 989 TFLOPS dense bf16"),
    # vendor datasheet (NVIDIA H200 Tensor Core GPU, SXM): 141 GB HBM3e at 4.8 TB/s; BF16 as the H100's
    "h200": GPU("H200", 4.8e12, 989e12, 141e9, "HBM3e 4.8 TB/s, 989 TFLOPS dense bf16"),
    # vendor datasheet (NVIDIA L40S): 48 GB GDDR6 at 864 GB/s; BF16 tensor core 362.05 TFLOPS dense
    # (733 with sparsity)
    "l40s": GPU("L40S", 864e9, 362e12, 48e9, "GDDR6 864 GB/s, 362 TFLOPS dense bf16"),
    # vendor datasheet (NVIDIA Ada GPU architecture whitepaper, GeForce RTX 4090): 24 GB GDDR6X at
    # 1008 GB/s; FP16/BF16 tensor core with FP32 accumulate 165.2 TFLOPS dense (330 with FP16
    # accumulate, which PyTorch's bf16 matmuls do not use): 165.2 is the figure used here
    "rtx4090": GPU("RTX 4090", 1008e9, 165.2e12, 24e9, "GDDR6X 1008 GB/s, 165 TFLOPS dense bf16, fp32 accumulate"),
}

#: Row counts of the compiled engine's calls (rows padded up to the next ``bucket_for``), its KV
#: arena's rows per slot, and the rows eager GPU matmuls pad to: the package's own.
from tadastream.engine.graphs import DEFAULT_MAX_POSITIONS, ROW_BUCKETS, bucket_for  # noqa: E402, F401
from tadastream.nn.kv_cache import ROWS_PER_SLOT  # noqa: E402
from tadastream.nn.linear import MIN_ROWS  # noqa: E402


# -- assumptions --------------------------------------------------------------------------------
@dataclass
class Assumptions:
    """Everything the projection assumes beyond the model's shapes and the GPUs' published figures."""

    bandwidth_fraction: float = 0.7  # of the published memory bandwidth a weight-reading matmul gets
    flops_fraction: float = 0.4  # of the published dense bf16 peak the matmuls and convolutions get
    audio_per_token: float = 0.2  # seconds of audio one text token speaks (FACTS gives no speech rate)
    margin: float = 1.25  # real time means audio per tick >= margin x tick time
    launch_overhead_s: float = 0.3e-3  # fixed per tick (CUDA graphs: a few replays and copies)
    host_per_stream_s: float = 0.0  # host time per stream per tick (program logic, sampling); not modelled
    engine: str = "compiled"  # "compiled" (tadastream serve --compile: row buckets, static arena) or "eager"
    avg_position: int = 512  # the eager step's context, on average over a stream
    max_positions: int = DEFAULT_MAX_POSITIONS  # positions a slot holds (compiled: what attention reads)
    logits_fraction: float = 0.0  # ticks that call lm_head (default layout: the text is known, none)
    decode_calls_per_tick: float = 1.0  # batched codec decode calls per tick (each reads the decoder once)
    decode: bool = True  # include the codec decode phase
    memory_fraction: float = 0.9  # of the GPU's memory for weights and KV (the rest: activations, workspace)

    @property
    def frames_per_token(self) -> float:
        return self.audio_per_token * FRAME_RATE


# -- counting the model -------------------------------------------------------------------------
# TADA-3B-ML: Llama 3.2 3B's published backbone shapes. FACTS.md gives neither head_layers nor
# head_ffn_ratio for it: the 1B's (6, 4.0) are ASSUMED, and the output says so.
TADA_3B_ASSUMED: dict = {
    **TADA_1B,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
}
MODES = {"1b": (TADA_1B, None), "3b": (TADA_3B_ASSUMED, "3B head shape assumed as 1B's (6 layers, ffn ratio 4)")}


@dataclass
class ModelCounts:
    """What one engine tick reads and computes, from the model's own parameters (bytes at ``dtype_bytes``)."""

    name: str
    dtype_bytes: int
    # weight bytes read per tick, by phase
    backbone_bytes: float  # decoder layers, final norm, acoustic_proj: once per LLM call
    head_once_bytes: float  # cond_proj, t_embedder, every adaLN: once per flow solve call (all steps)
    head_step_bytes: float  # noisy_images_proj, FFNs, norms, final linear: once per ODE step
    lm_head_bytes: float  # the vocabulary matrix: once per logits call
    embed_row_bytes: float  # token + two duration embeddings + mask embedding: one row each per input row
    decoder_bytes: float  # the codec decoder's weights: once per decode call
    weights_bytes: float  # every weight held on the GPU (tied ones once), decoder included
    # FLOPs
    llm_row_flops: float  # 2 x matmul weights per LLM row (attention excluded)
    attn_flops_per_position: float  # per LLM row, per position attended (QK and AV over all layers)
    kv_bytes_per_position: float  # per LLM row, per position: keys and values of all layers
    head_once_row_flops: float  # per modulation row (ODE steps x guidance rows per solve)
    head_step_row_flops: float  # per head row per ODE step
    lm_head_row_flops: float
    decoder_frame_flops: float  # counted (FlopCounterMode), per 50 Hz frame
    decoder_frame_flops_analytic: float
    decoder_count: dict  # how it was counted: frames, device, by operator
    # the engine's rows, from InferenceOptions' defaults
    rows_per_stream: int  # LLM rows: 1 + text-only row + guidance row
    ode_steps: int
    cfg_rows: int  # head rows per solve per step: 2 with classifier-free guidance
    params: dict  # parameter counts by group
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _group(name: str) -> str:
    """Which part of a tick reads parameter/module ``name`` of a TadaWeights."""
    if name.startswith("model.embed_tokens"):
        return "embed"
    if name.startswith(("time_start_embed", "time_end_embed", "acoustic_mask_emb")):
        return "embed"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.startswith(("model.", "acoustic_proj")):
        return "backbone"
    if name.startswith("prediction_head."):
        if any(k in name for k in ("cond_proj", "t_embedder", "adaLN_modulation")):
            return "head_once"
        return "head_step"
    if name.startswith("bottleneck_proj"):
        return "head_once"
    return "other"


def engine_rows(options=None) -> tuple[int, int, int]:
    """(LLM rows per stream, ODE steps, head rows per solve) as the engine runs ``options``
    (default: InferenceOptions' defaults), the way generation/program.py and engine/flow.py decide."""
    from tadastream.engine.flow import scheduled_cfg, time_grid
    from tadastream.generation.options import InferenceOptions

    opts = options or InferenceOptions()
    rows = 1 + int(opts.text_only) + int(opts.guided)
    grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, "cpu")[:-1].tolist()
    guided = any(scheduled_cfg(opts.acoustic_cfg_scale, t, opts.cfg_schedule) != 1.0 for t in grid)
    return rows, opts.num_flow_matching_steps, 2 if guided else 1


def count_model(
    llm: dict,
    decoder_config: DecoderConfig | None = None,
    *,
    name: str = "",
    dtype_bytes: int = 2,
    decoder_frames: int = 100,
    decoder_device: str = "meta",
    options=None,
    note: str = "",
) -> ModelCounts:
    """Counts for the TADA model of LLM config ``llm`` (a dict as config.TADA_1B) and its decoder."""
    from tadastream.config import tada_config
    from tadastream.weights import TadaWeights

    config = tada_config(llm)
    with torch.device("meta"):
        model = TadaWeights(config)
    linear: dict[str, int] = {}
    stored: dict[str, int] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear):
            group = _group(mod_name)
            linear[group] = linear.get(group, 0) + module.weight.numel()
    for p_name, p in model.named_parameters(remove_duplicate=False):
        group = _group(p_name)
        stored[group] = stored.get(group, 0) + p.numel()
    unique = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    dec_cfg = decoder_config or DecoderConfig()
    counted = decoder_flops_counted(dec_cfg, decoder_frames, decoder_device)
    analytic = decoder_flops_analytic(dec_cfg, decoder_frames)
    dec_params = sum(p.numel() for p in _random_decoder(dec_cfg, "meta").parameters())
    rows, steps, cfg_rows = engine_rows(options)
    b = dtype_bytes
    return ModelCounts(
        name=name,
        dtype_bytes=b,
        backbone_bytes=stored["backbone"] * b,
        head_once_bytes=stored.get("head_once", 0) * b,
        head_step_bytes=stored["head_step"] * b,
        lm_head_bytes=config.vocab_size * hidden * b,
        embed_row_bytes=4 * hidden * b,  # token, time_start, time_end, acoustic mask: one row each
        decoder_bytes=dec_params * b,
        weights_bytes=(unique + dec_params) * b,
        llm_row_flops=2 * linear["backbone"],
        attn_flops_per_position=4 * config.num_attention_heads * head_dim * layers,
        kv_bytes_per_position=2 * layers * config.num_key_value_heads * head_dim * b,
        head_once_row_flops=2 * linear.get("head_once", 0),
        head_step_row_flops=2 * linear["head_step"],
        lm_head_row_flops=2 * config.vocab_size * hidden,
        decoder_frame_flops=counted["total"] / decoder_frames,
        decoder_frame_flops_analytic=analytic["total"] / decoder_frames,
        decoder_count={
            "frames": decoder_frames,
            "device": decoder_device,
            "by_op": counted["by_op"],
            "analytic_parts": analytic["parts"],
        },
        rows_per_stream=rows,
        ode_steps=steps,
        cfg_rows=cfg_rows,
        params={**{f"stored_{k}": v for k, v in sorted(stored.items())}, "unique": unique, "decoder": dec_params},
        note=note,
    )


def _random_decoder(cfg: DecoderConfig, device: str):
    from tadastream.codec.decoder import Decoder

    with torch.device("meta"):
        decoder = Decoder(cfg)
    if device == "meta":
        return decoder.eval()
    decoder.to_empty(device=device)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p_name, p in decoder.named_parameters():
            if p_name.endswith("alpha"):
                p.uniform_(0.5, 1.5, generator=gen)
            elif p.dim() == 1 or p_name.endswith("original0"):
                p.fill_(1.0 if "norm" in p_name or p_name.endswith("original0") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return decoder.eval()


def decoder_flops_counted(cfg: DecoderConfig, frames: int, device: str = "meta") -> dict:
    """FLOPs of one decoder forward over ``frames`` marked frames, by FlopCounterMode. ``device``
    "meta" runs the real forward on shapes alone (the count is by shapes; attention runs as SDPA's math
    fallback, matmuls the counter sees); "cpu" on fp32 random weights, where SDPA runs the CPU flash kernel,
    which FlopCounterMode has no formula for: that count leaves attention's QK and AV out."""
    from torch.utils.flop_counter import FlopCounterMode

    decoder = _random_decoder(cfg, device)
    x = torch.randn(1, frames, cfg.embed_dim, device=device)
    marks = torch.ones(1, frames, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        samples = decoder(x, marks).shape[-1]
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op, "samples": samples}


def decoder_flops_analytic(cfg: DecoderConfig, frames: int) -> dict:
    """The same forward counted from the shapes (matmuls, convolutions, and in ``attention_scores`` dense
    attention as SDPA computes it over ``frames`` x ``frames``); elementwise work (Snake, norms, GELU) is not
    counted."""
    t, h, e = frames, cfg.hidden_dim, cfg.embed_dim
    parts = {"decoder_proj": 2 * e * h * t}
    per_layer = 2 * h * 3 * h * t + 2 * h * h * t + 2 * 2 * h * cfg.attn_dim_feedforward * t
    parts["attention_layers"] = cfg.num_attn_layers * per_layer
    # QK and AV of SDPA over all frames (the streaming decoder attends within two blocks: less)
    parts["attention_scores"] = cfg.num_attn_layers * 4 * t * t * h
    c = cfg.wav_decoder_channels
    length = t
    parts["conv_in"] = 2 * 7 * h * c * length
    cnn = 0
    for s in cfg.strides:
        out = c // 2
        # transposed conv as the two-tap polyphase matmul: every input frame and the flush's zero frame
        cnn += 2 * (s * out) * (2 * c) * (length + 1)
        length = length * s + s - 2 * math.ceil(s / 2)
        cnn += 3 * (2 * 7 * out * out * length + 2 * out * out * length)  # residual units: k7 dilated + k1
        c = out
    parts["cnn_blocks"] = cnn
    parts["conv_out"] = 2 * 7 * c * 1 * length
    return {"total": sum(parts.values()), "parts": parts, "samples": length}


# -- the projection -----------------------------------------------------------------------------
def _phase(nbytes: float, flops: float, gpu: GPU, a: Assumptions, scale: float = 1.0) -> dict:
    t_bw = nbytes / (gpu.bandwidth * a.bandwidth_fraction)
    t_fl = flops / (gpu.flops * a.flops_fraction)
    return {
        "bytes": nbytes * scale,
        "flops": flops * scale,
        "s_bandwidth": t_bw * scale,
        "s_compute": t_fl * scale,
        "s": max(t_bw, t_fl) * scale,
        "bound": "compute" if t_fl > t_bw else "bandwidth",
    }


def tick(counts: ModelCounts, gpu: GPU, a: Assumptions, n: int) -> dict:
    """One engine tick with ``n`` streams, each one LLM step past its prefill: phases, total seconds."""
    c = counts
    if a.engine == "compiled":
        # streams in the lowest slots; the call pads to the bucket of the highest row used, and the
        # masked attention of every bucket row reads the arena's whole capacity
        llm_rows = bucket_for(ROWS_PER_SLOT * (n - 1) + c.rows_per_stream)
        kv_positions = a.max_positions
        solve_rows = bucket_for(n)
    elif a.engine == "eager":
        llm_rows = max(n * c.rows_per_stream, MIN_ROWS)
        kv_positions = a.avg_position
        solve_rows = max(n, MIN_ROWS)
    else:
        raise ValueError(f"engine {a.engine!r}: use compiled or eager")
    head_rows = solve_rows * c.cfg_rows
    phases = {
        "llm": _phase(
            c.backbone_bytes
            + llm_rows * (c.embed_row_bytes + c.kv_bytes_per_position * (kv_positions + 1)),  # +1: the new K/V
            llm_rows * (c.llm_row_flops + c.attn_flops_per_position * kv_positions),
            gpu,
            a,
        ),
        "flow_modulations": _phase(c.head_once_bytes, c.ode_steps * head_rows * c.head_once_row_flops, gpu, a),
        "flow_steps": _phase(c.ode_steps * c.head_step_bytes, c.ode_steps * head_rows * c.head_step_row_flops, gpu, a),
    }
    if a.logits_fraction > 0:
        phases["logits"] = _phase(c.lm_head_bytes, n * c.lm_head_row_flops, gpu, a, scale=a.logits_fraction)
    if a.decode:
        phases["decode"] = _phase(
            a.decode_calls_per_tick * c.decoder_bytes, n * a.frames_per_token * c.decoder_frame_flops, gpu, a
        )
    overhead = a.launch_overhead_s + n * a.host_per_stream_s
    total = sum(p["s"] for p in phases.values()) + overhead
    s_bw = sum(p["s_bandwidth"] for p in phases.values())
    s_fl = sum(p["s_compute"] for p in phases.values())
    return {
        "streams": n,
        "llm_rows": llm_rows,
        "head_rows": head_rows,
        "phases": phases,
        "overhead_s": overhead,
        "tick_s": total,
        "bytes": sum(p["bytes"] for p in phases.values()),
        "flops": sum(p["flops"] for p in phases.values()),
        "bound": "compute" if s_fl > s_bw else "bandwidth",
        "audio_over_tick": a.audio_per_token / total,
        "tokens_per_s": n / total,
        "kv_bytes_held": kv_bytes_held(counts, a, n),
    }


def kv_bytes_held(counts: ModelCounts, a: Assumptions, n: int) -> float:
    """KV memory for ``n`` streams: the compiled engine's arena (3 rows a slot, bucketed, ``max_positions``
    each) or the eager slots, which grow with their stream (twice the average position: a stream's
    whole length, capped at ``max_positions``)."""
    if a.engine == "compiled":
        return bucket_for(ROWS_PER_SLOT * n) * a.max_positions * counts.kv_bytes_per_position
    positions = min(2 * a.avg_position, a.max_positions)
    return n * counts.rows_per_stream * positions * counts.kv_bytes_per_position


def fits_memory(counts: ModelCounts, gpu: GPU, a: Assumptions, n: int) -> bool:
    return counts.weights_bytes + kv_bytes_held(counts, a, n) <= gpu.memory * a.memory_fraction


def real_time(counts: ModelCounts, gpu: GPU, a: Assumptions, n: int) -> bool:
    return tick(counts, gpu, a, n)["audio_over_tick"] >= a.margin


def _largest(ok, limit: int) -> int:
    """The largest n in 1..limit with ok(n), for ok true up to some n and false after (0: none)."""
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def crossover(counts: ModelCounts, gpu: GPU, a: Assumptions, limit: int) -> int | None:
    """The fewest streams at which the tick's compute time outweighs its memory time (None: not up to ``limit``)."""
    n = _largest(lambda k: tick(counts, gpu, a, k)["bound"] == "bandwidth", limit)
    return n + 1 if n < limit else None


def project_gpu(counts: ModelCounts, gpu: GPU, a: Assumptions, levels=(1, 8, 32), limit: int = 1 << 16) -> dict:
    """Tick time at ``levels`` streams, the real-time and memory limits and where the bound moves."""
    by_time = _largest(lambda k: real_time(counts, gpu, a, k), limit)
    by_memory = _largest(lambda k: fits_memory(counts, gpu, a, k), limit)
    best = min(by_time, by_memory)
    at_best = tick(counts, gpu, a, best) if best else None
    phases_cross = {}
    for name in tick(counts, gpu, a, 1)["phases"]:
        n = _largest(lambda k, name=name: tick(counts, gpu, a, k)["phases"][name]["bound"] == "bandwidth", limit)
        phases_cross[name] = n + 1 if n < limit else None
    return {
        "gpu": dataclasses.asdict(gpu),
        "levels": {n: tick(counts, gpu, a, n) for n in levels},
        "max_streams_time": by_time,
        "max_streams_memory": by_memory,
        "max_streams": best,
        "limited_by": "memory" if by_memory < by_time else "time",
        "at_max": at_best,
        "compute_bound_from": crossover(counts, gpu, a, limit),
        "phase_compute_bound_from": phases_cross,
    }


# -- measured figures (a GPU run's output) ------------------------------------------------------------
def gpu_of(text: str) -> str | None:
    """The GPU key a file's machine name or path names (NVIDIA_H200 -> h200)."""
    patterns = {"h200": r"H200", "h100": r"H100", "l40s": r"L40S", "rtx4090": r"4090"}
    for key, pattern in patterns.items():
        if re.search(pattern, text, re.IGNORECASE):
            return key
    return None


def load_measured(path: Path) -> dict:
    """Rows of measured figures from ``path``: a bench_concurrency.py JSON or this script's --measure
    JSON ("levels": seconds per engine tick at N streams), a bench_streaming.py JSON or its printed
    table (.txt: one stream, wall seconds per token). Each row: streams, seconds per tick or token,
    tokens/s, whether codec decoding is inside the measured time."""
    text = path.read_text()
    kind, compiled, rows = None, None, []
    if path.suffix == ".json":
        data = json.loads(text)
        compiled = data.get("compiled")
        machine = data.get("machine", "") + " " + path.name
        if "levels" in data:
            kind = data.get("kind", "concurrency")
            for lv in data["levels"]:
                ticks = lv.get("tick_s") or {}
                # engine ticks: the steady rate (the call's wall also holds the eager prefill and, after the
                # ticks, each stream's one-pass decode, one after another)
                rate = lv.get("steady_tokens_per_s") or lv["tokens_per_s"]
                row = {"label": f"{lv['streams']} streams", "streams": lv["streams"], "tokens_per_s": rate}
                row["s"] = lv.get("tick_median_s") or sum(ticks.values())
                row["decode_inside"] = kind == "concurrency"  # the server's programs phase decodes
                row["audio_per_token"] = lv.get("audio_s", 0) / lv["tokens"] if lv.get("tokens") else None
                rows.append(row)
        elif "texts" in data:
            kind = "streaming"
            for name, r in data["texts"].items():
                per_token = r["stream_total_s"] / r["text_tokens"]
                rows.append(
                    {
                        "label": f"{name} ({r['text_tokens']} tok)",
                        "streams": 1,
                        "s": per_token,
                        "tokens_per_s": 1 / per_token,
                        "decode_inside": True,
                        "audio_per_token": r["audio_s"] / r["text_tokens"],
                    }
                )
    else:  # bench_streaming.py's printed table
        kind = "streaming"
        machine = path.name
        compiled = "compiled" in path.name or "and compiled" in text
        lines = text.splitlines()
        head = next((i for i, line in enumerate(lines) if line.split()[:2] == ["text", "tok"]), None)
        if head is None:
            raise ValueError(f"{path}: neither a bench JSON nor bench_streaming.py's table")
        cols = re.split(r"\s{2,}", lines[head].strip())
        for line in lines[head + 2 :]:
            if not line.strip():
                break
            cells = dict(zip(cols, line.split()))
            tokens, stream_s, audio_s = int(cells["tok"]), float(cells["stream s"]), float(cells["audio s"])
            rows.append(
                {
                    "label": f"{cells['text']} ({tokens} tok)",
                    "streams": 1,
                    "s": stream_s / tokens,
                    "tokens_per_s": tokens / stream_s,
                    "decode_inside": True,
                    "audio_per_token": audio_s / tokens,
                }
            )
    return {"path": str(path), "kind": kind, "compiled": compiled, "gpu": gpu_of(machine), "rows": rows}


def compare(measured: dict, counts: ModelCounts, gpu: GPU, a: Assumptions) -> list[dict]:
    """Each measured row beside the projection under the same conditions (engine, decode inside or not,
    the run's own audio per token where it says)."""
    out = []
    for row in measured["rows"]:
        engine = "compiled" if measured["compiled"] else "eager" if measured["compiled"] is not None else a.engine
        apt = row.get("audio_per_token") or a.audio_per_token
        same = dataclasses.replace(a, engine=engine, decode=row["decode_inside"], audio_per_token=apt)
        proj = tick(counts, gpu, same, row["streams"])
        out.append(
            {
                **row,
                "engine": engine,
                "projected_s": proj["tick_s"],
                "projected_tokens_per_s": proj["tokens_per_s"],
                "measured_over_projected": row["s"] / proj["tick_s"],
                "unexplained_s": row["s"] - proj["tick_s"],
            }
        )
    return out


def fit_gap(rows: list[dict]) -> dict | None:
    """Least squares of the gap (measured - projected seconds) over streams: a fixed part per tick and a
    part per stream, where the rows hold at least two stream counts (engine ticks, concurrency)."""
    points = [(r["streams"], r["unexplained_s"]) for r in rows]
    ns = {n for n, _ in points}
    if len(ns) < 2:
        return None
    mean_n = statistics.fmean(n for n, _ in points)
    mean_g = statistics.fmean(g for _, g in points)
    slope = sum((n - mean_n) * (g - mean_g) for n, g in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return {"fixed_s": mean_g - slope * mean_n, "per_stream_s": slope}


# -- measuring on a GPU (the engine's own tick log) ---------------------------------------------------
def measure_engine(levels: list[int], tokens: int, max_positions: int, out: Path, argv) -> dict:
    """On a CUDA machine: a random TADA-1B-shaped bf16 model on the compiled engine (warmed up for the largest
    level), ``generate`` of N copies of one text side by side (fixed 4-12 frame durations, no codec inside
    the ticks: generate() decodes after), and the engine's own tick log. Per level: the median seconds of
    the ticks that ran N streams one position each, the per-phase means, and tokens/s over the call."""
    import argparse as _ap

    import bench_streaming as bs

    from tadastream.demo import demo_voice

    bs.fix_durations()
    device = "cuda"
    t0 = time.perf_counter()
    args = _ap.Namespace(mode="1b", dtype="bf16", device=device, layout="optimized", compile=False)
    model, n_params = bs.build_model(args)
    model.compile(max_streams=max(levels), max_positions=max_positions, warmup=True)
    build_s = time.perf_counter() - t0
    print(f"built and compiled in {build_s:.1f} s", file=sys.stderr, flush=True)
    voice = demo_voice(model)
    text = bs.make_text(model.tokenizer, tokens)
    engine = model.engine
    rows_per_stream = engine_rows()[0]
    result_levels = []
    for n in levels:
        for _ in range(2):  # the first warms allocations; the second is kept
            engine.tick_log.clear()
            before, ticks0 = dict(engine.seconds), engine.ticks
            bs.reset_durations()
            torch.cuda.synchronize()
            start = time.perf_counter()
            res = model.generate(voice, [text] * n, seed=1)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        ticks = engine.ticks - ticks0
        # a tick in which every stream ran one position (not a prefill chunk): one token per stream
        steps = [r for r in engine.tick_log if r.rows == r.streams * rows_per_stream]
        steady = [r.seconds for r in steps if r.streams == n]
        n_tokens = sum(r.streams for r in steps)
        level = {
            "streams": n,
            "wall_s": wall,
            "ticks": ticks,
            "steady_ticks": len(steady),
            "tick_median_s": statistics.median(steady) if steady else None,
            "tick_min_s": min(steady) if steady else None,
            "tick_s": {k: (engine.seconds[k] - before[k]) / max(ticks, 1) for k in engine.seconds},
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / wall,
            "steady_tokens_per_s": n / statistics.median(steady) if steady else None,
            "audio_s": sum(int(t.numel()) for t in res.audio) / 24000,
        }
        result_levels.append(level)
        print(f"{n} streams: median tick {level['tick_median_s']}", file=sys.stderr, flush=True)
    from bench_streaming import save_result

    result, _ = save_result(
        out,
        "engine-ticks-1b-bf16-compiled",
        "project_gpu.py",
        argv,
        kind="engine_ticks",
        mode="1b",
        dtype="bf16",
        device=device,
        compiled=True,
        max_positions=max_positions,
        gpu=torch.cuda.get_device_name(0),
        params=n_params,
        build_s=build_s,
        text_tokens=tokens,
        levels=result_levels,
    )
    return result


# -- output -------------------------------------------------------------------------------------
def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def print_counts(counts: ModelCounts, a: Assumptions) -> None:
    c, gb = counts, 1e9
    one = c.ode_steps * c.head_step_bytes
    llm, dec = c.params["unique"] / 1e9, c.params["decoder"] / 1e6
    print(f"model {c.name}: {llm:.3f} B LLM parameters (+ codec decoder {dec:.1f} M)")
    if c.note:
        print(f"  NOTE: {c.note}")
    print(
        f"  weights read per tick (bf16): backbone {c.backbone_bytes / gb:.2f} GB, flow head {c.ode_steps} x "
        f"{c.head_step_bytes / gb:.3f} + {c.head_once_bytes / gb:.3f} GB = {(one + c.head_once_bytes) / gb:.2f} GB, "
        f"codec decoder {c.decoder_bytes / gb:.3f} GB per decode call, lm_head {c.lm_head_bytes / gb:.2f} GB per "
        f"logits call; KV {c.kv_bytes_per_position / 1e3:.0f} kB per row per position"
    )
    print(
        f"  FLOPs: {c.llm_row_flops / gb:.2f} G per LLM row (+ {c.attn_flops_per_position / 1e6:.2f} M per position "
        f"attended), flow {c.ode_steps} steps x {c.cfg_rows} rows x {c.head_step_row_flops / gb:.3f} G + "
        f"{c.ode_steps * c.cfg_rows} modulation rows x {c.head_once_row_flops / gb:.3f} G per stream; codec decoder "
        f"{c.decoder_frame_flops / gb:.3f} G per frame counted (analytic {c.decoder_frame_flops_analytic / gb:.3f} G; "
        f"{a.frames_per_token:g} frames a token)"
    )
    print(f"  rows per stream {c.rows_per_stream} (LLM), {c.cfg_rows} (flow head, guidance); {c.ode_steps} ODE steps")


def print_projection(results: dict, a: Assumptions, levels) -> None:
    print()
    print(f"{LABEL} ({a.engine} engine, bf16)")
    lv = [f"ms @{n}" for n in levels]
    cols = [("GPU", 10), ("TB/s", 6), ("TFLOPS", 7)] + [(h, 9) for h in lv]
    cols += [("by time", 8), ("by memory", 10), ("RT streams", 11), ("tok/s there", 12), ("bound there", 12)]
    cols += [("compute from", 13)]
    head = "".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(cols))
    print(head)
    print("-" * len(head))
    for r in results.values():
        g = r["gpu"]
        cells = [f"{g['name']:<10}", f"{g['bandwidth'] / 1e12:6.2f}", f"{g['flops'] / 1e12:7.0f}"]
        cells += [f"{_ms(r['levels'][n]['tick_s']):>9}" for n in levels]
        at = r["at_max"]
        cells += [
            f"{r['max_streams_time']:>8}",
            f"{r['max_streams_memory']:>10}",
            f"{r['max_streams']:>11}",
            f"{at['tokens_per_s']:12.0f}" if at else f"{'-':>12}",
            f"{at['bound']:>12}" if at else f"{'-':>12}",
            f"{r['compute_bound_from'] or '-':>13}",
        ]
        print("".join(cells))
    kv = (
        f"{a.max_positions} positions (the compiled arena)" if a.engine == "compiled" else f"{a.avg_position} positions"
    )
    print(
        f"\nms @N: projected tick with N streams. by time: the most streams with audio per tick >= {a.margin:g} x"
        " tick; by memory: the most whose weights + KV fit; RT streams: the smaller, with its aggregate tokens/s and"
        " what bounds its tick; compute from: the fewest streams at which the tick's compute time outweighs its"
        " memory time."
    )
    print(
        f"Assumptions: {a.bandwidth_fraction:.0%} of bandwidth, {a.flops_fraction:.0%} of dense bf16 peak;"
        f" {a.audio_per_token:g} s of audio per token; launch overhead {a.launch_overhead_s * 1e3:g} ms a tick;"
        f" host time per stream {a.host_per_stream_s * 1e3:g} ms; attention reads the KV of {kv};"
        f" {a.decode_calls_per_tick:g} batched codec decode call(s) a tick; lm_head on {a.logits_fraction:.0%} of"
        f" ticks; {a.memory_fraction:.0%} of GPU memory for weights + KV."
    )


def print_phases(results: dict, n: int) -> None:
    print(f"\nper phase at {n} stream(s), ms (b: bandwidth-bound, c: compute-bound):")
    names = list(next(iter(results.values()))["levels"][n]["phases"])
    head = f"{'GPU':<10}" + "".join(f"{x:>18}" for x in names) + f"{'overhead':>10}"
    print(head)
    print("-" * len(head))
    for r in results.values():
        t = r["levels"][n]
        cells = [f"{_ms(t['phases'][x]['s'])} {t['phases'][x]['bound'][0]}" for x in names]
        print(f"{r['gpu']['name']:<10}" + "".join(f"{c:>18}" for c in cells) + f"{_ms(t['overhead_s']):>10}")


def print_compare(rows: list[dict], measured: dict, gpu: GPU, a: Assumptions) -> None:
    print(f"\nmeasured ({measured['path']}, {measured['kind']}) beside the projection for {gpu.name}:")
    cols = [("row", 16), ("streams", 8), ("engine", 9), ("codec", 6), ("measured ms", 12), ("projected ms", 13)]
    cols += [("meas/proj", 10), ("gap ms", 8), ("meas tok/s", 11), ("proj tok/s", 11)]
    head = "".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(cols))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['label']:<16}{r['streams']:>8}{r['engine']:>9}{'in' if r['decode_inside'] else 'out':>6}"
            f"{_ms(r['s']):>12}{_ms(r['projected_s']):>13}{r['measured_over_projected']:10.2f}{_ms(r['unexplained_s']):>8}"
            f"{r['tokens_per_s']:11.1f}{r['projected_tokens_per_s']:11.1f}"
        )
    print(
        "measured ms: seconds per engine tick (concurrency: mean; engine ticks: median of the ticks in which every"
        " stream ran one position) or wall seconds per token of one stream (streaming: prefill, first-audio wait"
        " and the last decoder call included); gap: measured - projected."
    )
    fit = fit_gap(rows)
    if fit:
        launch, host = calibrated(fit, a)
        print(
            f"gap fit: {fit['fixed_s'] * 1e3:.2f} ms a tick + {fit['per_stream_s'] * 1e3:.3f} ms per stream (what the"
            " projection leaves out: host work, launches, small kernels). The projection calibrated on this run:"
            f" --launch-overhead-ms {launch * 1e3:.2f} --host-per-stream-ms {host * 1e3:.3f}"
        )


def calibrated(fit: dict, a: Assumptions) -> tuple[float, float]:
    """(launch overhead, host time per stream) in seconds that make the projection pass through a measured
    run's gap fit (never below zero)."""
    return max(a.launch_overhead_s + fit["fixed_s"], 0.0), max(a.host_per_stream_s + fit["per_stream_s"], 0.0)


# -- the command --------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=tuple(MODES), default="1b", help="model shapes (3b: head shape assumed)")
    ap.add_argument("--gpus", default=",".join(GPUS), help=f"comma-separated, of {', '.join(GPUS)}")
    d = Assumptions()
    ap.add_argument("--bandwidth-fraction", type=float, default=d.bandwidth_fraction)
    ap.add_argument("--flops-fraction", type=float, default=d.flops_fraction)
    ap.add_argument("--audio-per-token", type=float, default=d.audio_per_token, help="seconds of audio a token speaks")
    ap.add_argument("--margin", type=float, default=d.margin, help="real time: audio per tick >= margin x tick")
    ap.add_argument("--launch-overhead-ms", type=float, default=d.launch_overhead_s * 1e3)
    ap.add_argument("--host-per-stream-ms", type=float, default=0.0, help="host time per stream per tick (default 0)")
    ap.add_argument(
        "--engine",
        choices=("compiled", "eager"),
        default=d.engine,
        help="compiled (serve --compile: row buckets, KV arena) or eager (its kernel launches are not modelled)",
    )
    ap.add_argument("--avg-position", type=int, default=d.avg_position, help="eager: average context attended")
    ap.add_argument("--max-positions", type=int, default=d.max_positions, help="positions a slot holds")
    ap.add_argument("--logits-fraction", type=float, default=d.logits_fraction)
    ap.add_argument("--decode-calls-per-tick", type=float, default=d.decode_calls_per_tick)
    ap.add_argument("--no-decode", action="store_true", help="leave the codec decode phase out")
    ap.add_argument("--levels", default="1,8,32,128", help="stream counts the table shows tick time at")
    ap.add_argument("--decoder-device", choices=("meta", "cpu"), default="meta", help="where the decoder is counted")
    ap.add_argument("--measured", type=Path, help="a GPU run's JSON (or bench_streaming table) to set beside")
    ap.add_argument("--measure", help="on a CUDA machine: measure engine ticks at these stream counts, e.g. 1,8,32")
    ap.add_argument("--measure-tokens", type=int, default=40, help="--measure: text tokens per stream")
    ap.add_argument("--json-only", action="store_true", help="print the JSON instead of the tables")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    if args.measure:
        levels = sorted({int(x) for x in args.measure.split(",") if x.strip()})
        if not torch.cuda.is_available():
            ap.error("--measure needs a CUDA GPU")
        result = measure_engine(levels, args.measure_tokens, args.max_positions, args.out, argv)
        print(json.dumps(result["levels"], indent=1))
        return 0

    keys = [g.strip().lower() for g in args.gpus.split(",") if g.strip()]
    unknown = [k for k in keys if k not in GPUS]
    if unknown:
        ap.error(f"unknown GPU(s) {', '.join(unknown)}; use {', '.join(GPUS)}")
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    a = Assumptions(
        bandwidth_fraction=args.bandwidth_fraction,
        flops_fraction=args.flops_fraction,
        audio_per_token=args.audio_per_token,
        margin=args.margin,
        launch_overhead_s=args.launch_overhead_ms / 1e3,
        host_per_stream_s=args.host_per_stream_ms / 1e3,
        engine=args.engine,
        avg_position=args.avg_position,
        max_positions=args.max_positions,
        logits_fraction=args.logits_fraction,
        decode_calls_per_tick=args.decode_calls_per_tick,
        decode=not args.no_decode,
    )
    llm, note = MODES[args.mode]
    counts = count_model(llm, name=f"TADA-{args.mode.upper()}", decoder_device=args.decoder_device, note=note or "")
    results = {k: project_gpu(counts, GPUS[k], a, levels) for k in keys}
    measured, comparison = None, None
    if args.measured:
        measured = load_measured(args.measured)
        key = measured["gpu"]
        if key is None or key not in GPUS:
            ap.error(f"{args.measured}: cannot tell which GPU it ran on (no H100/H200/L40S/4090 in its name)")
        comparison = compare(measured, counts, GPUS[key], a)

    if not args.json_only:
        print_counts(counts, a)
        print_projection(results, a, levels)
        print_phases(results, 1)
        if levels[-1] != 1:
            print_phases(results, levels[-1])
        if comparison is not None:
            print_compare(comparison, measured, GPUS[measured["gpu"]], a)
    from bench_streaming import save_result

    fields = {
        "label": LABEL,
        "mode": args.mode,
        "assumptions": dataclasses.asdict(a),
        "counts": counts.to_dict(),
        "gpus": {k: {**r, "levels": {str(n): t for n, t in r["levels"].items()}} for k, r in results.items()},
        "measured": measured,
        "comparison": comparison,
        "gap_fit": fit_gap(comparison) if comparison else None,
    }
    name = f"gpu-projection-{args.mode}" + ("" if a.engine == "compiled" else "-eager")
    with contextlib.redirect_stdout(sys.stderr if args.json_only else sys.stdout):  # stdout: the JSON alone
        result, _ = save_result(args.out, name, "project_gpu.py", argv, **fields)
    if args.json_only:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
