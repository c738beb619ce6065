"""
Training on many processes, beside train.py: torchrun's processes set up and torn down, the model replicated (DDP),
sharded (FSDP2) or both (HSDP: sharded within a group of processes, replicated across groups) after being built on
the meta device, so that no process ever holds all of it, and checkpoints that every process writes its own part of
(torch.distributed.checkpoint), then resumed on any number of processes.

    torchrun --standalone --nproc_per_node=8 train.py configs/real.py --parallel=fsdp
    python -m plumbing.export --out_dir=out/real --dest=out/real-export    # the weights as safetensors, for sample.py

A run's checkpoint is out_dir/ckpt.pt. One process, or DDP (every process holds the whole model anyway), writes the
weights and optimizer state into it; FSDP writes there only the run's metadata and the name of the folder of shards
beside it (checkpoints.save_sharded). Either kind resumes on any number of processes, sharded or not: the data is a
function of (seed, step, global micro-batch slot), so a run goes on exactly as it would have.
"""
import datetime
import os
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch

from plumbing.build import check_same_model, compile_model, init_model, resolve_device
from plumbing.checkpoints import load_checkpoint, previous, read_shards, save_checkpoint, save_sharded
from plumbing.experts import expert_mesh, split_experts
from plumbing.export import model_source, read_weights
from plumbing.logs import set_log_aside, trim_log

# what train.py writes into a checkpoint; other keys (a tracking run's id, ...) are carried from one to the next
KNOWN = {"model", "optimizer", "ema", "shards", "shard_sizes", "step", "config", "model_args", "loss_center", "tokens",
         "data_state", "format"}


# ----------------------------------------------------------------------------------------------------------------
# The processes: set up from torchrun's environment, torn down however the run ends.

def setup_processes(c):
    """torchrun sets RANK/WORLD_SIZE; each process takes an equal share of the accumulation steps."""
    run = SimpleNamespace(ddp=int(os.environ.get("RANK", -1)) != -1, rank=0, world=1, dev=resolve_device(c.device),
                          extra={}, closing=[])
    if c.dtype not in ("auto", "float32", "bfloat16"):
        raise SystemExit(f"dtype={c.dtype!r}: use 'bfloat16' or 'float32' (float16 would need a gradient scaler, "
                         f"which bfloat16's range makes unnecessary)")
    if c.parallel not in ("ddp", "fsdp", "hsdp"):
        raise SystemExit(f"parallel={c.parallel!r}: use 'ddp', 'fsdp' or 'hsdp'")
    if run.ddp:
        run.rank, run.world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if c.gradient_accumulation_steps % run.world:
        raise SystemExit(f"gradient_accumulation_steps={c.gradient_accumulation_steps} must be a multiple of the "
                         f"{run.world} processes")
    if run.ddp:
        from torch.distributed import init_process_group
        if run.dev == "cuda":
            run.dev = f"cuda:{local_rank}"
            torch.cuda.set_device(run.dev)
        # a process that waits longer than this for the others (a hang, a dead peer) stops instead of waiting forever;
        # a program that made the group itself (tests/plumbing/test_parallel.py runs many trainings in one) keeps it
        run.own_group = not torch.distributed.is_initialized()
        if run.own_group:
            init_process_group(backend="nccl" if run.dev.startswith("cuda") else "gloo",
                               timeout=datetime.timedelta(seconds=c.dist_timeout_s))
    run.accum, run.master, run.fsdp = c.gradient_accumulation_steps // run.world, run.rank == 0, \
        run.ddp and c.parallel in ("fsdp", "hsdp")
    run.slots = range(run.rank * run.accum, (run.rank + 1) * run.accum)   # this process's global micro-batches
    run.device_type = torch.device(run.dev).type
    run.mesh = hsdp_mesh(c, run) if run.ddp and c.parallel == "hsdp" else None
    run.expert_mesh = experts_mesh(c, run)
    run.dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if run.device_type == "cuda" else "float32")
    run.autocast = nullcontext() if run.dtype == "float32" else \
        torch.autocast(run.device_type, getattr(torch, run.dtype))
    run.ckpt_path, run.log_path = os.path.join(c.out_dir, "ckpt.pt"), os.path.join(c.out_dir, "metrics.jsonl")
    torch.manual_seed(c.seed)   # whatever draws before the model (an encoder's random weights) draws alike everywhere
    return run


def hsdp_mesh(c, run):
    """HSDP's 2-D device mesh: the processes in groups of `shard_processes` (0: one node's, torchrun's
    LOCAL_WORLD_SIZE), each group holding one sharded copy of the model, the copies replicated across groups.
    Gradients are reduce-scattered within a group (NVLink, inside a node) and all-reduced across groups (the network
    between nodes), so the network carries one shard's gradients, not all-gathers of every weight."""
    from torch.distributed.device_mesh import init_device_mesh
    shard = c.shard_processes or int(os.environ.get("LOCAL_WORLD_SIZE", run.world))
    if shard < 1 or run.world % shard:
        raise SystemExit(f"shard_processes={shard}: the {run.world} processes must split into equal groups (a "
                         f"divisor of {run.world}, e.g. the GPUs of one node)")
    return init_device_mesh(run.device_type, (run.world // shard, shard), mesh_dim_names=("replicate", "shard"))


def experts_mesh(c, run):
    """Expert parallelism's mesh (plumbing/experts.py), or None for expert_parallel=1."""
    ep = c.expert_parallel
    if ep == 1:
        return None
    if ep < 1 or c.ffn != "moe" or not run.fsdp:
        raise SystemExit(f"expert_parallel={ep} splits the MoE's experts over processes: it needs ffn='moe' under "
                         f"torchrun with --parallel=fsdp or hsdp (or expert_parallel=1)")
    if run.world % ep:
        raise SystemExit(f"expert_parallel={ep} must divide the {run.world} processes (e.g. one node's GPUs)")
    return expert_mesh(run.device_type, run.world, ep)


@contextmanager
def processes(c):
    """The run's processes (setup_processes) for the block; when it ends, however it ends, the loader threads
    registered in run.closing are joined and the process group destroyed, so no thread or collective outlives the
    interpreter (its C++ threads would abort the process: 'terminate called without an active exception')."""
    run = setup_processes(c)
    try:
        yield run
    finally:
        for close in run.closing:
            close()
        if run.ddp and run.own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def first_on_each_node(run, make):
    """make() on each node's first process, then on the others: the files it downloads into the cache (encoder
    weights, a tokenizer) are downloaded once per node, not by every process into the same partial file."""
    if not run.ddp:
        return make()
    first = int(os.environ["LOCAL_RANK"]) == 0
    made = make() if first else None
    torch.distributed.barrier()
    return made if first else make()


# ----------------------------------------------------------------------------------------------------------------
# The model as it trains: sharded or replicated, made on the device, resumed.

def shard(model, dtype, mesh=None, experts=None):
    """FSDP2: each block's parameters sharded over the processes and gathered just in time, in `dtype` (bfloat16:
    half the traffic), their gradients reduced in float32. Inputs are never cast: rotary angles and flow times reach
    their functions in float32 (rounded to bfloat16 they would differ from sampling's, and CUDA's complex multiply
    rejects bfloat16), and autocast computes the rest in `dtype`. Routers gather their weights in float32: their
    softmax makes discrete choices, which rounded weights would flip. mesh: HSDP's 2-D mesh (hsdp_mesh), or None
    for all processes in one group. experts: expert parallelism's mesh; the routed experts are then split over it
    (experts.split_experts) and left out of FSDP2. Returns the split expert parameters ([] without)."""
    import warnings
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # the flow head's output is a view; nothing writes into it in place, which is what the warning is about
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(getattr(torch, dtype), reduce_dtype=torch.float32, cast_forward_inputs=False) \
        if dtype != "float32" else MixedPrecisionPolicy()
    exact = MixedPrecisionPolicy(torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    split = split_experts(model, experts) if experts is not None else []
    ignored = {"ignored_params": set(split)} if split else {}   # (a keyword torch 2.6 lacks: only when used)
    for block in model.blocks:
        if hasattr(block.ffn, "router"):
            fully_shard(block.ffn.router, mesh=mesh, mp_policy=exact)
        fully_shard(block, mesh=mesh, mp_policy=mp, **ignored)
    fully_shard(model, mesh=mesh, mp_policy=mp, **ignored)
    return split


def fill_shard(p, mean, std):
    """model.init_weights' fill for a sharded parameter: every process draws the whole tensor (one at a time) from
    the same seed and keeps its own shard, so the weights equal one process's, whatever the number of processes."""
    from torch.distributed.tensor import distribute_tensor
    whole = torch.empty(p.shape, device=p.device)
    whole.normal_(mean, std) if std else whole.fill_(mean)
    p.copy_(distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None))


def wrap(run, c, model, ckpt, make_optimizer):
    """From the model on the meta device: its blocks set to recompute (activation checkpointing) and compiled if
    asked, sharded (FSDP2) next, then made on the device and initialised (each process only its shard), the
    checkpoint's state loaded into it and its optimizer, then DDP-replicated; with ema_decay, run.ema is the moving
    average of the weights (the checkpoint's, or started at the weights), else None. Returns (the model, the model
    as it trains, its optimizer)."""
    # per block, torchtitan's order: activation checkpointing inside the compiled region, FSDP2's hooks around it
    model.activation_checkpointing = c.activation_checkpointing
    if c.compile:
        compile_model(model)
    run.expert_params = shard(model, run.dtype, run.mesh, run.expert_mesh) if run.fsdp else []
    init_model(model, run.dev, c.seed, fill_shard if run.fsdp else None)
    optimizer = make_optimizer(model, fused=run.device_type == "cuda" and not run.fsdp)
    if not 0 <= c.ema_decay < 1:
        raise SystemExit(f"ema_decay={c.ema_decay}: use a number in [0, 1), e.g. 0.999 (0: no moving average)")
    run.ema = None
    if c.ema_decay and ckpt is not None and ckpt["config"].get("ema_decay", 0):
        # the checkpoint's moving average, read as weights are (resharded as they are), then the weights over it
        load_weights(run.ckpt_path, ckpt, model, whole=not run.fsdp, key="ema")
        run.ema = start_ema(model)
    if ckpt is not None:
        load_training_state(run.ckpt_path, ckpt, model, optimizer, whole=not run.fsdp)
    elif run.init_from is not None:   # fine-tuning: another run's weights, this run's own optimizer and schedule
        load_weights(*run.init_from, model, whole=not run.fsdp)
    if c.ema_decay and run.ema is None:   # a new run, or one that turns the moving average on: it starts here
        run.ema = start_ema(model)
    trained = model
    if run.ddp and not run.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        trained = DDP(trained, device_ids=[torch.device(run.dev).index] if run.device_type == "cuda" else None)
    return model, trained, optimizer


def load_training_state(path, ckpt, model, optimizer, whole):
    """Weights and optimizer state from either kind of checkpoint: from shards, each process reads what it holds;
    from one file (read with mmap: pages, not copies), each process takes its part of the whole tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    if "shards" in ckpt:
        weights, opt = get_state_dict(model, optimizer)
        read_shards(path, ckpt, {"model": weights, "optimizer": opt})
    elif "optimizer" not in ckpt:
        raise SystemExit(f"{path} holds weights only (an export for sampling): resume from the run's own out_dir")
    else:
        weights, opt = ckpt["model"], ckpt["optimizer"]
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=opt,
                   options=StateDictOptions(full_state_dict="shards" not in ckpt and not whole))


def load_weights(path, ckpt, model, whole, key="model"):
    """A run's weights alone (key="model"; "ema": its moving average), from either kind of checkpoint or an export
    (--init_from: plumbing/export.py's model_source)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
    weights = ckpt.get(key)
    if "shards" in ckpt:
        weights = get_model_state_dict(model)
        read_shards(path, ckpt, {key: weights})
    if "file" in ckpt:   # an export
        weights = read_weights(ckpt["file"])
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict="shards" not in ckpt and not whole))


# ----------------------------------------------------------------------------------------------------------------
# Resuming and checkpointing a run.

def resuming(c, path):
    """Whether this run continues the one in out_dir: --resume (a bare flag reads "True"), or --resume=auto and out_dir
    holds a checkpoint (a damaged one then stops with the way out, as --resume does)."""
    if c.resume not in ("", "False", "True", "auto"):
        raise SystemExit(f"resume={c.resume!r}: use --resume (continue the run in out_dir), --resume=auto (continue it "
                         f"if there is one, else start it), or leave it out")
    return c.resume == "True" or c.resume == "auto" and any(os.path.exists(p) for p in (path, previous(path)))


def resume_or_start(run, c, model, data):
    """When resuming, reads the checkpoint's step, loss center, tokens seen and data position, and returns it (wrap
    loads its weights); a new run refuses an out_dir that holds one, and sets aside the log of a run that had none."""
    run.step, run.center, run.seen, saved, ckpt = 0, None, 0, {}, None   # seen: real (non-padding) tokens
    resume = resuming(c, run.ckpt_path)
    if resume:
        ckpt = load_checkpoint(run.ckpt_path)
        check_same_model(ckpt["model_args"], vars(model.cfg), run.ckpt_path)
        run.step, run.center, run.seen = ckpt["step"], ckpt["loss_center"], ckpt.get("tokens", 0)
        run.extra = {k: v for k, v in ckpt.items() if k not in KNOWN}
        saved = ckpt.get("data_state", {})
        if any(saved.get("slots", {}).values()) and saved["n_slots"] != c.gradient_accumulation_steps:
            raise SystemExit(f"{run.ckpt_path} read its data in {saved['n_slots']} micro-batch slots: resume with "
                             f"--gradient_accumulation_steps={saved['n_slots']}")
        data.load_state(saved.get("slots", {}))
        if run.master and os.path.exists(run.log_path):  # lines logged after the checkpoint happen again
            trim_log(run.log_path, run.step)
    elif found := [p for p in (run.ckpt_path, previous(run.ckpt_path)) if os.path.exists(p)]:
        raise SystemExit(f"{found[0]} exists: pass --resume to continue that run, or --out_dir=... for a new one")
    elif run.master and os.path.exists(run.log_path):
        set_log_aside(run.log_path)
    run.init_from = None
    if c.init_from and not resume:   # a new run from another run's weights (wrap loads them): fine-tuning
        source = model_source(c.init_from)   # a run (its raw weights), an export, or one on the hub
        run.init_from = source["path"], source
        check_same_model(source["model_args"], vars(model.cfg), source["path"])
    if run.master:
        os.makedirs(c.out_dir, exist_ok=True)
    run.consumed = {k: v for k, v in saved.get("slots", {}).items() if k in run.slots}   # for the next checkpoint
    return ckpt


def checkpoint(run, c, model, optimizer):
    """Weights, optimizer state, the weights' moving average (if kept: a state dict like the weights'), step, loss
    center, tokens seen, every slot's reading position and run.extra (kept from the checkpoint resumed). Sharded:
    every process writes its part; otherwise process 0 writes one file. Every process calls it: the state dicts and
    the slots' positions are collective."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    weights, opt = get_state_dict(model, optimizer)
    state = dict(model=weights, optimizer=opt)
    if run.ema is not None:   # named as the weights are, buffers included, so it loads as they do
        state["ema"] = {**weights, **dict(zip((n for n, _ in model.named_parameters()), run.ema))}
    slots = [run.consumed]
    if run.ddp:
        slots = [None] * run.world
        torch.distributed.all_gather_object(slots, run.consumed)
    meta = dict(run.extra, step=run.step, config=vars(c), model_args=vars(model.cfg), loss_center=run.center,
                tokens=run.seen, data_state=dict(step=run.step, n_slots=c.gradient_accumulation_steps,
                                                 slots={k: v for s in slots for k, v in s.items()}))
    if run.fsdp:
        save_sharded(run.ckpt_path, state, meta, run.master)
    elif run.master:
        save_checkpoint(run.ckpt_path, dict(meta, **state))
    if run.ddp:   # no process goes on (or exits, or resumes) before the checkpoint is complete
        torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------------------------
# The weights' moving average (train.py's ema_decay): one tensor per parameter that lives as the parameter does (a
# sharded DTensor under FSDP2, split with the experts under expert parallelism, whole otherwise), so that keeping
# it costs each process a copy of its own part of the weights, and no communication. (torch.optim.swa_utils'
# AveragedModel deep-copies the module: under FSDP2 a second sharded model to wrap, resume and checkpoint.)

def start_ema(model):
    """The moving average's tensors (model.parameters()' order), equal to the weights as they are now."""
    return [p.detach().clone() for p in model.parameters()]


@torch.no_grad()
def swap_contents(params, ema):
    """Each pair's contents exchanged in place, by way of one tensor's copy at a time."""
    for p, e in zip(params, ema):
        kept = p.clone()
        p.copy_(e)
        e.copy_(kept)


@torch.no_grad()
def update_ema(run, model, decay):
    """After an optimizer step: ema <- decay * ema + (1 - decay) * weights, all tensors in one call (nothing
    without a moving average)."""
    if run.ema is not None:
        torch._foreach_lerp_(run.ema, [p.detach() for p in model.parameters()], 1 - decay)


@contextmanager
def ema_weights(run, model):
    """Inside the block the model computes with the moving average (evaluation): each parameter's contents swapped
    with its average's in place (where FSDP2 gathers them from; the memory of one tensor, not of the model), and
    swapped back after, bit for bit. FSDP2 keeps the root's gathered weights after a forward pass
    without backward (until a state_dict call, such as the checkpoint after an evaluation): they are freed here, so
    that the next step gathers the weights, not the average, whatever follows the block."""
    if run.ema is None:
        yield
        return
    params = [p.detach() for p in model.parameters()]   # as they are at rest: under FSDP2 the shards
    swap_contents(params, run.ema)
    try:
        yield
    finally:
        if run.fsdp:   # (before the swap: until then the root's parameters are its gathered copies)
            from torch.distributed.fsdp import FSDPModule
            for m in model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()
        swap_contents(params, run.ema)


if __name__ == "__main__":   # the command that lived here
    raise SystemExit("python -m plumbing.parallel export is now python -m plumbing.export --out_dir=OUT_DIR "
                     "--dest=DEST [--dtype=bfloat16] [--push_to_hub=owner/name]")
