"""Snake activation and weight-normalised convolutions.

Weight norm is stored the way ``torch.nn.utils.parametrizations.weight_norm`` stores it
(``parametrizations.weight.original0`` = g, ``original1`` = v) so the published checkpoints load
as they are. The effective weight ``g * v / ||v||`` is cached and only recomputed when a
parameter changes, which keeps small streaming chunks from paying for it on every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Snake(nn.Module):
    """``x + sin(alpha x)^2 / (alpha + 1e-9)`` with one learned alpha per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha
        return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class _WeightNormParams(nn.Module):
    def __init__(self, weight_shape: tuple[int, ...]):
        super().__init__()
        self.original0 = nn.Parameter(torch.ones(weight_shape[0], *([1] * (len(weight_shape) - 1))))
        self.original1 = nn.Parameter(torch.empty(weight_shape))


class _Parametrizations(nn.Module):
    def __init__(self, weight_shape: tuple[int, ...]):
        super().__init__()
        self.weight = _WeightNormParams(weight_shape)


class _WeightNormed(nn.Module):
    """Holds g/v under the checkpoint's key names and serves the folded weight."""

    def __init__(self, weight_shape: tuple[int, ...], out_channels: int):
        super().__init__()
        self.parametrizations = _Parametrizations(weight_shape)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self._cached: torch.Tensor | None = None
        self._cache_key: tuple | None = None
        nn.init.kaiming_uniform_(self.parametrizations.weight.original1, a=math.sqrt(5))
        with torch.no_grad():
            v = self.parametrizations.weight.original1
            self.parametrizations.weight.original0.copy_(_norm_except_dim0(v))

    def weight(self) -> torch.Tensor:
        g = self.parametrizations.weight.original0
        v = self.parametrizations.weight.original1
        key = (g._version, v._version, g.data_ptr(), v.data_ptr(), g.dtype, g.device)
        if torch.is_grad_enabled() and (g.requires_grad or v.requires_grad):
            return g * (v / _norm_except_dim0(v))
        if self._cache_key != key or self._cached is None:
            self._cached = g * (v / _norm_except_dim0(v))
            self._cache_key = key
        return self._cached

    def _apply(self, fn, recurse=True):
        self._cached = None
        self._cache_key = None
        return super()._apply(fn, recurse)


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.norm(p=2, dim=tuple(range(1, v.dim())), keepdim=True)


class WNConv1d(_WeightNormed):
    """Conv1d with weight norm and symmetric "same"-style zero padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        padding: int = 0,
        stride: int = 1,
    ):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride
        super().__init__((out_channels, in_channels, kernel_size), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def forward_unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution over ``x`` exactly as given: the caller owns the padding."""
        return F.conv1d(x, self.weight(), self.bias, self.stride, 0, self.dilation)

    @property
    def receptive(self) -> int:
        """Input samples each output sample reads, minus one."""
        return self.dilation * (self.kernel_size - 1)


class WNConvTranspose1d(_WeightNormed):
    """Transposed conv (kernel 2*stride) computed as a two-tap polyphase convolution.

    ``y[i*s + r] = W[:, :, r]^T x[i] + W[:, :, r+s]^T x[i-1] + b``: each output phase reads one
    input frame and the one before it. Written this way the streaming decoder can produce
    exactly the samples a new frame finalises, with one frame of carried context, and the
    one-pass decoder runs the same arithmetic.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.padding = math.ceil(stride / 2)
        super().__init__((in_channels, out_channels, 2 * stride), out_channels)
        self._poly: torch.Tensor | None = None
        self._poly_src: torch.Tensor | None = None

    def polyphase_weight(self) -> torch.Tensor:
        """(s*C_out, 2*C_in): for each output phase, the taps on [x[i-1] | x[i]]."""
        w = self.weight()
        if self._poly_src is not w:
            s = self.stride
            # (C_in, C_out, 2s) -> phase r reads x[i-1] through w[..., r+s] and x[i] through w[..., r]
            prev_tap = w[:, :, s:].permute(2, 1, 0).reshape(s * self.out_channels, self.in_channels)
            cur_tap = w[:, :, :s].permute(2, 1, 0).reshape(s * self.out_channels, self.in_channels)
            self._poly = torch.cat((prev_tap, cur_tap), dim=1).contiguous()
            self._poly_src = w
        return self._poly

    def forward_frames(self, x_with_prev: torch.Tensor) -> torch.Tensor:
        """Outputs for frames 1.. of ``x_with_prev`` (frame 0 is the carried previous frame).

        Returns ``(B, C_out, (L-1) * stride)`` un-cropped samples. One matrix product: small
        streaming chunks stay on the fast GEMM path instead of a slow small-input conv kernel.
        """
        b, _, length = x_with_prev.shape
        pairs = torch.cat((x_with_prev[:, :, :-1], x_with_prev[:, :, 1:]), dim=1)  # (B, 2*C_in, L-1)
        y = torch.matmul(self.polyphase_weight(), pairs)  # (B, s*C_out, L-1)
        s = self.stride
        y = y.view(b, s, self.out_channels, length - 1).permute(0, 2, 3, 1)
        return y.reshape(b, self.out_channels, (length - 1) * s) + self.bias.view(1, -1, 1)

    def _apply(self, fn, recurse=True):
        self._poly = None
        self._poly_src = None
        return super()._apply(fn, recurse)
