"""
Checkpoints: a run's state written whole or not at all, the one before kept, sharded checkpoints (every process
writes its part), and a checkpoint that cannot be read stopped with one line that names the way out.
"""
import os

import torch


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary file and renamed, so a crash mid-write never destroys the last good one; the
# one before is kept as ckpt.prev.pt, so a checkpoint damaged later (a full disk, a bad copy) never costs the run.

def crash_point(name, _passes={}):
    """Test-only (tests/test_errors.py, tests/plumbing/test_parallel.py): BLM_CRASH_AT=name:k kills this process the
    k-th time it passes `name`; BLM_CRASH_AT=name:k:parent sends SIGTERM to its parent instead, as a cluster's
    scheduler stops torchrun (which stops every process it started)."""
    point, k, whom = (os.environ.get("BLM_CRASH_AT", "") + "::").split(":")[:3]
    if point == name:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] == int(k):
            import signal
            os.kill(os.getppid(), signal.SIGTERM) if whom == "parent" else os.kill(os.getpid(), signal.SIGKILL)


def previous(path):
    return os.path.splitext(path)[0] + ".prev.pt"


# Raised when the same weights would compute something else: 2 = rotary embedding on consecutive pairs of a head's
# dimensions (before: its two halves). A checkpoint of an older format stops with one line instead of loading.
CHECKPOINT_FORMAT = 2


def save_checkpoint(path, obj):
    tmp = path + ".tmp"
    torch.save(dict(obj, format=CHECKPOINT_FORMAT), tmp)
    crash_point("checkpoint")
    if os.path.exists(path):
        os.replace(path, previous(path))
    os.replace(tmp, path)
    drop_unnamed_shards(path)


# Sharded checkpoints (torch.distributed.checkpoint): every process writes its part of the weights and optimizer
# state into a folder beside the checkpoint, ckpt.shards.<step>; ckpt.pt, written last as above, holds the run's
# metadata, the folder's name and its files' sizes. A folder that neither ckpt.pt nor ckpt.prev.pt names (a save cut
# short, a checkpoint rotated out) is removed at the next save.

def shard_folders(path):
    """{folder name: path} of the shard folders beside checkpoint `path`, finished or not."""
    stem = os.path.basename(os.path.splitext(path)[0]) + ".shards."
    where = os.path.dirname(path) or "."
    return {n: os.path.join(where, n) for n in os.listdir(where) if n.startswith(stem)} if os.path.isdir(where) else {}


def named_shards(path):
    """The shard folder that checkpoint `path` names, if any (its tensors are not read: mmap)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("shards")
    except Exception:   # missing or unreadable: it names nothing
        return None


def drop_unnamed_shards(path):
    import shutil
    folders = shard_folders(path)
    keep = {named_shards(path), named_shards(previous(path))} if folders else set()
    for name, folder in folders.items():
        if name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def save_sharded(path, state, meta, master):
    """Every process writes its part of `state` into a new shard folder (nothing is gathered); process 0 then names
    it in the checkpoint `path`, written as save_checkpoint writes one. Every process calls it."""
    import shutil
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    name = os.path.basename(os.path.splitext(path)[0]) + f".shards.{meta['step']}"
    folder = os.path.join(os.path.dirname(path), name)
    if master and os.path.exists(folder + ".tmp"):   # left by a save that was cut short
        shutil.rmtree(folder + ".tmp")
    dist.barrier()
    dcp.save(state, checkpoint_id=folder + ".tmp")   # returns once every part and the index are written
    if master:
        crash_point("shards")
        if os.path.exists(folder):   # a folder of this step that no checkpoint names: a run that died after it
            shutil.rmtree(folder)
        os.replace(folder + ".tmp", folder)
        sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)}
        save_checkpoint(path, dict(meta, shards=name, shard_sizes=sizes))


def read_shards(path, ckpt, state):
    """Fills `state` ({"model": ..., "optimizer": ...} of this process's tensors, sharded or whole) from the shard
    folder that checkpoint `path` names; on one process or all of them (collective when there are several)."""
    import warnings
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    try:
        with warnings.catch_warnings():   # on one process it warns that it reads on one process: the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=os.path.join(os.path.dirname(path), ckpt["shards"]),
                     no_dist=not dist.is_initialized())
    except Exception as e:
        raise SystemExit(f"{path} names shards that cannot be read ({type(e).__name__}): {way_out(path)}")


def load_checkpoint(path):
    """The checkpoint's dict; a missing or unreadable file stops with one line that names the way out."""
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: " + (way_out(path) if os.path.isfile(previous(path)) else
                         "train one first (python train.py configs/toy.py) or fix --out_dir"))
    try:   # mmap: every process of a run may read the file, but its pages are shared, not copied
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if not (isinstance(ckpt, dict) and {"config", "model_args"} <= ckpt.keys() and
                ("model" in ckpt or "shards" in ckpt or "weights" in ckpt)):
            raise ValueError("not a training checkpoint")
    except Exception as e:   # cut short, overwritten, empty: torch raises any of a dozen errors
        raise SystemExit(f"{path} is not a readable checkpoint ({type(e).__name__}): {way_out(path)}")
    if ckpt.get("format", 1) != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is a format {ckpt.get('format', 1)} checkpoint and this code reads format "
                         f"{CHECKPOINT_FORMAT} (plumbing/checkpoints.py's CHECKPOINT_FORMAT says what changed): train "
                         f"it again, or use the code it was trained with")
    folder = os.path.join(os.path.dirname(path), ckpt.get("shards", ""))
    for name, size in ckpt.get("shard_sizes", {}).items():   # a folder cut short or copied in part
        if not os.path.isfile(os.path.join(folder, name)) or os.path.getsize(os.path.join(folder, name)) != size:
            raise SystemExit(f"{path} names shards that are missing or cut short ({os.path.join(folder, name)}): "
                             f"{way_out(path)}")
    return ckpt


def way_out(path):
    prev = previous(path)
    return (f"the one before is {prev}: copy it to {path} to continue from there" if os.path.isfile(prev) else
            "start a fresh run with another --out_dir")


# ----------------------------------------------------------------------------------------------------------------
# Exported weights: safetensors beside a ckpt.pt of metadata ("weights" names the file), written a tensor at a time, so
# that exporting a model of any size needs the memory of its largest tensor, not of the model.

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def write_safetensors(path, tensors):
    """tensors: [(name, dtype, shape, read)], read() giving the tensor. The safetensors header (each tensor's dtype,
    shape and byte range) is known from the shapes alone, so it is written first and each tensor's bytes follow as
    it is read; the file appears under its name only when whole."""
    import json
    import math
    header, start = {}, 0
    for name, dtype, shape, _ in tensors:
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        header[name] = dict(dtype=SAFETENSORS_DTYPES[dtype], shape=list(shape), data_offsets=[start, start + size])
        start += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, dtype, shape, read in tensors:
            f.write(read().to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(path + ".tmp", path)


def read_weights_file(path, ckpt):
    """The state dict of an exported checkpoint's safetensors file, in float32 (the model's own precision) whichever
    precision the export was written in."""
    from safetensors.torch import load_file
    return {k: v.float() for k, v in load_file(os.path.join(os.path.dirname(path), ckpt["weights"])).items()}
