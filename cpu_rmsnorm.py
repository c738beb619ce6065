"""
RMSNorm with its backward pass written out by hand, for the CPU.

On a CPU, PyTorch runs RMSNorm as a chain of separate elementwise operations (square, mean, rsqrt, two products),
and autograd differentiates each link: every link reads and writes all the activations again, and at a laptop's
model sizes such passes, not the matrix multiplies, are where a step spends its extra time. The maths here is the
same (tests/test_fast_paths.py checks the output and both gradients against autograd); it only goes over the memory
fewer times. On a GPU, and under torch.compile, the model uses PyTorch's own (the compiler fuses it there).
"""
import torch
import torch.nn as nn


def use_written_backward(x):
    return not (x.is_cuda or torch.compiler.is_compiling())


class RMSNormCPU(torch.autograd.Function):
    """y = x_hat * w, x_hat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), over the last dimension. As nn.RMSNorm:
    computed in x's type promoted to at least float32 (float64 stays float64), eps None means the type's machine
    epsilon, and weight may be None (no affine scale)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        work = torch.promote_types(x.dtype, torch.float32)
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        rstd = torch.rsqrt(x.to(work).pow(2).mean(-1, keepdim=True) + eps)
        x_hat = x.to(work) * rstd
        ctx.save_for_backward(x_hat, weight, rstd)
        return (x_hat if weight is None else x_hat * weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        """With g = dy * w: dx = rstd * (g - x_hat * mean(g * x_hat)); dw = dy * x_hat summed over the rows."""
        x_hat, weight, rstd = ctx.saved_tensors
        dy = grad.to(x_hat.dtype)
        g = dy if weight is None else dy * weight
        dx = torch.addcmul(g, x_hat, (g * x_hat).mean(-1, keepdim=True), value=-1) * rstd
        dw = None if weight is None else (dy * x_hat).flatten(0, -2).sum(0).to(weight.dtype)
        return dx.to(grad.dtype), dw, None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm; on the CPU, with its backward pass written out (RMSNormCPU): PyTorch has no fused kernel there."""
    def forward(self, x):
        return RMSNormCPU.apply(x, self.weight, self.eps) if use_written_backward(x) else super().forward(x)
