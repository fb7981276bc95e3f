"""Inference layouts: oneDNN-prepacked and int8 weight-only linears, fused flow head and MLPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tadastream.demo import build_demo_model, demo_voice
from tadastream.generation import InferenceOptions
from tadastream.nn.flow_head import FlowHead
from tadastream.nn.linear import (
    DynamicInt8Linear,
    Int8Linear,
    PackedLinear,
    PlainLinear,
    check_quantize,
    fbgemm_available,
    linear_factory,
    packing_available,
)
from tests.helpers.streams import take_turns

needs_packing = pytest.mark.skipif(not packing_available(torch.float32), reason="no oneDNN in this build")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@needs_packing
@pytest.mark.parametrize("shape", [(1024,), (2, 1024), (1, 2, 1024), (3, 1024), (2, 5, 1024)])  # 1-2 rows padded
def test_packed_linear_matches_linear_fp32(shape):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(400, 1024, generator=gen)  # 1.6 MB: large enough to be padded
    x = torch.randn(*shape, generator=gen)
    lin = PackedLinear(w)
    assert lin._pad_rows
    out = lin(x)
    assert out.shape == (*shape[:-1], 400)
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)  # outputs ~30: fp32 rounding


@needs_packing
def test_packed_linear_takes_non_contiguous_input():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(32, 16, generator=gen)
    x = torch.randn(16, 6, generator=gen).t()  # (6, 16), not contiguous
    torch.testing.assert_close(PackedLinear(w)(x), F.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not packing_available(torch.bfloat16), reason="no oneDNN bf16 on this CPU")
def test_packed_linear_bf16_matches_linear():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(256, 128, generator=gen).bfloat16()
    x = torch.randn(2, 128, generator=gen).bfloat16()
    assert _rel(PackedLinear(w)(x), F.linear(x, w)) < 1e-2


def test_packed_linear_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="cannot prepack"):
        PackedLinear(torch.zeros(4, 4, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_features", [64, 100])  # 100: not a multiple of 16, the dequantizing path
def test_int8_linear_is_the_dequantized_matmul(dtype, in_features):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(96, in_features, generator=gen)
    x = torch.randn(3, in_features, generator=gen).to(dtype)
    lin = Int8Linear(w.to(dtype))
    assert lin.qweight.dtype == torch.int8 and lin.qweight.abs().max() <= 127
    dequant = lin.qweight.float() * lin.scales.float()[:, None]
    # per-channel rounding: each weight within half a step (plus the scale's own rounding in bf16)
    slack = 0.5 + (127 * 2**-8 if dtype == torch.bfloat16 else 1e-6)
    assert ((dequant - w.to(dtype).float()).abs() <= lin.scales.float()[:, None] * slack).all()
    out = lin(x)
    assert out.dtype == dtype and out.shape == (3, 96)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert _rel(out, x.float() @ dequant.T) < tol
    assert _rel(out, F.linear(x.float(), w)) < 2e-2  # close to the unquantized result


def test_linear_factory_choices():
    assert linear_factory(torch.device("cpu"), torch.float16) is PlainLinear
    assert linear_factory(torch.device("cpu"), torch.bfloat16, "int8") is Int8Linear
    with pytest.raises(ValueError, match="bfloat16 activations"):
        linear_factory(torch.device("cpu"), torch.float32, "int8")
    with pytest.raises(ValueError, match="quantize='int4' is not supported"):
        linear_factory(torch.device("cpu"), torch.float32, "int4")
    with pytest.raises(ValueError, match="CPU only"):
        check_quantize("int8", "cuda")  # checked before anything is loaded or moved
    check_quantize(None, "cuda")


@pytest.mark.parametrize("factory", [PlainLinear, PackedLinear])
def test_fused_flow_head_matches_unfused(factory):
    if factory is PackedLinear and not packing_available(torch.float32):
        pytest.skip("no oneDNN")
    torch.manual_seed(0)
    head = FlowHead(hidden=32, latent=12, num_layers=3, ffn_ratio=2.0).eval()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t, c = torch.randn(4, 12), torch.rand(4), torch.randn(4, 32)
    with torch.no_grad():
        before = head(x, t, c)
        head.prepare_for_inference(factory)
        after = head(x, t, c)
    assert head.modulation is not None and all(layer.adaLN_modulation is None for layer in head.layers)
    assert head.modulation_sizes == [96, 96, 96, 64]
    assert not any(type(m) is torch.nn.Linear for m in head.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def _speak(model, voice, text="Hello there, how are you?", **kwargs):
    torch.manual_seed(0)
    return model.generate(voice, text, inference_options=InferenceOptions(**kwargs)).audio[0]


def test_optimized_model_speaks_like_the_plain_one():
    plain = build_demo_model()
    voice = demo_voice(plain)
    expected = _speak(plain, voice)
    fast = build_demo_model().optimize_for_inference()
    assert fast.inference_layout in ("PackedLinear", "PlainLinear")
    assert not any(type(m) is torch.nn.Linear and m.bias is None for m in fast.model.modules())
    audio = _speak(fast, voice)
    assert audio.shape == expected.shape
    assert (audio - expected).abs().max() < 1e-4
    # several candidates batch more rows through the same packed weights
    torch.testing.assert_close(
        _speak(fast, voice, num_acoustic_candidates=3),
        _speak(plain, voice, num_acoustic_candidates=3),
        atol=1e-4,
        rtol=0,
    )


def test_optimized_model_streams_what_it_generates():
    model = build_demo_model().optimize_for_inference()
    voice = demo_voice(model)
    whole = _speak(model, voice)
    torch.manual_seed(0)
    streamed = torch.cat([chunk for chunk, _ in model.generate(voice, "Hello there, how are you?", stream=True)])
    assert (streamed - whole).abs().max() < 1e-4


def test_int8_model_stays_close_to_bf16():
    plain = build_demo_model().to(torch.bfloat16)
    voice = demo_voice(plain)
    expected = _speak(plain, voice).float()
    quant = build_demo_model().to(torch.bfloat16).optimize_for_inference("int8")
    assert quant.inference_layout == "int8"
    # the batched adaLN projection keeps the model's dtype; everything else is int8
    assert not isinstance(quant.prediction_head.modulation, Int8Linear)
    assert isinstance(quant.prediction_head.layers[0].ffn.gate_up, Int8Linear)
    assert isinstance(quant.model.layers[0].self_attn.qkv, Int8Linear)
    audio = _speak(quant, voice).float()
    assert audio.shape == expected.shape  # same durations: the gray codes survive quantization
    assert 0 < _rel(audio, expected) < 0.05  # measured 0.015, as far as bf16 is from fp32


def test_optimized_model_refuses_save_and_second_optimization(tmp_path):
    model = build_demo_model().optimize_for_inference()
    with pytest.raises(RuntimeError, match="optimize=False"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="already optimised"):
        model.optimize_for_inference()


@needs_packing
def test_packed_model_refuses_to_move_but_allows_no_op_moves():
    model = build_demo_model().optimize_for_inference()
    assert model.inference_layout == "PackedLinear"
    model.to("cpu").to(torch.float32)  # nothing changes: allowed
    with pytest.raises(RuntimeError, match="pass device= and torch_dtype= to from_pretrained"):
        model.to(torch.bfloat16)
    assert model.dtype == torch.float32  # refused before anything was cast
    voice = demo_voice(model)
    assert _speak(model, voice).numel() > 0


needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="no fbgemm in this PyTorch build")


@needs_fbgemm
@pytest.mark.parametrize("in_features", [64, 100])
def test_w8a8_linear_stays_close_to_float_and_each_row_ignores_its_neighbours(in_features):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(96, in_features, generator=gen) * 0.05
    x = torch.randn(20, in_features, generator=gen) * torch.logspace(-2, 2, 20)[:, None]  # rows of any scale
    lin = DynamicInt8Linear(w)
    out = lin(x)
    assert out.dtype == torch.float32 and out.shape == (20, 96)
    for row in range(20):  # per-row activation scales: every row, small or large, keeps its precision
        assert _rel(out[row], x[row] @ w.T) < 0.05  # 8-bit weights x 7-bit activations; measured ~0.015
    for n in (1, 2, 3, 4, 7, 13):  # the same integers and result whatever else is in the call
        assert torch.equal(lin(x[:n]), out[:n])
        assert torch.equal(lin(x[-n:]), out[-n:])
    assert torch.equal(lin(x.reshape(4, 5, -1)), out.reshape(4, 5, -1))
    assert torch.equal(lin(torch.zeros(2, in_features)), torch.zeros(2, 96))


def test_w8a8_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="float32 activations"):
        check_quantize("w8a8", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="CPU only"):
        check_quantize("w8a8", "cuda")
    from tadastream.loading import choose_dtype

    assert choose_dtype("auto", "cpu", "w8a8")[0] == torch.float32
    assert choose_dtype("auto", "cpu", "int8")[0] == torch.bfloat16


@needs_fbgemm
def test_w8a8_model_stays_close_to_fp32_and_batched_equals_solo():
    from tadastream.engine import Engine

    plain = build_demo_model().optimize_for_inference()
    voice = demo_voice(plain)
    expected = _speak(plain, voice).float()
    quant = build_demo_model().optimize_for_inference("w8a8")
    assert quant.inference_layout == "w8a8"
    # all of it, the adaLN projection that runs on all ODE steps' rows at once included
    assert isinstance(quant.prediction_head.modulation, DynamicInt8Linear)
    assert isinstance(quant.prediction_head.layers[0].ffn.gate_up, DynamicInt8Linear)
    assert isinstance(quant.model.layers[0].self_attn.qkv, DynamicInt8Linear)
    assert isinstance(quant.lm_head, DynamicInt8Linear)  # its table stays float for the embedding
    assert quant.model.embed_tokens.weight.dtype == torch.float32
    audio = _speak(quant, voice).float()
    assert audio.shape == expected.shape  # same durations
    assert 0 < _rel(audio, expected) < 0.05
    texts = ["Hello there, how are you?", "Five shots may have been fired."]
    alone = [torch.cat([c for c, _ in quant.generate(voice, t, seed=3 + i, stream=True)]) for i, t in enumerate(texts)]
    engine = Engine(quant, max_streams=2)
    streams = [quant.generate(voice, t, seed=3 + i, stream=True, engine=engine) for i, t in enumerate(texts)]
    for got, want in zip(take_turns(streams), alone):
        assert torch.equal(got, want)  # bit for bit: the quantization is per row
