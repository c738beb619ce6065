"""The fast paths of the model's step equal the plain maths they replace: rotary embedding, the plain causal
attention path, and the whole forward pass against a reference written the slow, obvious way."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from data import Tokenizer, collate, text_example, to_device
from helpers import C, N, mixed_row, tiny
from model import apply_rope, dense_mask, plain_causal, rope_angles, timestep_embedding, training_losses

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


def reference_rope(x, pos, theta=10000.0):
    """RoFormer's rotary embedding written out on [B, H, S, D]: dimensions (2i, 2i + 1) turn by pos * theta^(-2i/D)."""
    D = x.shape[-1]
    angles = pos.float()[..., None] * (1.0 / theta ** (torch.arange(0, D, 2).float() / D))
    cos, sin = angles.cos(), angles.sin()
    cos, sin = (cos[:, None], sin[:, None]) if cos.dim() == 3 else (cos, sin)
    a, b = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.empty_like(x, dtype=torch.float32)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out.type_as(x)


def halves_rope(x, pos, theta=10000.0):
    """Rotary embedding as this project first wrote it: dimension i paired with i + D/2, float32 halves, a cat."""
    D = x.shape[-1]
    angles = pos.float()[..., None] * (1.0 / theta ** (torch.arange(0, D, 2).float() / D))
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def rms(norm, x):
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)


def reference_forward(model, tokens, doc, frame, vis_idx, zt, t):
    """The model's forward pass the obvious way: heads-first layout, reference rotary, always the dense mask."""
    cfg, (B, S) = model.cfg, tokens.shape
    D = cfg.d_model // cfg.n_head
    x = model.tok_emb(tokens)
    v = model.latent_in(zt) + model.patch_pos + model.time_mlp(timestep_embedding(t, 256))[:, None]
    x = x.view(B * S, -1).index_copy(0, vis_idx, v.reshape(-1, v.shape[-1])).view(B, S, -1)
    mask, pos = dense_mask(doc, frame), torch.arange(S)
    for block in model.blocks:
        a, h = block.attn, rms(block.attn_norm, x)
        q = rms(a.q_norm, a.wq(h).view(B, S, a.n_head, D).transpose(1, 2))
        k, v = a.wkv(h).view(B, S, 2, a.n_kv_head, D).permute(2, 0, 3, 1, 4)
        q, k = reference_rope(q, pos), reference_rope(rms(a.k_norm, k), pos)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        x = x + a.wo(y.transpose(1, 2).reshape(B, S, -1))
        x = x + block.ffn(rms(block.ffn_norm, x), frame >= 0)[0]
    h = rms(model.norm, x)
    flow = model.flow_head(h.reshape(B * S, -1)[vis_idx]).view(-1, cfg.tokens_per_frame, cfg.latent_dim)
    return model.lm_head(h), flow


def text_rows(tok, lengths, S=24):
    """One document per row, then padding (what text shards give), plus its batch."""
    rows = [[text_example(tok, "the quick brown fox jumps over"[:n])] for n in lengths]
    batch = to_device(collate(rows, S, N, tok.pad), "cpu")
    batch.pop("images")
    return dict(batch, latents=torch.zeros(0, N, C))


@pytest.mark.slow
def test_rope_equals_the_reference_eager_and_compiled():
    torch.manual_seed(0)
    B, H, S, D = 2, 3, 7, 8
    compiled = torch.compile(apply_rope, fullgraph=True)   # the real-arithmetic branch, as inside a compiled model
    for pos in (torch.arange(S), torch.randint(0, 100, (B, S))):
        rot = rope_angles(pos, D, 10000.0)
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            x = torch.randn(B, S, H, D).to(dtype)
            for rope in (apply_rope, compiled):
                got = rope(x, rot).transpose(1, 2)
                assert got.dtype == dtype
                torch.testing.assert_close(got, reference_rope(x.transpose(1, 2), pos), atol=tol, rtol=tol)


def test_rope_is_the_old_halves_rope_up_to_an_order_of_dimensions():
    """Pairing (2i, 2i + 1) instead of (i, i + D/2) renames a head's dimensions, nothing more: the same attention
    scores once the projections' rows are reordered alike."""
    torch.manual_seed(0)
    D, pos = 8, torch.arange(5)
    order = torch.arange(D).view(2, D // 2).t().reshape(-1)     # halves order -> pairs order: 0, 4, 1, 5, ...
    x = torch.randn(1, 3, 5, D)
    new = apply_rope(x[..., order].transpose(1, 2), rope_angles(pos, D, 10000.0)).transpose(1, 2)
    torch.testing.assert_close(new, halves_rope(x, pos)[..., order], atol=1e-6, rtol=1e-6)


def test_rmsnorm_written_backward_equals_autograd():
    from model import RMSNorm
    torch.manual_seed(0)
    for shape in ((4, 6, 16), (2, 5, 3, 8)):
        norm = RMSNorm(shape[-1], eps=1e-6)
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)
        x, dy = torch.randn(shape, requires_grad=True), torch.randn(shape)
        norm(x).backward(dy)
        got = (norm(x), x.grad.clone(), norm.weight.grad.clone())
        x.grad, norm.weight.grad = None, None
        rms(norm, x).backward(dy)                                  # PyTorch's own, through autograd
        for a, b in zip(got, (rms(norm, x), x.grad, norm.weight.grad)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_rmsnorm_follows_nn_rmsnorm_in_float64_without_eps_or_weight():
    """As nn.RMSNorm: float64 is computed in float64 (not cut to float32), eps=None is the computing type's epsilon
    (float32's for bfloat16 and float16 inputs), and a norm without an affine weight works, forward and backward."""
    from model import RMSNorm
    torch.manual_seed(0)
    for eps, affine in ((1e-6, True), (None, True), (None, False)):
        norm = RMSNorm(8, eps=eps, elementwise_affine=affine).double()
        x = (torch.randn(3, 5, 8, dtype=torch.float64) * 1e-3).requires_grad_()
        y = norm(x)
        assert y.dtype == torch.float64
        ref_x = x.detach().clone().requires_grad_()
        ref = F.rms_norm(ref_x, (8,), norm.weight, eps)
        torch.testing.assert_close(y, ref, atol=1e-13, rtol=1e-12)
        dy = torch.randn_like(y)
        y.backward(dy)
        ref.backward(dy)
        torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-10, rtol=1e-10)
    for dtype in (torch.bfloat16, torch.float16):   # eps None: the computing type's (float32's), as torch's kernel
        x = (torch.randn(3, 5, 8) * 1e-3).to(dtype)   # small inputs, where the two epsilons differ most
        torch.testing.assert_close(RMSNorm(8, eps=None).to(dtype)(x), F.rms_norm(x, (8,), torch.ones(8, dtype=dtype)))


def test_plain_causal_only_when_the_mask_is_causal_where_it_is_read():
    tok = Tokenizer()
    batch = text_rows(tok, [10, 20])
    assert plain_causal(batch["doc"], batch["frame"])
    packed = to_device(collate([[text_example(tok, "ab"), text_example(tok, "cd")]], 24, N, tok.pad), "cpu")
    assert not plain_causal(packed["doc"], packed["frame"])                 # two documents in a row
    mixed = to_device(mixed_row(tok), "cpu")
    assert not plain_causal(mixed["doc"], mixed["frame"])                   # frames
    gap = batch["doc"].clone()
    gap[0, 3] = -1                                                           # padding before a real token
    assert not plain_causal(gap, batch["frame"])


def test_causal_path_trains_exactly_like_the_dense_mask():
    """Same logits at every position that is read, same losses, same gradients."""
    tok = Tokenizer()
    batch = text_rows(tok, [10, 20, 22])
    model = tiny()
    assert model.attention_mask(batch["doc"], batch["frame"]) == "causal"
    real = batch["doc"] >= 0
    results = []
    for dense in (False, True):
        if dense:   # the same model, made to take the dense mask
            model.attention_mask = lambda doc, frame, cache=None: dense_mask(doc, frame)
        model.zero_grad()
        text, flow = training_losses(model, batch)
        (text + flow).backward()
        logits, _ = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], torch.zeros(0, N, C),
                          torch.zeros(0))
        results.append([logits[real], text] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_forward_equals_the_reference_implementation():
    tok = Tokenizer()
    for batch, ffn in ((to_device(mixed_row(tok), "cpu"), "modality"), (text_rows(tok, [10, 20]), "shared")):
        model = tiny(ffn=ffn)
        torch.nn.init.normal_(model.flow_head.weight, std=0.02)
        F_ = batch["cond"].shape[0]
        torch.manual_seed(1)
        zt, t = torch.randn(F_, N, C), torch.rand(F_)
        args = (batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
        with torch.no_grad():
            (logits, flow), (ref_logits, ref_flow) = model(*args), reference_forward(model, *args)
        real = batch["doc"] >= 0          # padding's own outputs are nobody's business (plain_causal)
        torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow, ref_flow.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_bench_step_reports_tokens_per_second_and_top_ops(capsys):
    import bench_step
    tok_s = bench_step.main(["configs/toy.py", "--n_layer=1", "--batch_size=2", "--steps=1", "--warmup=0",
                             "--repeats=1", "--top=5", "--profile_steps=1", "--device=cpu"])
    out = capsys.readouterr().out
    assert tok_s > 0 and "tokens/s" in out and "Self CPU" in out
