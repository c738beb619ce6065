"""train.py end to end on CPU: configuration errors, a tiny run that learns, exact resume, NaN handling."""
import json
import os

import pytest
import torch

import model as model_module
import train
from helpers import TINY, grad_norms, train_lines
from plumbing import build
from plumbing.checkpoints import load_checkpoint

def run(out_dir, *extra):
    train.main([*TINY, f"--out_dir={out_dir}", *extra])
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(SystemExit, match=r"unknown config key 'learning_rat'.*valid keys: .*learning_rate"):
        train.configure(train.DEFAULTS, ["--learning_rat=1e-3"])


def test_wrong_type_and_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="'max_iters' .* must be int, got str"):
        train.configure(train.DEFAULTS, ["--max_iters=many"])
    with pytest.raises(SystemExit, match="config file 'nope.py' not found"):
        train.configure(train.DEFAULTS, ["nope.py"])
    bad = tmp_path / "bad.py"
    bad.write_text("batch_sise = 4\n")
    with pytest.raises(SystemExit, match=f"unknown config key 'batch_sise' \\(in {bad}\\)"):
        train.configure(train.DEFAULTS, [str(bad)])


def test_impossible_settings_stop_with_one_line(tmp_path):
    for bad, message in ((["--prediction=eps"], r"prediction='eps': use one of \('x', 'v'\)"),
                         (["--n_head=3"], "n_head 3 must divide d_model 32"),
                         (["--ffn=dense"], "unknown ffn 'dense'"),
                         (["--video_frames=40"], "lower video_frames or raise seq_len")):
        with pytest.raises(SystemExit, match="bad configuration: .*" + message):
            run(tmp_path, *bad)


def test_config_file_then_overrides():
    c = train.configure(train.DEFAULTS, ["configs/toy.py", "--max_iters=7", "--resume", "--learning_rate=1",
                                         "--mixture={'text': 1.0}", "--device=cpu"])
    assert c.max_iters == 7 and c.resume == "True" and c.learning_rate == 1.0 and c.mixture == {"text": 1.0}
    assert c.device == "cpu" and c.out_dir == "out/toy"


@pytest.mark.slow
def test_tiny_run_learns_and_resumes_exactly(tmp_path, monkeypatch):
    full = run(tmp_path / "a", "--max_iters=16", "--eval_interval=8")
    losses = train_lines(full)
    first = [losses[s] for s in (1, 2, 3, 4)]
    last = [losses[s] for s in (13, 14, 15, 16)]
    assert sum(t for t, _ in last) < 0.8 * sum(t for t, _ in first)       # text loss falls
    # flow loss falls (v-prediction's, the default, has a floor far above 0: measured 0.59 of the first steps')
    assert sum(f for _, f in last) < 0.75 * sum(f for _, f in first)
    evals = [r for r in full if "val_text_loss" in r]
    assert [r["step"] for r in evals] == [8, 16]
    for split in ("unseen_scenes", "held_out_bindings"):   # both held-out splits, each score with its interval
        for task in ("gen", "caption"):
            lo, hi = evals[-1][f"{task}_{split}_ci"]
            assert all(0 <= r[f"{task}_{split}"] <= 1 for r in evals) and lo <= evals[-1][f"{task}_{split}"] <= hi
    assert os.path.exists(tmp_path / "a" / "samples.png")

    # the same run, hit by a NaN at step 11: it stops with a clear message, the step-8 checkpoint survives
    real, calls = model_module.training_losses, []

    def poisoned(*a, **k):
        text, flow, *each = real(*a, **k)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 11:
                return text * float("nan"), flow, *each
        return text, flow, *each
    monkeypatch.setattr(model_module, "training_losses", poisoned)
    with pytest.raises(SystemExit, match="step 10: non-finite loss.*last checkpoint in .* is intact"):
        run(tmp_path / "b", "--max_iters=16", "--eval_interval=8")
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["step"] == 8
    monkeypatch.setattr(model_module, "training_losses", real)

    # resuming continues exactly where the uninterrupted run went
    resumed = run(tmp_path / "b", "--max_iters=16", "--eval_interval=8", "--resume")
    assert train_lines(resumed) == losses
    assert [r for r in resumed if "val_text_loss" in r] == evals


def test_loss_centering_moves_once_per_step_from_the_step_mean(tmp_path):
    """App. D.2's EMA with momentum 0.5 over 3 steps of 4 micro-batches: the checkpointed center is the EMA of the
    three logged step means (alpha * flow + (1 - alpha) * text), not of twelve micro-batch losses."""
    lines = train_lines(run(tmp_path, "--max_iters=3", "--eval_interval=3", "--gradient_accumulation_steps=4",
                            "--loss_centering=True", "--centering_momentum=0.5", "--batch_size=2"))
    center = None
    for step in (1, 2, 3):
        current = 0.5 * lines[step][1] + 0.5 * lines[step][0]
        center = current if center is None else 0.5 * center + 0.5 * current
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["loss_center"] == pytest.approx(center, rel=1e-6)


def test_absent_losses_are_not_logged_and_tokens_count_real_positions(tmp_path):
    """Text only: no frames, so no flow loss in the training or validation lines (never a 0 that a fit would take).
    Token counts and tokens_per_s count real positions; pad_share is the rest."""
    lines = run(tmp_path, "--max_iters=2", "--eval_interval=2", "--mixture={'text': 1.0}")
    assert not any("flow_loss" in r or "val_flow_loss" in r for r in lines) and "val_text_loss" in lines[-1]
    c = train.configure(train.DEFAULTS, [*TINY, "--mixture={'text': 1.0}"])
    data = train.build(c, "cpu")[2]
    real = sum(int((data.batch(s, 0, c.batch_size)["doc"] >= 0).sum()) for s in (0, 1))
    assert lines[-1]["tokens"] == real < 2 * c.batch_size * c.seq_len
    assert lines[1]["pad_share"] == pytest.approx(1 - int((data.batch(1, 0, c.batch_size)["doc"] >= 0).sum()) /
                                                  (c.batch_size * c.seq_len))


@pytest.mark.slow
def test_compiled_on_the_cpu_trains_like_eager(tmp_path):
    """--compile=True on the CPU compiles each block on its own (build.compile_model): the same losses as eager,
    the same checkpoint keys (nothing renamed by a wrapper)."""
    args = ("--max_iters=3", "--eval_interval=3", "--mixture={'caption_to_image': 0.5, 'image_to_caption': 0.5}")
    eager = train_lines(run(tmp_path / "eager", *args))
    compiled = train_lines(run(tmp_path / "compiled", *args, "--compile=True"))
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4)
    keys = [set(load_checkpoint(str(tmp_path / d / "ckpt.pt"))["model"]) for d in ("eager", "compiled")]
    assert keys[0] == keys[1]


def test_refuses_to_overwrite_or_load_a_foreign_checkpoint(tmp_path):
    run(tmp_path, "--max_iters=2", "--eval_interval=2")
    with pytest.raises(SystemExit, match="exists: pass --resume"):
        run(tmp_path, "--max_iters=2")
    with pytest.raises(SystemExit, match="trained with d_model=32 but the config asks for 64"):
        run(tmp_path, "--max_iters=4", "--d_model=64", "--resume")



def test_vqa_fine_tuning_starts_from_the_checkpoint_keeps_the_encoder_frozen_and_sees_clean_images(tmp_path,
                                                                                                  monkeypatch):
    """The understanding protocol's stage (App. E.6): --init_from loads a trained run's weights into a new run (step
    0, its own schedule), the frozen encoder's weights never move, every frame is clean (no flow loss), and only
    the answers are learned, never the questions."""
    import encoders
    tower = encoders.SiglipVision(width=16, depth=1, heads=2, hidden=32, patch=8, image_size=16)
    enc = encoders.SemanticEncoder(tower, None, encoders.HALF)
    frozen = {k: v.clone() for k, v in tower.state_dict().items()}
    monkeypatch.setattr(build, "build_encoder", lambda *a, **k: enc)
    run(tmp_path / "pre", "--max_iters=2", "--eval_interval=2", "--mixture={'image_to_caption': 1.0}")
    pretrained = load_checkpoint(str(tmp_path / "pre" / "ckpt.pt"))["model"]
    seen, real_step = [], train.train_step

    def spy(run_, c, model, raw_model, *rest):
        if run_.step == 0:   # before the first update: the pretrained weights, exactly
            assert all(torch.equal(v, pretrained[k]) for k, v in raw_model.state_dict().items())
        return real_step(run_, c, model, raw_model, *rest)
    real_batch = train.get_batch
    monkeypatch.setattr(train, "train_step", spy)
    monkeypatch.setattr(train, "get_batch", lambda *a, **k: seen.append(real_batch(*a, **k)) or seen[-1])
    lines = run(tmp_path / "vqa", f"--init_from={tmp_path / 'pre'}", "--mixture={'vqa': 1.0}", "--max_iters=3",
                "--eval_interval=3", "--learning_rate=1e-3")
    assert [r["step"] for r in lines if "lr" in r] == [1, 2, 3] and all("flow_loss" not in r for r in lines)
    assert all(torch.equal(v, frozen[k]) for k, v in tower.state_dict().items())
    assert not any(p.requires_grad for p in tower.parameters())
    tok = train.build(train.configure(train.DEFAULTS, TINY), "cpu")[0]
    for batch in seen:
        assert batch["cond"].all()                                       # every image clean
        for row in batch["targets"].tolist():                  # learned: each " answer" and its end, never a question
            learned = tok.decode([t for t in row if t >= 0])
            assert "?" not in learned and learned.strip()
    assert {"vqa_unseen_scenes", "vqa_held_out_bindings_ci"} <= set(lines[-1])
    with pytest.raises(SystemExit, match="no checkpoint at .*nowhere/ckpt.pt"):
        run(tmp_path / "vqa2", f"--init_from={tmp_path / 'nowhere'}", "--mixture={'vqa': 1.0}", "--max_iters=1")
    with pytest.raises(SystemExit, match="was trained with d_model=32 but the config asks for 64"):
        run(tmp_path / "vqa3", f"--init_from={tmp_path / 'pre'}", "--mixture={'vqa': 1.0}", "--d_model=64")


def launch(tmp_path, name, *extra, procs=1):
    """train.py in a subprocess: alone, or under torchrun with `procs` gloo processes. Returns {step: (text loss,
    flow loss, gradient norm)}: the norm shows a gradient summed over processes (2x), which losses do not."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runner = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={procs}"]
    done = subprocess.run([*runner, "train.py", *TINY, f"--out_dir={tmp_path / name}", *extra], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:   # show why (the processes' own output), not only that it failed
        pytest.fail(f"{' '.join(runner)} train.py exited with {done.returncode}:\n{done.stderr[-4000:]}")
    lines = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    norms = grad_norms(lines)
    return {step: (*losses, norms[step]) for step, losses in train_lines(lines).items()}


@pytest.mark.slow
@pytest.mark.parametrize("parallel,centering", [("ddp", False), ("fsdp", False), ("ddp", True)])
def test_two_processes_match_one_and_resume_on_one(tmp_path, parallel, centering):
    """torchrun with 2 gloo processes (DDP, or FSDP2) and the same global batch logs the same losses and gradient
    norms (measured: equal, or within 1.1e-7 for FSDP2) as one process; its checkpoint then resumes on one process
    exactly as the one-process run's own checkpoint does. With loss centering, the center moves once per step from
    the whole global batch, on every process alike."""
    args = ["--max_iters=3", "--eval_interval=3", "--gradient_accumulation_steps=2", f"--loss_centering={centering}"]
    one = launch(tmp_path, "one", *args)
    two = launch(tmp_path, "two", *args, f"--parallel={parallel}", procs=2)
    assert one.keys() == two.keys() == {1, 2, 3}
    for s in one:
        assert one[s] == pytest.approx(two[s], rel=1e-5)
    center = lambda name: torch.load(tmp_path / name / "ckpt.pt", weights_only=False)["loss_center"]
    assert center("one") == pytest.approx(center("two"), rel=1e-5) if centering else center("one") is None
    more = ["--max_iters=5", "--eval_interval=5", "--gradient_accumulation_steps=2", "--resume",
            f"--loss_centering={centering}"]
    one, two = launch(tmp_path, "one", *more), launch(tmp_path, "two", *more)
    for s in (4, 5):
        assert one[s] == pytest.approx(two[s], rel=1e-5)


@pytest.mark.slow
def test_moe_bias_balancing_on_two_processes_matches_one(tmp_path):
    """The auxiliary-loss-free biases follow the load of the whole step, every micro-batch of every process, so
    the experts chosen (and the losses) do not depend on how the global batch is split."""
    args = ["--max_iters=4", "--eval_interval=4", "--gradient_accumulation_steps=2", "--ffn=moe", "--moe_experts=8",
            "--moe_granularity=2", "--moe_balance=bias", "--moe_bias_rate=0.05"]
    one = launch(tmp_path, "one", *args)
    two = launch(tmp_path, "two", *args, procs=2)
    for s in one:
        assert one[s] == pytest.approx(two[s], rel=1e-5)


@pytest.mark.slow
def test_a_checkpoint_from_before_a_new_model_setting_still_loads(tmp_path):
    """A setting the checkpoint predates counts as its default, or, for a default that changed since
    (model.FORMER_DEFAULTS), as what the checkpoint resolved to then: an 8/3 d_model FFN before ffn_mult. The MoE's
    settings do not matter to a dense model (its resume takes any), the FFN's kind does."""
    run(tmp_path, "--max_iters=2", "--eval_interval=2", f"--ffn_mult={8 / 3}")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    for key in [k for k in ckpt["model_args"] if k.startswith("moe_") or k == "ffn_mult"]:   # as saved before
        del ckpt["model_args"][key]
    del ckpt["config"]["ffn_mult"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model = build.load_for_inference(str(tmp_path), "cpu")[0]
    assert model.cfg.ffn == "modality" and model.cfg.ffn_hidden == 96   # 8/3 x 32, rounded up to 32
    run(tmp_path, "--max_iters=3", "--eval_interval=3", "--moe_experts=8", f"--ffn_mult={8 / 3}", "--resume")
    with pytest.raises(SystemExit, match="trained with ffn='modality' but the config asks for 'moe'"):
        run(tmp_path, "--max_iters=4", "--ffn=moe", "--moe_experts=8", "--moe_granularity=2", f"--ffn_mult={8 / 3}",
            "--resume")
