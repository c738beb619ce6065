"""Bad input, as a careless user gives it: each case of the matrix stops with an exit code and one line that says
what is wrong, and leaves every file byte for byte as it was. Then a run killed before its first checkpoint and
again during a checkpoint write, resumed: each step is logged exactly once, and the losses are an unbroken run's."""
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import data
import train
from helpers import ROOT
from plumbing import realdata
from plumbing.checkpoints import load_checkpoint

TINY = ["--n_layer=2", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=128", "--batch_size=4",
        "--image_size=16", "--patch_size=4", "--max_shapes=1", "--video_frames=2", "--eval_samples=2",
        "--eval_iters=1", "--sample_steps=2", "--log_interval=1", "--warmup_iters=2", "--device=cpu"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a trained tiny run, damaged checkpoints, text inputs good and bad, outputs already written."""
    w = tmp_path_factory.mktemp("ws")
    train.main([*TINY, f"--out_dir={w / 'run'}", "--max_iters=2", "--eval_interval=2"])
    good = (w / "run" / "ckpt.pt").read_bytes()
    files = {"cut/ckpt.pt": good[:len(good) // 2], "random/ckpt.pt": os.urandom(4096), "empty/ckpt.pt": b"",
             "withprev/ckpt.pt": good[:100], "withprev/ckpt.prev.pt": good, "onlyprev/ckpt.prev.pt": good,
             "badlog/ckpt.pt": good, "badlog/metrics.jsonl": b'{"step": 1}\n{"step": 2\n{"step": 2}\n',
             "run/samples/images.png": b"an earlier picture", "run/plan/plan.md": b"an earlier table",
             "sweep/plan.jsonl": b"{}\n", "sweep/sweep.sh": b"echo earlier\n",
             "good.txt": b"a red circle at the top\n", "empty.txt": b"", "blank.txt": b"  \n\n\t\n",
             "binary.txt": bytes(range(256)) * 8, "nul.txt": b"abc\0def", "latin1.txt": "caf\xe9".encode("latin-1"),
             "notext.jsonl": b'{"txt": "x"}\n', "picture.png": b"\x89PNG not really",
             "syntax.py": b"max_iters = 10\nn_layer = (\n", "name.py": b"max_iters = 10\nlearning_rate = lr * 2\n",
             "zero.py": b"x = 1 / 0\n"}
    for name, content in files.items():
        os.makedirs(os.path.dirname(w / name), exist_ok=True)
        (w / name).write_bytes(content)
    old = {k: v for k, v in torch.load(w / "run" / "ckpt.pt", weights_only=False).items() if k != "format"}
    os.makedirs(w / "old")
    torch.save(old, w / "old" / "ckpt.pt")                        # written before checkpoints carried a format
    realdata.prepare_text(str(w / "good.txt"), str(w / "shards"), "bytes")
    return w


def snapshot(root):
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, fs in os.walk(root) for f in fs}


T = " ".join(TINY)
NOT_CKPT = r"{w}/{d}/ckpt.pt is not a readable checkpoint \(\w+\): start a fresh run with another --out_dir"
# (command, arguments ({w}: the workspace), exit code, the last line printed (a regex), run as a subprocess)
RD, IM = "plumbing.realdata", "plumbing.image_metrics"   # the support commands, run as python -m
CASES = [
    # train.py: config files that fail to run, damaged checkpoints, a run's files
    ("train", "{w}/syntax.py", 1, r"config file {w}/syntax.py, line 2: SyntaxError: '\(' was never closed", True),
    ("train", "{w}/name.py", 1, r"config file {w}/name.py, line 2: NameError: name 'lr' is not defined", False),
    ("train", "{w}/zero.py", 1, r"config file {w}/zero.py, line 1: ZeroDivisionError: division by zero", False),
    ("train", "{w}/nope.py", 1, r"config file '{w}/nope.py' not found", False),
    ("train", "--max_iters=many", 1, r"config key 'max_iters' \(from --max_iters=many\) must be int", False),
    ("train", "--learning_rat=1", 1, r"unknown config key 'learning_rat' .*valid keys: ", False),
    ("train", T + " --out_dir={w}/cut --resume", 1, NOT_CKPT.replace("{d}", "cut"), False),
    ("train", T + " --out_dir={w}/random --resume", 1, NOT_CKPT.replace("{d}", "random"), False),
    ("train", T + " --out_dir={w}/empty --resume", 1, NOT_CKPT.replace("{d}", "empty"), False),
    ("train", T + " --out_dir={w}/withprev --resume", 1, r"{w}/withprev/ckpt.pt is not a readable checkpoint "
     r"\(\w+\): the one before is {w}/withprev/ckpt.prev.pt: copy it to {w}/withprev/ckpt.pt", False),
    ("train", T + " --out_dir={w}/old --resume", 1, r"{w}/old/ckpt.pt is a format 1 checkpoint and this code reads "
     r"format 2 \(plumbing/checkpoints.py's CHECKPOINT_FORMAT says what changed\): train it again", False),
    ("train", T + " --out_dir={w}/onlyprev --resume", 1, r"no checkpoint at {w}/onlyprev/ckpt.pt: the one before "
     r"is {w}/onlyprev/ckpt.prev.pt", False),
    ("train", T + " --out_dir={w}/onlyprev", 1, r"{w}/onlyprev/ckpt.prev.pt exists: pass --resume", False),
    ("train", T + " --out_dir={w}/run", 1, r"{w}/run/ckpt.pt exists: pass --resume", False),
    ("train", T + " --out_dir={w}/../nan --learning_rate=1e30", 1, r"^step \d+: non-finite loss", True),   # bar open
    ("train", T + " --out_dir={w}/badlog --resume", 1, r"{w}/badlog/metrics.jsonl, line 2: not a JSON record",
     False),
    # sample.py: argument values, prompts beyond the trained length, outputs already there, damaged checkpoints
    ("sample", "--out_dir={w}/run --num_samples=0", 1, r"num_samples, steps, .* must be >= 1", True),
    ("sample", "--out_dir={w}/run --steps=-1 --mode=video", 1, r"num_samples, steps, .* must be >= 1", False),
    ("sample", "--out_dir={w}/run --temperature=-1", 1, r"temperature and top_k >= 0", False),
    ("sample", "--out_dir={w}/run --mode=pictures", 1, r"unknown mode 'pictures'", False),
    ("sample", "--out_dir={w}/run --mode=text --prompt=" + "x" * 300, 1,
     r"text mode needs 397 positions here \(prompt 300 tokens.* trained on 128: shorten --prompt", False),
    ("sample", "--out_dir={w}/run --out={w}/new --prompt=" + "x" * 120, 1, r"image mode needs 139 positions", False),
    ("sample", "--out_dir={w}/run", 1, r"{w}/run/samples/images.png exists: pass --overwrite", False),
    ("sample", "--out_dir={w}/run --mode=caption --image={w}/picture.png", 1, r"cannot read image .*picture.png",
     False),
    ("sample", "--out_dir={w}/empty", 1, NOT_CKPT.replace("{d}", "empty"), False),
    ("sample", "--out_dir={w}/old", 1, r"{w}/old/ckpt.pt is a format 1 checkpoint", False),
    ("sample", "--out_dir={w}/nothing", 1, r"no checkpoint at {w}/nothing/ckpt.pt: train one first", False),
    ("sample", "{w}/name.py", 1, r"config file {w}/name.py, line 2: NameError", False),
    # plan.py
    ("plan", "--out_dir={w}/random", 1, NOT_CKPT.replace("{d}", "random"), False),
    ("plan", "--out_dir={w}/run", 1, r"{w}/run/plan/plan.md exists: pass --overwrite", False),
    ("plan", "--out_dir={w}/run --mode=rollout --actions=w_x", 1, r"--actions: ", False),
    ("plan", "--out_dir={w}/run --episodes=0", 1, r"episodes, horizon, .* must be >= 1", False),
    ("plan", "{w}/syntax.py", 1, r"config file {w}/syntax.py, line 2: SyntaxError", False),
    # data.py: inputs that hold no text, outputs already there, all or nothing
    (RD, "prepare-text --inputs={w}/good.txt --out_dir={w}/shards --tokenizer=bytes", 1,
     r"{w}/shards/text_000000.bin exists: pass --overwrite", False),
    (RD, "prepare-text --inputs={w}/empty.txt --out_dir={w}/shards --tokenizer=bytes --overwrite", 1,
     r"python -m plumbing.realdata prepare-text: {w}/empty.txt holds no text", False),
    (RD, "prepare-text --inputs={w}/blank.txt --out_dir={w}/shards --tokenizer=bytes --overwrite", 1,
     r"{w}/blank.txt holds no text", False),
    ("data", "prepare-text --inputs={w}/binary.txt --out_dir={w}/shards --tokenizer=bytes --overwrite", 1,
     r"python -m plumbing.realdata prepare-text: {w}/binary.txt is not UTF-8 text \(invalid start byte\)", True),
    (RD, "prepare-text --inputs={w}/nul.txt --out_dir={w}/new --tokenizer=bytes", 1,
     r"{w}/nul.txt is not UTF-8 text \(a NUL byte\)", False),
    (RD, "prepare-text --inputs={w}/latin1.txt --out_dir={w}/new --tokenizer=bytes", 1,
     r"{w}/latin1.txt is not UTF-8 text", False),
    (RD, "prepare-text --inputs={w}/notext.jsonl --out_dir={w}/new --tokenizer=bytes", 1,
     r"{w}/notext.jsonl holds no text", False),
    (RD, "prepare-text --inputs={w}/good.txt,{w}/empty.txt --out_dir={w}/new --tokenizer=bytes", 1,
     r"{w}/empty.txt holds no text", False),
    (RD, "prepare-text --inputs={w}/nope/*.txt --out_dir={w}/new", 1, r"no file matches '{w}/nope/\*.txt'",
     False),
    (RD, "prepare-text --inputs={w}/good.txt --out_dir={w}/new --shards=3", 1,
     r"unexpected keyword argument 'shards'", False),
    (RD, "prepare-txt", 1, r"usage: python -m plumbing.realdata prepare-text \| download-fineweb", False),
    # plumbing/realdata.py preencode
    (RD, "preencode --shards={w}/binary.txt --out={w}/latents --encoder=pixels --image_size=16", 1,
     r"python -m plumbing.realdata preencode: cannot open shard {w}/binary.txt", True),
    (RD, "preencode --shards={w}/nope.tar --out={w}/latents", 1, r"no file matches '{w}/nope.tar'", False),
    (RD, "preencode --shards={w}/good.txt --out={w}/latents --encoder=clip", 1, r"unknown encoder 'clip'",
     False),
    (RD, "preencode --shards={w}/good.txt", 1, r"missing 1 required positional argument: 'out'", False),
    # scaling.py and routing.py
    ("scaling", "plan configs/toy.py --sweep_dir={w}/sweep", 1, r"{w}/sweep/plan.jsonl exists: pass --overwrite",
     False),
    ("scaling", "fit --sweep_dir={w}/nosweep", 1, r"no plan.jsonl in {w}/nosweep", False),
    ("scaling", "plan {w}/zero.py", 1, r"config file {w}/zero.py, line 1: ZeroDivisionError", False),
    ("routing", "--out_dir={w}/cut", 1, NOT_CKPT.replace("{d}", "cut"), False),
    # plumbing/image_metrics.py
    (IM, "--out_dir={w}/run --mode=fid", 1, r"unknown mode 'fid': use score or geneval", False),
    (IM, "--out_dir={w}/run --pool=max", 1, r"pool='max': use mean or flat", False),
    (IM, "--out_dir={w}/run --mode=geneval", 1, r"geneval mode needs --prompts=", False),
    (IM, "--out_dir={w}/run --mode=geneval --prompts={w}/good.txt --out={w}/g", 1,
     r"--prompts='{w}/good.txt': not GenEval's evaluation_metadata.jsonl \(JSONDecodeError", False),
    (IM, "--out_dir={w}/run --images={w}/nope.tar --out={w}/m", 1, r"no file matches '{w}/nope.tar'",
     False),
    (IM, "--out_dir={w}/nothing", 1, r"no checkpoint at {w}/nothing/ckpt.pt", False),
]


def run_command(name, argv, subprocess_=False):
    """(exit code, last line printed): in a subprocess, as the user sees it; or main(argv) in this process."""
    if subprocess_:
        command = ["-m", name] if "." in name else [f"{name}.py"]
        done = subprocess.run([sys.executable, *command, *argv], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        return done.returncode, (done.stdout + done.stderr).strip().splitlines()[-1]
    try:
        importlib.import_module(name).main(argv)
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else 1), str(e.code)
    return 0, ""


@pytest.mark.parametrize("name,args,code,line,sub", [pytest.param(*c, marks=pytest.mark.slow) if c[4] else c
                                                     for c in CASES], ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_stops_with_one_line_and_changes_nothing(ws, monkeypatch, name, args, code, line, sub):
    monkeypatch.chdir(ROOT)
    before = snapshot(ws)
    got_code, got_line = run_command(name, args.replace("{w}", str(ws)).split(), sub)
    assert got_code == code
    assert re.search(line.replace("{w}", re.escape(str(ws))), got_line), got_line
    assert "\n" not in got_line and "Traceback" not in got_line
    assert snapshot(ws) == before


@pytest.mark.parametrize("name,args,expect", [
    ("train", "--help", ["--eval_interval=250", "steps between evaluations"]),
    ("sample", "-h", ["--num_samples=8", "--overwrite=False", "replace the pictures"]),
    ("plan", "--help", ["--horizon=6", "planning steps (NWM: 8)"]),
    ("scaling", "plan --help", ["--depths=2,3,4,6", "--learning_rate=0.0003", "the sweep's compute budgets"]),
    (RD, "prepare-text --help", ["--tokenizer=gpt2", "a tiktoken encoding name", "--overwrite=False"]),
    (RD, "preencode -h", ["--encoder=siglip2", "the frozen encoder"]),
    ("routing", "--help", ["--batches=8"]),
    (IM, "--help", ["--resamples=200", "bootstrap resamples"]),
])
def test_every_command_answers_help(capsys, name, args, expect):
    assert run_command(name, args.split())[0] == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python") and all(e in out for e in expect), out


@pytest.mark.slow
def test_help_in_a_subprocess_exits_0():
    code, last = run_command("train", ["-h"], subprocess_=True)
    assert code == 0 and "--peak_flops=0.0" in last


def test_prepare_text_overwrite_replaces_the_whole_set(tmp_path):
    """--overwrite writes the new shards and removes the old set's extra ones (no stale shard mixed in)."""
    (tmp_path / "a.txt").write_text("one document\n")
    for i in range(3):
        (tmp_path / f"text_00000{i}.bin").write_bytes(b"old")
    paths = realdata.prepare_text(str(tmp_path / "a.txt"), str(tmp_path), "bytes", overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("text_*")) == ["text_000000.bin"] == [os.path.basename(p)
                                                                                       for p in paths]
    assert realdata.read_shard(paths[0]).tolist()[1:] == data.Tokenizer("bytes").encode("one document\n")


def launch(out_dir, *extra, crash=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLM_CRASH_AT": crash}
    return subprocess.run([sys.executable, "train.py", *TINY, f"--out_dir={out_dir}", *extra], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_killed_before_a_checkpoint_and_during_one_resumes_with_each_step_once(tmp_path):
    args = ["--max_iters=6", "--eval_interval=3"]
    d = tmp_path / "run"
    assert launch(d, *args, crash="log:2").returncode == -9            # killed at step 2: no checkpoint yet
    assert not (d / "ckpt.pt").exists()
    again = launch(d, *args, crash="checkpoint:2")                     # started again: killed writing step 6's
    assert again.returncode == -9 and "moved to" in again.stdout
    assert [json.loads(x)["step"] for x in open(d / "metrics.jsonl.1")] == [1, 2]   # the dead run's log, aside
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "text_lo')                               # and a line torn by a crash
    done = launch(d, *args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    log = [json.loads(x) for x in open(d / "metrics.jsonl")]
    steps = [r["step"] for r in log if "val_text_loss" not in r]
    assert steps == [1, 2, 3, 4, 5, 6] and [r["step"] for r in log if "val_text_loss" in r] == [3, 6]
    ckpt, prev = load_checkpoint(str(d / "ckpt.pt")), load_checkpoint(str(d / "ckpt.prev.pt"))
    assert (ckpt["step"], prev["step"]) == (6, 3)
    train.main([*TINY, f"--out_dir={tmp_path / 'whole'}", *args])      # an unbroken run logs the same losses
    whole = [json.loads(x) for x in open(tmp_path / "whole" / "metrics.jsonl")]
    key = lambda rs: [(r["step"], r["text_loss"], r["flow_loss"]) if "val_text_loss" not in r else r for r in rs]
    assert key(log) == key(whole)
