"""nn.ELU, nn.Tanh and the decoder's output nn.ConvTranspose2d, computed faster on CPU.

Same functions and parameters as torch's layers (so checkpoints are unchanged); on other
devices torch's own kernels run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _CpuActivation(nn.Module):
    """An elementwise activation computed by `cpu_function` (an autograd Function with a
    closed-form backward pass) on CPU tensors, and by torch's own `reference` elsewhere: on a
    GPU one fused kernel beats the CPU form's several passes."""

    cpu_function: type[torch.autograd.Function]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.reference(x)
        return self.cpu_function.apply(x)


class _CpuELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.clamp(x, max=0.0).exp_().sub_(1.0).add_(torch.relu(x))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * torch.clamp(out, max=0.0).add_(1.0)


class ELU(_CpuActivation):
    """nn.ELU: elu(x) = x for x > 0, e^x − 1 otherwise; d elu / dx = 1 or e^x = min(elu(x), 0) + 1.

    On CPU this is max(x, 0) + (e^{min(x, 0)} − 1): torch's own ELU kernel goes through an
    unvectorised expm1, vectorised exp does not. exp − 1 instead of expm1 differs by at most
    one float32 rounding of 1 (6e-8) near 0⁻. Other devices use F.elu.
    """

    cpu_function = _CpuELU

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x)


class _CpuTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.mul(x, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, out)


class Tanh(_CpuActivation):
    """nn.Tanh: tanh(x) = 2 sigmoid(2x) − 1; d tanh / dx = 1 − tanh².

    On CPU torch's tanh kernel is slower than this form's three vectorised passes. The form is
    off by at most 1.8e-7 from tanh in float32 (torch's own kernel: 6e-8) and 3.3e-16 in
    float64. Other devices use torch.tanh.
    """

    cpu_function = _CpuTanh

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d to the decoder's few (P ≤ 3) parameter maps.

    On CPU, oneDNN's kernel for a transposed convolution with one to three output channels is
    slower than torch's GEMM + col2im kernel, which it picks otherwise, so the forward pass
    calls that kernel directly (its backward pass still goes to oneDNN, which is fast there).
    Same function and parameters, so checkpoints are unchanged.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        direct = (
            x.device.type == "cpu"
            and x.ndim == 4
            and self.out_channels <= 3
            and self.groups == 1
            and self.padding_mode == "zeros"
            and output_size is None
        )
        if not direct:
            return super().forward(x, output_size)
        return torch.ops.aten.slow_conv_transpose2d(
            x,
            self.weight,
            self.kernel_size,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        )
