"""How a model is made ready to run: the dtype "auto" picks (and why), and the CPU threads."""

from __future__ import annotations

import pytest
import torch

import tadastream.nn.linear as linear
from tadastream.loading import DEMO, choose_dtype, cpu_budget, load_model


@pytest.mark.parametrize(
    "dtype, device, quantize, native, expected, says",
    [
        ("auto", "cpu", None, True, torch.bfloat16, "natively"),
        ("auto", "cpu", None, False, torch.float32, "no native bfloat16"),
        (None, "cpu", None, False, torch.float32, "no native bfloat16"),
        ("auto", "cpu", "int8", False, torch.bfloat16, "int8"),
        ("auto", "cuda", None, False, torch.bfloat16, "CUDA"),
        ("auto", "mps", None, True, torch.float32, "no native"),
        ("float32", "cpu", None, True, torch.float32, "as asked"),
        ("bf16", "cpu", None, False, torch.bfloat16, "as asked"),
    ],
)
def test_auto_dtype_follows_the_hardware_and_says_why(monkeypatch, dtype, device, quantize, native, expected, says):
    monkeypatch.setattr(linear, "native_cpu_kernels", lambda _dtype: native)
    chosen, why = choose_dtype(dtype, device, quantize)
    assert chosen == expected and says in why


def test_unknown_dtype_is_one_clear_error():
    with pytest.raises(ValueError, match="use one of float32, bfloat16, float16"):
        choose_dtype("half-ish", "cpu")


def test_cpu_budget_sees_a_container_quota(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: two threads can run
    assert cpu_budget(str(quota)) == min(2, cpu_budget(str(tmp_path / "none")))
    quota.write_text("max 100000\n")
    assert cpu_budget(str(quota)) == cpu_budget(str(tmp_path / "none")) >= 1
    quota.write_text("garbage")
    assert cpu_budget(str(quota)) >= 1


def test_load_model_never_runs_more_threads_than_cpus(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr("tadastream.loading.cpu_budget", lambda *a: 1)
    try:
        torch.set_num_threads(2)
        model, voice = load_model(DEMO, device="cpu", dtype="float32")
        assert torch.get_num_threads() == 1 and voice is not None and model.dtype == torch.float32
    finally:
        torch.set_num_threads(before)
