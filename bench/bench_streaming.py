"""Streaming vs non-streaming benchmark for tadastream.

    python bench/bench_streaming.py --mode tiny
    python bench/bench_streaming.py --mode 1b --dtype fp32 --texts short
    python bench/bench_streaming.py --mode tiny --first-chunk-ms 0,adaptive,200

Durations predicted by the flow head are replaced by a fixed 4-12 frame pattern (the bench
patches ``SpeechProgram._predicted_durations``), so every run speaks the same number of frames
and runs on different machines, dtypes or commits compare. Weights are random: audio is noise,
timings are real.

Each stream also reports what a listener gets (``tadastream.playback``): the time to playable audio
(the earliest start from which playback never pauses) and the stalls of a player that starts on the
first chunk. ``--first-chunk-ms`` streams each text once per first-chunk policy (``adaptive``: the
default hold; ``0``: the first samples at once; N: at least N ms) and prints a row per policy.

Writes a table to stdout and raw JSON to ``bench/results/<date>-<machine>-<mode>-<dtype>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    import tadastream  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tadastream.generation as gen  # noqa: E402
import tadastream.generation.program as program  # noqa: E402
from tadastream.codec.decoder import expand_tokens  # noqa: E402
from tadastream.codec.streaming import StreamingDecoder  # noqa: E402
from tadastream.config import TADA_1B, tada_config  # noqa: E402
from tadastream.demo import build_demo_model, demo_tokenizer, demo_voice  # noqa: E402
from tadastream.drivers import generate_steps  # noqa: E402
from tadastream.generation.options import check_min_first_chunk_ms  # noqa: E402
from tadastream.limits import MAX_FIRST_CHUNK_MS  # noqa: E402
from tadastream.model import TadaForCausalLM  # noqa: E402
from tadastream.playback import playable_start, playback_figures  # noqa: E402
from tadastream.timecode import decode_time  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import build_decoder  # noqa: E402

HERE = Path(__file__).resolve().parent
from tadastream.config import SAMPLE_RATE  # noqa: E402

TEXT_TOKENS = {"short": 10, "medium": 40, "long": 150}
WORDS = (
    "the quick brown fox jumps over the lazy dog while seven wizards quietly judge a box of "
    "mixed jams and the river keeps running past old stone bridges toward the distant sea"
).split()

# -- fixed durations ----------------------------------------------------------------------------
_PATTERN = (4, 7, 5, 9, 6, 12, 8, 4, 10, 5, 11, 6)  # frames, mean 7.25


def _fixed_durations(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pattern, each stream from its start (whatever runs beside it), in place of the head's."""
    k = getattr(self, "_bench_durations", 0)
    self._bench_durations = k + 2
    before, after = (_PATTERN[i % len(_PATTERN)] for i in (k, k + 1))
    return (torch.full((1, 1), v, dtype=torch.long, device=latent.device) for v in (before, after))


def fix_durations() -> None:
    """Every generation in this process speaks the pattern's durations."""
    program.SpeechProgram._predicted_durations = _fixed_durations


def reset_durations(seed: int = 0) -> None:
    """Same random numbers for the next generation (its durations restart with it)."""
    torch.manual_seed(seed)


# -- models -------------------------------------------------------------------------------------
def tada_1b_config():
    assert len(demo_tokenizer()) <= TADA_1B["vocab_size"]
    # the demo tokenizer stands in for Llama 3's (same special tokens, small ids)
    return tada_config(TADA_1B, bos_token_id=None, eos_token_id=None)


@torch.no_grad()
def build_1b(dtype: torch.dtype, device: str) -> TadaForCausalLM:
    config = tada_1b_config()
    with torch.device("meta"):
        model = TadaForCausalLM(config)
    model.to_empty(device="cpu")
    model._init_non_persistent()
    gen_ = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0 if "norm" in name else 0.0)
        else:
            p.normal_(0.0, min(0.02, 1.0 / max(p.shape[-1], 1) ** 0.5), generator=gen_)
    # the codec decoder as bench_decoder.py builds it: weight-norm g = ||v||, non-zero biases (all-zero
    # biases drive the CNN into denormal floats, which are ~10x slower on CPU and not what checkpoints do)
    decoder = build_decoder()
    model.lm_head.weight = model.model.embed_tokens.weight
    model.decoder = decoder.eval()
    model.tokenizer = demo_tokenizer()
    model._codec_source = None
    return model.to(device=device, dtype=dtype).eval()


def build_model(args, layout: str | None = None) -> tuple[TadaForCausalLM, int]:
    """(model in ``layout``, its parameter count). Layouts: "plain" (weights as loaded),
    "optimized" (``from_pretrained``'s default: fused + oneDNN-prepacked on CPU), "int8", "w8a8"."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.mode == "tiny":
        model = build_demo_model().to(device=args.device, dtype=dtype).eval()
    else:
        model = build_1b(dtype, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    layout = layout or args.layout
    compiled = getattr(args, "compile", False)
    if layout != "plain":  # torch.compile packs weights itself and cannot trace oneDNN's packed ones
        model.optimize_for_inference(layout if layout in ("int8", "w8a8") else None, prepack=not compiled)
    if compiled:
        model.compile(max_streams=1, warmup=True)
    return model, n_params


@torch.no_grad()
def deviation(model, exact) -> dict:
    """How far ``model``'s output is from ``exact``'s on the same inputs: one head call, one
    guided ODE solve (same noise and condition) and a whole generation (same seed and
    durations; its frames feed back, so differences grow with length). Random weights: a
    measure of numerical drift, not of speech quality."""
    gen_ = torch.Generator().manual_seed(1)
    hidden, total = model.config.hidden_size, model.config.acoustic_dim + model.time_dim
    latent, cond, neg = (torch.randn(n, d, generator=gen_) for n, d in ((2, total), (1, hidden), (1, hidden)))

    def on(m, x):
        return x.to(m.device, m.dtype)

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    def velocity(m):
        t = torch.full((2,), 0.5, device=m.device, dtype=m.dtype)
        return m.prediction_head(on(m, latent), t, on(m, cond.repeat(2, 1)))

    def solve(m):
        return gen.solve_flow(m, on(m, latent[:1]), on(m, cond[:, None]), on(m, neg[:, None]), gen.InferenceOptions())

    def durations(m, n=64):
        """Frames before/after predicted by n guided solves from random noise and conditions."""
        g = torch.Generator().manual_seed(2)
        solves = [
            gen.FlowSolve(
                *(on(m, torch.randn(1, d, generator=g)) for d in (total, hidden, hidden)), gen.InferenceOptions()
            )
            for _ in range(n)
        ]
        latents = torch.cat(gen.solve_flows(m, solves)).float()
        bits = m.num_time_bits
        times = latents[:, -2 * bits :]
        return torch.stack([decode_time(times[:, :bits], bits), decode_time(times[:, bits:], bits)])

    voice = demo_voice(exact)
    text = make_text(model.tokenizer, TEXT_TOKENS["medium"])
    audio = []
    for m in (model, exact):
        reset_durations()
        audio.append(m.generate(voice, text).audio[0].float())
    a, b = audio
    same = a.shape == b.shape
    return {
        "flow_head_velocity_rel_err": rel(velocity(model), velocity(exact)),
        "ode_solve_rel_err": rel(solve(model), solve(exact)),
        "durations_match": float((durations(model) == durations(exact)).float().mean()),
        "audio_rel_err": rel(a, b) if same else None,
        "audio_snr_db": float(10 * torch.log10(b.pow(2).sum() / (a - b).pow(2).sum())) if same else None,
        "text_tokens": TEXT_TOKENS["medium"],
    }


def quantized_deviation(args, model) -> dict:
    """The quantized layout against the same model unquantized, and bf16 against fp32 for scale."""
    exact, _ = build_model(args, "optimized")
    result = {f"{args.layout}_vs_{args.dtype}": deviation(model, exact)}
    other = "fp32" if args.dtype == "bf16" else "bf16"
    second, _ = build_model(argparse.Namespace(**{**vars(args), "dtype": other}), "optimized")
    half, full = (exact, second) if args.dtype == "bf16" else (second, exact)
    result["bf16_vs_fp32"] = deviation(half, full)
    return result


def run_reference(args, python: str) -> dict:
    """bench_reference.py in the reference's own venv, same dtype, threads and short text."""
    cmd = [python, str(HERE / "bench_reference.py"), "--dtype", args.dtype, "--tokens", str(TEXT_TOKENS["short"])]
    cmd += ["--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"reference run failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    text = out.stdout
    return json.loads(text[text.index("{") :])


def make_text(tok, n_tokens: int) -> str:
    words: list[str] = []
    i = 0
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
        words.append(WORDS[i % len(WORDS)])
        i += 1
    return " ".join(words).capitalize() + "."


# -- measurements -------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int = 1):
    """(min seconds, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def parse_first_chunk(spec: str) -> dict[str, float | None]:
    """``--first-chunk-ms``: comma-separated ``adaptive`` or milliseconds -> {label: min_first_chunk_ms}."""
    policies: dict[str, float | None] = {}
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        if part == "adaptive":
            policies["adaptive"] = None
            continue
        try:
            ms = check_min_first_chunk_ms(float(part.removesuffix("ms")))
        except ValueError as exc:  # not a number, or out of range (GenerationInputError)
            raise ValueError(
                f"{part!r}: use 'adaptive' or milliseconds from 0 (the first samples at once) to {MAX_FIRST_CHUNK_MS:g}"
            ) from exc
        policies[f"{ms:g}ms"] = ms
    if not policies:
        raise ValueError("name at least one policy, e.g. 0,adaptive")
    return policies


def primary_policy(policies: dict[str, float | None]) -> str:
    """The policy the main table reports: the library's default (adaptive) where it runs, else the first."""
    return "adaptive" if "adaptive" in policies else next(iter(policies))


def run_stream(model, voice, text, min_first_chunk_ms: float | None = None):
    reset_durations()
    stream = model.generate(voice, text, stream=True, min_first_chunk_ms=min_first_chunk_ms)
    samples = 0
    for chunk, _sr in stream:
        samples += chunk.numel()
    return stream, samples


def stream_figures(total_s: float, res, samples: int) -> dict:
    """One stream's wall time, chunk timeline and what a listener got (the result's playback figures)."""
    ttfa, playable = res.time_to_first_audio, res.time_to_playable_audio
    return {
        "stream_total_s": total_s,
        "stream_result_total_s": res.total_time,
        "ttfa_s": ttfa,
        "playable_s": playable,
        "buffering_s": playable - ttfa if playable is not None and ttfa is not None else None,
        "stall_count": res.stall_count,
        "stall_s": res.stall_time,
        "chunks": len(res.chunk_times),
        "first_chunk_s": res.chunk_samples[0] / SAMPLE_RATE if res.chunk_samples else None,
        "stream_audio_s": samples / SAMPLE_RATE,
        "stream_samples": samples,
        "stream_rtf": total_s / (samples / SAMPLE_RATE),
        "chunk_times": res.chunk_times,
        "chunk_samples": res.chunk_samples,
    }


def bench_text(
    model, voice, text: str, repeat: int, gen_repeat: int = 1, policies: dict[str, float | None] | None = None
) -> dict:
    """``policies``: {label: min_first_chunk_ms} to stream with (default: the adaptive hold only); the
    row's stream figures are the primary policy's (:func:`primary_policy`), every policy's are under
    ``first_chunk_policies``."""
    dev = model.device
    policies = policies or {"adaptive": None}
    row: dict = {"text_tokens": len(model.tokenizer.encode(text, add_special_tokens=False)), "text": text}

    # 1-2. non-streaming generate() (steps + one-pass decode) and generate(stream=True) under each
    # first-chunk policy, taken in turns so that drift on a shared machine hits all; the fastest of
    # gen_repeat runs of each
    def non_stream():
        reset_durations()
        return model.generate(voice, text)

    t_ns = float("inf")
    best: dict[str, tuple] = {label: (float("inf"), None, 0) for label in policies}
    for _ in range(gen_repeat):
        t, out = timed(non_stream, dev)
        t_ns = min(t_ns, t)
        for label, ms in policies.items():
            _sync(dev)
            t0 = time.perf_counter()
            stream, samples = run_stream(model, voice, text, ms)
            _sync(dev)
            t_s = time.perf_counter() - t0
            if t_s < best[label][0]:
                best[label] = (t_s, stream.result, samples)
    audio_s = out.audio[0].numel() / SAMPLE_RATE
    row.update(nonstream_total_s=t_ns, audio_s=audio_s, nonstream_rtf=t_ns / audio_s)
    by_policy = {label: {"min_first_chunk_ms": ms, **stream_figures(*best[label])} for label, ms in policies.items()}
    primary = primary_policy(policies)
    figures = {k: v for k, v in by_policy[primary].items() if k != "min_first_chunk_ms"}
    row.update(figures, first_chunk_policy=primary, stream_over_nonstream=figures["stream_total_s"] / t_ns)
    row["first_chunk_policies"] = by_policy

    # 3. per-token LLM / flow split from generate_steps
    reset_durations()
    plan = gen.plan_generation(model, gen.SpeechRequest(text, voice))
    llm = flow = 0.0
    n_pred = n_prompted = 0
    raw = None
    t0 = time.perf_counter()
    for item in generate_steps(model, plan):
        if isinstance(item, gen.StepOutput):
            if item.source == "predicted":
                n_pred += 1
                llm += item.llm_time
                flow += item.flow_time
            else:
                n_prompted += 1
        else:
            raw = item
    steps_total = time.perf_counter() - t0
    row.update(
        steps_total_s=steps_total,
        predicted_tokens=n_pred,
        prompted_frames=n_prompted,
        llm_s_per_token=llm / max(n_pred, 1),
        flow_s_per_token=flow / max(n_pred, 1),
    )

    # 4. decoder: streaming vs one pass on the same frames; transformer vs CNN
    decoder = model.require_decoder()
    vectors, time_before = gen.decode_frames(model, plan, raw)
    vectors, time_before = vectors[0], time_before[0]
    n_tok = vectors.shape[0]
    param = decoder.decoder_proj.weight
    frames = expand_tokens(vectors.to(param), time_before[: n_tok + 1]).unsqueeze(0)

    with torch.inference_mode():
        t_onepass, _ = timed(lambda: gen.decode_audio(model, vectors, time_before), dev, repeat)
        t_hidden, hidden = timed(lambda: decoder.hidden(frames), dev, repeat)
        t_cnn, _ = timed(lambda: decoder.wav_decoder(hidden.transpose(1, 2)), dev, repeat)

        def stream_decode():
            sd = StreamingDecoder(decoder, 100, gen.leading_trim_frames(int(time_before[0])))
            n = 0
            for k in range(n_tok):
                n += sd.decode_block(vectors[k], int(time_before[k])).numel()
            n += sd.flush(int(time_before[-1])).numel()
            return n

        t_sdec, _ = timed(stream_decode, dev, repeat)
    row.update(
        decoded_tokens=n_tok,
        decoded_frames=int(frames.shape[1]),
        onepass_decode_s=t_onepass,
        stream_decode_s=t_sdec,
        stream_decode_over_onepass=t_sdec / t_onepass,
        dec_transformer_s_per_token=t_hidden / n_tok,
        dec_cnn_s_per_token=t_cnn / n_tok,
    )
    return row


def word_pieces(tok, text: str) -> tuple[list[str], list[int]]:
    """Words as an LLM would emit them (leading space) and the text-token count after each."""
    words = text.split(" ")
    pieces = words[:1] + [" " + w for w in words[1:]]
    counts = [len(tok.encode("".join(pieces[: i + 1]), add_special_tokens=False)) for i in range(len(pieces))]
    return pieces, counts


def paced(pieces: list[str], counts: list[int], rate: float, log: list):
    """Yield the pieces as a producer emitting ``rate`` tokens/s would: the piece whose first token
    is token k (0-based) is yielded k / rate seconds after the first piece (never earlier; later
    only if the consumer pulls late, i.e. the piece was already waiting). ``log`` gets
    (time, index of the piece's last token) per piece."""
    t0 = None
    for i, piece in enumerate(pieces):
        first_tok = counts[i - 1] if i else 0
        if t0 is None:
            t0 = time.perf_counter()
        else:
            wait = t0 + first_tok / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        log.append((time.perf_counter(), counts[i] - 1))
        yield piece


def bench_incremental(
    model,
    voice,
    text: str,
    rate: float,
    gen_repeat: int,
    full_ttfa: float,
    full_samples: int,
    min_first_chunk_ms: float | None = None,
):
    """Text as a generator of word pieces at ``rate`` tokens/s; time to first audio, time to
    playable audio and stalls from the first piece."""
    pieces, counts = word_pieces(model.tokenizer, text)
    best = None
    for _ in range(gen_repeat):
        log: list = []
        reset_durations()
        stream = model.generate(
            voice, paced(pieces, counts, rate, log), stream=True, min_first_chunk_ms=min_first_chunk_ms
        )
        arrivals: list[tuple[float, int]] = []  # (when, samples) per chunk that holds audio
        for chunk, _sr in stream:
            if chunk.numel():
                arrivals.append((time.perf_counter(), chunk.numel()))
        end = time.perf_counter()
        first, samples = arrivals[0][0], sum(n for _, n in arrivals)
        t0 = log[0][0]
        before = [(t, k) for t, k in log if t <= first]
        arrival, look_ahead = before[-1]
        play = playback_figures([t - t0 for t, _ in arrivals], [n for _, n in arrivals], SAMPLE_RATE)
        run = {
            "ttfa_s": first - t0,
            "playable_s": play.time_to_playable_audio,
            "stall_count": play.stall_count,
            "stall_s": play.stall_time,
            "total_s": end - t0,
            "look_ahead_tokens": look_ahead,
            "look_ahead_arrival_s": arrival - t0,
            "after_arrival_s": first - arrival,
            "samples": samples,
        }
        if best is None or run["ttfa_s"] < best["ttfa_s"]:
            best = run
    shift = int(model.config.shift_acoustic)
    best.update(
        rate_tok_s=rate,
        text_tokens=counts[-1],
        pieces=len(pieces),
        shift_acoustic=shift,
        chunk_s=full_ttfa,
        bound_s=(shift + best["look_ahead_tokens"]) / rate + full_ttfa,
        text_arrival_s=(counts[-2] if len(counts) > 1 else 0) / rate,
        same_audio_length=best["samples"] == full_samples,
    )
    best["ttfa_within_bound"] = best["ttfa_s"] <= best["bound_s"]
    return best


def peak_memory(args, name: str) -> dict:
    """Peak memory of one streaming generation, in a fresh process (CPU: ru_maxrss; GPU: allocator)."""
    cmd = [sys.executable, __file__, "--mode", args.mode, "--dtype", args.dtype, "--device", args.device]
    cmd += ["--layout", args.layout, "--_peak", name] + (["--compile"] if args.compile else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _peak_child(args) -> None:
    model, _ = build_model(args)
    voice = demo_voice(model)
    text = make_text(model.tokenizer, TEXT_TOKENS[args._peak])
    dev = model.device
    if dev.type == "cuda":  # VRAM: non-streaming first, then streaming, each from a reset peak
        peaks = {}
        for kind, run in (
            ("nonstream", lambda: model.generate(voice, text)),
            ("stream", lambda: run_stream(model, voice, text)),
        ):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peaks[kind] = torch.cuda.max_memory_allocated() / 2**20
        print(
            json.dumps(
                {
                    "kind": "cuda_allocated",
                    "base_mb": base / 2**20,
                    "peak_mb": peaks["stream"],
                    "nonstream_peak_mb": peaks["nonstream"],
                }
            )
        )
        return
    status = Path("/proc/self/status")
    if status.exists():
        # ru_maxrss survives exec (the child would report the parent's peak), VmHWM does not;
        # writing 5 to clear_refs resets VmHWM to the current RSS, so the peak excludes start-up.
        base = _proc_kib("VmRSS") / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        run_stream(model, voice, text)
        print(json.dumps({"kind": "VmHWM", "base_mb": base, "peak_mb": _proc_kib("VmHWM") / 1024}))
        return
    run_stream(model, voice, text)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    print(json.dumps({"kind": "ru_maxrss", "base_mb": 0.0, "peak_mb": peak}))


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# -- output -------------------------------------------------------------------------------------
def machine_name() -> str:
    import os

    name = f"{platform.system()}-{platform.machine()}-{os.cpu_count()}cpu-torch{torch.__version__}"
    if torch.cuda.is_available():
        name += "-" + torch.cuda.get_device_name(0)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def save_result(out: Path, name: str, script: str, argv: list[str] | None, **fields) -> tuple[dict, Path]:
    """``fields`` stamped with date, machine and the command line, written as
    ``out/{date}-{machine}-{name}.json``; returns (the result, its path without ``.json``)."""
    import datetime

    command = " ".join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])
    result = {"date": datetime.date.today().isoformat(), "machine": machine_name(), **fields, "command": command}
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{result['date']}-{result['machine']}-{name}"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")  # (stem holds dots: no with_suffix)
    print(f"wrote {stem}.json")
    return result, stem


def _print_rows(cols: list[tuple[str, str, str]], rows) -> None:
    """One line per text (``rows``: {name: row} or (name, row) pairs); ``cols``: (header, key,
    format); missing values print as '-'."""
    head = f"{'text':<7}" + "".join(f"{h:>12}" for h, _, _ in cols)
    print(head)
    print("-" * len(head))
    for name, row in rows.items() if isinstance(rows, dict) else rows:
        cells = [f"{fmt.format(row[key]):>12}" if row.get(key) is not None else f"{'-':>12}" for _, key, fmt in cols]
        print(f"{name:<7}" + "".join(cells))


def print_table(rows: dict) -> None:
    cols = [
        ("tok", "text_tokens", "{:d}"),
        ("audio s", "audio_s", "{:.2f}"),
        ("non-str s", "nonstream_total_s", "{:.3f}"),
        ("stream s", "stream_total_s", "{:.3f}"),
        ("str/non", "stream_over_nonstream", "{:.3f}"),
        ("TTFA s", "ttfa_s", "{:.3f}"),
        ("playable s", "playable_s", "{:.3f}"),
        ("stalls", "stall_count", "{:d}"),
        ("stall s", "stall_s", "{:.3f}"),
        ("RTF str", "stream_rtf", "{:.3f}"),
        ("LLM s/tok", "llm_s_per_token", "{:.4f}"),
        ("flow s/tok", "flow_s_per_token", "{:.4f}"),
        ("decTF s/tok", "dec_transformer_s_per_token", "{:.5f}"),
        ("CNN s/tok", "dec_cnn_s_per_token", "{:.5f}"),
        ("1pass dec s", "onepass_decode_s", "{:.4f}"),
        ("str dec s", "stream_decode_s", "{:.4f}"),
        ("str/1pass", "stream_decode_over_onepass", "{:.3f}"),
        ("peak MB", "stream_peak_mb", "{:.0f}"),
    ]
    _print_rows(cols, rows)


def print_policies(rows: dict) -> None:
    """One line per text and first-chunk policy."""
    cols = [
        ("policy", "policy", "{}"),
        ("1st ms", "first_chunk_ms", "{:.0f}"),
        ("chunks", "chunks", "{:d}"),
        ("TTFA s", "ttfa_s", "{:.3f}"),
        ("playable s", "playable_s", "{:.3f}"),
        ("buffer s", "buffering_s", "{:.3f}"),
        ("stalls", "stall_count", "{:d}"),
        ("stall s", "stall_s", "{:.3f}"),
        ("stream s", "stream_total_s", "{:.3f}"),
    ]
    lines = [
        (name, {**fig, "policy": label, "first_chunk_ms": (fig["first_chunk_s"] or 0) * 1000})
        for name, row in rows.items()
        for label, fig in row["first_chunk_policies"].items()
    ]
    _print_rows(cols, lines)


def print_incremental(rows: dict) -> None:
    cols = [
        ("tok", "text_tokens", "{:d}"),
        ("text in s", "text_arrival_s", "{:.2f}"),
        ("TTFA full", "chunk_s", "{:.3f}"),
        ("TTFA inc", "ttfa_s", "{:.3f}"),
        ("playable s", "playable_s", "{:.3f}"),
        ("stalls", "stall_count", "{:d}"),
        ("stall s", "stall_s", "{:.3f}"),
        ("look-ahead", "look_ahead_tokens", "{:d}"),
        ("arrived s", "look_ahead_arrival_s", "{:.3f}"),
        ("after arr s", "after_arrival_s", "{:.3f}"),
        ("bound s", "bound_s", "{:.3f}"),
        ("<= bound", "ttfa_within_bound", "{}"),
        ("total s", "total_s", "{:.3f}"),
        ("same len", "same_audio_length", "{}"),
    ]
    _print_rows(cols, {name: row["incremental"] for name, row in rows.items() if row.get("incremental")})


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["texts"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    lim = max(max(r["chunk_times"]) for r in rows.values())
    for name, row in rows.items():
        t = row["chunk_times"]
        audio = [sum(row["chunk_samples"][: i + 1]) / SAMPLE_RATE for i in range(len(t))]
        (line,) = ax1.step(t, audio, where="post", label=f"{name} ({row['text_tokens']} tok)")
        # a player starting at the time to playable audio (never after the last chunk): its playhead
        # stays under the delivered audio; drawn up to the last chunk of any text
        start = playable_start(t, [n / SAMPLE_RATE for n in row["chunk_samples"]])
        if start is not None:
            end = min(start + audio[-1], lim)
            ax1.plot([start, end], [0, end - start], ":", color=line.get_color(), lw=1)
            ax1.plot([start], [0], "o", color=line.get_color(), ms=4)
    ax1.plot([0, lim], [0, lim], "k--", lw=0.8, label="real time")
    ax1.plot([], [], "k:o", lw=1, ms=4, label="playback from time to playable audio")
    ax1.set_xlabel("wall clock s")
    ax1.set_ylabel("audio delivered s")
    policy = next(iter(rows.values())).get("first_chunk_policy", "adaptive")
    ax1.set_title(f"streaming chunk timeline (first chunk: {policy})")
    ax1.legend()
    parts = ["llm_s_per_token", "flow_s_per_token", "dec_transformer_s_per_token", "dec_cnn_s_per_token"]
    names = list(rows)
    bottom = [0.0] * len(names)
    for part in parts:
        vals = [rows[n][part] for n in names]
        ax2.bar(names, vals, bottom=bottom, label=part.replace("_s_per_token", ""))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("s per token")
    ax2.set_title("per-token time split")
    ax2.legend()
    layout = result.get("layout", "")
    fig.suptitle(f"tadastream {result['mode']} {result['dtype']} {layout} on {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("tiny", "1b"), default="tiny")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--texts", default="short,medium,long", help="comma-separated: short (~10 tok), medium, long")
    ap.add_argument("--repeat", type=int, default=None, help="decoder timing repeats (min taken); 3 tiny, 1 for 1b")
    ap.add_argument("--gen-repeat", type=int, default=1, help="generate()/stream runs per text (fastest kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--mem",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="peak memory per text in a fresh process (default: on for tiny, off for 1b)",
    )
    ap.add_argument(
        "--incremental",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also stream the text as word pieces arriving at --text-rate tokens/s (default: on for tiny)",
    )
    ap.add_argument(
        "--layout",
        choices=("optimized", "plain", "int8", "w8a8"),
        default="optimized",
        help="weights: optimized (from_pretrained's default), plain (as loaded), int8 (weight-only, bf16), "
        "w8a8 (int8 weights and activations, fp32); the quantized ones also report their deviation",
    )
    ap.add_argument(
        "--reference-python",
        help="python of a venv with hume-tada 0.1.9: also run bench_reference.py and report ours / reference",
    )
    ap.add_argument(
        "--first-chunk-ms",
        default=None,
        help="first-chunk policies to stream with, comma-separated: 'adaptive' (the default hold), 0 (the "
        "first samples at once) or milliseconds; a row each (default: 0,adaptive for tiny, adaptive for 1b)",
    )
    ap.add_argument("--text-rate", type=float, default=20.0, help="incremental text rate, tokens/s (default 20)")
    ap.add_argument("--plot", action="store_true", help="also write a PNG (needs matplotlib)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="model.compile(): compiled LLM step and flow solve (CUDA graphs on cuda), warmed up before timing",
    )
    ap.add_argument("--_peak", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fix_durations()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak:
        _peak_child(args)
        return 0
    texts = [t.strip() for t in args.texts.split(",") if t.strip()]
    for t in texts:
        if t not in TEXT_TOKENS:
            ap.error(f"unknown text {t!r}; use {', '.join(TEXT_TOKENS)}")
    repeat = args.repeat or (3 if args.mode == "tiny" else 1)
    mem = args.mem if args.mem is not None else args.mode == "tiny"
    incremental = args.incremental if args.incremental is not None else args.mode == "tiny"
    try:
        policies = parse_first_chunk(args.first_chunk_ms or ("0,adaptive" if args.mode == "tiny" else "adaptive"))
    except ValueError as exc:
        ap.error(f"--first-chunk-ms: {exc}")
    primary = primary_policy(policies)

    t0 = time.perf_counter()
    model, n_params = build_model(args)
    build_s = time.perf_counter() - t0
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    print(
        f"model {args.mode} {args.dtype} {args.layout} on {args.device}: {n_params / 1e6:.1f} M params "
        f"(codec decoder {n_dec / 1e6:.1f} M), built{' and compiled' if args.compile else ''} in {build_s:.1f} s, "
        f"threads {torch.get_num_threads()}"
    )
    voice = demo_voice(model)

    # warm-up (allocator, kernels) on a few words
    t0 = time.perf_counter()
    run_stream(model, voice, "Hello there.")
    print(f"warm-up {time.perf_counter() - t0:.1f} s")

    rows = {}
    for name in texts:
        text = make_text(model.tokenizer, TEXT_TOKENS[name])
        rows[name] = bench_text(model, voice, text, repeat, args.gen_repeat, policies)
        print(f"{name}: done ({rows[name]['stream_total_s']:.2f} s streaming)", flush=True)
        if incremental:
            r = rows[name]
            r["incremental"] = bench_incremental(
                model, voice, text, args.text_rate, args.gen_repeat, r["ttfa_s"], r["stream_samples"], policies[primary]
            )
            print(f"{name}: incremental TTFA {r['incremental']['ttfa_s']:.3f} s", flush=True)
        if mem:
            m = peak_memory(args, name)
            rows[name].update(stream_peak_mb=m["peak_mb"], mem_base_mb=m["base_mb"], mem_kind=m["kind"])
            if "nonstream_peak_mb" in m:
                rows[name]["nonstream_peak_mb"] = m["nonstream_peak_mb"]

    ratios = {}
    ratios["stream_total_over_nonstream_total"] = {n: r["stream_over_nonstream"] for n, r in rows.items()}
    ratios["stream_decode_over_onepass_decode"] = {n: r["stream_decode_over_onepass"] for n, r in rows.items()}
    if "short" in rows and "long" in rows:
        ratios["ttfa_long_over_short"] = rows["long"]["ttfa_s"] / rows["short"]["ttfa_s"]
        if mem:
            s, lg = rows["short"], rows["long"]
            ratios["peak_mem_stream_long_over_short"] = lg["stream_peak_mb"] / s["stream_peak_mb"]
            gs, gl = s["stream_peak_mb"] - s["mem_base_mb"], lg["stream_peak_mb"] - lg["mem_base_mb"]
            ratios["peak_mem_growth_over_weights_long_over_short"] = gl / gs if gs > 0 else None

    deviation_figures = quantized_deviation(args, model) if args.layout in ("int8", "w8a8") else None
    reference = None
    if args.reference_python and "short" in rows:
        del model  # the reference needs the memory
        print("running the reference ...", flush=True)
        reference = run_reference(args, args.reference_python)
        ours = rows["short"]
        ratios["ours_over_reference_per_token"] = (ours["llm_s_per_token"] + ours["flow_s_per_token"]) / (
            reference["llm_s_per_step"] + reference["flow_s_per_step"]
        )
        ratios["ours_over_reference_total_nonstream"] = ours["nonstream_total_s"] / reference["total_s"]
        ratios["ours_over_reference_total_stream"] = ours["stream_total_s"] / reference["total_s"]

    print()
    print_table(rows)
    print(f"\nfirst-chunk policies (the table above: {primary}); stalls: a player starting on the first chunk")
    print_policies(rows)
    if incremental:
        print(f"\nincremental text: word pieces at {args.text_rate:g} tokens/s (times from the first piece)")
        print_incremental(rows)
        ratios["incremental_ttfa_over_full_text_ttfa"] = {
            n: r["incremental"]["ttfa_s"] / r["ttfa_s"] for n, r in rows.items() if "incremental" in r
        }
    if reference:
        print(
            f"\nreference (hume-tada 0.1.9, short text): total {reference['total_s']:.2f} s, per step "
            f"{reference['llm_s_per_step']:.3f} s LLM + {reference['flow_s_per_step']:.3f} s flow"
        )
    for name, figures in (deviation_figures or {}).items():
        print(f"\ndeviation {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if v is not None))
    print()
    for k, v in ratios.items():
        if isinstance(v, dict):
            print(f"{k}: " + ", ".join(f"{n}={x:.3f}" for n, x in v.items()))
        else:
            print(f"{k}: {v:.3f}" if v is not None else f"{k}: n/a")

    date = _dt.date.today().isoformat()
    machine = machine_name()
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mode": args.mode,
        "dtype": args.dtype,
        "layout": args.layout,
        "compiled": args.compile,
        "device": args.device,
        "params": n_params,
        "decoder_params": n_dec,
        "build_s": build_s,
        "duration_pattern_frames": list(_PATTERN),
        "incremental_text_rate_tok_s": args.text_rate if incremental else None,
        "first_chunk_policies": policies,
        "first_chunk_policy": primary,
        "texts": rows,
        "ratios": ratios,
        "reference": reference,
        "quantized_deviation": deviation_figures,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{date}-{machine}-{args.mode}-{args.dtype}-{args.layout}" + ("-compiled" if args.compile else "")
    if reference:
        stem += "-vs-reference"
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    if args.plot:
        png = args.out / f"{stem}.png"
        print(f"wrote {png}" if plot(result, png) else "matplotlib not installed: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
