"""plumbing/logs.py: the progress line's MFU and tokens/s per device; the live mirrors, a toy run mirrored to
TensorBoard and to wandb (offline), killed after a checkpoint and resumed into the same run, each read back from the
files the packages wrote."""
import glob
import json
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import pytest

import train
from helpers import ROOT, TINY
from plumbing import build, logs
from plumbing.checkpoints import load_checkpoint



def test_mfu_is_per_device():
    """A step's FLOPs are the global batch's: on 4 devices, each of peak P, F FLOPs in t seconds is F / t / (4 P)."""
    assert logs.utilization(8e12, 2.0, 1e12, 4) == 1.0
    assert logs.utilization(8e12, 2.0, 1e12, 1) == 4.0


def test_the_progress_line_logs_mfu_and_tokens_per_device(monkeypatch):
    records, now = [], iter([10.0, 10.0])
    monkeypatch.setattr(logs.time, "time", lambda: next(now))
    run = SimpleNamespace(t0=8.0, step=10, seen=4096, seen_at_log=0, waited=0.0, world=2, peak=1e12,
                          flops_per_step=1e11, device_type="cpu", tracker=SimpleNamespace(log=records.append))
    c = SimpleNamespace(log_interval=10, batch_size=8, seq_len=64, gradient_accumulation_steps=8, lambda_lm=1.0,
                        lambda_flow=3.0, ffn="modality")
    s = dict(text_loss=1.0, flow_loss=0.5, lr=1e-3, grad_norm=1.0)
    logs.log_progress(run, c, s, SimpleNamespace(wait=0.0), None, SimpleNamespace(set_postfix_str=lambda text: None))
    (r,) = records
    assert r["tokens_per_s"] == 2048 and r["tokens_per_s_per_device"] == 1024
    assert r["mfu"] == 10 * 1e11 / 2.0 / (1e12 * 2)   # 10 steps of 1e11 FLOPs in 2 s on two devices of 1e12


def wandb_history(path):
    """The history rows ({key: value}) of a .wandb file: a 7-byte header, then a LevelDB-style log of protobuf
    records in 32 KiB blocks, each chunk behind a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
    4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, pos, parts, rows = open(path, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:    # no room for a chunk header: the block's tail is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def tensorboard_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_a_run_mirrored_to_tensorboard_and_wandb_offline_resumes_into_the_same_run(tmp_path):
    pytest.importorskip("wandb")          # both are in requirements.txt: CI runs this test
    pytest.importorskip("tensorboard")
    d, args = tmp_path / "run", [*TINY, "--max_iters=8", "--eval_interval=4", "--tensorboard_log", "--wandb_log",
                                 "--wandb_mode=offline"]
    # killed after the 7th line of metrics.jsonl (steps 1-4, step 4's evaluation, 5, 6): the checkpoint is step 4's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLM_CRASH_AT": "log:7"}
    killed = subprocess.run([sys.executable, "train.py", *args, f"--out_dir={d}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = load_checkpoint(str(d / "ckpt.pt"))["tracking_id"]
    assert run_id
    train.main([*args, f"--out_dir={d}", "--resume"])
    log = [json.loads(line) for line in open(d / "metrics.jsonl")]
    steps = {r["step"]: r for r in log if "val_text_loss" not in r}
    evals = {r["step"]: r for r in log if "val_text_loss" in r}
    assert list(steps) == [1, 2, 3, 4, 5, 6, 7, 8] and list(evals) == [4, 8]
    assert load_checkpoint(str(d / "ckpt.pt"))["tracking_id"] == run_id

    # TensorBoard: each step once (the killed process's steps 5 and 6 hidden), the losses of metrics.jsonl
    events = tensorboard_events(d / "tensorboard")
    grad = events.Scalars("grad_norm")
    assert [e.step for e in grad] == list(steps)
    assert [e.value for e in grad] == pytest.approx([r["grad_norm"] for r in steps.values()], rel=1e-6)
    assert [e.step for e in events.Scalars("val_text_loss")] == [4, 8]
    assert [e.value for e in events.Scalars("val_text_loss")] == pytest.approx([r["val_text_loss"]
                                                                                for r in evals.values()])
    assert [e.step for e in events.Images("samples")] == [4, 8]

    # wandb: one offline run directory per process, both the checkpoint's run. The killed process's lost what wandb
    # had not written yet (it writes 32 KiB blocks); the resumed one sent metrics.jsonl up to the checkpoint again,
    # so its directory holds every step once
    runs = sorted(glob.glob(str(d / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)
    rows = wandb_history(os.path.join(runs[-1], f"run-{run_id}.wandb"))
    assert [row["step"] for row in rows if "val_text_loss" not in row] == list(steps)
    assert [row["text_loss"] for row in rows if "val_text_loss" not in row] == \
        pytest.approx([r["text_loss"] for r in steps.values()], rel=1e-6)
    assert [row["step"] for row in rows if "val_text_loss" in row] == [4, 8]
    assert [row["step"] for row in rows if "samples/path" in row] == [8]

    # a later command's pictures (plan.py's rollouts) join the same run at the checkpoint's step
    cfg = build.load_for_inference(str(d), "cpu")[3]
    logs.report_to_run(cfg, str(d), {"probe": 1.5}, {"rollout": str(d / "samples.png")})
    assert [e.step for e in tensorboard_events(d / "tensorboard").Images("rollout")] == [8]
    assert [e.step for e in tensorboard_events(d / "tensorboard").Scalars("grad_norm")] == list(steps)
    latest = sorted(glob.glob(str(d / "wandb" / "offline-run-*")))
    assert len(latest) == 3 and latest[-1].endswith(f"-{run_id}")
    assert [(r["step"], r["probe"]) for r in wandb_history(glob.glob(os.path.join(latest[-1], "*.wandb"))[0])
            if "rollout/path" in r] == [(8, 1.5)]


@pytest.mark.parametrize("setting, package", [("wandb_log", "wandb"), ("tensorboard_log", "tensorboard")])
def test_a_missing_package_stops_with_one_line(tmp_path, monkeypatch, setting, package):
    monkeypatch.setitem(sys.modules, package, None)   # import fails as if not installed
    c = train.configure(train.DEFAULTS, [f"--{setting}", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit, match=f"^{package} is not installed .*: pip install {package}, or turn its "
                                         f"setting off$"):
        logs.Tracker(c, str(tmp_path / "metrics.jsonl"))


def test_off_by_default_and_a_bad_mode_names_the_choices(tmp_path):
    c = train.configure(train.DEFAULTS, [f"--out_dir={tmp_path}"])
    assert logs.Tracker(c, str(tmp_path / "m.jsonl")).sinks == [] and "wandb" not in os.listdir(tmp_path)
    c = SimpleNamespace(**{**vars(c), "wandb_log": True, "wandb_mode": "offlne"})
    with pytest.raises(SystemExit, match="wandb_mode='offlne': use '' .*online, offline or disabled"):
        logs.Tracker(c, str(tmp_path / "m.jsonl"))
