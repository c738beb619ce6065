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
                 "peak memory 2.00 GiB allocated, predicted"):
        assert want in out
    with pytest.raises(SystemExit, match="mfu in"):
        memplan.main(["configs/toy.py", "--mfu=2"])
    with pytest.raises(SystemExit, match="no such file"):
        memplan.main(["configs/toy.py", f"--metrics={tmp_path / 'none.jsonl'}"])


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
