"""The distributed paths on the CPU (gloo under torchrun) against one process: {DDP, FSDP2} x {modality FFN, MoE with
per-modality shared experts} x {float32, bfloat16 mixed precision} x activation checkpointing off/on, each training,
evaluating, checkpointing and resuming; resumes across process counts (1 -> 2, 2 -> 1); sharded checkpoints (what
each process writes, a damaged one, one cut short, the export for sampling); the weights' moving average (by hand,
resumed, sharded, split with the experts); the initialisation built on the meta device; float16 refused.

One torchrun launch runs every two-process configuration through train.main in turn (this file is its driver), so
process start-up is paid once."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]   # as conftest.py does, for this file as torchrun's driver too
import train  # noqa: E402
from helpers import ROOT, TINY, grad_norms, train_lines  # noqa: E402
from plumbing.checkpoints import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow   # every test here starts torchrun or trains

FFN = {"modality": [], "moe": ["--ffn=moe", "--moe_experts=6", "--moe_granularity=2", "--moe_shared=per_modality"]}
DTYPES = ("float32", "bfloat16")
MATRIX = [(p, f, d, ac) for p in ("ddp", "fsdp") for f in FFN for d in DTYPES for ac in (False, True)]
EXPERT_PARALLEL = [(d, ac) for d in DTYPES for ac in (False, True)]   # MoE, FSDP2, the 4 routed experts split 2 + 2
EMA = ["--ema_decay=0.9"]   # far from the weights after 4 steps, so an average of the wrong weights shows


def tolerance(parallel, dtype, ffn, what="loss"):
    """Relative, on every logged loss (or, what="grad_norm", on every step's gradient norm before clipping). DDP runs
    the very micro-batches one process does, in the same precision (measured: identical, gradient norms too); FSDP2
    in float32 sums the same gradients in another order (measured: <= 1e-7, gradient norms <= 1.1e-7). FSDP2 in
    bfloat16 gathers the weights themselves in bfloat16 where one process keeps float32 weights under autocast, so
    norms and projections see rounded weights (the routers gather theirs in float32): losses measured <= 1.2e-3
    over 4 steps on the development CPU, gradient norms <= 1.7e-3; before the routers gathered in float32, MoE's
    losses reached 7.5e-3 on CI's CPU (another vector unit rounds otherwise, and a rounded router score can move a
    token to another expert) and its gradient norms 1.5e-2 at step 4, hence the looser MoE bounds. A gradient
    summed over the processes instead of averaged is 2x. The float32 cases are the exact check; these say bf16
    trains the same run."""
    if (parallel, dtype) != ("fsdp", "bfloat16"):
        return 1e-5
    if ffn == "moe":
        return 0.1 if what == "grad_norm" else 2e-2
    return 5e-3


def args(out_dir, ffn, dtype, max_iters, *extra):
    return [*TINY, f"--out_dir={out_dir}", *FFN[ffn], f"--dtype={dtype}", f"--max_iters={max_iters}",
            "--eval_interval=2", "--gradient_accumulation_steps=2", *extra]


def torchrun(runs, procs=2, **env):
    """Every run (a list of train.py arguments) in turn, in one launch of `procs` gloo processes; the finished
    process (its returncode, its stderr)."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                           os.path.abspath(__file__), json.dumps(runs)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    if done.returncode and not env:
        pytest.fail(f"torchrun exited with {done.returncode}:\n{done.stderr[-4000:]}")
    assert "terminate called" not in done.stderr
    return done


def logged(out_dir):
    """(training losses by step, validation losses by step, gradient norms by step) of a run's metrics.jsonl."""
    lines = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return train_lines(lines), {r["step"]: (r["val_text_loss"], r["val_flow_loss"]) for r in lines
                                if "val_text_loss" in r}, grad_norms(lines)


def assert_same_run(got_dir, want_dir, rel, last=None, grad_rel=None):
    """The training losses and gradient norms of two runs agree at every step (the norms within grad_rel, if
    given), their validation losses at every evaluation (up to step `last`, if given)."""
    for got, want, tol in zip(logged(got_dir), logged(want_dir), (rel, rel, grad_rel or rel)):
        got, want = ({s: v for s, v in x.items() if last is None or s <= last} for x in (got, want))
        assert got.keys() == want.keys() and want
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=tol), (got_dir, step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The matrix's runs, in one folder: one-{ffn}-{dtype} on one process (to step 2, then resumed to 4); every
    {parallel}-{ffn}-{dtype}-{checkpointing} on two processes (likewise); from-one-{ffn}-{dtype}, the one-process
    checkpoints of step 2 resumed on two FSDP processes (one carries an extra metadata key, as a tracker would
    store); {parallel}-{ffn}-{dtype}-whole, FSDP with gradients reduced once per step; ep-{dtype}-{checkpointing},
    the MoE with its experts split over the two processes, and ep-from-one, the one-process MoE checkpoint resumed
    so; compiled, FSDP2 over compiled blocks that recompute their activations; with a moving average of the weights
    (EMA), one-ema on one process, fsdp-ema on two, from-one-ema (one-ema's step 2 resumed on two) and ep-ema (the
    MoE's experts split), each to step 2, then resumed to 4."""
    root = tmp_path_factory.mktemp("runs")
    for ffn in FFN:
        for dtype in DTYPES:
            train.main(args(root / f"one-{ffn}-{dtype}", ffn, dtype, 2))
            shutil.copytree(root / f"one-{ffn}-{dtype}", root / f"from-one-{ffn}-{dtype}")
            train.main(args(root / f"one-{ffn}-{dtype}", ffn, dtype, 4, "--resume"))
    train.main(args(root / "one-ema", "modality", "float32", 2, *EMA))
    shutil.copytree(root / "one-ema", root / "from-one-ema")
    train.main(args(root / "one-ema", "modality", "float32", 4, *EMA, "--resume"))
    tagged = torch.load(root / "from-one-moe-bfloat16" / "ckpt.pt", weights_only=True)
    torch.save(dict(tagged, tracking_run_id="run-42"), root / "from-one-moe-bfloat16" / "ckpt.pt")
    launch = []
    for p, f, d, ac in MATRIX:
        flags = [f"--parallel={p}", f"--activation_checkpointing={ac}"]
        launch += [args(root / f"{p}-{f}-{d}-{ac}", f, d, 2, *flags),
                   args(root / f"{p}-{f}-{d}-{ac}", f, d, 4, *flags, "--resume")]
    launch += [args(root / f"from-one-{f}-{d}", f, d, 4, "--parallel=fsdp", "--resume") for f in FFN for d in DTYPES]
    launch += [args(root / f"fsdp-{f}-{d}-whole", f, d, 4, "--parallel=fsdp", "--reduce_every_micro_batch=False")
               for f, d in (("modality", "float32"), ("moe", "bfloat16"))]
    for d, ac in EXPERT_PARALLEL:
        flags = ["--parallel=fsdp", "--expert_parallel=2", f"--activation_checkpointing={ac}"]
        launch += [args(root / f"ep-{d}-{ac}", "moe", d, 2, *flags), args(root / f"ep-{d}-{ac}", "moe", d, 4, *flags,
                                                                             "--resume")]
    shutil.copytree(root / "from-one-moe-float32", root / "ep-from-one")
    launch += [args(root / "ep-from-one", "moe", "float32", 4, "--parallel=fsdp", "--expert_parallel=2", "--resume"),
               args(root / "compiled", "modality", "float32", 4, "--parallel=fsdp", "--compile=True",
                    "--activation_checkpointing=True")]
    for run, ffn, flags in (("fsdp-ema", "modality", []), ("ep-ema", "moe", ["--expert_parallel=2"])):
        launch += [args(root / run, ffn, "float32", steps, "--parallel=fsdp", *flags, *EMA, *resume)
                   for steps, resume in ((2, []), (4, ["--resume"]))]
    launch.append(args(root / "from-one-ema", "modality", "float32", 4, "--parallel=fsdp", *EMA, "--resume"))
    torchrun(launch)
    return root


def test_two_processes_match_one_in_every_configuration(runs):
    """{DDP, FSDP2} x {modality FFN, MoE} x {float32, bfloat16} x activation checkpointing: training losses at every
    step and validation losses at both evaluations, across a checkpoint and a resume, as one process logs them."""
    for p, f, d, ac in MATRIX:
        assert_same_run(runs / f"{p}-{f}-{d}-{ac}", runs / f"one-{f}-{d}", tolerance(p, d, f),
                        grad_rel=tolerance(p, d, f, "grad_norm"))


def test_expert_parallel_matches_one_process(runs):
    """Each process holds 2 of the 4 routed experts and the rows routed to the others travel by all-to-all: training
    losses, gradient norms and balance losses at every step and validation losses at both evaluations as one
    process logs them (float32: 1e-5, measured identical but for 2e-7; bfloat16 within FSDP2's bounds), through a
    checkpoint and a resume, with and without activation checkpointing; a one-process checkpoint resumes so too."""
    for d, ac in EXPERT_PARALLEL:
        assert_same_run(runs / f"ep-{d}-{ac}", runs / f"one-moe-{d}", tolerance("fsdp", d, "moe"),
                        grad_rel=tolerance("fsdp", d, "moe", "grad_norm"))
        balance = [{r["step"]: r["balance_loss"] for r in map(json.loads, open(run / "metrics.jsonl"))
                    if "balance_loss" in r} for run in (runs / f"ep-{d}-{ac}", runs / f"one-moe-{d}")]
        assert balance[0].keys() == balance[1].keys() == {1, 2, 3, 4}
        assert all(balance[0][k] == pytest.approx(balance[1][k], rel=tolerance("fsdp", d, "moe")) for k in balance[1])
    assert_same_run(runs / "ep-from-one", runs / "one-moe-float32", 1e-5)
    for rank in (0, 1):   # what reached FSDP2: the experts were split first, and it left them alone
        seen = json.load(open(runs / "ep-float32-False" / f"probes.{rank}.json"))
        assert seen["experts"] == ["2 of 4 routed experts per layer, outside FSDP2"]


def test_blocks_recompute_then_compile_then_shard(runs):
    """The order torchtitan uses: each block set to recompute its activations, then compiled (the recomputation
    inside the compiled region), then sharded by FSDP2; on two processes it trains as one eager process does
    (within compilation's rounding: the CPU compile test's 1e-4 on the losses, 2e-3 on the gradient norms)."""
    assert_same_run(runs / "compiled", runs / "one-modality-float32", 1e-4, grad_rel=2e-3)
    for rank in (0, 1):
        assert json.load(open(runs / "compiled" / f"probes.{rank}.json"))["when sharded"] == \
            ["blocks checkpointed and compiled"]


def test_gradients_reduced_per_step_or_per_micro_batch_agree(runs):
    """reduce_every_micro_batch=False (whole gradients until the step's last micro-batch) logs what the default
    (reduce-scattered after every micro-batch) does."""
    assert_same_run(runs / "fsdp-modality-float32-whole", runs / "fsdp-modality-float32-False", 1e-5)
    assert_same_run(runs / "fsdp-moe-bfloat16-whole", runs / "fsdp-moe-bfloat16-False", 5e-3)
    for f, d in (("modality", "float32"), ("moe", "bfloat16")):   # and what one process does, gradient norms too
        assert_same_run(runs / f"fsdp-{f}-{d}-whole", runs / f"one-{f}-{d}", tolerance("fsdp", d, f), last=4,
                        grad_rel=tolerance("fsdp", d, f, "grad_norm"))


def test_resume_across_process_counts(runs):
    """1 -> 2: a one-process checkpoint resumed by two FSDP processes; 2 -> 1: a sharded checkpoint resumed by one
    process. Both go on as the one-process run went on."""
    for f in FFN:
        for d in DTYPES:
            assert_same_run(runs / f"from-one-{f}-{d}", runs / f"one-{f}-{d}", tolerance("fsdp", d, f),
                            grad_rel=tolerance("fsdp", d, f, "grad_norm"))
        train.main(args(runs / f"one-{f}-float32", f, "float32", 6, "--resume"))
        train.main(args(runs / f"fsdp-{f}-float32-False", f, "float32", 6, "--resume"))
        assert_same_run(runs / f"fsdp-{f}-float32-False", runs / f"one-{f}-float32", 1e-5)


def test_sharded_checkpoints_each_process_writes_its_part(runs):
    """Under FSDP, ckpt.pt holds the metadata and names a folder in which each process wrote its own part (of about
    equal size); the checkpoint before is kept, older folders are gone; metadata a tracker added is carried on."""
    run = runs / "from-one-moe-bfloat16"
    ckpt = load_checkpoint(str(run / "ckpt.pt"))
    assert "model" not in ckpt and "optimizer" not in ckpt and ckpt["step"] == 4
    assert ckpt["tracking_run_id"] == "run-42"
    assert set(ckpt["data_state"]["slots"]) == {0, 1}
    parts = {n: os.path.getsize(run / ckpt["shards"] / n) for n in os.listdir(run / ckpt["shards"])}
    assert {"__0_0.distcp", "__1_0.distcp"} <= parts.keys()
    assert 0.5 < parts["__0_0.distcp"] / parts["__1_0.distcp"] < 2
    prev = load_checkpoint(str(run / "ckpt.prev.pt"))   # the one-process checkpoint it resumed from
    assert prev["step"] == 2 and "model" in prev
    assert sorted(n for n in os.listdir(run) if ".shards." in n) == ["ckpt.shards.4"]
    run = runs / "fsdp-modality-float32-True"
    assert sorted(n for n in os.listdir(run) if ".shards." in n) == ["ckpt.shards.2", "ckpt.shards.4"]


def test_a_damaged_sharded_checkpoint_stops_with_one_line(runs, tmp_path):
    for damage, message in (("cut", "names shards that are missing or cut short"),
                            ("gone", "names shards that are missing or cut short")):
        run = tmp_path / damage
        shutil.copytree(runs / "fsdp-modality-bfloat16-False", run)
        part = run / "ckpt.shards.4" / "__1_0.distcp"
        if damage == "cut":
            part.write_bytes(part.read_bytes()[:100])
        else:
            shutil.rmtree(run / "ckpt.shards.4")
        with pytest.raises(SystemExit, match=f"{run}/ckpt.pt {message} .*: the one before is {run}/ckpt.prev.pt"):
            train.main(args(run, "modality", "bfloat16", 6, "--resume"))


def test_a_sharded_save_cut_short_keeps_the_checkpoint_before(runs, tmp_path):
    """Process 0 killed after every process wrote its shards of step 4 but before ckpt.pt named them: ckpt.pt is
    still step 2's, whole, and the run resumes from it (here on one process) as if nothing had happened; the
    unnamed folder is removed at the next save."""
    out = tmp_path / "run"
    flags = ["--parallel=fsdp"]
    assert torchrun([args(out, "modality", "float32", 4, *flags)], BLM_CRASH_AT="shards:2").returncode != 0
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 2 and (out / "ckpt.shards.4.tmp").exists()
    train.main(args(out, "modality", "float32", 4, "--resume"))
    assert_same_run(out, runs / "one-modality-float32", 1e-5, last=4)
    assert sorted(n for n in os.listdir(out) if ".shards." in n) == ["ckpt.shards.2"]   # named by ckpt.prev.pt


def test_export_makes_one_file_that_sampling_reads(runs, tmp_path):
    """python -m plumbing.export: the sharded weights in one safetensors file (float32: equal; bfloat16: rounded) and
    config.json, which load_for_inference reads as it reads the sharded checkpoint, and --init_from too; a one-file
    checkpoint exports alike; an export of before config.json (its metadata pickled in ckpt.pt) still reads; an
    export holds no optimizer state, so it does not resume a run."""
    from safetensors import safe_open
    from plumbing import build, export
    from plumbing.checkpoints import save_checkpoint
    export.export(str(runs / "fsdp-moe-float32-True"), str(tmp_path / "export"))
    export.export(str(runs / "fsdp-moe-float32-True"), str(tmp_path / "half"), "bfloat16")
    export.export(str(runs / "one-moe-float32"), str(tmp_path / "one"))
    sharded = build.load_for_inference(str(runs / "fsdp-moe-float32-True"), "cpu")[0].state_dict()
    meta = json.load(open(tmp_path / "export" / "config.json"))
    assert meta["step"] == 4 and meta["weights"] == "raw" and sorted(os.listdir(tmp_path / "export")) == \
        ["README.md", "config.json", "model.safetensors", "samples.png"]
    exported = build.load_for_inference(str(tmp_path / "export"), "cpu")[0].state_dict()
    assert sharded.keys() == exported.keys() and all(torch.equal(sharded[k], exported[k]) for k in sharded)
    with safe_open(str(tmp_path / "half" / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 and torch.equal(f.get_tensor(k), sharded[k].bfloat16())
                   for k in sharded)
    one = build.load_for_inference(str(runs / "one-moe-float32"), "cpu")[0].state_dict()
    assert all(torch.equal(one[k], v) for k, v in build.load_for_inference(str(tmp_path / "one"), "cpu")[0]
               .state_dict().items())
    old = tmp_path / "old"   # the export's layout before config.json: model.safetensors + a ckpt.pt of metadata
    shutil.copytree(tmp_path / "export", old, ignore=shutil.ignore_patterns("config.json", "README.md"))
    ckpt = load_checkpoint(str(runs / "fsdp-moe-float32-True" / "ckpt.pt"))
    save_checkpoint(str(old / "ckpt.pt"), dict({k: v for k, v in ckpt.items() if k not in ("shards", "shard_sizes")},
                                               weights="model.safetensors", weights_dtype="float32"))
    got = build.load_for_inference(str(old), "cpu")[0].state_dict()
    assert all(torch.equal(got[k], v) for k, v in sharded.items())
    with pytest.raises(SystemExit, match="holds weights only"):
        train.main(args(old, "moe", "float32", 6, "--resume"))
    with pytest.raises(SystemExit, match="is an export .weights only, for sampling.: use the run's own out_dir"):
        train.main(args(tmp_path / "export", "moe", "float32", 6, "--resume"))
    train.main(args(tmp_path / "tuned", "moe", "float32", 1, f"--init_from={tmp_path / 'export'}"))


def test_the_moving_average_is_sharded_and_resumed_like_the_weights(runs, tmp_path):
    """The weights' moving average lives as the weights do: on two FSDP processes, through a sharded checkpoint and a
    resume, the held-out losses (evaluation scores the average) are one process's; a one-process checkpoint's
    average resumes sharded (1 -> 2) and a sharded one on one process (2 -> 1); with the MoE's experts split over
    the processes training is untouched; the average read from the shards is one process's; its export says so."""
    from plumbing import build, export
    assert_same_run(runs / "fsdp-ema", runs / "one-ema", 1e-5)
    assert_same_run(runs / "from-one-ema", runs / "one-ema", 1e-5)
    # (to step 4: test_resume_across_process_counts may have taken the one-process runs on to 6)
    upto4 = lambda run: [{s: v for s, v in x.items() if s <= 4} for x in logged(runs / run)]
    assert upto4("one-ema")[0] == upto4("one-modality-float32")[0]   # training: bit for bit
    assert upto4("one-ema")[1] != upto4("one-modality-float32")[1]   # evaluation: the average
    want, got = upto4("one-moe-float32")[0], upto4("ep-ema")[0]
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)
    for run in ("fsdp-ema", "ep-ema"):   # the average is in the shards, under its own key
        ckpt = load_checkpoint(str(runs / run / "ckpt.pt"))
        assert ckpt["step"] == 4 and "ema" not in ckpt and "shards" in ckpt
    one = build.load_for_inference(str(runs / "one-ema"), "cpu")[0].state_dict()
    sharded = build.load_for_inference(str(runs / "fsdp-ema"), "cpu")[0].state_dict()
    raw = build.load_for_inference(str(runs / "fsdp-ema"), "cpu", "raw")[0].state_dict()
    assert all(torch.allclose(sharded[k], one[k], rtol=1e-5, atol=1e-7) for k in one)
    assert not all(torch.equal(sharded[k], raw[k]) for k in raw)
    export.export(str(runs / "fsdp-ema"), str(tmp_path / "export"))
    assert json.load(open(tmp_path / "export" / "config.json"))["weights"] == "ema"
    exported = build.load_for_inference(str(tmp_path / "export"), "cpu")[0].state_dict()
    assert all(torch.equal(exported[k], sharded[k]) for k in sharded)
    for run in ("fsdp-ema", "one-ema"):   # 2 -> 1, against one process going on
        shutil.copytree(runs / run, tmp_path / run)
        train.main(args(tmp_path / run, "modality", "float32", 6, *EMA, "--resume"))
    assert_same_run(tmp_path / "fsdp-ema", tmp_path / "one-ema", 1e-5)


def one_process(out, steps, *extra):
    train.main([*TINY, f"--out_dir={out}", f"--max_iters={steps}", "--eval_interval=1", *extra])
    return torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)


def test_the_moving_average_is_the_one_by_hand_and_leaves_training_alone(tmp_path):
    """ema_decay=0.9 over 3 steps: the checkpoint's average is 0.9 (0.9 (0.9 w0 + 0.1 w1) + 0.1 w2) + 0.1 w3 of the
    initial weights w0 and each step's weights (read from each step's checkpoint), by hand in float64; the weights
    and every training loss are the run's without an average, bit for bit; the evaluation's held-out losses are
    what evaluate() gives the average's weights (load_for_inference's default), not the weights'."""
    from plumbing import build
    from plumbing.settings import configure
    steps = [one_process(tmp_path / "ema", k, "--ema_decay=0.9", *(["--resume"] if k > 1 else [])) for k in (1, 2, 3)]
    plain = one_process(tmp_path / "plain", 3)
    c = configure(train.DEFAULTS, [*TINY, "--ema_decay=0.9"])
    model = build.build(c, "cpu")[3]
    names = [n for n, _ in model.named_parameters()]
    want = {n: p.detach().double() for n, p in model.named_parameters()}
    for ckpt in steps:
        want = {n: 0.9 * want[n] + 0.1 * ckpt["model"][n].double() for n in names}
    # (within float32's rounding of three updates: measured <= 1.4e-7 where the weights are near 1)
    assert all(torch.allclose(steps[-1]["ema"][n].double(), want[n], rtol=1e-6, atol=1e-7) for n in names)
    assert all(torch.equal(steps[-1]["model"][k], v) for k, v in plain["model"].items())
    lines = lambda run: [json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")]
    assert train_lines(lines("ema")) == train_lines(lines("plain"))
    model, tok, enc, cfg = build.load_for_inference(str(tmp_path / "ema"), "cpu")
    data = build.build(cfg, "cpu", meta=True)[2]
    logged_loss = [r["val_text_loss"] for r in lines("ema") if "val_text_loss" in r][-1]
    assert train.evaluate(model, tok, enc, data, cfg, "cpu", 3, write=False)["val_text_loss"] == logged_loss
    raw = build.load_for_inference(str(tmp_path / "ema"), "cpu", "raw")[0]
    assert train.evaluate(raw, tok, enc, data, cfg, "cpu", 3, write=False)["val_text_loss"] != logged_loss


def test_a_run_with_a_moving_average_resumes_bit_identically(tmp_path):
    """4 steps unbroken against 2 then --resume to 4 (evaluations at 2 and 4): every logged loss, gradient norm and
    held-out loss, and the checkpoint's weights and average, bit for bit."""
    flags = ["--ema_decay=0.9", "--eval_interval=2"]
    whole = one_process(tmp_path / "whole", 4, *flags)
    one_process(tmp_path / "cut", 2, *flags)
    cut = one_process(tmp_path / "cut", 4, *flags, "--resume")
    assert logged(tmp_path / "cut") == logged(tmp_path / "whole")
    for key in ("model", "ema"):
        assert all(torch.equal(cut[key][k], v) for k, v in whole[key].items())
    with pytest.raises(SystemExit, match=r"ema_decay=1.0: use a number in \[0, 1\)"):
        one_process(tmp_path / "bad", 1, "--ema_decay=1.0")


def test_initialisation_is_gpt2s_in_distribution():
    """init_weights (what a meta-device model gets, sharded or not) against the initialisation written out as
    before: zeros and ones exactly, every random tensor's mean and spread within sampling error."""
    import math
    from model import ModelConfig, UnifiedTransformer
    cfg = ModelConfig(d_model=64, n_layer=4, ffn="moe", moe_experts=6, moe_granularity=2)
    torch.manual_seed(0)
    reference = UnifiedTransformer(cfg)
    with torch.no_grad():   # the rule as the model applied it before init_weights existed
        for m in reference.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.normal_(0, 0.02)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for name, p in reference.named_parameters():
            if name.endswith(("wo.weight", "w_down.weight")):
                p.normal_(0, 0.02 / math.sqrt(2 * cfg.n_layer))
            if name.endswith("w_gate_up"):
                p.normal_(0, 0.02)
            if name.endswith(".w_down"):
                p.normal_(0, 0.02 / math.sqrt(2 * cfg.n_layer))
        reference.patch_pos.normal_(0, 0.02)
        reference.flow_head.weight.zero_()
        reference.flow_head.bias.zero_()
    with torch.device("meta"):
        model = UnifiedTransformer(cfg)
    from plumbing import build
    model = build.init_model(model, "cpu", seed=1)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if q.std() == 0:
            assert torch.equal(p, q), name
        else:
            err = 4 / math.sqrt(p.numel())   # the sampling error of a mean and of a spread, in units of the spread
            assert abs(p.mean() - q.mean()) < err * q.std() and abs(p.std() / q.std() - 1) < 2 * err, name
    assert all(not b.any() for b in model.buffers())


def test_fsdp_gathers_in_the_training_precision_and_reduces_gradients_in_float32(monkeypatch):
    """The FSDP2 policy of every block and of the model: weights gathered in bfloat16 when training in it, gradients
    reduced in float32. Checked on the policy itself, as the runs cannot show it: reducing in bfloat16 instead moves
    step 1's gradient norm by 1.4e-4 (MoE: 3.3e-5) from the float32 reduction's, below the 3.7e-4 (2.9e-4) by which
    FSDP2's bfloat16 weights already move it from one process's, and the losses less than their tolerance."""
    import torch.distributed.fsdp as fsdp
    from model import ModelConfig, UnifiedTransformer
    from plumbing import parallel
    policies = {}
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh, mp_policy: policies.__setitem__(module, mp_policy))
    with torch.device("meta"):
        model = UnifiedTransformer(ModelConfig(d_model=32, n_layer=2))
    parallel.shard(model, "bfloat16")
    assert list(policies) == [*model.blocks, model]
    assert {(p.param_dtype, p.reduce_dtype, p.cast_forward_inputs) for p in policies.values()} == \
        {(torch.bfloat16, torch.float32, False)}
    policies.clear()
    parallel.shard(model, "float32")   # no casts at all: the parameters' own float32
    assert {(p.param_dtype, p.reduce_dtype) for p in policies.values()} == {(None, None)}
    policies.clear()
    with torch.device("meta"):   # an MoE's routers: their own unit, gathered in float32 whatever the training dtype
        model = UnifiedTransformer(ModelConfig(d_model=32, n_layer=2, ffn="moe", moe_experts=4, moe_granularity=2))
    parallel.shard(model, "bfloat16")
    assert list(policies) == [m for b in model.blocks for m in (b.ffn.router, b)] + [model]
    assert {(p.param_dtype, p.cast_forward_inputs) for m, p in policies.items() if m not in model.blocks and
            m is not model} == {(torch.float32, False)}


def test_angles_and_flow_times_reach_their_functions_in_float32(runs):
    """Under every layout and precision, evaluation and resume included, the rotary angles and the flow times reach
    their functions in float32: FSDP2 casting its inputs to bfloat16 would round the times (sampling's are float32)
    and hand CUDA's complex multiply a type it rejects."""
    for p, f, d, ac in MATRIX:
        for rank in (0, 1):
            seen = json.load(open(runs / f"{p}-{f}-{d}-{ac}" / f"probes.{rank}.json"))
            assert {k: seen[k] for k in ("apply_rope", "timestep_embedding")} == \
                {"apply_rope": ["float32"], "timestep_embedding": ["float32"]}, (p, f, d, ac, seen)


def test_hsdp_on_four_processes_matches_one_and_its_checkpoints_move_between_layouts(tmp_path):
    """HSDP on 4 processes, 2 copies x 2 shards: the run logs what one process logs through evaluation, checkpoint
    and resume; its step-2 checkpoint resumes on 4 FSDP processes (one group of 4) and that one on one process,
    each going on as the one-process run does."""
    hsdp = ["--parallel=hsdp", "--shard_processes=2", "--gradient_accumulation_steps=4"]
    run, other = tmp_path / "hsdp", tmp_path / "fsdp4"
    torchrun([args(run, "modality", "float32", 2, *hsdp)], procs=4)
    shutil.copytree(run, other)
    torchrun([args(run, "modality", "float32", 4, *hsdp, "--resume"),
              args(other, "modality", "float32", 4, "--parallel=fsdp", "--gradient_accumulation_steps=4", "--resume")],
             procs=4)
    train.main(args(other, "modality", "float32", 6, "--gradient_accumulation_steps=4", "--resume"))
    one = tmp_path / "one"
    train.main(args(one, "modality", "float32", 6, "--gradient_accumulation_steps=4"))
    assert_same_run(run, one, 1e-5, last=4)
    assert_same_run(other, one, 1e-5)
    ckpt = load_checkpoint(str(run / "ckpt.pt"))
    assert ckpt["step"] == 4 and len(os.listdir(run / ckpt["shards"])) == 4 + 1   # every process's part, and the index
    for folder, mesh in ((run, ["2x2"]), (other, ["2x2", "4"])):   # the meshes the weights lived on (its copy: both)
        assert all(json.load(open(folder / f"probes.{r}.json"))["mesh"] == mesh for r in range(4))


def test_expert_parallel_checkpoints_reshard_between_sizes_and_layouts(tmp_path):
    """A run with its 4 routed experts split 2 + 2 over 2 processes, checkpointed at step 2, goes on on 4 processes
    with one expert each (expert_parallel=4) and, from a copy, under HSDP 2 x 2 with two copies of the 2 + 2 split
    (whose expert gradients are summed across the copies); the first then goes on on one process. And experts that
    do not split evenly: 5 routed over 4 processes hold 2, 2, 1 and none, as a DTensor splits them. All log what one
    process logs."""
    moe = lambda run, steps, *flags: args(run, "moe", "float32", steps, "--gradient_accumulation_steps=4", *flags)
    run, other, uneven = tmp_path / "ep", tmp_path / "hsdp-ep", tmp_path / "uneven"
    torchrun([moe(run, 2, "--parallel=fsdp", "--expert_parallel=2")])
    shutil.copytree(run, other)
    torchrun([moe(run, 4, "--parallel=fsdp", "--expert_parallel=4", "--resume"),
              moe(other, 4, "--parallel=hsdp", "--shard_processes=2", "--expert_parallel=2", "--resume"),
              moe(uneven, 2, "--parallel=fsdp", "--expert_parallel=4", "--moe_experts=7")], procs=4)
    train.main(moe(run, 6, "--resume"))
    train.main(moe(tmp_path / "one", 6))
    train.main(moe(tmp_path / "one-uneven", 2, "--moe_experts=7"))
    assert_same_run(run, tmp_path / "one", 1e-5)
    assert_same_run(other, tmp_path / "one", 1e-5, last=4)
    assert_same_run(uneven, tmp_path / "one-uneven", 1e-5)
    assert [json.load(open(uneven / f"probes.{r}.json"))["experts"] for r in range(4)] == \
        [[f"{n} of 5 routed experts per layer, outside FSDP2"] for n in (2, 2, 1, 0)]
    assert json.load(open(run / "probes.1.json"))["experts"] == ["1 of 4 routed experts per layer, outside FSDP2",
                                                                 "2 of 4 routed experts per layer, outside FSDP2"]


def test_expert_parallel_is_refused_where_it_cannot_split(tmp_path):
    """One line each: a dense FFN, no torchrun or DDP, a size that does not divide the processes, more processes
    than routed experts."""
    from types import SimpleNamespace
    from plumbing import experts, parallel
    c = lambda **k: SimpleNamespace(**{"expert_parallel": 2, "ffn": "moe", **k})
    run = lambda **k: SimpleNamespace(**{"fsdp": True, "world": 4, "device_type": "cpu", **k})
    for config, process, message in ((c(ffn="modality"), run(), "needs ffn='moe' under torchrun with --parallel"),
                                     (c(), run(fsdp=False), "needs ffn='moe' under torchrun with --parallel"),
                                     (c(expert_parallel=3), run(), "expert_parallel=3 must divide the 4 processes")):
        with pytest.raises(SystemExit, match=message):
            parallel.experts_mesh(config, process)
    from model import ModelConfig, UnifiedTransformer
    with torch.device("meta"):   # 5 experts, 2 of them shared: 3 routed, over 4 processes
        model = UnifiedTransformer(ModelConfig(d_model=32, n_layer=1, ffn="moe", moe_experts=5, moe_granularity=2))
    groups = {"experts": SimpleNamespace(size=lambda: 4)}
    with pytest.raises(SystemExit, match=r"expert_parallel=4: more processes than the 3 routed experts \(moe_experts "
                                         r"minus the shared ones\); use at most 3"):
        experts.split_experts(model, groups)
    assert experts.shares(254, 8) == [32] * 7 + [30] and experts.shares(5, 4) == [2, 2, 1, 0]


def test_shard_processes_must_divide_the_processes(tmp_path):
    done = torchrun([args(tmp_path / "bad", "modality", "float32", 1, "--parallel=hsdp", "--shard_processes=3")],
                    BLM_EXPECT_FAILURE="1")
    assert done.returncode != 0 and "shard_processes=3: the 2 processes must split into equal groups" in done.stderr


def test_a_run_stopped_by_sigterm_goes_on_exactly_when_the_same_command_line_runs_again(tmp_path):
    """--resume=auto: the first launch starts the run; a scheduler's SIGTERM to torchrun mid-run (here at step 4's
    log line, the last checkpoint step 2's) stops every process; the same command line then resumes it, and the run
    logs what one unbroken process logs, each step once."""
    run = args(tmp_path / "run", "modality", "float32", 6, "--parallel=fsdp", "--resume=auto")
    assert torchrun([run], BLM_CRASH_AT="log:5:parent").returncode != 0
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")][-1] == 4
    assert torchrun([run]).returncode == 0
    train.main(args(tmp_path / "one", "modality", "float32", 6))
    assert_same_run(tmp_path / "run", tmp_path / "one", 1e-5)
    steps = [r["step"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "val_text_loss" not in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_the_sbatch_script_starts_one_torchrun_per_node_that_resumes_itself(tmp_path):
    """configs/slurm.sbatch under stand-ins for scontrol, srun and torchrun that print what they were given: one
    torchrun per node at a rendezvous on the first node, the config, HSDP, the shared out_dir and --resume=auto."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    stand_ins = (("scontrol", 'printf "node-a\\nnode-b\\n"'), ("srun", '"$@"'), ("torchrun", 'echo torchrun "$@"'))
    for name, body in stand_ins:
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "7", "OUT": "/shared/run"}
    done = subprocess.run(["bash", "configs/slurm.sbatch", "--max_iters=10"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torchrun", "--nnodes=2", "--nproc_per_node=8", "--max_restarts=3",
                                   "--rdzv_backend=c10d", "--rdzv_endpoint=node-a:29500", "--rdzv_id=7", "train.py",
                                   "configs/paper_moe.py", "--parallel=hsdp", "--out_dir=/shared/run", "--resume=auto",
                                   "--max_iters=10"]
    unset = subprocess.run(["bash", "configs/slurm.sbatch"], cwd=ROOT, env={**env, "OUT": ""}, capture_output=True,
                           text=True)
    assert unset.returncode != 0 and "set OUT to a folder on a filesystem every node sees" in unset.stderr


def test_resume_must_be_a_known_word(tmp_path):
    with pytest.raises(SystemExit, match=r"resume='yes': use --resume \(continue the run in out_dir\), --resume=auto"):
        train.main([*TINY, f"--out_dir={tmp_path}", "--resume=yes", "--max_iters=1"])


def test_float16_is_refused_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match="dtype='float16': use 'bfloat16' or 'float32'.*gradient scaler"):
        train.main([*TINY, f"--out_dir={tmp_path}", "--dtype=float16", "--max_iters=1"])


def spy(seen):
    """Record the dtype of what reaches the rotary embedding (its angles) and the time embedding (the flow times),
    and the shape of the device mesh a sharded model's weights live on."""
    import model
    from plumbing import parallel
    for name, position in (("apply_rope", 1), ("timestep_embedding", 0)):
        def spied(*a, fn=getattr(model, name), name=name, position=position, **k):
            seen.setdefault(name, set()).add(str(a[position].dtype).removeprefix("torch."))
            return fn(*a, **k)
        setattr(model, name, spied)

    def shard(m, dtype, mesh=None, experts=None, fn=parallel.shard):
        state = [b.checkpointing and b._compiled_call_impl is not None for b in m.blocks]
        seen.setdefault("when sharded", set()).add("blocks checkpointed and compiled" if all(state) else
                                                   "some blocks not" if any(state) else "neither")
        split = fn(m, dtype, mesh, experts)
        seen.setdefault("mesh", set()).add("x".join(map(str, next(m.parameters()).device_mesh.shape)))
        if split:   # FSDP2 would have put the experts it took on its own mesh
            ffn = m.blocks[0].ffn
            outside = all(p.device_mesh.mesh_dim_names == ("experts",) for p in (ffn.w_gate_up, ffn.w_down))
            seen.setdefault("experts", set()).add(f"{ffn.w_gate_up.to_local().shape[0]} of {ffn.n_routed} routed "
                                                  f"experts per layer, {'outside' if outside else 'inside'} FSDP2")
        return split
    parallel.shard = shard


if __name__ == "__main__":   # the driver torchrun launches: train.main for each run in turn, in one process group
    torch.distributed.init_process_group("gloo")   # made once: a group made again reuses the first one's store keys
    seen = {}
    spy(seen)
    for run_args in json.loads(sys.argv[1]):
        out = next(a.split("=", 1)[1] for a in run_args if a.startswith("--out_dir="))
        record = os.path.join(out, f"probes.{torch.distributed.get_rank()}.json")
        seen.clear()
        seen.update({k: set(v) for k, v in json.load(open(record)).items()} if os.path.exists(record) else {})
        train.main(run_args)   # a resumed run adds to what the run before it saw
        with open(record, "w") as f:
            json.dump({k: sorted(v) for k, v in seen.items()}, f)
    torch.distributed.destroy_process_group()
