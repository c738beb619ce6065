"""Where a training step's time goes: the step's tokens/s and its top ops by self CPU time (torch.profiler), so a
change to the model shows what it costs.

    OMP_NUM_THREADS=1 python bench/bench_step.py configs/toy.py              # the toy world: text, images, video
    # text only at nanoGPT's shakespeare size, on the plays that bench/text_vs_nanogpt.py prepares:
    OMP_NUM_THREADS=1 python bench/bench_step.py --dataset=shards --mixture='{"text": 1.0}' \
        --text_data="$HOME/.cache/text_vs_nanogpt/ours_train/*.bin" --ffn=shared --n_kv_head=4
    ... --compile=True      # the same step through torch.compile (on the CPU it needs a C++ compiler)
    ... --top=0             # tokens/s only, no profile

Batches are made before the clock starts and reused, so this times the model's step alone: forward, backward,
gradient clipping and AdamW, one micro-batch of batch_size rows, as train.py runs it.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import build  # noqa: E402
import train  # noqa: E402
from model import training_losses  # noqa: E402
from moe import auxiliary_loss  # noqa: E402

BENCH = dict(steps=20, warmup=5, repeats=3, top=15, profile_steps=5)


def main(argv):
    c = train.configure({**train.DEFAULTS, **BENCH, "compile": False}, argv)
    dev = build.resolve_device(c.device)
    torch.manual_seed(c.seed)
    tok, enc, data, model = train.build(c, dev)
    batches = [train.get_batch(data, enc, i, 0, c, dev) for i in range(4)]
    optimizer = train.configure_optimizer(model, c, dev, fused=dev.startswith("cuda"))
    run = build.compile_model(model) if c.compile else model
    gen = torch.Generator(dev).manual_seed(0)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)

    def step(i):
        text, flow = training_losses(run, batches[i % len(batches)], gen)
        (c.lambda_lm * text + c.lambda_flow * flow + auxiliary_loss(model)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(c.warmup):   # compilation (and the allocator's first sizes) happen here
        step(i)
    times, cpu = [], []   # the best of a few medians: on a shared machine the other jobs only ever add time
    for _ in range(c.repeats):
        sync()
        t, p = [], []
        for i in range(c.steps):
            t0, p0 = time.perf_counter(), time.process_time()
            step(i)
            sync()
            t.append(time.perf_counter() - t0)
            p.append(time.process_time() - p0)
        times.append(sorted(t)[len(t) // 2])
        cpu.append(sorted(p)[len(p) // 2])
    dt = min(times)
    tokens = c.batch_size * c.seq_len
    frames = sum(len(b["cond"]) for b in batches) / len(batches)
    print(f"{c.ffn} FFN, {c.n_layer} layers x {c.d_model}, {c.n_head}/{c.n_kv_head} heads, {c.batch_size} x "
          f"{c.seq_len} tokens per step ({frames:.0f} frames), {dev}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, compile={c.compile}")
    print(f"step {dt * 1e3:.1f} ms | {tokens / dt:,.0f} tokens/s (medians of {c.repeats} x {c.steps} steps: "
          + ", ".join(f"{tokens / x:,.0f}" for x in times) + ")")
    print(f"CPU time per step {min(cpu) * 1e3:.1f} ms ({tokens / min(cpu):,.0f} tokens per CPU second: steadier than "
          f"wall time when other jobs share the cores)")
    if c.top:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            for i in range(c.profile_steps):
                step(i)
            sync()
        print(f"top ops by self CPU time over {c.profile_steps} steps (the profiler adds its own overhead):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=c.top, max_name_column_width=40))
    return tokens / dt


if __name__ == "__main__":
    main(sys.argv[1:])
