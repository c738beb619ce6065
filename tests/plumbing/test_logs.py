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
import torch
import torch.nn.functional as F

import train
from helpers import ROOT, TINY, tiny
from plumbing import build, fastpaths, logs
from plumbing.checkpoints import load_checkpoint

# every source of data.SOURCES in the mixture, so that each has its losses
EVERY_SOURCE = ("--mixture={'text': 0.2, 'caption_to_image': 0.2, 'image_to_caption': 0.2, 'video': 0.1, "
                "'navigation': 0.1, 'vqa': 0.2}")



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


def test_the_text_loss_split_by_position_is_cross_entropys_sum_bit_for_bit(monkeypatch):
    """The head's loss, written out as log_softmax then nll_loss to read each position's term, sums to exactly what
    F.cross_entropy gave (the training's numbers do not move), with the same gradient, whole and in chunks; the
    terms are the positions' cross-entropies (0 where there is no target)."""
    g = torch.Generator().manual_seed(0)
    h, weight = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(-1, 50, (300,), generator=g)

    def old(h, weight):   # the computation before the split, chunk by chunk when MAX_LOGITS asks for chunks
        size = max(1, fastpaths.MAX_LOGITS // weight.shape[0])
        return sum(F.cross_entropy(F.linear(h[i:i + size], weight).float(), targets[i:i + size], ignore_index=-1,
                                   reduction="sum") for i in range(0, len(h), size))

    def loss_and_grads(f):
        a, b = h.clone().requires_grad_(), weight.clone().requires_grad_()
        total = f(a, b)
        total.backward()
        return total, a.grad, b.grad
    per_position = F.cross_entropy(F.linear(h, weight), targets, ignore_index=-1, reduction="none")
    for chunk in (None, 64):   # whole, and in chunks of 64 positions
        if chunk:
            monkeypatch.setattr(fastpaths, "MAX_LOGITS", chunk * 50)
        new = loss_and_grads(lambda a, b: fastpaths.summed_cross_entropy(a, b, targets)[0])
        assert all(torch.equal(x, y) for x, y in zip(new, loss_and_grads(old)))
        each = fastpaths.summed_cross_entropy(h, weight, targets)[1]
        assert torch.allclose(each, per_position, rtol=1e-6) and (each[targets < 0] == 0).all()


def test_losses_per_source_are_those_of_each_sources_positions_and_frames():
    """A batch with a document of every source: each source's text loss is the mean cross-entropy of its own target
    positions, read off the model's logits, its flow loss the mean error of its own generated frames; weighted by
    their counts they make the overall losses."""
    from data import (SOURCES, Tokenizer, caption_to_image, collate, image_to_caption, navigation_example,
                      text_example, to_device, video_example, vqa_example)
    from model import add_noise, training_losses, velocity
    tok, model = Tokenizer(), tiny()
    examples = [text_example(tok, "abc de"), caption_to_image(tok, "a cap", None), vqa_example(tok, None, [("q", "y")]),
                image_to_caption(tok, None, "xy", clean=False), video_example(tok, [None, None]),
                navigation_example(tok, [None] * 4, "w", None)]
    n, c = model.cfg.tokens_per_frame, model.cfg.latent_dim
    batch = to_device(collate([[ex] for ex in examples], 40, n, tok.pad), "cpu")
    g = torch.Generator().manual_seed(0)
    frames = len(batch["cond"])
    z0, times = torch.randn(frames, n, c, generator=g), torch.rand(frames, generator=g)
    batch["latents"] = z0
    text, flow, each = training_losses(model, batch, torch.Generator().manual_seed(1), times, each=True)
    sums = logs.source_sums(batch, *each, len(SOURCES))
    got = logs.source_losses(sums.flatten().tolist(), SOURCES)

    cond = batch["cond"]   # the reference: the model's logits and predictions at the same noise
    t = torch.where(cond, 1.0, times)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    zt = add_noise(z0, eps, t)
    with torch.no_grad():
        logits, pred = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
    ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-1, reduction="none")
    error = (velocity(pred, zt, t, model.cfg.prediction) - (z0 - eps)).pow(2).mean((1, 2))
    frame_source = [ex.source for ex in examples for _ in ex.frames]
    want = {}
    for row, ex in enumerate(examples):
        learned = batch["targets"][row] >= 0
        want[f"{ex.source}_text_loss"] = float(ce.view(len(examples), -1)[row][learned].mean())
        generated = [error[i] for i, s in enumerate(frame_source) if s == ex.source and not cond[i]]
        want.update({f"{ex.source}_flow_loss": float(torch.stack(generated).mean())} if generated else {})
    assert set(want) == {f"{s}_text_loss" for s in SOURCES} | {f"{s}_flow_loss" for s in SOURCES
                                                                  if s not in ("text", "vqa")}   # vqa's image: clean
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-5) for k in want)
    assert float(sums[0].sum() / sums[1].sum()) == pytest.approx(text.item(), rel=1e-6)
    assert float(sums[2].sum() / sums[3].sum()) == pytest.approx(flow.item(), rel=1e-6)


def records(out_dir):
    """(training records, evaluation records) of a run's metrics.jsonl."""
    log = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return [r for r in log if "val_text_loss" not in r], [r for r in log if "val_text_loss" in r]


def test_a_run_logs_losses_per_source_and_charts_them_in_groups(tmp_path):
    """Each record holds what it measured: a training record the step's losses overall and per source, an
    evaluation record the held-out ones (no training loss again). TensorBoard groups the charts by train/, val/,
    perf/, one point per chart and step. settings.json holds the settings, a resumed run's own."""
    pytest.importorskip("tensorboard")
    d, args = tmp_path / "run", [*TINY, "--max_iters=2", "--eval_interval=2", "--tensorboard_log", EVERY_SOURCE]
    train.main([*args, f"--out_dir={d}"])
    steps, (evaluation,) = records(d)
    assert "text_loss" not in evaluation and "flow_loss" not in evaluation
    assert evaluation["tokens"] == steps[-1]["tokens"]   # for the readers of evaluation records (scaling.py)
    assert {"val_text_text_loss", "val_caption_to_image_flow_loss", "val_video_flow_loss",
            "val_vqa_text_loss"} <= set(evaluation) and "val_vqa_flow_loss" not in evaluation
    assert {"text_text_loss", "caption_to_image_text_loss", "caption_to_image_flow_loss", "vqa_text_loss",
            "image_to_caption_flow_loss"} <= set(steps[0])
    events = tensorboard_events(d / "tensorboard")
    tags = sorted(events.Tags()["scalars"])
    print("TensorBoard's charts:", tags)
    assert {"train/text_loss", "train/flow_loss", "train/text_text_loss", "train/caption_to_image_flow_loss",
            "train/lr", "train/grad_norm", "val/text_loss", "val/ppl", "val/caption_to_image_flow_loss",
            "val/gen_unseen_scenes", "val/gen_unseen_scenes_ci_lo", "perf/tokens_per_s", "perf/tokens"} <= set(tags)
    assert all(t.split("/")[0] in ("train", "val", "perf", "data") for t in tags)
    assert [e.step for e in events.Scalars("perf/tokens")] == [1, 2]   # the evaluation's tokens: no second point
    assert [e.step for e in events.Scalars("train/text_loss")] == [1, 2]
    assert [e.value for e in events.Scalars("val/caption_to_image_flow_loss")] == \
        pytest.approx([evaluation["val_caption_to_image_flow_loss"]])
    settings = json.load(open(d / "settings.json"))
    assert settings == json.loads(json.dumps(vars(train.configure(train.DEFAULTS, [*args, f"--out_dir={d}"]))))
    train.main([*args, f"--out_dir={d}", "--max_iters=3", "--resume"])
    assert json.load(open(d / "settings.json"))["max_iters"] == 3 and not os.path.exists(d / "settings.json.tmp")


def test_without_validation_data_an_evaluation_logs_and_prints_nothing(tmp_path, capsys):
    """Token shards and no val_data: nothing held out to score, so no evaluation record and no blank 'step N:'."""
    from data import Tokenizer
    from plumbing.realdata import write_shard
    tok = Tokenizer("bytes")
    write_shard(str(tmp_path / "text.bin"), [t for i in range(200) for t in [tok.eot, *tok.encode(f"doc {i}")]],
                tok.vocab_size)
    train.main([*TINY, "--dataset=shards", "--tokenizer=bytes", "--mixture={'text': 1.0}", "--max_iters=2",
                "--eval_interval=1", f"--text_data={tmp_path / 'text.bin'}", f"--out_dir={tmp_path / 'run'}"])
    steps, evaluations = records(tmp_path / "run")
    assert [r["step"] for r in steps] == [1, 2] and evaluations == []
    assert len(steps) == len(open(tmp_path / "run" / "metrics.jsonl").readlines())
    assert "step 1:" not in capsys.readouterr().out


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
    grad = events.Scalars("train/grad_norm")
    assert [e.step for e in grad] == list(steps)
    assert [e.value for e in grad] == pytest.approx([r["grad_norm"] for r in steps.values()], rel=1e-6)
    assert [e.step for e in events.Scalars("val/text_loss")] == [4, 8]
    assert [e.value for e in events.Scalars("val/text_loss")] == pytest.approx([r["val_text_loss"]
                                                                                for r in evals.values()])
    assert [e.step for e in events.Images("samples")] == [4, 8]

    # wandb: one offline folder (a part) per process, both the checkpoint's run. The killed process's part kept
    # what wandb had written before the kill (it writes 32 KiB blocks); the resumed one sent from metrics.jsonl what
    # that part lacks, and then its own steps: every chart's point at every step is in exactly one part, so that
    # `wandb sync out_dir/wandb` uploads each once
    parts = sorted(glob.glob(str(d / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")))
    assert len(parts) == 2
    held = [logs.wandb_points(p) for p in parts]
    expected = {(r["step"], k) for r in log for k in logs.scalars(r)}
    assert not held[0] & held[1] and (held[0] | held[1]) - {(4, "samples"), (8, "samples")} == expected
    assert (8, "samples") in held[1]
    rows = sorted((row["step"], row["train/text_loss"]) for p in parts for row in wandb_history(p)
                  if "train/text_loss" in row)
    assert [s for s, _ in rows] == list(steps)
    assert [v for _, v in rows] == pytest.approx([r["text_loss"] for r in steps.values()], rel=1e-6)

    # a later command's numbers and pictures (image metrics, plan.py's rollouts) join the same run at the
    # checkpoint's step, in a part of their own; latest-run still points at the training's last part
    latest = os.readlink(d / "wandb" / "latest-run")
    cfg = build.load_for_inference(str(d), "cpu")[3]
    logs.report_to_run(cfg, str(d), {"image_metrics/probe": 1.5}, {"rollout": str(d / "samples.png")})
    assert [e.step for e in tensorboard_events(d / "tensorboard").Images("rollout")] == [8]
    assert [e.step for e in tensorboard_events(d / "tensorboard").Scalars("train/grad_norm")] == list(steps)
    now = sorted(glob.glob(str(d / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")))
    assert len(now) == 3 and os.readlink(d / "wandb" / "latest-run") == latest and parts[1].find(latest) > 0
    (report,) = set(now) - set(parts)
    assert logs.wandb_points(report) == {(8, "image_metrics/probe"), (8, "rollout")}

    # the finished run trained on to step 10: the new part holds only what the others lack, steps 9 and 10 (before,
    # it sent steps 1-8 again, and syncing every part sent them twice)
    train.main([*args, f"--out_dir={d}", "--resume", "--max_iters=10"])
    (longer,) = set(glob.glob(str(d / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))) - set(now)
    log = [json.loads(line) for line in open(d / "metrics.jsonl")]
    assert {s for s, _ in logs.wandb_points(longer)} == {9, 10}
    held = [logs.wandb_points(p) for p in (*parts, longer)]
    assert sum(map(len, held)) == len(set().union(*held))   # no point in two parts
    assert set().union(*held) - {(4, "samples"), (8, "samples"), (10, "samples")} == \
        {(r["step"], k) for r in log for k in logs.scalars(r)}
    # `wandb sync out_dir/wandb` (here --dry-run: no network) takes all four parts
    listed = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(d / "wandb")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert "Would sync 4 run(s)" in listed.stdout + listed.stderr, listed.stdout + listed.stderr


def test_online_wandb_without_a_login_stops_with_one_line_before_writing(tmp_path, monkeypatch):
    """No WANDB_API_KEY, no ~/.netrc: wandb.init would raise its own traceback after out_dir was made. The run stops
    first, with one line, and out_dir is never created; nothing is sent anywhere."""
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    d = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"^wandb_log: not logged in to wandb .*: run `wandb login` or set "
                                         r"WANDB_API_KEY, or log offline with --wandb_mode=offline"):
        train.main([*TINY, f"--out_dir={d}", "--wandb_log", "--wandb_mode=online", "--max_iters=1"])
    assert not os.path.exists(d)


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
