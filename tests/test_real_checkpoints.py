"""Real checkpoints: run with TADA_MODEL_DIR (e.g. a local HumeAI/tada-1b) and TADA_CODEC_DIR
(a local HumeAI/tada-codec); TADA_TOKENIZER_DIR if the model directory has no tokenizer files.

    TADA_MODEL_DIR=... TADA_CODEC_DIR=... python -m pytest -m real_checkpoints
"""

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import ROOT

SHARED = ROOT.parent / "shared"  # the folder beside the checkout
MODEL_DIR = os.environ.get("TADA_MODEL_DIR")
CODEC_DIR = os.environ.get("TADA_CODEC_DIR")
pytestmark = [
    pytest.mark.real_checkpoints,
    pytest.mark.skipif(not (MODEL_DIR and CODEC_DIR), reason="set TADA_MODEL_DIR and TADA_CODEC_DIR to checkpoints"),
]
CLIP = SHARED / "samples" / "ljspeech.wav"
TRANSCRIPT = (
    "The examination and testimony of the experts, enabled the commission to conclude that five shots may have "
    "been fired."
)
TEXT = "Please call Stella. Ask her to bring these things with her from the store."


@pytest.fixture(scope="module")
def real():
    from tadastream import Encoder, TadaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = TadaForCausalLM.from_pretrained(
        MODEL_DIR, codec=CODEC_DIR, tokenizer=os.environ.get("TADA_TOKENIZER_DIR"), torch_dtype=dtype, device=device
    )
    encoder = Encoder.from_pretrained(CODEC_DIR, device=device)
    if not Path(CLIP).is_file():
        pytest.skip("shared/samples/ljspeech.wav is not here")
    prompt = encoder(str(CLIP), text=[TRANSCRIPT])
    return model, prompt


def test_non_streaming_produces_audio(real):
    model, prompt = real
    torch.manual_seed(0)
    out = model.generate(prompt=prompt, text=TEXT)
    audio = out.audio[0]
    assert audio.numel() > 24000 and torch.isfinite(audio).all() and audio.abs().max() <= 1.0


def test_streaming_yields_chunks_and_result_and_matches(real):
    model, prompt = real
    torch.manual_seed(0)
    full = model.generate(prompt=prompt, text=TEXT).audio[0]
    torch.manual_seed(0)
    stream = model.generate(prompt=prompt, text=TEXT, stream=True)
    chunks = [c for c, sr in stream]
    audio = torch.cat(chunks)
    assert len(chunks) >= 3 and stream.result is not None
    assert 0.5 <= audio.numel() / full.numel() <= 2.0
    if model.dtype == torch.float32:
        assert audio.shape == full.shape and (audio - full.to(audio)).abs().max() <= 1e-4


def test_early_break_is_safe(real):
    model, prompt = real
    stream = model.generate(prompt=prompt, text=TEXT, stream=True)
    for _chunk, _sr in stream:
        break
    stream.close()
    assert model.generate(prompt=prompt, text="Thank you.").audio[0].numel() > 0


def _durations_agreement(a, b) -> float:
    """Share of tokens whose predicted frame counts agree (over the shorter run)."""
    x, y = a.time_before[0], b.time_before[0]
    n = min(x.numel(), y.numel())
    return float((x[:n] == y[:n]).float().mean())


@pytest.mark.parametrize(("quantize", "dtype"), [("w8a8", torch.float32), ("int8", torch.bfloat16)])
def test_quantized_layouts_stay_close_to_float_on_real_weights(real, quantize, dtype):
    """Issue 13's deviation check where it counts: real weights, same seed, same prompt."""
    from tadastream import TadaForCausalLM

    model, prompt = real
    if model.device.type != "cpu":
        pytest.skip("quantized layouts are CPU layouts")
    torch.manual_seed(0)
    expected = model.generate(prompt=prompt, text=TEXT)
    quant = TadaForCausalLM.from_pretrained(
        MODEL_DIR, codec=CODEC_DIR, tokenizer=os.environ.get("TADA_TOKENIZER_DIR"), torch_dtype=dtype, quantize=quantize
    )
    torch.manual_seed(0)
    got = quant.generate(prompt=prompt, text=TEXT)
    agreement = _durations_agreement(got, expected)
    length = got.audio[0].numel() / expected.audio[0].numel()
    print(f"{quantize}: durations agree {agreement:.2%}, length ratio {length:.3f}")
    assert agreement >= 0.8 and 0.9 <= length <= 1.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled steps with CUDA graphs are for GPUs")
def test_compiled_steps_match_the_eager_engine_on_real_weights(real):
    model, prompt = real
    torch.manual_seed(0)
    expected = model.generate(prompt=prompt, text=TEXT)
    model.compile(max_streams=2)
    try:
        torch.manual_seed(0)
        got = model.generate(prompt=prompt, text=TEXT)
    finally:
        model.engine.close()
        model.engine = None
    assert _durations_agreement(got, expected) >= 0.9
