"""This project's training step against nanoGPT's, interleaved in one process at the same size: a few steps of one,
then a few of the other, for several rounds, so that other jobs on the machine slow both alike (the ratio holds
under load; `bench/text_vs_nanogpt.py` runs the two trainings one after the other and measures loss too).

    # CPU, nanoGPT's shakespeare size (4 layers, d_model 128, 4 heads, 256-token rows, batch 16), CPU time per step
    OMP_NUM_THREADS=1 python bench/bench_vs_nanogpt.py --nanogpt=<a checkout of karpathy/nanoGPT>
    ... --compile=True       # also this project's step compiled (on the CPU each block; needs a C++ compiler)
    # GPU: a ~300M model at 4,096 positions, bf16 autocast, both compiled; --rows=toy gives this project mixed rows
    # of text, images and video (the toy world) while nanoGPT reads as many text tokens
    python bench/bench_vs_nanogpt.py --nanogpt=<nanoGPT checkout> --device=cuda --compile=True --n_layer=24 \
        --d_model=1024 --n_head=16 --n_kv_head=16 --seq_len=4096 --batch_size=4 --rows=toy

One step = forward, backward, gradient clipping and AdamW, on random bytes (--rows=text: one document a row, as
text shards give them) or toy-world rows; nothing is downloaded. nanoGPT's checkout is only imported (its
model.py), never copied here.
"""
import copy
import importlib.util
import os
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import build  # noqa: E402
import train  # noqa: E402
from data import collate, text_example, to_device  # noqa: E402
from model import training_losses  # noqa: E402

BENCH = dict(nanogpt="", rounds=8, steps=3, rows="text", mixture={"text": 1.0},
             tokenizer="bytes", n_layer=4, n_head=4, n_kv_head=4, d_model=128, ffn="shared", seq_len=256,
             batch_size=16, device="cpu")


def nanogpt_step(c, dev, compile_it):
    path = os.path.join(c.nanogpt, "model.py")
    if not os.path.isfile(path):
        raise SystemExit(f"no nanoGPT at {c.nanogpt}: pass --nanogpt=<a checkout of karpathy/nanoGPT>")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    model = nano.GPT(nano.GPTConfig(block_size=c.seq_len, vocab_size=256, n_layer=c.n_layer, n_head=c.n_head,
                                    n_embd=c.d_model, dropout=0.0, bias=False)).to(dev)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), torch.device(dev).type)
    run = torch.compile(model) if compile_it else model
    rows = torch.randint(0, 256, (4, c.batch_size, c.seq_len + 1), device=dev)

    def step(i):
        _, loss = run(rows[i % 4, :, :-1].contiguous(), rows[i % 4, :, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def our_step(model, batches, c, dev, compile_it):
    optimizer = train.configure_optimizer(model, c, dev, fused=dev.startswith("cuda"))
    run = build.compile_model(model) if compile_it else model

    def step(i):
        text, flow = training_losses(run, batches[i % len(batches)], torch.Generator(dev).manual_seed(i))
        (text + flow).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def text_batches(tok, enc, c, dev):
    batches = []
    for _ in range(4):
        rows = [[text_example(tok, bytes(torch.randint(32, 127, (c.seq_len - 2,)).tolist()).decode())]
                for _ in range(c.batch_size)]
        batch = to_device(collate(rows, c.seq_len, enc.tokens_per_frame, tok.pad), dev)
        batch.pop("images")
        batches.append(dict(batch, latents=torch.zeros(0, enc.tokens_per_frame, enc.latent_dim, device=dev)))
    return batches


def main(argv):
    c = train.configure({**train.DEFAULTS, **BENCH, "compile": False}, argv)
    if c.rows not in ("text", "toy"):
        raise SystemExit(f"rows={c.rows!r}: use 'text' or 'toy'")
    if c.rows == "toy" and c.mixture == BENCH["mixture"]:
        c.mixture = train.DEFAULTS["mixture"]
    dev = build.resolve_device(c.device)
    gpu = dev.startswith("cuda")
    torch.manual_seed(c.seed)
    tok, enc, data, model = train.build(c, dev)
    batches = (text_batches(tok, enc, c, dev) if c.rows == "text" else
               [train.get_batch(data, enc, i, 0, c, dev) for i in range(4)])
    # on a GPU both compiled or neither (the CPU compares eager with eager, and adds our compiled step)
    arms = {"nanoGPT": nanogpt_step(c, dev, c.compile and gpu),
            "this project": our_step(model, batches, c, dev, c.compile and gpu)}
    if c.compile and not gpu:
        arms["this project, compiled"] = our_step(copy.deepcopy(model), batches, c, dev, True)
    autocast = torch.autocast("cuda", torch.bfloat16) if gpu else nullcontext()
    clock = time.perf_counter if gpu else time.process_time   # CPU time on a CPU: steadier under other jobs
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    times = {name: [] for name in arms}
    with autocast:
        for step in arms.values():   # warm-up: compilation, the allocator's first sizes
            for i in range(3):
                step(i)
        for _ in range(c.rounds):
            for name, step in arms.items():
                sync()
                t0 = clock()
                for i in range(c.steps):
                    step(i)
                sync()
                times[name].append((clock() - t0) / c.steps)
    real = sum(int((b["doc"] >= 0).sum()) for b in batches) / len(batches)   # this project's rows can end in padding
    base = sorted(times["nanoGPT"])[len(times["nanoGPT"]) // 2]
    print(f"{c.n_layer} layers x {c.d_model}, {c.batch_size} x {c.seq_len} positions, {c.rows} rows, {dev}"
          f"{' bf16' if gpu else ''}, 1 step = forward + backward + clip + AdamW, torch {torch.__version__}; "
          f"{'wall' if gpu else 'CPU'} ms per step, medians of {c.rounds} rounds of {c.steps} steps, interleaved")
    ratios = {}
    for name, ts in times.items():
        t = sorted(ts)[len(ts) // 2]
        tokens = c.batch_size * c.seq_len if name == "nanoGPT" else real
        ratios[name] = tokens / t / (c.batch_size * c.seq_len / base)
        print(f"{name:24s} {t * 1e3:8.1f} ms  {tokens / t:11,.0f} real tokens/s  {ratios[name]:.3f}x nanoGPT")
    return ratios


if __name__ == "__main__":
    main(sys.argv[1:])
