"""
What a training run reports as it goes: the lines of metrics.jsonl (the run's record: the analysis commands read it,
and --resume trims it to the checkpoint), and, when asked, the same numbers and the evaluation's pictures mirrored
live to Weights & Biases and/or TensorBoard. Both are optional packages, imported only when their setting is on.

    python train.py configs/toy.py --wandb_log --wandb_project=beyond-lm     # WANDB_MODE=offline: no account
    python train.py configs/toy.py --tensorboard_log                         # tensorboard --logdir out/toy

A mirror follows its run across --resume. The checkpoint keeps the wandb run id (its key "tracking_id"), so the
resumed process reopens the same wandb run; TensorBoard writes to out_dir/tensorboard again and hides the events
after the checkpoint's step, which are logged again, as trim_log does for metrics.jsonl.
"""
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

from plumbing.checkpoints import crash_point


# ----------------------------------------------------------------------------------------------------------------
# metrics.jsonl: one JSON record a line, appended as the run goes.

def read_log(path):
    """[(line, record)] of a metrics.jsonl; a last line torn by a crash mid-write is dropped (resume trims it)."""
    lines = open(path).readlines()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append((line.rstrip("\n") + "\n", json.loads(line)))
        except ValueError:
            if n < len(lines):
                raise SystemExit(f"{path}, line {n}: not a JSON record; fix or move the log aside, then resume")
    return out


def append_log(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    crash_point("log")


def trim_log(path, step):
    """Drop a resumed run's log lines after its checkpoint's step: they will be logged again."""
    lines = [ln for ln, r in read_log(path) if r["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def set_log_aside(path):
    """Move the log of a run that died before its first checkpoint to the first free path.N."""
    aside = next(f"{path}.{i}" for i in range(1, 10 ** 6) if not os.path.exists(f"{path}.{i}"))
    os.replace(path, aside)
    print(f"{path} of a run without a checkpoint moved to {aside}; this run starts a new log")


# ----------------------------------------------------------------------------------------------------------------
# Optional packages and live mirrors.


def need(module, package):
    """An optional package's module, or one line saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"{package} is not installed ({e}): pip install {package}, or turn its setting off")


def picture(path):
    """A PNG as uint8 [H, W, 3]."""
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------------------------------
# The sinks: each takes a record (step and numbers) and named pictures at a step.

class WandbSink:
    """One wandb run per training run, its files under out_dir/wandb. wandb_mode "offline" (or WANDB_MODE=offline)
    writes there only; `wandb sync` uploads it later. Charts are drawn against the record's own "step", not wandb's
    counter, so a later command can add to a step already passed. `holds`: the last step the run already has from
    earlier processes, as far as wandb knows (an online run's summary; -1 offline, where each process writes a
    directory of its own)."""

    def __init__(self, c, out_dir, run_id, resumed):
        self.wandb = need("wandb", "wandb")
        name = c.wandb_run_name or os.path.basename(os.path.abspath(out_dir))
        self.run = self.wandb.init(project=c.wandb_project, name=name, id=run_id or None, resume="allow",
                                   dir=out_dir, config=vars(c), mode=c.wandb_mode or None)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.holds = self.run.summary.get("step", -1) if resumed else -1
        self.id = self.run.id

    def log(self, record, pictures=None):
        self.run.log({**record, **{k: self.wandb.Image(picture(p)) for k, p in (pictures or {}).items()}})

    def close(self):
        self.run.finish()


class TensorBoardSink:
    """Event files in out_dir/tensorboard, written through at each record. A training process hides the events
    that earlier ones wrote after its checkpoint's step (purge_step): they are logged again, and a run that died
    before its first checkpoint is hidden whole. `holds`: the last step the folder already has (-1: none)."""

    def __init__(self, out_dir, step, training):
        need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        folder = os.path.join(out_dir, "tensorboard")
        self.holds = step if training and os.path.isdir(folder) and os.listdir(folder) else -1
        self.writer = SummaryWriter(folder, purge_step=step + 1 if training else None)

    def log(self, record, pictures=None):
        step = record["step"]
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(k, v, step)
        for k, p in (pictures or {}).items():
            self.writer.add_image(k, picture(p), step, dataformats="HWC")
        self.writer.flush()   # on disk before the checkpoint that covers it is saved

    def close(self):
        self.writer.close()


def scalars(record):
    """A record as charts take it: numbers, an interval [lo, hi] as two (name_lo, name_hi)."""
    out = {}
    for k, v in record.items():
        out.update({f"{k}_lo": v[0], f"{k}_hi": v[1]} if isinstance(v, (list, tuple)) else {k: v})
    return out


def open_sinks(c, out_dir, run_id, step, training):
    """The sinks a run's settings ask for; `step`: the checkpoint's (0 for a new run)."""
    if c.wandb_mode not in ("", "online", "offline", "disabled"):
        raise SystemExit(f"wandb_mode={c.wandb_mode!r}: use '' (wandb's default), online, offline or disabled")
    sinks = [WandbSink(c, out_dir, run_id, training and step > 0)] if c.wandb_log else []
    return sinks + ([TensorBoardSink(out_dir, step, training)] if c.tensorboard_log else [])


class Tracker:
    """metrics.jsonl, written first, and the sinks that mirror it. run_id: the wandb run's, kept in checkpoints."""

    def __init__(self, c, log_path, run_id="", step=0):
        self.log_path, self.sinks = log_path, open_sinks(c, c.out_dir, run_id, step, training=True)
        self.run_id = next((s.id for s in self.sinks if isinstance(s, WandbSink)), run_id)
        # Resumed: each sink is sent again, from metrics.jsonl, what it lacks up to the checkpoint (the tail that a
        # hard stop kept wandb from writing, or all of it for a sink turned on only now).
        for _, record in read_log(log_path) if step and os.path.exists(log_path) else []:
            self.mirror(record)

    def mirror(self, record, pictures=None):
        record = scalars(record)
        for sink in self.sinks:
            if record["step"] > sink.holds:
                sink.log(record, pictures)

    def log(self, record, pictures=None):
        """A record with its step; pictures: {name: PNG path}, for the sinks (those not written are left out: a
        real-data run's evaluation draws no samples)."""
        append_log(self.log_path, record)
        self.mirror(record, {k: p for k, p in (pictures or {}).items() if os.path.exists(p)})

    def close(self):
        for sink in self.sinks:
            sink.close()


OFF = dict(wandb_log=False, wandb_project="", wandb_run_name="", wandb_mode="", tensorboard_log=False)


def report_to_run(cfg, out_dir, record=None, pictures=None):
    """Numbers or pictures that a later command made from a run's checkpoint (plan.py's rollouts, image metrics),
    added to the run's sinks at the checkpoint's step, where the run was tracked. cfg: the run's config as
    plumbing.build.load_for_inference returns it (with the checkpoint's step and tracking_id)."""
    c = SimpleNamespace(**{**OFF, **vars(cfg)})
    sinks = open_sinks(c, out_dir, c.tracking_id, c.checkpoint_step, training=False)
    for sink in sinks:
        sink.log(scalars({"step": c.checkpoint_step, **(record or {})}), pictures)
        sink.close()


# ----------------------------------------------------------------------------------------------------------------
# The training loop's progress line.

def utilization(flops, seconds, peak, devices):
    """Model FLOPs utilisation per device: the FLOPs every device did together over the time they took, divided by
    the peak of all of them (a step's FLOPs are the global batch's, so one device's peak alone would count each
    device's share `devices` times)."""
    return flops / seconds / (peak * devices)


def log_progress(run, c, s, loader, data, pbar):
    """A line of metrics.jsonl and the progress bar: losses, speed in real tokens, padding, data wait, MFU."""
    dt, run.t0 = time.time() - run.t0, time.time()
    steps_done = c.log_interval if run.step % c.log_interval == 0 else run.step % c.log_interval
    new = run.seen - run.seen_at_log   # real tokens: padding positions are computed but teach nothing
    tok_s, pad_share = new / dt, 1 - new / (c.batch_size * c.seq_len * c.gradient_accumulation_steps * steps_done)
    data_wait, run.waited, run.seen_at_log = loader.wait - run.waited, loader.wait, run.seen
    text_l, flow_l = s["text_loss"], s["flow_loss"]
    record = dict(step=run.step, text_loss=text_l, **({} if flow_l is None else {"flow_loss": flow_l}),
                  loss=c.lambda_lm * text_l + c.lambda_flow * (flow_l or 0.0), lr=s["lr"], grad_norm=s["grad_norm"],
                  tokens=run.seen, tokens_per_s=tok_s, tokens_per_s_per_device=tok_s / run.world, pad_share=pad_share,
                  data_wait_s=data_wait / steps_done, data_share=data_wait / dt,
                  **({"balance_loss": s["balance_loss"]} if c.ffn == "moe" else {}),
                  **{f"skipped_{k}": v for k, v in getattr(data, "stats", {}).items()})
    if run.peak:
        record["mfu"] = utilization(run.flops_per_step * steps_done, dt, run.peak, run.world)
    if run.device_type == "cuda":
        record["peak_memory_gib"] = torch.cuda.max_memory_allocated(run.dev) / 2 ** 30
    run.tracker.log(record)
    pbar.set_postfix_str(f"text {text_l:.3f} flow {flow_l or 0:.4f} {tok_s:,.0f} tok/s pad {pad_share:.0%} "
                         f"data {data_wait / dt:.0%}" + (f" mfu {100 * record['mfu']:.1f}%" if run.peak else "")
                         + (f" mem {record['peak_memory_gib']:.1f} GiB" if run.device_type == "cuda" else ""))
