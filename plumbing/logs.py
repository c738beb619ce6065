"""
What a training run reports as it goes: the lines of metrics.jsonl (the run's record: the analysis commands read it,
and --resume trims it to the checkpoint), and, when asked, the same numbers and the evaluation's pictures mirrored
live to Weights & Biases and/or TensorBoard. Both are optional packages, imported only when their setting is on.

    python train.py configs/toy.py --wandb_log --wandb_project=beyond-lm     # --wandb_mode=offline: no account
    python train.py configs/toy.py --tensorboard_log                         # tensorboard --logdir out/toy

metrics.jsonl keeps flat names (text_loss, val_text_loss, caption_to_image_flow_loss, ...); the mirrors chart them
in groups, train/, val/, perf/ and data/ (chart_name), since both group charts by the name's part before a '/'.

A mirror follows its run across --resume. The checkpoint keeps the wandb run id (its key "tracking_id"), so the
resumed process reopens the same wandb run; TensorBoard writes to out_dir/tensorboard again and hides the events
after the checkpoint's step, which are logged again, as trim_log does for metrics.jsonl. Offline, every process
writes a part of the run (a folder out_dir/wandb/offline-run-*), each holding the points the earlier ones lack:
`wandb sync out_dir/wandb` uploads them all, every point once.
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


def write_settings(c, path):
    """The settings as this process resolved them (defaults, config file, --key=value), written whole: a resumed
    run writes its own over the last."""
    with open(path + ".tmp", "w") as f:
        json.dump(vars(c), f, indent=1, default=repr)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------------------
# Losses per source: what the text and flow losses are made of, each source's positions and frames on their own.

def source_sums(batch, text_each, flow_each, sources):
    """[4, sources] of one micro-batch: per source (batch["source"], an index into data.SOURCES), its positions'
    summed text loss and their number, its generated frames' summed flow loss and their number (train_step adds them
    over the global batch). text_each [B * S], flow_each [F]: training_losses' terms. A position of no source (-1)
    goes to a bin of its own, dropped: index_add_ takes no negative index, and a filter would wait for the device."""
    source = batch["source"].reshape(-1).long()
    where = torch.where(source >= 0, source, sources)
    text = torch.stack([text_each, (batch["targets"].reshape(-1) >= 0).float()])
    per_frame = max(1, len(batch["vis_idx"]) // max(1, len(batch["cond"])))   # a frame's tokens: its first's source
    flow = torch.stack([flow_each, (~batch["cond"]).float()])
    sums = torch.zeros(4, sources + 1, device=source.device)
    sums[:2].index_add_(1, where, text)
    sums[2:].index_add_(1, where[batch["vis_idx"][::per_frame]], flow)
    return sums[:, :sources]


def source_losses(sums, names, prefix=""):
    """{prefix + name + "_text_loss" | "_flow_loss": mean} from source_sums' numbers added up, names: the sources'
    (data.SOURCES). A source without positions to learn, or without frames to generate, has none (never a 0)."""
    text, positions, flow, frames = np.reshape(np.asarray(sums, float), (4, len(names)))
    out = {}
    for i, name in enumerate(names):
        out.update({f"{prefix}{name}_text_loss": text[i] / positions[i]} if positions[i] else {})
        out.update({f"{prefix}{name}_flow_loss": flow[i] / frames[i]} if frames[i] else {})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Optional packages, and what a run's tracking settings need before it writes anything.


def need(module, package):
    """An optional package's module, or one line saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"{package} is not installed ({e}): pip install {package}, or turn its setting off")


OFF = dict(wandb_log=False, wandb_project="", wandb_run_name="", wandb_mode="", tensorboard_log=False)


def tracked(cfg):
    """A run's config with the tracking settings it may predate (off)."""
    return SimpleNamespace(**{**OFF, **vars(cfg)})


def check_mode(c):
    if c.wandb_mode not in ("", "online", "offline", "disabled"):
        raise SystemExit(f"wandb_mode={c.wandb_mode!r}: use '' (wandb's default), online, offline or disabled")


def check_sinks(c):
    """Before a command writes or computes anything: the mode is one wandb knows, the packages are installed, and an
    online wandb run has a login. Without one wandb.init raises a traceback, after out_dir was made; this reads only
    what is on this machine (WANDB_API_KEY, ~/.netrc, wandb's settings files), never the network."""
    check_mode(c)
    if c.wandb_log:
        wandb = need("wandb", "wandb")
        try:   # "": WANDB_MODE, or `wandb offline`'s settings file
            mode = c.wandb_mode or wandb.setup().settings.mode
        except Exception as e:   # pydantic's ValidationError for a WANDB_MODE it does not know
            raise SystemExit(f"wandb's settings are not valid ({str(e).splitlines()[0]}, ...): check WANDB_MODE "
                             f"and `wandb status`")
        if mode not in ("offline", "dryrun", "disabled") and not wandb.login(prompt=False, verify=False):
            raise SystemExit("wandb_log: not logged in to wandb (no WANDB_API_KEY, no ~/.netrc entry): run `wandb "
                             "login` or set WANDB_API_KEY, or log offline with --wandb_mode=offline and later "
                             f"`wandb sync {os.path.join(c.out_dir, 'wandb')}`")
    if c.tensorboard_log:
        need("tensorboard", "tensorboard")


def picture(path):
    """A PNG as uint8 [H, W, 3]."""
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def chart_name(key):
    """metrics.jsonl's flat name -> the mirrors' chart: train/ (the training batches' losses, the learning rate and
    gradient norm), val/ (held-out losses, the toy oracle's held-out scores), data/ (skipped examples), perf/ (the
    rest: speed, padding, memory, tokens seen). A name with a '/' (a later command's, image_metrics/fd) is kept."""
    if "/" in key:
        return key
    if key.startswith("val_"):
        return "val/" + key[len("val_"):]
    if key == "loss" or key.endswith("_loss") or key in ("lr", "grad_norm"):
        return "train/" + key
    if key.split("_")[0] in ("gen", "caption", "vqa"):   # toyscores' {task}_{split}, {task}_{split}_ci
        return "val/" + key
    return ("data/" if key.startswith("skipped_") else "perf/") + key


def scalars(record):
    """A record's numbers as charts take them, by chart name: an interval [lo, hi] as two (name_lo, name_hi)."""
    out = {}
    for k, v in record.items():
        if k != "step":
            out.update({f"{k}_lo": v[0], f"{k}_hi": v[1]} if isinstance(v, (list, tuple)) else {k: v})
    return {chart_name(k): v for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# The sinks: each takes a step's numbers (by chart name) and named pictures, and says which points it holds already.

def wandb_points(path):
    """{(step, chart)} in the history of an offline run's .wandb file, wandb's transaction log: a 7-byte header
    (":W&B", version), then LevelDB's log format, 32 KiB blocks of chunks, each behind a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last), of protobuf records. A tail torn by a killed process ends the
    reading; a file of another format holds nothing as far as this knows."""
    import struct
    from wandb.proto import wandb_internal_pb2
    data, pos, part, points = open(path, "rb").read(), 7, b"", set()
    if not data.startswith(b":W&B"):
        return points
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:    # no room for a chunk header: the block's tail is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind not in (1, 2, 3, 4) or pos + 7 + length > len(data):
            break
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(part)
            except Exception:   # protobuf's DecodeError: a torn record
                break
            part = b""
            if record.WhichOneof("record_type") == "history":
                row = {i.key or i.nested_key[0]: i.value_json for i in record.history.item}
                if "step" in row:
                    points |= {(json.loads(row["step"]), k) for k in row if not k.startswith("_") and k != "step"}
    return points


class WandbSink:
    """One wandb run per training run, its files under out_dir/wandb. wandb_mode "offline" (or WANDB_MODE=offline)
    writes there only; `wandb sync out_dir/wandb` uploads it later. Charts are drawn against the record's own
    "step", not wandb's counter, so a later command can add to a step already passed.
    A resumed training process skips the points the run holds from earlier processes: online, the steps up to the
    last one in its summary; offline, where each process writes a folder (a part) of its own, the points in the
    earlier parts, so that syncing every part sends each point once. A later command (training=False) writes a part
    too, and puts latest-run back where it pointed: at the last training process's folder, its logs."""

    def __init__(self, c, out_dir, run_id, resumed, training=True):
        import glob
        self.wandb = need("wandb", "wandb")
        name = c.wandb_run_name or os.path.basename(os.path.abspath(out_dir))
        self.latest = os.path.join(out_dir, "wandb", "latest-run")
        self.restore = os.readlink(self.latest) if not training and os.path.islink(self.latest) else None
        parts = glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", f"run-{run_id}.wandb")) \
            if resumed and run_id else []   # read before this process adds its own
        self.run = self.wandb.init(project=c.wandb_project, name=name, id=run_id or None, resume="allow",
                                   dir=out_dir, config=vars(c), mode=c.wandb_mode or None)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.last = self.run.summary.get("step", -1) if resumed and not self.run.offline else -1
        self.points = set().union(*map(wandb_points, parts)) if self.run.offline else set()
        self.id = self.run.id

    def held(self, step, chart):
        return step <= self.last or (step, chart) in self.points

    def log(self, step, numbers, pictures):
        self.run.log({"step": step, **numbers, **{k: self.wandb.Image(picture(p)) for k, p in pictures.items()}})

    def close(self):
        self.run.finish()
        if self.restore:   # a new link renamed over the old: the link is never missing
            os.symlink(self.restore, self.latest + ".tmp")
            os.replace(self.latest + ".tmp", self.latest)


class TensorBoardSink:
    """Event files in out_dir/tensorboard, written through at each record. A training process hides the events
    that earlier ones wrote after its checkpoint's step (purge_step): they are logged again, and a run that died
    before its first checkpoint is hidden whole. It holds already the steps up to the checkpoint's (-1: none)."""

    def __init__(self, out_dir, step, training):
        need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        folder = os.path.join(out_dir, "tensorboard")
        self.holds = step if training and os.path.isdir(folder) and os.listdir(folder) else -1
        self.writer = SummaryWriter(folder, purge_step=step + 1 if training else None)

    def held(self, step, chart):
        return step <= self.holds

    def log(self, step, numbers, pictures):
        for k, v in numbers.items():
            self.writer.add_scalar(k, v, step)
        for k, p in pictures.items():
            self.writer.add_image(k, picture(p), step, dataformats="HWC")
        self.writer.flush()   # on disk before the checkpoint that covers it is saved

    def close(self):
        self.writer.close()


def open_sinks(c, out_dir, run_id, step, training):
    """The sinks a run's settings ask for; `step`: the checkpoint's (0 for a new run)."""
    check_mode(c)
    sinks = [WandbSink(c, out_dir, run_id, training and step > 0, training)] if c.wandb_log else []
    return sinks + ([TensorBoardSink(out_dir, step, training)] if c.tensorboard_log else [])


class Tracker:
    """metrics.jsonl, written first, and the sinks that mirror it. run_id: the wandb run's, kept in checkpoints."""

    def __init__(self, c, log_path, run_id="", step=0):
        self.log_path, self.sinks = log_path, open_sinks(c, c.out_dir, run_id, step, training=True)
        self.run_id = next((s.id for s in self.sinks if isinstance(s, WandbSink)), run_id)
        self.charted = {}   # chart -> the last step it got a point at
        # Resumed: each sink is sent again, from metrics.jsonl, what it lacks up to the checkpoint (the tail that a
        # hard stop kept wandb from writing, or all of it for a sink turned on only now).
        for _, record in read_log(log_path) if step and os.path.exists(log_path) else []:
            self.mirror(record)

    def mirror(self, record, pictures=None):
        """A chart takes one point per step: the evaluation's record repeats `tokens` for metrics.jsonl's readers."""
        step = record["step"]
        numbers = {k: v for k, v in scalars(record).items() if self.charted.get(k) != step}
        self.charted.update(dict.fromkeys(numbers, step))
        for sink in self.sinks:
            fresh = {k: v for k, v in numbers.items() if not sink.held(step, k)}
            shown = {k: p for k, p in (pictures or {}).items() if not sink.held(step, k)}
            if fresh or shown:
                sink.log(step, fresh, shown)

    def log(self, record, pictures=None):
        """A record with its step; pictures: {name: PNG path}, for the sinks (those not written are left out: a
        real-data run's evaluation draws no samples)."""
        append_log(self.log_path, record)
        self.mirror(record, {k: p for k, p in (pictures or {}).items() if os.path.exists(p)})

    def close(self):
        for sink in self.sinks:
            sink.close()


def report_to_run(cfg, out_dir, record=None, pictures=None):
    """Numbers or pictures that a later command made from a run's checkpoint (plan.py's rollouts, image metrics),
    added to the run's sinks at the checkpoint's step, where the run was tracked. cfg: the run's config as
    plumbing.build.load_for_inference returns it (with the checkpoint's step and tracking_id). Call check_sinks on
    it before the work, so that a missing package or login stops the command before it computes anything."""
    c = tracked(cfg)
    for sink in open_sinks(c, out_dir, c.tracking_id, c.checkpoint_step, training=False):
        sink.log(c.checkpoint_step, scalars(record or {}), pictures or {})
        sink.close()


# ----------------------------------------------------------------------------------------------------------------
# The training loop's progress line.

def utilization(flops, seconds, peak, devices):
    """Model FLOPs utilisation per device: the FLOPs every device did together over the time they took, divided by
    the peak of all of them (a step's FLOPs are the global batch's, so one device's peak alone would count each
    device's share `devices` times)."""
    return flops / seconds / (peak * devices)


def log_progress(run, c, s, loader, data, pbar):
    """A line of metrics.jsonl and the progress bar: losses (overall and per source), speed in real tokens,
    padding, data wait, MFU."""
    dt, run.t0 = time.time() - run.t0, time.time()
    steps_done = c.log_interval if run.step % c.log_interval == 0 else run.step % c.log_interval
    new = run.seen - run.seen_at_log   # real tokens: padding positions are computed but teach nothing
    tok_s, pad_share = new / dt, 1 - new / (c.batch_size * c.seq_len * c.gradient_accumulation_steps * steps_done)
    data_wait, run.waited, run.seen_at_log = loader.wait - run.waited, loader.wait, run.seen
    text_l, flow_l = s["text_loss"], s["flow_loss"]
    record = dict(step=run.step, text_loss=text_l, **({} if flow_l is None else {"flow_loss": flow_l}),
                  **s.get("sources", {}), loss=c.lambda_lm * text_l + c.lambda_flow * (flow_l or 0.0), lr=s["lr"],
                  grad_norm=s["grad_norm"],
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
