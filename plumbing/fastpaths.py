"""
The same maths with less memory traffic, where PyTorch's plain path is the bottleneck. Each is checked against the
plain computation (tests/plumbing/test_fastpaths.py, tests/test_fast_paths.py).

RMSNorm with its backward pass written out, for the CPU: there PyTorch runs RMSNorm as a chain of elementwise
operations (square, mean, rsqrt, two products), and autograd differentiates each link, every link reading and writing
all the activations again; at a laptop's model sizes such passes, not the matrix multiplies, are where a step spends
its extra time. On a GPU, and under torch.compile, the model uses PyTorch's own (the compiler fuses it there).

The text loss without the whole micro-batch's logits: cross-entropy over the vocabulary, a chunk of positions at a
time. At the paper's scale a micro-batch of 4 x 4,096 positions over a 128k vocabulary has 2.1G logits: 8.4 GB in
float32, and as much again for what cross-entropy keeps for its backward pass. Here the vocabulary head and the
loss run on chunks of at most MAX_LOGITS logits, each recomputed in the backward pass (activation checkpointing of
the head): what stays between the passes is the final hidden states, [positions, d_model]. The recomputation costs
one more head matrix multiply (2 d_model V FLOPs per position, ~3.5% of configs/real.py's step). A micro-batch
that fits in one chunk (the toy configs') runs as one plain cross-entropy.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint


def use_written_backward(x):
    return not (x.is_cuda or torch.compiler.is_compiling())


class RMSNormCPU(torch.autograd.Function):
    """y = x_hat * w, x_hat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), over the last dimension. As nn.RMSNorm:
    computed in x's type promoted to at least float32 (float64 stays float64), eps None means the machine epsilon
    of that computing type (float32's for bfloat16 and float16 inputs, as torch's kernel has it, not theirs), and
    weight may be None (no affine scale)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        work = torch.promote_types(x.dtype, torch.float32)
        eps = torch.finfo(work).eps if eps is None else eps
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


# ----------------------------------------------------------------------------------------------------------------
# The text loss, a chunk of positions at a time.
MAX_LOGITS = 2 ** 27   # logits per chunk: 512 MiB in float32 (1,046 positions of a 128,256-token vocabulary)


def summed_cross_entropy(h, weight, targets):
    """(sum over positions of -log softmax(h @ weight.T)[target], each position's term [positions] detached, 0 where
    there is no target), for hidden states h [..., d], the head's weight [V, d] and targets [...] (-1: no target).
    The sum equals F.cross_entropy(reduction="sum") on the full logits; the terms split the loss by source for the
    training log (train.py)."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    size = max(1, MAX_LOGITS // weight.shape[0])   # positions per chunk
    if size >= len(h):
        return chunk_loss(h, weight, targets)
    parts = [torch.utils.checkpoint.checkpoint(chunk_loss, h[i:i + size], weight, targets[i:i + size],
                                               use_reentrant=False) for i in range(0, len(h), size)]
    return sum(total for total, _ in parts), torch.cat([each for _, each in parts])


def chunk_loss(h, weight, targets):
    """F.cross_entropy written out as what it runs, log_softmax then nll_loss (the same sum, bit for bit), so that
    each position's term is a gather from the log-probabilities, not a second pass over the vocabulary."""
    logp = F.log_softmax(F.linear(h, weight).float(), -1)   # the head in the step's precision, the softmax in float32
    each = torch.where(targets >= 0, -logp.detach().gather(1, targets.clamp(min=0)[:, None])[:, 0], 0.0)
    return F.nll_loss(logp, targets, ignore_index=-1, reduction="sum"), each
