"""moe.py: dispatch against a per-expert loop, the balance losses by hand, shared experts, accounting; routing.py."""
import json
import math

import numpy as np
import pytest
import torch

import moe
import routing
import train
from model import ModelConfig, UnifiedTransformer
from moe import GROUPED_MM, grouped_swiglu, runs_in_bf16


def layer(**kw):
    torch.manual_seed(0)
    args = dict(d_model=32, n_head=2, n_kv_head=1, n_layer=2, ffn="moe", moe_experts=8, moe_granularity=4,
                moe_shared="per_modality", moe_z_coef=1e-3)
    args.update(kw)
    cfg = ModelConfig(**args)
    m = moe.MoEFFN(cfg)
    torch.nn.init.normal_(m.router.weight)      # a decisive random router
    return m, cfg


def reference(m, x, is_vision):
    """Token by token, expert by expert: y = the token's shared expert (weight 1: the one, or its modality's) plus
    the sum over its routed experts of weight * SwiGLU_e(x)."""
    def swiglu(xi, w_gate_up, w_down):
        gate, up = (xi @ w_gate_up).chunk(2)
        return (torch.nn.functional.silu(gate) * up) @ w_down
    top, weights, _ = m.route(x)
    out = []
    for i in range(len(x)):
        y = 0
        for e, w in zip(top[i].tolist(), weights[i]):
            y = y + w * swiglu(x[i], m.w_gate_up[e], m.w_down[e])
        if m.n_shared:
            s = int(is_vision[i]) if m.n_shared == 2 else 0
            y = y + swiglu(x[i], m.shared_w_gate_up[s], m.shared_w_down[s])
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("shared", ["none", "global", "per_modality"])
def test_dispatch_equals_per_expert_loop_with_gradients(shared):
    m, _ = layer(moe_shared=shared, moe_renorm=shared == "global")
    x = torch.randn(2, 9, 32, requires_grad=True)
    is_vision = torch.rand(2, 9) < 0.5
    out, stats = m(x, is_vision)
    assert stats["load"].sum() == 18 * m.k_routed                  # every routed assignment counted once
    ref = reference(m, x.reshape(-1, 32), is_vision.reshape(-1)).view(2, 9, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    params = [x, m.w_gate_up, m.w_down, m.router.weight]
    got = torch.autograd.grad((out * g).sum(), params)
    want = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert got[3].abs().sum() > 0                  # the router learns through the weights of its choices


@pytest.mark.skipif(not GROUPED_MM, reason="torch without a CPU grouped GEMM (2.9+)")
def test_grouped_gemm_path_equals_the_loop_with_gradients():
    """The GPU's path (one bf16 grouped GEMM per projection, an empty expert included) against the loop on the
    same bf16 inputs: outputs and gradients."""
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 5, 8])
    xs, w1, w2 = torch.randn(16, 16), torch.randn(4, 16, 32), torch.randn(4, 16, 16)
    g = torch.randn(16, 16)
    results = []
    for grouped in (True, False):
        leaves = [t.bfloat16().requires_grad_() for t in (xs, w1, w2)]
        out = grouped_swiglu(*leaves, counts, grouped=grouped)
        results.append([out, *torch.autograd.grad((out.float() * g).sum(), leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.02)


def test_balance_and_z_loss_by_hand():
    """4 experts, top-1, tokens e0, e0, e1, e2, router = ln(3) * identity: each token puts p = 3/6 on its own
    expert and 1/6 on the others. f = (1/2, 1/4, 1/4, 0); P = (1/3, 1/4, 1/4, 1/6); 4 * sum f P = 7/6;
    logsumexp = ln 6 for every token."""
    m, _ = layer(d_model=4, n_head=1, ffn_hidden=8, moe_experts=4, moe_granularity=1, moe_top_k=1,
                 moe_shared="none", moe_aux_coef=1.0, moe_z_coef=1.0)
    with torch.no_grad():
        m.router.weight.copy_(math.log(3) * torch.eye(4))
    x = torch.eye(4)[[0, 0, 1, 2]]
    top, _, logits = m.route(x)
    assert top[:, 0].tolist() == [0, 0, 1, 2]
    loss, load = m.balance_losses(top, logits, torch.ones(4, dtype=torch.bool))
    assert abs(loss.item() - (7 / 6 + math.log(6) ** 2)) < 1e-5
    assert load.tolist() == [2, 1, 1, 0]
    # two padding positions, routed to expert 3, change neither the losses nor the load
    x = torch.eye(4)[[0, 0, 1, 2, 3, 3]]
    top, _, logits = m.route(x)
    loss, load = m.balance_losses(top, logits, torch.tensor([True] * 4 + [False] * 2))
    assert abs(loss.item() - (7 / 6 + math.log(6) ** 2)) < 1e-5 and load.tolist() == [2, 1, 1, 0]


def test_padding_is_neither_balanced_nor_counted_by_the_routing_analysis():
    """Padding (doc -1) shares one embedding and routes as one: its choices must not enter the balance loss, the
    bias method's load or routing.py's text counts (it used to count as text)."""
    from data import ToyWorldData, Tokenizer
    from encoders import PixelPatches
    m, _ = layer(moe_balance="bias")
    modality = torch.tensor([[0, 0, 1, 1, 0, 1] + [-1] * 6])
    x = torch.randn(1, 12, 32)
    _, stats = m(x, modality)
    _, ref = m(x[:, :6], modality[:, :6])
    assert torch.allclose(stats["balance_loss"], ref["balance_loss"]) and torch.equal(stats["load"], ref["load"])
    torch.manual_seed(0)
    model = UnifiedTransformer(ModelConfig(d_model=32, n_head=2, n_kv_head=1, n_layer=1, ffn="moe", moe_experts=6,
                                           moe_granularity=2, latent_dim=48, tokens_per_frame=16, max_seq_len=128))
    data = ToyWorldData(Tokenizer(), 128, 16, {"text": 0.5, "caption_to_image": 0.5}, image_size=16, max_shapes=1)
    c = type("C", (), dict(batch_size=3))
    batch = train.get_batch(data, PixelPatches(16, 4), 0, 0, c, "cpu", "val")
    stats, _ = routing.routing_counts(model, [("text", batch)])
    real, vision = int((batch["doc"] >= 0).sum()), int((batch["frame"] >= 0).sum())
    assert (batch["doc"] < 0).any() and stats[0]["n_text"] == real - vision and stats[0]["n_vision"] == vision


def test_routing_analysis_draws_its_held_out_data_from_the_seed_it_is_given():
    """The claims suite re-scores under a second evaluation seed to measure evaluation noise; the routing batches
    used to ignore it (the toy data's held-out draws kept evaluation seed 0), so that check read 0 by construction."""
    from data import Tokenizer
    from encoders import PixelPatches
    cfg = type("C", (), dict(seq_len=128, image_size=16, max_shapes=1, video_frames=2, cfg_dropout=0.1, batch_size=2,
                             caption_clean_image=False))

    def tokens(seed):
        return [b["tokens"] for _, b in routing.task_batches(Tokenizer(), PixelPatches(16, 4), cfg, 1, "cpu", seed)]
    same, other = tokens(0), tokens(1)
    assert all(torch.equal(a, b) for a, b in zip(same, tokens(0)))
    assert not any(a.shape == b.shape and torch.equal(a, b) for a, b in zip(same, other))
    # understanding's images reach the router as the run trained on them: noisy by App. B's default, clean if so set
    for clean in (False, True):
        cfg.caption_clean_image = clean
        batches = dict(routing.task_batches(Tokenizer(), PixelPatches(16, 4), cfg, 1, "cpu", 0))
        assert (batches["understanding"]["cond"] == clean).all() and not batches["generation"]["cond"].any()


def test_per_modality_shared_experts_are_the_ones_used():
    """The router picks k - 1 of the routed experts; text tokens go through the text-shared expert alone (the
    vision-shared one gets no gradient from them), vision tokens through the vision-shared one."""
    m, cfg = layer()
    top, weights, _ = m.route(torch.randn(12, 32))
    assert (top < m.n_routed).all() and top.shape[1] == m.k_routed == cfg.moe_granularity - 1
    for vision, used in ((False, 0), (True, 1)):
        out, _ = m(torch.randn(1, 5, 32), torch.full((1, 5), vision))
        g_up, = torch.autograd.grad(out.sum(), m.shared_w_gate_up)
        assert g_up[1 - used].abs().sum() == 0 and g_up[used].abs().sum() > 0


def test_granularity_is_the_papers_and_g_active_experts_equal_a_4d_ffn():
    """G = 4 d_model / d_expert (section 6.1): experts are 4 d_model / G wide whatever the dense FFN's width, and
    the default G active experts hold as many parameters and FLOPs as a 4 d_model FFN."""
    args = dict(vocab_size=300, d_model=64, n_head=4, n_kv_head=2, n_layer=2)
    dense = UnifiedTransformer(ModelConfig(**args, ffn="shared", ffn_hidden=256))
    for G, E, shared in ((1, 4, "none"), (4, 16, "per_modality"), (16, 64, "global")):
        sparse = UnifiedTransformer(ModelConfig(**args, ffn="moe", moe_granularity=G, moe_experts=E,
                                                moe_shared=shared))
        assert sparse.blocks[0].ffn.hidden == 256 // G and sparse.blocks[0].ffn.k == G
        routers = sum(b.ffn.router.weight.numel() for b in sparse.blocks)
        assert sparse.num_params()[1] - routers == dense.num_params()[1]
        assert sparse.flops_per_token(128) - 6 * routers == dense.flops_per_token(128)
        assert sparse.num_params()[0] > dense.num_params()[0]


def test_router_learns_and_bias_balancing_moves_toward_even_load(tmp_path):
    m, _ = layer(moe_balance="bias", moe_score="sigmoid")
    model = torch.nn.Module()
    model.ffn = m
    m.load += torch.tensor([5.0, 1, 3, 3, 3, 3])
    moe.update_balance_biases(model, 0.1)
    assert m.balance_bias.tolist() == pytest.approx([-0.1, 0.1, 0, 0, 0, 0])
    assert m.load.sum() == 0                     # counted afresh for the next step


def test_bias_balancing_counts_every_micro_batch_of_the_step():
    """Two micro-batches, one all routed to expert 0 and one all to expert 1: the step's load is their sum, so both
    experts are lowered and the four idle ones raised (the last micro-batch alone would raise expert 0). The step
    is the rate for sigmoid scores, and rate / E for softmax scores, which average 1 / E."""
    for score, step in (("sigmoid", 0.1), ("softmax", 0.1 / 6)):
        assert bias_after_two_micro_batches(score) == pytest.approx([-step, -step, step, step, step, step])


def bias_after_two_micro_batches(score):
    m, _ = layer(d_model=8, n_head=1, moe_experts=6, moe_granularity=2, moe_shared="none", moe_top_k=1,
                 moe_balance="bias", moe_score=score)
    with torch.no_grad():
        m.router.weight.copy_(10 * torch.eye(6, 8))
    model = torch.nn.Module()   # what the training step sees: UnifiedTransformer's blocks and ffn_stats
    model.blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.blocks[0].ffn = m
    for expert in (0, 1):
        model.ffn_stats = [m(torch.eye(8)[expert].repeat(5, 1)[None], torch.zeros(1, 5, dtype=torch.bool))[1]]
        moe.auxiliary_loss(model)
    moe.update_balance_biases(model, 0.1)
    return m.balance_bias.tolist()


def test_specialization_classes_cv_and_correlation():
    S, classes = routing.specialization([10, 0, 5, 0, 9], [0, 10, 5, 0, 1], n_text=10, n_vision=10, k=1)
    assert S.tolist() == pytest.approx([1, -1, 0, 0, 0.8])
    assert classes.tolist() == ["text", "vision", "multimodal", "unused", "text"]
    # expert 0 is chosen evenly over timestep bins, expert 1 only at one end
    cv = routing.timestep_cv([[5, 0], [5, 0], [5, 0], [5, 10]], [10, 10, 10, 10])
    assert cv[0] == 0 and cv[1] == pytest.approx(np.sqrt(3))
    assert routing.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1) and routing.pearson([1, 2, 3], [3, 2, 1]) == -1


@pytest.mark.slow
def test_tiny_moe_run_and_routing_analysis(tmp_path, capsys):
    train.main(["--n_layer=2", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=128", "--batch_size=4",
                "--image_size=16", "--patch_size=4", "--max_shapes=1", "--video_frames=2", "--eval_samples=2",
                "--eval_iters=1", "--sample_steps=2", "--max_iters=3", "--eval_interval=3", "--device=cpu",
                "--ffn=moe", "--moe_experts=6", "--moe_granularity=2", "--log_interval=1", f"--out_dir={tmp_path}"])
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if "tokens_per_s" in line]
    assert len(logged) == 3 and all(r["balance_loss"] > 0 for r in logged)    # the balance loss is logged
    routing.main([f"--out_dir={tmp_path}", "--batches=1"])
    out = capsys.readouterr().out
    assert "| layer | text | vision |" in out and (tmp_path / "routing.md").exists()
    rows = json.load(open(tmp_path / "routing.json"))
    assert len(rows) == 2 and all(r["text"] + r["vision"] + r["multimodal"] + r["unused"] == 4 for r in rows)


def test_float32_steps_take_the_exact_loop_on_every_device():
    """dtype=float32 is honoured on the GPU too: only a bf16 step (autocast, or bf16 weights) goes to the bf16
    grouped kernel. The decision is checked for "cuda" on the CPU: it reads the device's autocast state."""
    x = torch.randn(4, 8)
    assert not runs_in_bf16("cuda", x, x) and not runs_in_bf16("cpu", x, x)
    assert runs_in_bf16("cuda", x, x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runs_in_bf16("cpu", x) and not runs_in_bf16("cuda", x)


def test_moe_on_a_gpu_without_the_grouped_gemm_stops_with_one_line(monkeypatch):
    """Below torch 2.9 there is no grouped expert GEMM: the MoE would loop over experts with a host sync per layer,
    so a GPU run stops before building anything; the CPU (the tests', a laptop's) keeps the exact loop."""
    from plumbing.build import build
    c = train.configure(train.DEFAULTS, ["configs/toy_moe.py"])
    monkeypatch.setattr(moe, "GROUPED_MM", False)
    with pytest.raises(SystemExit, match=r"^bad configuration: ffn='moe' on a GPU needs torch >= 2.9 .*: upgrade"):
        build(c, "cuda", meta=True)
    assert build(c, "cpu", meta=True)[3].cfg.ffn == "moe"
    monkeypatch.setattr(moe, "GROUPED_MM", True)
    assert build(c, "cuda", meta=True)[3].cfg.ffn == "moe"   # the model stays on the meta device: no GPU touched
