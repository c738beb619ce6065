"""The paper's models as configs (sizes on the meta device against the paper's) and the memory planner (its
activation figure against a measurement it did not fit)."""
import pytest

import train
from plumbing import memplan

PLAN_DEFAULTS = {**train.DEFAULTS, **memplan.settings(vars(memplan))}
LLAMA3_VOCAB = 128_256   # the paper's tokenizer (section 2.2: LLaMA-3's BPE)


def config(*argv):
    return train.configure(PLAN_DEFAULTS, list(argv))


def paper_count(model):
    """(total, active) as the paper counts: the text embedding and head in both, the visual projections (latents
    in, patch positions, time embedding, flow head: ~10M) in neither; model.num_params() leaves the embedding out
    of the active count instead, and counts the visual projections."""
    total, active = model.num_params()
    visual = sum(p.numel() for m in (model.latent_in, model.time_mlp, model.flow_head) for p in m.parameters())
    return total - visual - model.patch_pos.numel(), active - visual + model.tok_emb.weight.numel()


def test_paper_dense_is_2_3b_total_1_5b_active():
    """Section 2.2: "2.3B total parameters and 1.5B are activated per token"; a shared FFN would have 1.5B."""
    total, active = paper_count(memplan.on_meta(memplan.model_config(config("configs/paper_dense.py"), LLAMA3_VOCAB)))
    assert (round(total / 1e9, 1), round(active / 1e9, 1)) == (2.3, 1.5)
    shared = memplan.on_meta(memplan.model_config(config("configs/paper_dense.py", "--ffn=shared"), LLAMA3_VOCAB))
    assert round(paper_count(shared)[0] / 1e9, 2) == 1.50   # Table 5's dense baseline


@pytest.mark.parametrize("experts, total, active", [(32, 2.30, 1.50), (64, 3.92, 1.50), (128, 7.14, 1.50),
                                                    (256, 13.59, 1.51), (512, 26.48, 1.52), (1008, 51.46, 1.53)])
def test_paper_moe_matches_table_5(experts, total, active):
    c = config("configs/paper_moe.py", f"--moe_experts={experts}")
    got = paper_count(memplan.on_meta(memplan.model_config(c, LLAMA3_VOCAB)))
    assert (round(got[0] / 1e9, 2), round(got[1] / 1e9, 2)) == (total, active)


def test_paper_configs_follow_appendix_e2():
    for path in ("configs/paper_dense.py", "configs/paper_moe.py"):
        c = config(path)
        assert c.seq_len * c.batch_size * c.gradient_accumulation_steps == 512 * 4096   # 2M-token batches
        assert (c.learning_rate, c.warmup_iters, c.min_lr_ratio, c.seq_len) == (3e-4, 1000, 0.05, 4096)
        assert c.activation_checkpointing and c.parallel == "fsdp" and c.encoder == "siglip2"
    assert config("configs/paper_moe.py").max_iters * 512 * 4096 == pytest.approx(57e9, rel=5e-3)   # App. E.7
    assert config("configs/real.py").activation_checkpointing


@pytest.mark.slow
@pytest.mark.parametrize("argv, precision", [(["configs/real.py"], "autocast"),
                                             (["configs/paper_moe.py", "--moe_experts=64"], "bf16")])
def test_predicted_activations_equal_a_measurement_at_another_size(argv, precision):
    """Fitted at widths of 2, 4 and 6 per head, 128 positions, 1 and 2 layers, 1 and 2 rows; checked at 8 per head,
    192 positions, 3 layers, 3 rows."""
    cfg = memplan.model_config(config(*argv))
    fit = memplan.measure_activations(cfg, precision)
    width, seq_len, layers, rows = 8 * cfg.n_head, 192, 3, 3
    measured = memplan.saved_bytes(memplan.narrowed(cfg, width, layers, seq_len), rows, seq_len, precision)
    assert memplan.kept_bytes(fit, width, layers, rows * seq_len) == pytest.approx(measured, rel=0.01)


def test_fsdp_shards_the_state_and_checkpointing_saves_activations():
    c = config("configs/paper_dense.py")
    sizes = memplan.sizes_of(c)
    P = sum(p.numel() for p in sizes.model.parameters())
    eight, sixty_four = (memplan.plan(config("configs/paper_dense.py", f"--gpus={n}"), sizes, 4, False)
                         for n in (8, 64))
    assert (eight["parameters"], eight["optimizer"], sixty_four["gradients"]) == (4 * P / 8, 8 * P / 8, 4 * P / 64)
    assert eight["activations"] == sixty_four["activations"] and eight["encoder"] == 2 * sizes.encoder > 1e9
    assert memplan.plan(c, sizes, 4, True)["activations"] < eight["activations"] / 4
    usable = 0.9 * 80 * 2 ** 30
    rows = memplan.largest_micro_batch(c, sizes, False, usable)
    assert memplan.plan(c, sizes, rows, False)["total"] <= usable < memplan.plan(c, sizes, rows + 1, False)["total"]


@pytest.mark.slow
def test_the_command_prints_memory_fit_time_and_a_runs_figures(capsys, tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(f'{{"step": {s}, "tokens_per_s": {t}, "mfu": 0.3, "peak_memory_gib": {m}}}\n'
                           for s, t, m in ((5, 10.0, 1.0), (10, 100.0, 2.0), (15, 300.0, 2.0), (20, 200.0, 2.0))))
    memplan.main(["configs/toy.py", "--gpus=2", "--parallel=fsdp", "--tokens=1e9", "--mfu=0.5", f"--metrics={log}"])
    out = capsys.readouterr().out
    for want in ("FSDP2", "over 2 GPU(s)", "activations measured on the CPU", "fits 80 GiB",
                 "largest micro-batch that fits", "1.00B tokens", "GPU-hours", "steps 10-20): 200 tokens/s, MFU 30.0%",
                 "peak memory 2.00 GiB allocated, predicted", "is no multiple of 2 GPUs", "with communication (FSDP)",
                 "layouts on 2 GPU(s)", "<- recommended"):
        assert want in out
    with pytest.raises(SystemExit, match="mfu in"):
        memplan.main(["configs/toy.py", "--mfu=2"])
    with pytest.raises(SystemExit, match="no such file"):
        memplan.main(["configs/toy.py", f"--metrics={tmp_path / 'none.jsonl'}"])
    with pytest.raises(SystemExit, match="expert_parallel=2: for ffn='moe' under fsdp or hsdp"):
        memplan.main(["configs/toy.py", "--expert_parallel=2"])
    with pytest.raises(SystemExit, match="expert_parallel=8: more GPUs than the 6 routed experts"):
        memplan.main(["configs/paper_moe.py", "--expert_parallel=8", "--moe_experts=8", "--moe_top_k=4"])
    with pytest.raises(SystemExit, match="bad configuration: moe_top_k 16 does not fit 8 experts"):
        memplan.main(["configs/paper_moe.py", "--moe_experts=8"])


def test_run_time_is_tokens_times_flops_per_token_over_the_gpus_peak_at_the_mfu():
    """seconds = tokens x FLOPs per token / (gpus x peak x mfu), GPU-hours = seconds x gpus / 3600: at two GPU counts,
    so a count left out of either shows; a stand-in model gives the FLOPs per token, so only run_time is tested."""
    from types import SimpleNamespace
    model = SimpleNamespace(flops_per_token=lambda seq_len: 3e9 * seq_len / 4096)
    for gpus in (8, 64):
        c = config("configs/paper_dense.py", f"--gpus={gpus}", "--tokens=57e9", "--mfu=0.4", "--peak_flops=5e14")
        tokens, per_token, seconds, gpu_hours = memplan.run_time(c, model)
        assert (tokens, per_token) == (57e9, 3e9)
        assert seconds == pytest.approx(57e9 * 3e9 / (gpus * 5e14 * 0.4), rel=1e-12)
        assert gpu_hours == pytest.approx(57e9 * 3e9 / (5e14 * 0.4) / 3600, rel=1e-12)   # the same at any count
    c = config("configs/paper_dense.py", "--gpus=2", "--mfu=0.5")   # tokens 0: max_iters steps; peak 0: the H100's
    steps = c.max_iters * c.batch_size * c.seq_len * c.gradient_accumulation_steps
    assert memplan.run_time(c, model)[::2] == pytest.approx((steps, steps * 3e9 / (2 * 989e12 * 0.5)), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Communication (plumbing/commplan.py): the byte formulas on stand-in models small enough to count by hand.
# tests/plumbing/test_comm.py checks the same formulas against what the collectives of real runs move.

def stand_in(moe=False):
    """Two blocks of one 4 x 8 weight (32 parameters each) and a 6 x 4 root weight (24, padded to 8 x 4 over 4
    ranks); or one block holding a real MoE FFN (d_model 8, 6 experts 16 wide, 2 shared, 4 routed, k_routed 1)."""
    import torch
    from torch import nn
    from model import ModelConfig
    from moe import MoEFFN

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = MoEFFN(ModelConfig(d_model=8, n_layer=1, ffn="moe", moe_experts=6, moe_granularity=2)) \
                if moe else nn.Linear(4, 8, bias=False)
    with torch.device("meta"):
        model = nn.Module()
        model.blocks = nn.ModuleList(Block() for _ in range(1 if moe else 2))
        model.root = nn.Parameter(torch.empty(6, 4))
    return model


def comm_config(*argv):
    return config("configs/toy.py", "--batch_size=2", "--seq_len=16", "--gradient_accumulation_steps=8", "--gpus=4",
                  "--dtype=bfloat16", *argv)


def test_ring_bytes_padding_and_links():
    from plumbing import commplan
    assert commplan.ring_bytes("all-gather", 4, 1000) == commplan.ring_bytes("reduce-scatter", 4, 1000) == 750
    assert commplan.ring_bytes("all-reduce", 4, 1000) == 1500 and commplan.ring_bytes("all-reduce", 1, 1000) == 0
    assert (commplan.padded((6, 4), 4), commplan.padded((8, 4), 4), commplan.padded((2, 3, 5), 4)) == (32, 32, 60)
    assert commplan.link(commplan.consecutive(8, 64), 8) == "nvlink"   # a node each
    assert commplan.link(commplan.strided(8, 64), 8) == "ib"            # one GPU of every node
    assert [list(g) for g in commplan.strided(2, 4)] == [[0, 2], [1, 3]]
    assert commplan.link(commplan.strided(4, 8), 8) == "nvlink" and commplan.link([range(64)], 8) == "ib"


def test_bytes_per_step_of_ddp_fsdp_and_hsdp_by_hand():
    """4 GPUs, 2 micro-batches each, bf16: blocks gathered forward and backward, the root once, gradients in
    float32; padding: the root's 6 rows to 8 over 4 ranks, none over 2."""
    from plumbing import commplan
    model = stand_in()
    got = lambda *argv: {x.what: (x.op, x.ranks, x.bytes, x.hides)
                         for x in commplan.collectives(model, comm_config(*argv))}
    # DDP: 4 B x 88 parameters, all-reduced once: 2 x 3/4 x 352
    assert got("--parallel=ddp") == {"gradients": ("all-reduce", 4, 528, "last backward")}
    # FSDP: per micro-batch 2 blocks x 32 x 2 B x 2 passes + 32 (padded root) x 2 B = 320, x 2 micro-batches x 3/4;
    # reduce-scatter 4 B x 96 per micro-batch, x 2 x 3/4
    assert got("--parallel=fsdp") == {"weights": ("all-gather", 4, 480, "compute"),
                                      "gradients": ("reduce-scatter", 4, 576, "compute")}
    assert got("--parallel=fsdp", "--reduce_every_micro_batch=False")["gradients"] == \
        ("reduce-scatter", 4, 288, "last backward")
    assert got("--parallel=fsdp", "--dtype=float32")["weights"] == ("all-gather", 4, 960, "compute")
    # HSDP 2 x 2: (256 + 24 x 2 B) x 2 x 1/2; 4 B x 88 x 2 x 1/2; the shard (half of it) all-reduced: 2 x 1/2 x 352
    assert got("--parallel=hsdp", "--shard_processes=2") == {
        "weights": ("all-gather", 2, 304, "compute"), "gradients": ("reduce-scatter", 2, 352, "compute"),
        "gradient shards": ("all-reduce", 2, 352, "compute")}


def test_bytes_per_step_of_expert_parallelism_by_hand():
    """One MoE layer, 4 routed experts split over 2 GPUs (2 copies): the router (4 x 8) gathered in float32, the
    shared experts (2 x 8 x 32 + 2 x 16 x 8, their 2 rows padded to 4 over 4 ranks: 1536) and the root (32) in bf16,
    the routed ones (4 x 384 = 1536) never; per micro-batch 32 tokens x 1 routed row x 8 wide x 2 B, half of them
    leaving, 4 transfers (6 with checkpointing)."""
    from plumbing import commplan
    model = stand_in(moe=True)
    got = lambda *argv: {x.what: (x.op, x.ranks, x.bytes, x.link, x.hides) for x in
                         commplan.collectives(model, comm_config("--parallel=fsdp", "--expert_parallel=2", *argv))}
    plan = got()
    assert plan["weights"] == ("all-gather", 4, 2 * (1536 * 2 * 2 + 32 * 4 * 2 + 32 * 2) * 3 / 4, "nvlink", "compute")
    assert plan["gradients"] == ("reduce-scatter", 4, 2 * 4 * (1536 + 32 + 32) * 3 / 4, "nvlink", "compute")
    assert plan["token rows"] == ("all-to-all", 2, 2 * 4 * 32 * 8 * 2 / 2, "nvlink", "nothing")
    assert plan["routed experts' gradients"] == ("all-reduce", 2, 2 * 1 / 2 * 4 * 1536 / 2, "nvlink", "nothing")
    assert got("--activation_checkpointing=True")["token rows"][2] == 2 * 6 * 32 * 8 * 2 / 2
    assert "routed experts' gradients" not in got("--gpus=2")   # one copy of the experts: nothing to reduce
    assert got("--gpus=16", "--gpus_per_node=2")["routed experts' gradients"][3] == "ib"


def test_step_time_with_and_without_overlap():
    """3 s of compute over 2 micro-batches; 1 s of FSDP traffic hides behind it, 1 s of a once-per-step reduction
    behind the last backward pass (2/3 x 1.5 s), 0.01 s of all-to-all behind nothing."""
    from plumbing import commplan
    c = comm_config("--gpus=4", "--gradient_accumulation_steps=8")
    colls = [commplan.Collective("a", "all-gather", 8, 450e9, "nvlink", "compute"),
             commplan.Collective("b", "all-reduce", 8, 45e9, "ib", "last backward"),
             commplan.Collective("c", "all-to-all", 8, 4.5e9, "nvlink", "nothing")]
    assert commplan.step_seconds(c, colls, 3.0) == pytest.approx((5.01, 3.01), rel=1e-12)
    assert commplan.step_seconds(c, colls, 0.5) == pytest.approx((2.51, 1 + (1 - 1 / 6) + 0.01), rel=1e-12)
    assert commplan.by_link(colls) == {"nvlink": 454.5e9, "ib": 45e9}


def test_hsdp_and_expert_parallelism_memory():
    """HSDP holds 1/shard_processes of the state; expert parallelism 1/expert_parallel of the routed experts (16
    layers x 254 x 3 x 2048 x 512) and 1/gpus of the rest."""
    model = memplan.on_meta(memplan.model_config(config("configs/paper_moe.py")))
    P = sum(p.numel() for p in model.parameters())
    hsdp = memplan.state_bytes(model, config("configs/paper_moe.py", "--gpus=64", "--parallel=hsdp"), "bf16")
    assert hsdp["parameters"] == 4 * P / 8 and hsdp["optimizer"] == 8 * P / 8
    routed = 16 * 254 * 3 * 2048 * 512
    ep = memplan.state_bytes(model, config("configs/paper_moe.py", "--gpus=64", "--expert_parallel=2"), "bf16")
    assert ep["parameters"] == pytest.approx(4 * ((P - routed) / 64 + routed / 2), rel=1e-12)
    eight = memplan.state_bytes(model, config("configs/paper_moe.py", "--gpus=64", "--expert_parallel=8"), "bf16")
    assert eight["parameters"] == pytest.approx(4 * ((P - routed) / 64 + routed / 254 * 32), rel=1e-12)   # 32 held
    fsdp = memplan.state_bytes(model, config("configs/paper_moe.py", "--gpus=64"), "bf16")
    # a layer's routed experts leave the two blocks gathered (2 x 2 B) and the one block's gradients in flight
    # (2 + 4 B); the half held here come in as a bf16 copy and its bf16 gradient (2 + 2 B)
    layer = routed / 16
    assert fsdp["working"] - ep["working"] == (2 * 2 + 6) * layer - 4 * layer / 2


def test_the_layouts_weighed_and_the_one_recommended():
    names = lambda *argv: [memplan.layout_name(c) for c in memplan.candidates(
        config(*argv), memplan.on_meta(memplan.model_config(config(*argv))))]
    assert names("configs/paper_dense.py", "--gpus=64") == ["DDP", "FSDP", "HSDP 8x8"]
    assert names("configs/paper_moe.py", "--gpus=8") == ["DDP", "FSDP", "FSDP EP2", "FSDP EP4", "FSDP EP8"]
    assert names("configs/paper_moe.py", "--gpus=64", "--moe_experts=258") == \
        ["DDP", "FSDP", *[f"FSDP EP{e}" for e in (2, 4, 8, 16, 32, 64)], "HSDP 8x8",
         *[f"HSDP 8x8 EP{e}" for e in (2, 4, 8, 16, 32, 64)]]
    rows = [dict(name="a", memory=90, overlapped=1.0, serial=1.0), dict(name="b", memory=10, overlapped=2.0,
            serial=2.5), dict(name="c", memory=10, overlapped=2.0, serial=2.2)]
    assert memplan.recommended(rows, 50)["name"] == "c" and memplan.recommended(rows, 5) is None
