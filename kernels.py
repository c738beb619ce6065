"""
RMSNorm with its backward pass written out by hand, for the CPU.

On a CPU, PyTorch runs RMSNorm as a chain of separate elementwise operations (square, mean, rsqrt, two products),
and autograd differentiates each link: every link reads and writes all the activations again, and at a laptop's
model sizes such passes, not the matrix multiplies, are where a step spends its extra time. The maths here is the
same (tests/test_fast_paths.py checks the output and both gradients against autograd); it only goes over the memory
fewer times. On a GPU, and under torch.compile, the model uses PyTorch's own (the compiler fuses it there).
"""
import torch


def use_written_backward(x):
    return not (x.is_cuda or torch.compiler.is_compiling())


class RMSNormCPU(torch.autograd.Function):
    """y = x_hat * w, x_hat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), over the last dimension."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        x_hat = x.float() * rstd
        ctx.save_for_backward(x_hat, weight, rstd)
        return (x_hat * weight).type_as(x)

    @staticmethod
    def backward(ctx, grad):
        """With g = dy * w: dx = rstd * (g - x_hat * mean(g * x_hat)); dw = dy * x_hat summed over the rows."""
        x_hat, weight, rstd = ctx.saved_tensors
        g = grad.float() * weight
        dx = torch.addcmul(g, x_hat, (g * x_hat).mean(-1, keepdim=True), value=-1) * rstd
        return dx.type_as(grad), (grad.float() * x_hat).flatten(0, -2).sum(0).type_as(weight), None
