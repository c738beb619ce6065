"""The text loss a chunk of positions at a time (fastpaths.py): the same loss and gradients as cross-entropy over
the whole micro-batch's logits, without ever keeping them."""
import pytest
import torch

from data import Tokenizer, to_device
from helpers import C, N, mixed_row, tiny
from model import training_losses
from plumbing import fastpaths


def batch():
    b = to_device(mixed_row(Tokenizer()), "cpu")
    b["latents"] = torch.randn(b["cond"].shape[0], N, C, generator=torch.Generator().manual_seed(1))
    return b


def whole_logits_loss(model, b, generator):
    """The loss as it was: one chunk, i.e. float32 logits [B S, V] for the whole micro-batch and one cross-entropy."""
    kept, fastpaths.MAX_LOGITS = fastpaths.MAX_LOGITS, 10 ** 12
    try:
        return training_losses(model, b, generator)
    finally:
        fastpaths.MAX_LOGITS = kept


def losses_and_grads(model, fn, b):
    model.zero_grad(set_to_none=True)
    text, flow = fn(model, b, torch.Generator().manual_seed(0))
    (text + 3 * flow).backward()
    return [text.detach(), flow.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("positions, checkpointing", [(1, False), (7, False), (16, True), (10 ** 6, False)])
def test_chunked_loss_equals_whole_logits(monkeypatch, positions, checkpointing):
    """Chunks of 1, 7 (40 positions: a short last chunk) and 16 positions, and one chunk (no recomputation), with
    and without activation checkpointing of the blocks: the loss and every gradient equal the whole-logits ones."""
    model = tiny()
    torch.nn.init.normal_(model.flow_head.weight, std=0.02)
    model.activation_checkpointing = checkpointing
    b = batch()
    want = losses_and_grads(model, whole_logits_loss, b)
    monkeypatch.setattr(fastpaths, "MAX_LOGITS", positions * model.cfg.vocab_size)
    got = losses_and_grads(model, training_losses, b)
    assert len(got) == len(want) > 10
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def logit_rows_kept(fn, model, b):
    """The most positions of float32 logits (or their log-softmax: [..., V]) autograd keeps for the backward pass."""
    V, rows = model.cfg.vocab_size, [0]

    def pack(t):
        if t.dtype == torch.float32 and t.dim() and t.shape[-1] == V:
            rows.append(t.numel() // V)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(model, b, torch.Generator().manual_seed(0))
    return max(rows)


def test_no_float32_logits_for_the_whole_micro_batch(monkeypatch):
    """With chunks of 8 positions, no float32 logits are kept between the passes (the whole-logits loss keeps its
    log-softmax over every position of the micro-batch)."""
    model, b = tiny(), batch()
    monkeypatch.setattr(fastpaths, "MAX_LOGITS", 8 * model.cfg.vocab_size)
    assert logit_rows_kept(whole_logits_loss, model, b) == b["tokens"].numel()
    assert logit_rows_kept(training_losses, model, b) == 0


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_loss_compiles_as_one_graph(monkeypatch, checkpointing):
    """The chunks' recomputation compiles inside the whole model's graph (fullgraph: no break) and matches eager,
    under bf16 autocast as on a GPU."""
    import torch._dynamo
    b = batch()
    monkeypatch.setattr(fastpaths, "MAX_LOGITS", 16 * Tokenizer().vocab_size)
    results = []
    for compiled in (False, True):
        model = tiny()
        torch.nn.init.normal_(model.flow_head.weight, std=0.02)
        model.activation_checkpointing = checkpointing
        if compiled:
            torch._dynamo.reset()
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        with torch.autocast("cpu", torch.bfloat16):
            text, flow = training_losses(run, b, torch.Generator().manual_seed(0))
        (text + flow).backward()
        results.append([text, flow] + [p.grad for p in model.parameters() if p.grad is not None])
    for a, w in zip(*results):
        assert (a - w).abs().max() <= 1e-2 * w.abs().max() + 1e-6
