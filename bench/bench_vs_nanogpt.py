"""This project's text step against nanoGPT's, interleaved in one process: the same size (nanoGPT's shakespeare
config: 4 layers, d_model 128, 4 heads, 256-token rows, batch 16), each timed by the CPU time of its steps, a few
steps of one then a few of the other. Other jobs on the machine slow both alike, so the ratio holds under load
(`../shared/bench/text_vs_nanogpt.sh` runs the two trainings one after the other, and measures loss as well).

    OMP_NUM_THREADS=1 python bench/bench_vs_nanogpt.py --nanogpt=../shared/peers/nanoGPT
    ... --compile=True       # also this project's step with its blocks compiled (on the CPU: needs a C++ compiler)

One step = forward, backward, gradient clipping and AdamW on random bytes (nothing to download), each of this
project's rows one document, as text shards give them.
"""
import copy
import importlib.util
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from data import collate, text_example, to_device  # noqa: E402
from model import training_losses  # noqa: E402

BENCH = dict(nanogpt="../shared/peers/nanoGPT", rounds=8, steps=3, mixture={"text": 1.0}, tokenizer="bytes",
             n_layer=4, n_head=4, n_kv_head=4, d_model=128, ffn="shared", seq_len=256, batch_size=16, device="cpu")


def nanogpt_step(folder, c):
    path = os.path.join(folder, "model.py")
    if not os.path.isfile(path):
        raise SystemExit(f"no nanoGPT at {folder}: pass --nanogpt=<a checkout of karpathy/nanoGPT>")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    model = nano.GPT(nano.GPTConfig(block_size=c.seq_len, vocab_size=256, n_layer=c.n_layer, n_head=c.n_head,
                                    n_embd=c.d_model, dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    rows = torch.randint(0, 256, (4, c.batch_size, c.seq_len + 1))

    def step(i):
        _, loss = model(rows[i % 4, :, :-1].contiguous(), rows[i % 4, :, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def our_step(model, batches, c):
    optimizer = train.configure_optimizer(model, c, "cpu", fused=False)

    def step(i):
        text, flow = training_losses(model, batches[i % len(batches)], torch.Generator().manual_seed(i))
        (text + flow).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main(argv):
    c = train.configure({**train.DEFAULTS, **BENCH, "compile": False}, argv)
    torch.manual_seed(c.seed)
    tok, enc, data, model = train.build(c, "cpu")
    batches = []
    for _ in range(4):
        rows = [[text_example(tok, bytes(torch.randint(32, 127, (c.seq_len - 2,)).tolist()).decode())]
                for _ in range(c.batch_size)]
        batch = to_device(collate(rows, c.seq_len, enc.tokens_per_frame, tok.pad), "cpu")
        batch.pop("images")
        batches.append(dict(batch, latents=torch.zeros(0, enc.tokens_per_frame, enc.latent_dim)))
    arms = {"nanoGPT": nanogpt_step(c.nanogpt, c), "this project": our_step(model, batches, c)}
    if c.compile:
        arms["this project, compiled"] = our_step(train.compile_model(copy.deepcopy(model), "cpu"), batches, c)
    for step in arms.values():   # warm-up: compilation, the allocator's first sizes
        for i in range(2):
            step(i)
    times = {name: [] for name in arms}
    for _ in range(c.rounds):
        for name, step in arms.items():
            for i in range(c.steps):
                t0 = time.process_time()
                step(i)
                times[name].append(time.process_time() - t0)
    real = sum(int((b["doc"] >= 0).sum()) for b in batches) / len(batches)   # this project's rows can end in padding
    base = sorted(times["nanoGPT"])[len(times["nanoGPT"]) // 2]
    print(f"{c.n_layer} layers x {c.d_model}, {c.batch_size} x {c.seq_len} tokens, 1 step = forward + backward + "
          f"clip + AdamW, {torch.get_num_threads()} thread(s), torch {torch.__version__}; CPU ms per step, medians "
          f"of {c.rounds} x {c.steps} interleaved")
    ratios = {}
    for name, ts in times.items():
        ms = sorted(ts)[len(ts) // 2]
        tokens = c.batch_size * c.seq_len if name == "nanoGPT" else real
        ratios[name] = tokens / ms / (c.batch_size * c.seq_len / base)
        print(f"{name:24s} {ms * 1e3:7.1f} ms  {tokens / ms:9,.0f} real tokens per CPU second  "
              f"{ratios[name]:.3f}x nanoGPT")
    return ratios


if __name__ == "__main__":
    main(sys.argv[1:])
