"""Checkpoints under FSDP2: a sharded save and load (torch.distributed.checkpoint, every process its part) against
the whole-model gather to process 0 (one torch.save, every process loading the whole file on resume), the time each
took and the bytes each process wrote.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 bench/bench_checkpoint.py configs/toy.py \
        --d_model=512 --n_layer=8 --n_head=8 --n_kv_head=8 --gradient_accumulation_steps=2 --device=cpu

Random weights and one optimizer step (so AdamW's moments exist); each way is timed `rounds` times, the median kept.
"""
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import parallel  # noqa: E402
import train  # noqa: E402
from plumbing.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

BENCH = dict(rounds=3, folder="")


def written(folder, rank):
    """Bytes this process wrote: its shard file(s), or (gathered) the whole file on process 0."""
    names = [n for n in os.listdir(folder) if n.startswith(f"__{rank}_") or (rank == 0 and n in (".metadata",
                                                                                                "ckpt.pt"))]
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def median_time(fn, rounds):
    times = []
    for _ in range(rounds):
        dist.barrier()
        t = time.perf_counter()
        fn()
        dist.barrier()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(argv):
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, get_state_dict)
    c = train.configure({**train.DEFAULTS, **BENCH, "parallel": "fsdp"}, argv)
    with parallel.processes(c) as run:
        model = train.build(c, run.dev, meta=True)[3]
        model, trained, optimizer = parallel.wrap(run, c, model, None,
                                                  lambda m, fused: train.configure_optimizer(m, c, run.dev, fused))
        for p in model.parameters():   # one step, so the optimizer has its moments
            p.grad = torch.zeros_like(p)
        optimizer.step()
        n = sum(p.numel() for p in model.parameters())
        root = [c.folder or (tempfile.mkdtemp(prefix="bench_ckpt_") if run.master else None)]
        dist.broadcast_object_list(root)   # one folder for all processes
        root = root[0]
        sharded, gathered = os.path.join(root, "sharded"), os.path.join(root, "gathered")
        meta = dict(step=1, config=vars(c), model_args=vars(model.cfg), loss_center=None, tokens=0, data_state={})
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)

        def save_sharded():
            if run.master:
                shutil.rmtree(sharded, ignore_errors=True)
                os.makedirs(sharded)
            dist.barrier()
            weights, opt = get_state_dict(model, optimizer)
            parallel.save_sharded(os.path.join(sharded, "ckpt.pt"), dict(model=weights, optimizer=opt), meta,
                                  run.master)

        def save_gathered():   # the way before: everything gathered to process 0, one file
            weights, opt = get_model_state_dict(model, options=full), get_optimizer_state_dict(model, optimizer,
                                                                                               options=full)
            if run.master:
                os.makedirs(gathered, exist_ok=True)
                save_checkpoint(os.path.join(gathered, "ckpt.pt"), dict(meta, model=weights, optimizer=opt))

        def load(path):
            return lambda: parallel.load_training_state(path, load_checkpoint(path), model, optimizer, whole=False)

        rows = {"sharded (DCP)": (save_sharded, load(os.path.join(sharded, "ckpt.pt")), sharded),
                "gathered to process 0": (save_gathered, load(os.path.join(gathered, "ckpt.pt")), gathered)}
        for name, (save, load_fn, folder) in rows.items():
            t_save = median_time(save, c.rounds)
            t_load = median_time(load_fn, c.rounds)
            if name.startswith("sharded"):
                folder = os.path.join(folder, load_checkpoint(os.path.join(folder, "ckpt.pt"))["shards"])
            sizes = [None] * run.world
            dist.all_gather_object(sizes, written(folder, run.rank))
            if run.master:
                print(f"| {name} | {n / 1e6:.1f}M | {run.world} | {t_save:.2f} | {t_load:.2f} | "
                      + " / ".join(f"{s / 2 ** 20:.0f}" for s in sizes) + " |")
        if run.master and not c.folder:
            shutil.rmtree(root)


if __name__ == "__main__":
    main(sys.argv[1:])
