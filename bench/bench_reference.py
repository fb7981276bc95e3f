"""The reference (hume-tada 0.1.9) on TADA-1B shapes, timed like ``bench_streaming.py --mode 1b``.

Runs in the reference's own virtual environment (see ``scripts/make_parity_fixtures.py`` for how
to make it; its import shims stand in for descript-audio-codec and torchaudio)::

    /tmp/refvenv/bin/python bench/bench_reference.py --dtype bf16
    python bench/bench_streaming.py --mode 1b --dtype bf16 --texts short --gen-repeat 1 --no-mem

Same shapes, random weights, the same 4-12 frame duration pattern (patched into the reference's
gray-code decoder), the same prompt recipe and text as ``bench_streaming.py``. Reports the total
``generate()`` time and the reference's own per-step LLM and flow-matching times; writes
``bench/results/<date>-<machine>-reference-1b-<dtype>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_parity_fixtures as ref_env  # noqa: E402  (installs the shims, imports the reference)
import tada.modules.tada as ref_tada  # noqa: E402
from tada.modules.decoder import Decoder, DecoderConfig  # noqa: E402
from tada.modules.encoder import EncoderOutput  # noqa: E402

PATTERN = (4, 7, 5, 9, 6, 12, 8, 4, 10, 5, 11, 6)  # as bench_streaming.py
WORDS = (
    "the quick brown fox jumps over the lazy dog while seven wizards quietly judge a box of "
    "mixed jams and the river keeps running past old stone bridges toward the distant sea"
).split()
VOICE_TEXT = (
    "The examination and testimony of the experts, enabled the commission to conclude that five shots may "
    "have been fired."
)
_calls = [0]


def fixed_durations(bits: torch.Tensor, num_bits: int) -> torch.Tensor:
    value = PATTERN[_calls[0] % len(PATTERN)]
    _calls[0] += 1
    return torch.full(bits.shape[:-1], value, dtype=torch.long, device=bits.device)


def make_text(tok, n_tokens: int) -> str:
    words: list[str] = []
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words).capitalize() + "."


def prompt(tok, acoustic_dim: int) -> EncoderOutput:
    """The recipe of tadastream.demo.demo_voice."""
    ids = tok.encode(VOICE_TEXT, add_special_tokens=False)
    gen = torch.Generator().manual_seed(1)
    gaps = torch.randint(3, 8, (len(ids),), generator=gen)
    positions = torch.cumsum(gaps, 0).unsqueeze(0)
    frames = int(positions[0, -1]) + 4
    return EncoderOutput(
        audio=torch.zeros(1, frames * 480),
        audio_len=torch.tensor([frames * 480.0]),
        text=[VOICE_TEXT],
        token_positions=positions,
        token_values=torch.randn(1, len(ids), acoustic_dim, generator=gen),
        sample_rate=24000,
        text_tokens=torch.tensor([ids]),
        text_tokens_len=torch.tensor([len(ids)]),
    )


@torch.no_grad()
def build(dtype: torch.dtype):
    with torch.device("meta"):
        model = ref_tada.TadaForCausalLM(ref_env.real_llm_config())
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.normal_(0, 0.02)
    model.model.rotary_emb.inv_freq, _ = model.model.rotary_emb.rope_init_fn(model.config, "cpu")
    decoder = Decoder(DecoderConfig())
    for name, p in decoder.named_parameters():
        p.uniform_(0.5, 1.5) if name.endswith("alpha") else p.normal_(0, 0.02)
    model._decoder = decoder.eval()
    model._tokenizer = ref_env.load_tokenizer()
    return model.to(dtype).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    ref_tada.decode_gray_code_to_time = fixed_durations
    t0 = time.perf_counter()
    model = build(dtype)
    built = time.perf_counter() - t0
    tok = model.tokenizer
    voice = prompt(tok, model.config.acoustic_dim)
    text = make_text(tok, args.tokens)
    model.generate(prompt=voice, text=" Hello there.", normalize_text=False)  # warm-up
    _calls[0] = 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = model.generate(prompt=voice, text=" " + text, normalize_text=False)
    total = time.perf_counter() - t0
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.system()}-{platform.machine()}-{torch.get_num_threads()}threads-{torch.__version__}",
        "reference": "hume-tada 0.1.9",
        "dtype": args.dtype,
        "text": text,
        "build_s": built,
        "total_s": total,
        "audio_s": out.audio[0].numel() / 24000,
        "llm_s_per_step": float(out.llm_time),
        "flow_s_per_step": float(out.diffusion_time),
    }
    print(json.dumps(result, indent=1))
    name = f"{datetime.date.today()}-{platform.system()}-{platform.machine()}-reference-1b-{args.dtype}.json"
    (REPO / "bench" / "results" / name).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
