"""Inference-only linear layers: oneDNN-prepacked weights and int8 weight-only matmuls.

A TADA step multiplies 1-4 rows by every weight, so its cost is reading the weights. On the
2-core CPU of bench/bench_matmul.py, ATen's default path reads bf16 weights at 55-65 % of the
rate memory streams and fp32 weights with 2 rows at under 30 %; oneDNN with each weight
reordered once into its blocked layout, fed at least 4 rows, reaches 75-90 % (fp32 with 2 rows:
3x faster). Int8 weights halve the bytes, at a small deviation (per-output-channel scales).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QUANTIZE_ACTIVATIONS

QUANTIZE_CHOICES = tuple(QUANTIZE_ACTIVATIONS)
_INT8_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FAST_ROWS = 4
_PAD_MIN_BYTES = 1 << 20
LinearFactory = Callable[[torch.Tensor], nn.Module]


def packing_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build can prepack a CPU weight of ``dtype`` for oneDNN."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


#: Row counts above _FAST_ROWS are padded up to a multiple of this (a bounded set of kernel shapes).
ROW_BUCKET = 16


def _bucketed(rows: int) -> int:
    return rows if rows <= _FAST_ROWS else -(-rows // ROW_BUCKET) * ROW_BUCKET


class PackedLinear(nn.Module):
    """Bias-free ``x @ W.T`` with W reordered once for oneDNN (CPU, fp32/bf16).

    The packed weight is an opaque oneDNN tensor: it is not a parameter, cannot move device and
    is not saved; build this after the model has its final device and dtype.
    """

    def __init__(self, weight: torch.Tensor, expected_rows: int = _FAST_ROWS):
        super().__init__()
        if weight.device.type != "cpu" or not packing_available(weight.dtype):
            raise ValueError(f"cannot prepack a {weight.dtype} weight on {weight.device} for oneDNN")
        self.out_features, self.in_features = weight.shape
        self.weight_dtype = weight.dtype
        # Padding pays where reading the weight is the cost, not for weights that stay in cache.
        self._pad_rows = weight.numel() * weight.element_size() >= _PAD_MIN_BYTES
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), expected_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, rows = x.shape[:-1], x.reshape(-1, self.in_features)
        n = rows.shape[0]
        # oneDNN's 1-2 row kernel reads the weight ~1/3 slower than its 4-row one: pad with zero
        # rows (free when reading the weight is the cost) and drop them after. Above that, rows go
        # up to a multiple of ROW_BUCKET: oneDNN keeps a compiled kernel for every row count it
        # sees, and a book's prefills and batches of every size grew that cache by hundreds of MB.
        # A row's result does not depend on how many rows are beside it, so padding changes nothing.
        target = _FAST_ROWS if n < _FAST_ROWS and self._pad_rows else _bucketed(n)
        if target > n:
            rows = torch.cat([rows, rows.new_zeros(target - n, self.in_features)])
        out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), self._packed, None, "none", [], "")
        return out[:n].reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight_dtype}"


class Int8Linear(nn.Module):
    """Bias-free linear with int8 weights and one scale per output channel; activations keep
    their dtype. Uses PyTorch's int8 weight-only kernel (dequantizes for shapes it gets wrong)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        self.out_features, self.in_features = weight.shape
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        # The CPU kernel gives wrong bf16 results unless the inner dimension is a multiple of 16.
        if flat.device.type == "cpu" and self.in_features % 16 == 0 and flat.dtype in _INT8_KERNEL_DTYPES:
            out = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scales.to(flat.dtype))
        else:
            out = F.linear(flat, self.qweight.to(flat.dtype)) * self.scales.to(flat.dtype)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _require_fbgemm() -> None:
    if not fbgemm_available():
        raise ValueError("quantize='w8a8' needs PyTorch's fbgemm kernels (x86 CPU builds): drop it")


def fbgemm_available() -> bool:
    """Whether this PyTorch build has fbgemm's dynamic int8 linear (x86 CPUs)."""
    quantized = getattr(torch.ops, "quantized", None)
    return (
        quantized is not None
        and hasattr(quantized, "linear_dynamic")
        and any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm"))
    )


class DynamicInt8Linear(nn.Module):
    """Bias-free linear, int8 x int8: weights quantized once per output channel, activations per
    row at run time; fbgemm's kernel, float32 in and out (CPU).

    At 1-4 rows a matmul costs reading its weight, and fbgemm reads int8 weights several times faster
    than float32 ones (bench/bench_matmul.py). Its activation scale is one per call, so each row is
    first scaled to [-1, 1] by its own largest magnitude, and a row holding -1 and +1 rides along:
    every call then quantizes with the same parameters, a row's integers and result do not depend
    on its neighbours (batched equals solo), and the per-row scale is put back after. Activations
    use 7 bits (``reduce_range``), which AVX2 CPUs need to avoid saturating int16 sums.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        _require_fbgemm()
        w = weight.detach().float().cpu()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        with warnings.catch_warnings():  # quantized tensors are deprecated as a user API, the kernels are not
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                w, scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8
            )
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        anchor = torch.zeros(1, self.in_features)
        anchor[0, 0], anchor[0, -1] = 1.0, -1.0
        self.register_buffer("anchor", anchor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, rows = x.shape[:-1], x.reshape(-1, self.in_features).float()
        peak = rows.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        out = torch.ops.quantized.linear_dynamic(torch.cat([rows / peak, self.anchor]), self._packed, True)
        return (out[:-1] * peak).to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a8"


class PlainLinear(nn.Linear):
    """An ordinary bias-free Linear holding a (possibly fused) weight; the fallback factory."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)


def check_quantize(
    quantize: str | None, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> None:
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported: use one of {QUANTIZE_CHOICES} or None")
    if torch.device(device or "cpu").type != "cpu":
        raise ValueError(f"quantize={quantize!r} speeds up CPU only (there is no fast {quantize} kernel here): drop it")
    if quantize == "w8a8":
        _require_fbgemm()
    # PyTorch's int8 kernel is fast with bf16 activations only (fp32: 5-10x slower than fp32
    # weights); fbgemm's takes float32
    runs_in = QUANTIZE_ACTIVATIONS[quantize]
    if dtype is not None and dtype != getattr(torch, runs_in):
        raise ValueError(f"quantize={quantize!r} runs with {runs_in} activations: load with torch_dtype='{runs_in}'")


def linear_factory(
    device: torch.device, dtype: torch.dtype, quantize: str | None = None, prepack: bool = True
) -> LinearFactory:
    """What replaces a Linear for inference on ``device`` in ``dtype`` (``prepack``: oneDNN's layout
    where it exists)."""
    check_quantize(quantize, device, dtype)
    if quantize == "int8":
        return Int8Linear
    if quantize == "w8a8":
        return DynamicInt8Linear
    if prepack and torch.device(device).type == "cpu" and packing_available(dtype):
        return PackedLinear
    return PlainLinear


def fused_weight(linears: Sequence[nn.Linear]) -> torch.Tensor:
    """Rows of several bias-free Linears reading the same input, stacked: one matmul for all."""
    if any(lin.bias is not None for lin in linears):
        raise ValueError("only bias-free linears can be fused")
    return torch.cat([lin.weight.detach() for lin in linears], dim=0)


def replace_linears(root: nn.Module, make: LinearFactory, skip: Callable[[str], bool] = lambda name: False) -> int:
    """Swap every bias-free ``nn.Linear`` under ``root`` (names relative to it) for ``make(weight)``."""
    count = 0
    for name, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and child.bias is None and not skip(full):
                setattr(module, child_name, make(child.weight))
                count += 1
    return count


class WithBias(nn.Module):
    """``linear(x) + bias``: a biased Linear on an inference layout built for bias-free weights."""

    def __init__(self, linear: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.bias = nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.bias


class FusedGatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up as one matmul (Llama's MLP, the head's FFN)."""

    def __init__(self, gate_up: nn.Module, down_proj: nn.Module, act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.gate_up = gate_up
        self.down_proj = down_proj
        self.act = act

    @classmethod
    def fuse(cls, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, act, make: LinearFactory):
        return cls(make(fused_weight([gate_proj, up_proj])), make(down_proj.weight), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


#: Rows every matmul of a batched step sees at the least, where padding is cheap. CPU kernels are
#: chosen by the row count (1, 2-3 and 4+ rows take different paths that round differently), so a
#: stream computed with others must see the same kernels as alone: from 4 rows on, a row's result
#: does not depend on how many rows share the call, which makes batched generation equal solo
#: generation bit for bit.
MIN_ROWS = 4
#: The same for ATen's unpacked CPU matmuls in float32 (a model loaded with ``optimize=False``): MKL
#: switches kernels at 2 and again at 11-16 rows on Intel CPUs with AMX (measured on a Xeon), so a
#: row's result is the same at any row count only from 16 on.
UNPACKED_CPU_MIN_ROWS = 16


@functools.cache
def native_cpu_kernels(dtype: torch.dtype) -> bool:
    """Whether this CPU computes in ``dtype`` natively (fp32 always; bf16/fp16 with oneDNN's
    avx512_bf16/AMX/fp16 paths). Without, half-precision matmuls and convolutions are
    compute-bound emulation, several times slower than fp32."""
    if dtype not in (torch.bfloat16, torch.float16):
        return True
    if not torch.backends.mkldnn.is_available():
        return False
    name = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    check = getattr(torch.ops.mkldnn, name, None)
    return check is not None and bool(check())


def invariant_rows(device: torch.device | str, dtype: torch.dtype, layout: str | None = None) -> int:
    """Rows to pad a batched matmul's input to, so that batching does not change a row's result.

    :data:`MIN_ROWS` where the weight read is the cost and extra rows are nearly free (CPU fp32,
    CPU half precision with native kernels, GPUs); 1 (no padding) where the kernel is compute-bound
    (bf16/fp16 on a CPU without native support: every row costs as much as the first, so padding
    would make a lone stream up to 2x slower and batching saves nothing there anyway), and for the
    ``"w8a8"`` layout (``layout``: the model's ``inference_layout``), whose integer sums give a row
    the same result at any row count, while each extra row costs fbgemm ~5 % more per call.
    """
    if layout == "w8a8" and torch.device(device).type == "cpu":
        return 1
    if torch.device(device).type == "cpu" and not native_cpu_kernels(dtype):
        return 1
    if torch.device(device).type == "cpu" and layout is None and dtype == torch.float32:
        return UNPACKED_CPU_MIN_ROWS
    return MIN_ROWS


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` (n, ...) with zero rows appended up to ``rows``; callers drop them from the result."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0],) + tuple(x.shape[1:]))])
