"""
The text loss without the whole micro-batch's logits: cross-entropy over the vocabulary, a chunk of positions at a
time.

At the paper's scale a micro-batch of 4 x 4,096 positions over a 128k vocabulary has 2.1G logits: 8.4 GB in
float32, and as much again for what cross-entropy keeps for its backward pass. Here the vocabulary head and the
loss run on chunks of at most MAX_LOGITS logits, each recomputed in the backward pass (activation checkpointing of
the head): what stays between the passes is the final hidden states, [positions, d_model]. The recomputation costs
one more head matrix multiply (2 d_model V FLOPs per position, ~3.5% of configs/real.py's step). A micro-batch
that fits in one chunk (the toy configs') runs as one plain cross-entropy, as before.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

MAX_LOGITS = 2 ** 27   # logits per chunk: 512 MiB in float32 (1,046 positions of a 128,256-token vocabulary)


def summed_cross_entropy(h, weight, targets):
    """sum over positions of -log softmax(h @ weight.T)[target], for hidden states h [..., d], the head's weight
    [V, d] and targets [...] (-1: no target). Equals F.cross_entropy(reduction="sum") on the full logits."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    size = max(1, MAX_LOGITS // weight.shape[0])   # positions per chunk
    if size >= len(h):
        return chunk_loss(h, weight, targets)
    return sum(torch.utils.checkpoint.checkpoint(chunk_loss, h[i:i + size], weight, targets[i:i + size],
                                                 use_reentrant=False) for i in range(0, len(h), size))


def chunk_loss(h, weight, targets):
    logits = F.linear(h, weight).float()   # the head in the step's precision, the softmax in float32
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
