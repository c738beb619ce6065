"""Training speed: tokens/s, MFU and peak memory of a config's training step, and the block-causal attention
against plain causal attention.

    python bench/bench_train.py configs/toy.py                                # whatever device is there
    python bench/bench_train.py configs/toy.py --device=cuda --compile=True   # the toy config on one GPU
    # ~300M active parameters, 4096-token rows of text, images and video at 256 tokens per frame (SigLIP 2's
    # shapes with random weights, toy-world pictures at 224 px: nothing to download):
    python bench/bench_train.py configs/real.py --dataset=toyworld --tokenizer=bytes --encoder_weights=random \
        --decoder_weights=random --device=cuda
    python bench/bench_train.py configs/real.py ... --ffn=moe                 # MoE at the dense FFN's active FLOPs
    python bench/bench_train.py configs/real.py ... --what=attention          # block-causal vs causal attention

Batches are made and encoded before the clock starts, so this times the model alone (`python train.py` logs the
whole loop's tokens/s, MFU and data wait). One micro-batch of batch_size rows per optimizer step, as train.py
runs with gradient_accumulation_steps=1; MFU counts model.flops_per_token (6 N_active + the attention term)
against the GPU's bf16 peak.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import build  # noqa: E402
import train  # noqa: E402
from plumbing.build import gpu_peak_flops  # noqa: E402
from model import flex_block_mask, may_attend, training_losses  # noqa: E402
from moe import auxiliary_loss  # noqa: E402

BENCH = dict(what="train", steps=10, warmup=3, block_sizes="128,256")


def timed(fn, steps, warmup, device):
    """Median seconds of fn() over `steps` calls, after `warmup` calls (compilation happens there)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def setup(argv):
    c = train.configure({**train.DEFAULTS, **BENCH, "compile": False}, argv)
    dev = build.resolve_device(c.device)
    dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if dev.startswith("cuda") else "float32")
    tok, enc, data, model = train.build(c, dev)
    batches = [train.get_batch(data, enc, i, 0, c, dev) for i in range(4)]
    return c, dev, getattr(torch, dtype), model, batches


def bench_training(c, dev, dtype, model, batches):
    optimizer = train.configure_optimizer(model, c, dev, fused=dev.startswith("cuda"))
    run = build.compile_model(model) if c.compile else model
    gen = torch.Generator(dev).manual_seed(0)
    state = {"i": 0}

    def step():
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast(dev.split(":")[0], dtype, enabled=dtype != torch.float32):
            text, flow = training_losses(run, batch, gen)
            loss = c.lambda_lm * text + c.lambda_flow * flow + auxiliary_loss(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    dt = timed(step, c.steps, c.warmup, dev)
    total, active = model.num_params()
    tokens = c.batch_size * c.seq_len
    tok_s = tokens / dt
    peak = c.peak_flops or (gpu_peak_flops(dev) if dev.startswith("cuda") else 0.0)
    mfu = f"{100 * model.flops_per_token(c.seq_len) * tok_s / peak:.1f}%" if peak else "n/a (no GPU peak known)"
    memory = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if dev.startswith("cuda") else "n/a"
    frames = sum(len(b["cond"]) for b in batches) / len(batches)
    print(f"{c.ffn} FFN, {total / 1e6:.1f}M parameters ({active / 1e6:.1f}M active), {c.n_layer} layers x "
          f"{c.d_model}, {c.batch_size} x {c.seq_len} tokens per step ({frames:.0f} frames of "
          f"{model.cfg.tokens_per_frame} tokens), {dev} {str(dtype).split('.')[-1]}, compile={c.compile}")
    print(f"step {dt * 1e3:.1f} ms | {tok_s:,.0f} tokens/s | MFU {mfu} | peak memory {memory}")
    return tok_s


def bench_attention(c, dev, dtype, model, batches):
    """One layer's attention, forward and backward, on a real batch's document/frame layout: the hybrid mask as
    FlexAttention (at each block size) against causal attention by FlexAttention and by SDPA (flash on a GPU)."""
    from torch.nn.attention.flex_attention import create_block_mask
    import torch.nn.functional as F
    cfg = model.cfg
    B, S = batches[0]["doc"].shape
    D = cfg.d_model // cfg.n_head
    doc, frame = batches[0]["doc"], batches[0]["frame"]
    q = torch.randn(B, cfg.n_head, S, D, device=dev, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, cfg.n_kv_head, S, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    flex = torch.nn.attention.flex_attention.flex_attention
    flex = torch.compile(flex) if dev.startswith("cuda") else flex

    def hybrid(b, h, qi, ki):
        return may_attend(doc[b, qi], doc[b, ki], frame[b, qi], frame[b, ki], qi, ki)
    runs = {"causal, SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
    for size in map(int, c.block_sizes.split(",")):
        for name, rule, rows in (("causal", lambda b, h, qi, ki: ki <= qi, None), ("block-causal", hybrid, B)):
            mask = create_block_mask(rule, rows, None, S, S, device=dev, BLOCK_SIZE=size)
            runs[f"{name}, flex {size} ({100 - mask.sparsity():.0f}% of blocks)"] = \
                lambda m=mask: flex(q, k, v, block_mask=m, enable_gqa=True)
    flex_block_mask(doc, frame)   # the model's own construction, to check it builds at this size
    print(f"attention fwd+bwd, {B} x {S} tokens, {cfg.n_head} query / {cfg.n_kv_head} kv heads of {D}, "
          f"{dev} {str(dtype).split('.')[-1]}")
    base = None
    for name, fn in runs.items():
        try:
            dt = timed(lambda: torch.autograd.backward(fn(), g), c.steps, c.warmup, dev)
        except Exception as e:   # e.g. no FlexAttention backward on the CPU, or a block size the kernel rejects
            print(f"  {name:<44} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        base = base or dt
        print(f"  {name:<44} {dt * 1e3:8.2f} ms  ({dt / base:.2f}x causal SDPA)")


def main(argv):
    c, dev, dtype, model, batches = setup(argv)
    if c.what not in ("train", "attention"):
        raise SystemExit(f"what={c.what!r}: use 'train' or 'attention'")
    return (bench_training if c.what == "train" else bench_attention)(c, dev, dtype, model, batches)


if __name__ == "__main__":
    main(sys.argv[1:])
