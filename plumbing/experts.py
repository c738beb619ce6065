"""
Expert parallelism for the MoE FFN (moe.py): each process holds a share of every MoE layer's routed experts, and the
rows the router sends to an expert travel to the process that holds it and back, by all-to-all.

    torchrun --nproc_per_node=8 train.py configs/paper_moe.py --parallel=fsdp --expert_parallel=8

The processes form groups of `expert_parallel` consecutive ranks (one node's GPUs, over NVLink); each group holds
one copy of all the routed experts, about n_routed / expert_parallel of them per process (`shares`), never
gathered; the copies in other groups are kept equal by an all-reduce of the experts' gradients once per step. The
routers, shared experts and everything else stay under FSDP2 / HSDP (parallel.shard). An expert's weights are a
DTensor sharded on its first dimension over the group, so sharded checkpoints hold the whole tensors and resume on
any expert-parallel size, or on one process. Dropless: every row reaches its expert, so the splits vary per step
and per layer, and the sizes travel first (a host sync per layer, as in any dropless all-to-all).
"""
import torch
import torch.distributed as dist
import torch.nn as nn


def expert_mesh(device_type, world, size):
    """The 2-D mesh (copies, experts): groups of `size` consecutive ranks split the experts; the groups are copies."""
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device_type, (world // size, size), mesh_dim_names=("copies", "experts"))


def shares(n, size):
    """How many of n experts each of `size` processes holds, as a DTensor splits dim 0 (torch.chunk's way):
    ceil(n / size) each, the last ones fewer, or none (254 over 8: seven 32s and a 30)."""
    chunk = -(-n // size)
    return [max(0, min(chunk, n - p * chunk)) for p in range(size)]


def split_experts(model, mesh):
    """Every MoE layer's routed experts (on the meta device, before the model is made) replaced by this process's
    share: a DTensor sharded on dim 0 over mesh["experts"], which init_weights and checkpoints treat as the whole
    tensor. Returns the parameters, which FSDP2 must leave alone."""
    from torch.distributed.tensor import DTensor, Shard
    group, split = mesh["experts"], []
    for m in model.modules():
        if not hasattr(m, "expert_group"):
            continue
        if m.n_routed < group.size():
            raise SystemExit(f"expert_parallel={group.size()}: more processes than the {m.n_routed} routed experts "
                             f"(moe_experts minus the shared ones); use at most {m.n_routed}")
        mine = shares(m.n_routed, group.size())[group.get_local_rank()]
        for name in ("w_gate_up", "w_down"):
            whole = getattr(m, name)
            local = torch.empty(mine, *whole.shape[1:], device=whole.device, dtype=whole.dtype)
            setattr(m, name, nn.Parameter(DTensor.from_local(local, group, [Shard(0)], run_check=False,
                                                             shape=whole.shape, stride=whole.stride())))
            split.append(getattr(m, name))
        m.expert_group = group.get_group()
    return split


class AllToAll(torch.autograd.Function):
    """all_to_all_single with variable splits; its backward sends the gradients back the way the rows came."""
    @staticmethod
    def forward(ctx, rows, send, receive, group):
        ctx.send, ctx.receive, ctx.group = send, receive, group
        out = rows.new_empty(sum(receive), *rows.shape[1:])
        # through the module's attribute at call time: a byte counter wrapping it sees every call
        dist.all_to_all_single(out, rows.contiguous(), receive, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return AllToAll.apply(grad, ctx.receive, ctx.send, ctx.group), None, None, None


def dispatch(rows, counts, compute, group):
    """rows [A, d]: this process's routed assignments sorted by expert, counts[e] of them for each of the n_routed
    experts (held in order: the first shares(n_routed, size)[0] by process 0, and so on). Sends each row to its
    expert's process, runs compute(rows, counts) there over the rows it received grouped by its local expert, and
    returns the outputs in the order of `rows`."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    held = shares(len(counts), size)
    # how many rows every process sends each of this process's experts: [size, held[rank]]
    arriving = counts.new_empty(size * held[rank])
    dist.all_to_all_single(arriving, counts, [held[rank]] * size, held, group=group)
    arriving = arriving.view(size, held[rank])
    # rows this process sends each process, and receives from each: read to the host together, one sync
    send, receive = torch.stack([torch.stack([c.sum() for c in counts.split(held)]), arriving.sum(1)]).tolist()
    got = AllToAll.apply(rows, send, receive, group)   # by sending process, within it by local expert
    expert = torch.arange(held[rank], device=rows.device).repeat(size).repeat_interleave(arriving.reshape(-1))
    order = torch.argsort(expert, stable=True)          # grouped by local expert, each in arrival order
    done = compute(got[order], arriving.sum(0))
    back = torch.empty_like(done).index_copy(0, order, done)   # in arrival order again
    return AllToAll.apply(back, receive, send, group)


def reduce_gradients(params, mesh, world):
    """After the step's backward pass: each expert's gradient, which the all-to-all already summed over the rows of
    its group's processes, summed over the copies and divided by the world size, as FSDP2 averages every other
    gradient over the processes."""
    copies = mesh["copies"]
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local()
        if copies.size() > 1:
            dist.all_reduce(g, group=copies.get_group())
        g /= world


def clip_gradients(params, max_norm):
    """torch.nn.utils.clip_grad_norm_ over parameters that live on several device meshes (experts on theirs, the rest
    on FSDP2's), whose norms torch's own cannot stack: each mesh's norm, then the total. The norm, before clipping,
    as a plain tensor."""
    groups = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(getattr(p, "device_mesh", None), []).append(p)
    if len(groups) <= 1:   # one mesh, or none: torch's own (FSDP2's norm is a DTensor)
        norm = torch.nn.utils.clip_grad_norm_([p for ps in groups.values() for p in ps], max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    norms = [torch.nn.utils.get_total_norm([p.grad for p in ps]) for ps in groups.values()]
    norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
    total = torch.stack(norms).norm()
    for ps in groups.values():
        torch.nn.utils.clip_grads_with_norm_(ps, max_norm, total)
    return total
