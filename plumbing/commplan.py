"""
Communication of a training step, before a run: the bytes each collective moves per GPU under DDP, FSDP2, HSDP and
expert parallelism, the link it crosses (NVLink within a node, InfiniBand across nodes), and the step's time with
and without hiding it behind compute. plumbing/memplan.py prints it beside memory and picks a layout with it.

Bytes are what a ring moves per rank: an all-gather or reduce-scatter over n ranks sends (n - 1)/n of the whole
buffer, an all-reduce 2(n - 1)/n of it, an all-to-all what goes to the other ranks. What each layout runs
(train.train_step, plumbing.parallel.shard; tests/plumbing/test_comm.py counts every collective of a few tiny steps
on gloo processes against this):

- DDP: the float32 gradients all-reduced once per step (no_sync on every micro-batch but the last).
- FSDP2: per micro-batch, each block's weights all-gathered in the compute precision for its forward pass and again
  for its backward pass (resharded after forward), each MoE router (its own unit) likewise in float32, the root's
  (embeddings, heads) once (FSDP2 keeps the root gathered from forward to backward); every unit's gradients
  reduce-scattered in float32 after each micro-batch (reduce_every_micro_batch) or once per step. A parameter's first
  dimension is padded to a multiple of the group, as FSDP2 shards it.
- HSDP: the same within groups of shard_processes consecutive ranks, plus an all-reduce of each gradient shard over
  the world / shard_processes copies, each time the reduce-scatter runs.
- Expert parallelism (expert_parallel = ep ranks split the routed experts, which leave FSDP): per MoE layer and
  micro-batch, the forward pass sends each routed assignment's token row (d_model wide, compute precision) to the
  rank of its expert and brings the output back, two all-to-alls; the backward pass sends their gradients the two
  ways back; activation checkpointing repeats the forward's pair. A row whose expert is on its own rank stays:
  (ep - 1)/ep of them leave under even routing. After the step's backward pass the routed experts' float32
  gradients are all-reduced over the world / ep ranks that hold the same experts. The per-expert counts exchanged
  before each dispatch (n_routed integers) are left out.
"""
import math
from collections import namedtuple

from plumbing.experts import shares

# bytes: per GPU per step; link: "nvlink" or "ib"; hides: what it can run behind ("compute": the step's,
# "last backward": the last micro-batch's backward pass, "nothing": the step waits for it)
Collective = namedtuple("Collective", "what op ranks bytes link hides")
Unit = namedtuple("Unit", "shapes float32 root")   # an FSDP2 unit: its parameters' shapes, gathered in float32?


def ring_bytes(op, n, nbytes):
    """Bytes one rank sends in a ring collective over n ranks on a buffer of nbytes (the gathered whole for an
    all-gather, the whole input for a reduce-scatter)."""
    return {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 2}[op] * (n - 1) / n * nbytes


def padded(shape, n):
    """Elements of a parameter as FSDP2 shards it over n ranks: its first dimension padded to a multiple of n."""
    if not shape:
        return n
    return -(-shape[0] // n) * n * math.prod(shape[1:])


def consecutive(size, world):
    return [range(i, i + size) for i in range(0, world, size)]


def strided(size, world):   # the ranks at the same place in every group of `size` consecutive ones
    return [range(i, world, size) for i in range(size)]


def link(groups, per_node):
    """A group that spans nodes runs at InfiniBand's rate (a ring is as fast as its slowest hop)."""
    return "ib" if any(len({r // per_node for r in g}) > 1 for g in groups) else "nvlink"


def micro_batches(c):
    """Micro-batches per GPU and step (at least one: train.py refuses a count that is no multiple of the GPUs)."""
    return max(1, c.gradient_accumulation_steps // c.gpus)


def shard_size(c):
    """Ranks that shard one copy of the model: all of them under FSDP, shard_processes (0: one node's) under HSDP."""
    return c.gpus if c.parallel == "fsdp" else (c.shard_processes or min(c.gpus_per_node, c.gpus))


def routed_params(block, expert_parallel=1):
    """Parameters of a block's routed experts (0 for a dense FFN), n_routed experts of 3 d_model x hidden each; with
    expert parallelism, those of the largest share a GPU holds (experts.shares: 254 over 8 GPUs, 32)."""
    ffn = block.ffn
    if not hasattr(ffn, "n_routed"):
        return 0
    return max(shares(ffn.n_routed, expert_parallel)) * 3 * ffn.cfg.d_model * ffn.hidden


def fsdp_units(model, expert_parallel=1):
    """The units parallel.shard makes: each MoE router (float32), each block (without its routed experts under
    expert parallelism), then the root, every other parameter."""
    units, inside = [], set()
    for block in model.blocks:
        shapes = []
        for name, p in block.named_parameters():
            inside.add(p)
            if name.startswith("ffn.router."):
                units.append(Unit([tuple(p.shape)], True, False))
            elif not (expert_parallel > 1 and name in ("ffn.w_gate_up", "ffn.w_down")):   # not a routed expert
                shapes.append(tuple(p.shape))
        units.append(Unit(shapes, False, False))
    units.append(Unit([tuple(p.shape) for p in model.parameters() if p not in inside], False, True))
    return units


def collectives(model, c):
    """What one optimizer step moves per GPU under c's layout: c.parallel ("ddp", "fsdp", "hsdp"), c.gpus,
    c.gpus_per_node, c.shard_processes, c.expert_parallel, at c's micro-batch and precision."""
    world, per_node, ep = c.gpus, c.gpus_per_node, c.expert_parallel
    micro = micro_batches(c)
    low = 4 if c.dtype == "float32" else 2           # bytes of a gathered weight or a token row: the compute precision
    out = []

    def add(what, op, groups, nbytes, hides):
        n = len(groups[0])
        if n > 1 and nbytes:
            sent = nbytes if op == "all-to-all" else ring_bytes(op, n, nbytes)
            out.append(Collective(what, op, n, sent, link(groups, per_node), hides))
    if c.parallel == "ddp":
        add("gradients", "all-reduce", [range(world)], 4 * sum(p.numel() for p in model.parameters()),
            "last backward")
        return out
    S = shard_size(c)
    gathered = reduced = 0
    for unit in fsdp_units(model, ep):
        elements = sum(padded(s, S) for s in unit.shapes)
        gathered += elements * (4 if unit.float32 else low) * (1 if unit.root else 2)
        reduced += 4 * elements
    reductions, hides = (micro, "compute") if c.reduce_every_micro_batch else (1, "last backward")
    add("weights", "all-gather", consecutive(S, world), micro * gathered, "compute")
    add("gradients", "reduce-scatter", consecutive(S, world), reductions * reduced, hides)
    add("gradient shards", "all-reduce", strided(S, world), reductions * reduced / S, hides)
    moe = [b for b in model.blocks if routed_params(b)]
    if ep > 1 and moe:
        ffn = moe[0].ffn
        rows = c.batch_size * c.seq_len * ffn.k_routed   # routed assignments per layer and micro-batch
        transfers = 6 if c.activation_checkpointing else 4
        sent = micro * len(moe) * transfers * rows * ffn.cfg.d_model * low * (ep - 1) / ep
        add("token rows", "all-to-all", consecutive(ep, world), sent, "nothing")
        add("routed experts' gradients", "all-reduce", strided(ep, world),
            4 * sum(routed_params(b, ep) for b in moe), "nothing")
    return out


def step_seconds(c, colls, compute):
    """(seconds without overlap, with overlap) of a step of `compute` seconds: every collective at its link's rate
    (c.nvlink_gb_s, c.ib_gb_s), one after another. With overlap, FSDP's per-micro-batch collectives run behind the
    step's compute, a once-per-step gradient reduction behind the last micro-batch's backward pass (2/3 of its
    compute), and the all-to-alls and the experts' gradient all-reduce behind nothing."""
    rate = {"nvlink": c.nvlink_gb_s * 1e9, "ib": c.ib_gb_s * 1e9}
    t = {h: sum(x.bytes / rate[x.link] for x in colls if x.hides == h) for h in ("compute", "last backward", "nothing")}
    last_backward = 2 / 3 * compute / micro_batches(c)
    return compute + sum(t.values()), \
        max(compute, t["compute"]) + max(0.0, t["last backward"] - last_backward) + t["nothing"]


def by_link(colls):
    """{"nvlink": bytes, "ib": bytes} per GPU per step."""
    return {k: sum(x.bytes for x in colls if x.link == k) for k in ("nvlink", "ib")}
