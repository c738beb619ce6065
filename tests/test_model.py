"""The model: the hybrid mask (by gradients), FlexAttention vs the CPU path, flow-matching maths, accounting."""
import pytest
import torch

from data import FRAME, Example, Tokenizer, collate, text_example, to_device
from helpers import C, N, mixed_row, tiny
from model import ModelConfig, add_noise, may_attend, sample_time, shift_time, training_losses, velocity

def input_dependence(model, batch, zt, t):
    """dep[q, k] = does the output at q depend on the input at k (through every layer)?"""
    captured = {}

    def leaf(module, args):
        captured["x"] = args[0].detach().requires_grad_()
        return (captured["x"], *args[1:])
    handle = model.blocks[0].register_forward_pre_hook(leaf)
    logits, _ = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
    handle.remove()
    S = logits.shape[1]
    dep = torch.zeros(S, S, dtype=torch.bool)
    for q in range(S):  # the vocabulary head reads every position, frame tokens included
        (g,) = torch.autograd.grad(logits[0, q].sum(), captured["x"], retain_graph=True)
        dep[q] = g[0].abs().sum(-1) > 0
    return dep


def test_mask_by_gradients():
    tok = Tokenizer()
    batch = to_device(mixed_row(tok), "cpu")
    model = tiny()
    F_ = batch["cond"].shape[0]
    dep = input_dependence(model, batch, torch.randn(F_, N, C), torch.rand(F_))
    doc, frame = batch["doc"][0], batch["frame"][0]
    S = doc.shape[0]
    for q in range(S):
        for k in range(S):
            same_doc = doc[q] == doc[k]
            if frame[q] >= 0:   # a frame token: its whole frame and everything before it, nothing after
                want = same_doc and (k <= q or frame[k] == frame[q])
            else:               # text: strictly causal within its document
                want = same_doc and k <= q
            assert dep[q, k] == want, (q, k, int(doc[q]), int(doc[k]), int(frame[q]), int(frame[k]))
    # spelled out for the first frame: every token of the frame sees every other one, later text sees none of it
    pos = (frame == 0).nonzero().squeeze(1)
    assert dep[pos][:, pos].all()
    assert not dep[pos[0], pos[-1] + 1:].any()


def test_text_loss_gradient_ignores_later_tokens():
    """The loss at a text position has zero gradient w.r.t. the embedding of every later token."""
    tok = Tokenizer()
    batch = to_device(mixed_row(tok), "cpu")
    model = tiny()
    emb = model.tok_emb.weight
    F_ = batch["cond"].shape[0]
    zt = torch.randn(F_, N, C, requires_grad=True)
    logits, _ = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, torch.rand(F_))
    q = 2  # the second caption token: it must not see the image, the rest of the caption or other documents
    loss = torch.nn.functional.cross_entropy(logits[0, q:q + 1], batch["targets"][0, q:q + 1])
    g_emb, g_z = torch.autograd.grad(loss, [emb, zt])
    later = set(batch["tokens"][0, q + 1:].tolist()) - set(batch["tokens"][0, :q + 1].tolist())
    assert all(g_emb[i].abs().sum() == 0 for i in later)
    assert g_z.abs().sum() == 0
    assert g_emb[batch["tokens"][0, 0]].abs().sum() > 0


def test_flex_attention_matches_cpu_path():
    tok = Tokenizer()
    batch = to_device(collate([mixed_row_examples(tok), mixed_row_examples(tok)[::-1]], 40, N, tok.pad), "cpu")
    sdpa = tiny(attention="sdpa")
    flex = tiny(attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    F_ = batch["cond"].shape[0]
    zt, t = torch.randn(F_, N, C), torch.rand(F_)
    args = (batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
    with torch.no_grad():  # FlexAttention has no backward on CPU (its training path is the GPU's)
        torch.testing.assert_close(flex(*args), sdpa(*args), atol=1e-5, rtol=1e-5)


def mixed_row_examples(tok):
    return [Example([tok.bos, *tok.encode("ab"), tok.boi, FRAME, tok.eoi, tok.eos], [None], [False]),
            text_example(tok, "hello")]


def test_may_attend_rule():
    # same document, earlier: yes; later text: no; later token of the same frame: yes; other document: no
    assert may_attend(0, 0, -1, -1, 5, 3) and not may_attend(0, 0, -1, -1, 3, 5)
    assert may_attend(0, 0, 2, 2, 3, 5) and not may_attend(0, 0, -1, -1, 3, 5)
    assert not may_attend(0, 1, -1, -1, 5, 3)


def test_shift_endpoints_and_monotonicity():
    t = torch.linspace(0, 1, 101)
    for s in (0.5, 1.0, 3.0, 8.49):
        u = shift_time(t, s)
        assert u[0] == 0 and u[-1] == 1
        assert (u[1:] > u[:-1]).all()
    torch.testing.assert_close(shift_time(t, 1.0), t)
    assert (shift_time(t[1:-1], 3.0) < t[1:-1]).all()   # s > 1 moves every interior t toward noise (t = 0)


def test_default_shift_from_latent_shape():
    cfg = ModelConfig(latent_dim=1152, tokens_per_frame=256)
    assert abs(cfg.time_shift - (256 * 1152 / 4096) ** 0.5) < 1e-9 and abs(cfg.time_shift - 8.485) < 1e-3


def test_x_and_v_prediction_conversions():
    torch.manual_seed(0)
    z0, eps = torch.randn(5, N, C), torch.randn(5, N, C)
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.94])
    zt = add_noise(z0, eps, t)
    torch.testing.assert_close(zt[0], eps[0])
    # a perfect x-prediction implies the true velocity z0 - eps wherever 1 - t > 0.05
    torch.testing.assert_close(velocity(z0, zt, t, "x"), z0 - eps)
    torch.testing.assert_close(velocity(z0 - eps, zt, t, "v"), z0 - eps)
    # near clean, 1 - t is clamped at 0.05
    t1 = torch.tensor([0.99])
    zt1 = add_noise(z0[:1], eps[:1], t1)
    torch.testing.assert_close(velocity(z0[:1], zt1, t1, "x"), (z0[:1] - zt1) / 0.05)


def test_time_sampling_is_shifted_toward_noise():
    cfg = ModelConfig(latent_dim=1152, tokens_per_frame=256, time_sampling="uniform")
    t = sample_time(20000, cfg, "cpu", torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() <= 1 and t.median() < 0.2   # shift 8.49 puts the median at 1/(1+8.49)


def test_paper_time_sampling_by_default():
    """Section 2.1: t ~ U[0, 1] per frame, then shifted; logit-normal stays an option. With no shift, the
    quartiles of uniform times are where they belong (logit-normal's are 0.34 and 0.66)."""
    import train
    assert ModelConfig().time_sampling == train.DEFAULTS["time_sampling"] == "uniform"
    t = sample_time(20000, ModelConfig(time_shift=1.0), "cpu", torch.Generator().manual_seed(0))
    assert t.quantile(0.25) == pytest.approx(0.25, abs=0.02) and t.quantile(0.75) == pytest.approx(0.75, abs=0.02)


def test_modality_ffn_routes_each_token_once():
    model = tiny(ffn="modality")
    blk = model.blocks[0].ffn
    x = torch.randn(2, 6, 32)
    is_vis = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    out, stats = blk(x, is_vis)
    assert stats == {}
    torch.testing.assert_close(out[is_vis], blk.vision(x[is_vis]))
    torch.testing.assert_close(out[~is_vis], blk.text(x[~is_vis]))


def test_params_and_flops_equal_for_shared_and_modality():
    shared, modality = tiny(ffn="shared"), tiny(ffn="modality")
    (ts, as_), (tm, am) = shared.num_params(), modality.num_params()
    assert as_ == am and tm > ts
    ffn = sum(p.numel() for p in shared.blocks[0].ffn.parameters())
    assert tm - ts == 2 * ffn                         # one extra FFN per layer
    assert shared.flops_per_token(64) == modality.flops_per_token(64) == 6 * am + 12 * 2 * 32 * 64


def test_losses_ignore_conditioning_frames():
    """An image->caption frame is seen clean and carries no flow loss: its flow output gets no gradient."""
    tok = Tokenizer()
    ex = Example([tok.bos, tok.boi, FRAME, tok.eoi, *tok.encode("cap"), tok.eos], [None], [True])
    batch = to_device(collate([[ex]], 16, N, tok.pad), "cpu")
    batch["latents"] = torch.randn(1, N, C)
    model = tiny()
    torch.nn.init.normal_(model.flow_head.weight)
    text, flow = training_losses(model, batch)
    assert flow.item() == 0 and text.item() > 0
    (g,) = torch.autograd.grad(text + flow, model.flow_head.weight, allow_unused=True)
    assert g is None or g.abs().sum() == 0


def test_activation_checkpointing_gives_the_same_gradients():
    tok = Tokenizer()
    batch = to_device(mixed_row(tok), "cpu")
    batch["latents"] = torch.randn(batch["cond"].shape[0], N, C)
    grads = []
    for ckpt in (False, True):
        model = tiny()
        model.activation_checkpointing = ckpt
        text, flow = training_losses(model, batch, torch.Generator().manual_seed(0))
        (text + flow).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ffn, checkpointing", [("shared", False), ("modality", False), ("moe", False),
                                                ("modality", True), ("moe", True)])
def test_compiles_as_one_graph_and_matches_eager(ffn, checkpointing):
    """fullgraph=True fails on any graph break, and every host sync (.item(), .tolist(), nonzero()) is one: the
    training step's forward and backward must compile whole and give the eager losses and gradients. Under bf16
    autocast, as on the GPU, the FFNs take the grouped GEMM path that GPUs use."""
    import torch._dynamo
    tok = Tokenizer()
    batch = to_device(mixed_row(tok), "cpu")
    batch["latents"] = torch.randn(batch["cond"].shape[0], N, C)
    results = []
    for compiled in (False, True):
        model = tiny(ffn=ffn, moe_experts=4, moe_granularity=2)   # moe: experts 48 wide, one shared per modality
        torch.nn.init.normal_(model.flow_head.weight, std=0.02)
        model.activation_checkpointing = checkpointing
        run = model
        if compiled:
            torch._dynamo.reset()
            run = torch.compile(model, fullgraph=True, backend="aot_eager")
        with torch.autocast("cpu", torch.bfloat16):
            text, flow = training_losses(run, batch, torch.Generator().manual_seed(0))
        (text + flow).backward()
        results.append([text, flow] + [p.grad for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 2
    for a, b in zip(*results):   # bf16 rounding: within 1% of each tensor's largest entry
        assert (a - b).abs().max() <= 1e-2 * a.abs().max() + 1e-6
