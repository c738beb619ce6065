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
    torch.save(plain(dict(obj, format=CHECKPOINT_FORMAT)), tmp)
    crash_point("checkpoint")
    if os.path.exists(path):
        os.replace(path, previous(path))
    os.replace(tmp, path)
    drop_unnamed_shards(path)


def plain(obj):
    """Tensors and Python's own types only (a numpy integer that a data position came as becomes an int), so that
    every checkpoint loads with torch.load(weights_only=True): reading one runs no pickled code."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj.item() if hasattr(obj, "item") and not isinstance(obj, torch.Tensor) else obj


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
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("shards")
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
        export = os.path.isfile(os.path.join(os.path.dirname(path), "config.json"))
        raise SystemExit(f"no checkpoint at {path}: " + (way_out(path) if os.path.isfile(previous(path)) else
                         "it is an export (weights only, for sampling): use the run's own out_dir" if export else
                         "train one first (python train.py configs/toy.py) or fix --out_dir"))
    try:   # mmap: every process of a run may read the file, but its pages are shared, not copied
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
