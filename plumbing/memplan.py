"""
Memory and time of a training run before it starts: for a config and a number of GPUs, the bytes per GPU of the
parameters, gradients, optimizer state and activations, whether they fit, the largest micro-batch that does, the
run's wall time and GPU-hours at an assumed MFU, and with communication (plumbing/commplan.py): the bytes per GPU
per step over NVLink and InfiniBand, the step's time with and without overlap, for the config's layout and for
every layout that could run it (DDP, FSDP, HSDP, expert parallelism), with the fastest that fits.

    python -m plumbing.memplan configs/paper_moe.py --gpus=64                       # the paper's MoE on 8 nodes of 8
    python -m plumbing.memplan configs/paper_moe.py --gpus=64 --tokens=57e9 --mfu=0.3 --moe_experts=1008
    python -m plumbing.memplan configs/real.py --gpus=8 --gpu_memory_gib=80 --batch_size=16

Parameters are counted on the meta device (nothing allocated). Under FSDP2 (parallel="fsdp") every GPU holds
1/gpus of the float32 master weights, gradients (kept sharded while micro-batches accumulate) and AdamW's m and v,
plus the bf16 weights FSDP2 gathers for the root module and two blocks at a time (MixedPrecisionPolicy: bf16
compute, float32 reduction); under DDP each GPU holds all of it, and DDP's gradient buckets. Activations are
measured, not modelled: the training loss runs on the CPU at small widths in the step's precision, and saved-tensor
hooks (torch.autograd.graph.saved_tensors_hooks) add up what autograd keeps for the backward pass (each storage
once, weights not counted). Measured at three widths and two batch sizes, once and twice as deep, they split into
bytes per token and per micro-batch, per layer and outside the layers, which scale to the config's width (affine
per token, quadratic per micro-batch: weight copies) and micro-batch. The measurement is eager PyTorch with
SDPA's flash kernel standing in for FlexAttention (both keep q, k, v, the output and the log-sum-exp); compiled
steps may keep less. With activation checkpointing a block keeps only its input, and one block's activations live
again while its backward pass runs. tests/plumbing/test_memplan.py checks the prediction against a measurement at
another width, length, depth and batch.
"""
import dataclasses
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

import train
from data import FRAME, SPECIAL_TOKENS, Example, Tokenizer, collate, to_device
from encoders import SEMANTIC, build_encoder
from model import ModelConfig, UnifiedTransformer, training_losses
from plumbing import commplan, fastpaths
from plumbing.logs import read_log
from plumbing.settings import cli, configure, settings

# ---- the plan
gpus = 8                      # GPUs the run shards its state over (FSDP2) or replicates it on (DDP)
gpu_memory_gib = 80.0         # memory of one GPU
headroom = 0.1                # share of it kept free: CUDA context, NCCL buffers, the allocator's fragmentation
vocab = 0                     # vocabulary size; 0: the config's tokenizer's; 128256: LLaMA-3's, the paper's
tokens = 0.0                  # the run's tokens, for its time; 0: max_iters steps of the config's batch
mfu = 0.4                     # the model-FLOPs utilisation to assume (train.py's mfu: recomputation not counted)
metrics = ""                  # a run's metrics.jsonl: its peak memory, tokens/s and MFU beside the prediction
# Communication (plumbing/commplan.py). H100/H200 SXM: NVLink 4 moves 900 GB/s per GPU counting both directions,
# 450 each way, which is what a ring's bytes per rank travel at; 400 Gb/s NDR InfiniBand, one adapter per GPU, is
# 50 GB/s each way, of which a ring keeps ~90% busy. A collective whose group spans nodes runs at InfiniBand's rate.
gpus_per_node = 8             # GPUs joined by NVLink
nvlink_gb_s = 450.0           # GB/s each way per GPU within a node
ib_gb_s = 45.0                # GB/s each way per GPU across nodes

# n_vocab of tiktoken's encodings (largest id + 1), so no BPE file is needed to size a model
TIKTOKEN_VOCAB = {"gpt2": 50257, "r50k_base": 50257, "p50k_base": 50281, "cl100k_base": 100277,
                  "o200k_base": 200019}
# the VAEs (diffusers, weights needed to build): (latent channels per token after PixelUnshuffle(2), parameters)
VAE_SHAPES = {"sdvae": (16, 83.7e6), "flux": (64, 83.8e6)}
LOSS_CHUNK_BYTES = 16         # per logit of the loss's chunk in its backward: bf16, float32, log-softmax, gradient
GIB = 2 ** 30


# ----------------------------------------------------------------------------------------------------------------
# The model of a config, without downloading its tokenizer or encoder.

def model_config(c, vocab=0):
    if vocab:
        V = vocab
    elif c.tokenizer in TIKTOKEN_VOCAB:
        V = TIKTOKEN_VOCAB[c.tokenizer] + len(SPECIAL_TOKENS)
    else:
        try:
            V = Tokenizer(c.tokenizer).vocab_size
        except ValueError as e:
            raise SystemExit(f"{e}; or give the vocabulary's size: --vocab=N")
    N, C, _ = frozen_encoder(c)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        return ModelConfig(**{k: v for k, v in vars(c).items() if k in fields}, vocab_size=V,
                           max_seq_len=c.seq_len, latent_dim=C, tokens_per_frame=N)
    except ValueError as e:
        raise SystemExit(f"bad configuration: {e}")


def frozen_encoder(c):
    """(tokens per frame, latent channels, parameters of the frozen encoder and its decoder, which every GPU
    holds in bf16), built on the meta device with random weights (nothing downloaded)."""
    if c.encoder == "pixels":
        return (c.image_size // c.patch_size) ** 2, 3 * c.patch_size ** 2, 0
    if c.encoder in VAE_SHAPES:
        return (c.image_size // 16) ** 2, *VAE_SHAPES[c.encoder]
    if c.encoder not in SEMANTIC:
        raise SystemExit(f"unknown encoder {c.encoder!r}: available: pixels, {', '.join([*SEMANTIC, *VAE_SHAPES])}")
    with torch.device("meta"):
        enc = build_encoder(c.encoder, c.image_size, c.patch_size, "meta", "random", c.decoder_weights)
    modules = [enc.tower] + ([enc.decoder] if enc.decoder is not None else [])
    return enc.tokens_per_frame, enc.latent_dim, sum(p.numel() for m in modules for p in m.parameters())


def on_meta(cfg):
    try:
        with torch.device("meta"):
            return UnifiedTransformer(cfg)
    except ValueError as e:   # a setting the model cannot be built with (an MoE's top-k, ...)
        raise SystemExit(f"bad configuration: {e}")


# ----------------------------------------------------------------------------------------------------------------
# Activations, measured.

def measurement_batch(rows, seq_len, vocab, channels):
    """rows identical rows of seq_len positions, half text and half two frames of seq_len / 4 tokens."""
    N = seq_len // 4
    text = seq_len - 2 * (N + 2) - 2
    ids = [1] + [i % vocab for i in range(text)] + [2, FRAME, 3] * 2 + [4]
    b = to_device(collate([[Example(ids, [None, None], [False, False])]] * rows, seq_len, N, 0), "cpu")
    b["latents"] = torch.randn(2 * rows, N, channels, generator=torch.Generator().manual_seed(0))
    return b


def narrowed(cfg, width, n_layer, seq_len):
    """The config at another width (every width in proportion, the heads kept) and depth, a 16-token vocabulary
    (the text loss's part is added by its formula: chunked, it keeps only the final hidden states)."""
    return dataclasses.replace(cfg, d_model=width, n_layer=n_layer, ffn_hidden=round(cfg.ffn_hidden * width /
                               cfg.d_model), vocab_size=16, max_seq_len=seq_len, tokens_per_frame=seq_len // 4,
                               attention="sdpa")


def saved_bytes(cfg, rows, seq_len, precision):
    """Bytes autograd keeps between the forward and backward pass of the training loss, on the CPU: "bf16" as
    FSDP2 computes (bf16 weights under bf16 autocast, the MoE routers' in float32: parallel.shard), "autocast" as DDP
    (float32 weights), "float32"."""
    torch.manual_seed(0)
    model = UnifiedTransformer(cfg)
    if precision == "bf16":
        model.to(torch.bfloat16)
        for block in model.blocks:
            if hasattr(block.ffn, "router"):
                block.ffn.router.float()
    model.attention_mask = lambda doc, frame, cache=None: "causal"   # FlexAttention keeps no [S, S] mask either
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t
    b = measurement_batch(rows, seq_len, cfg.vocab_size, cfg.latent_dim)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", torch.bfloat16, enabled=precision != "float32"):
        training_losses(model, b, torch.Generator().manual_seed(0))
    return sum(kept.values())


def measure_activations(cfg, precision, seq_len=128):
    """{per_token_layer, per_token_other}: affine functions of the width; {per_batch_layer, per_batch_other}:
    quadratic ones (np.poly1d), from measurements at widths of 2, 4 and 6 per head."""
    widths = [cfg.n_head * k for k in (2, 4, 6)]
    parts = {k: [] for k in ("per_token_layer", "per_token_other", "per_batch_layer", "per_batch_other")}
    for w in widths:
        m = {(L, B): saved_bytes(narrowed(cfg, w, L, seq_len), B, seq_len, precision) for L in (1, 2) for B in (1, 2)}
        per_token = {L: (m[L, 2] - m[L, 1]) / seq_len for L in (1, 2)}
        per_batch = {L: m[L, 1] - seq_len * per_token[L] for L in (1, 2)}
        for name, by_depth in (("per_token", per_token), ("per_batch", per_batch)):
            parts[f"{name}_layer"].append(by_depth[2] - by_depth[1])
            parts[f"{name}_other"].append(2 * by_depth[1] - by_depth[2])
    return {k: np.poly1d(np.polyfit(widths, v, 1 if k.startswith("per_token") else 2)) for k, v in parts.items()}


def precision_of(c):
    bf16 = c.dtype in ("auto", "bfloat16", "float16")   # float16 keeps as many bytes as bf16
    return ("autocast" if c.parallel == "ddp" else "bf16") if bf16 else "float32"


def kept_bytes(fit, width, n_layer, n_tokens):
    """What the fit predicts autograd keeps for a micro-batch of n_tokens at this width and depth."""
    per_token = n_layer * fit["per_token_layer"](width) + fit["per_token_other"](width)
    return n_tokens * per_token + n_layer * fit["per_batch_layer"](width) + fit["per_batch_other"](width)


def activation_bytes(cfg, fit, rows, seq_len, checkpointing, precision):
    """Bytes of activations of one micro-batch at the backward pass's peak: what is kept between the passes, plus
    the largest transient, a layer's backward pass (its gradients, taken to be as large as its activations) or the
    text loss's chunk. Under activation checkpointing a block keeps its input, and its activations come back while
    its backward pass runs."""
    T, d, L = rows * seq_len, cfg.d_model, cfg.n_layer
    stream = 2 if precision == "bf16" else 4                          # bytes of a residual-stream entry
    logits = T * cfg.vocab_size
    loss = 4 * logits if logits <= fastpaths.MAX_LOGITS else T * d * stream   # one chunk: its log-softmax
    layer = kept_bytes(fit, d, 1, T) - kept_bytes(fit, d, 0, T)
    transient = max(layer, LOSS_CHUNK_BYTES * min(logits, fastpaths.MAX_LOGITS))
    if not checkpointing:
        return kept_bytes(fit, d, L, T) + loss + transient
    return kept_bytes(fit, d, 1, T) + loss + L * T * d * stream + transient


# ----------------------------------------------------------------------------------------------------------------
# The plan.

def sizes_of(c):
    """What a plan needs of a config: its model on the meta device, its frozen encoder's parameters, and the
    activation fit in the step's precision (fits in others are measured when a layout asks: fit_of)."""
    cfg = model_config(c, c.vocab)
    sizes = SimpleNamespace(model=on_meta(cfg), encoder=frozen_encoder(c)[2], fits={})
    sizes.fit = fit_of(sizes, precision_of(c))
    return sizes


def fit_of(sizes, precision):
    if precision not in sizes.fits:
        sizes.fits[precision] = measure_activations(sizes.model.cfg, precision)
    return sizes.fits[precision]


def state_bytes(model, c, precision):
    """Parameters, gradients, optimizer state and the working copies of weights and gradients, per GPU, under c's
    layout: DDP replicates everything; FSDP2 shards it over all GPUs, HSDP over shard_processes; expert
    parallelism keeps 1/expert_parallel of the routed experts whole (float32 weights, gradients, m and v) and
    shards the rest."""
    P = sum(p.numel() for p in model.parameters())
    if c.parallel == "ddp":
        return dict(parameters=4 * P, gradients=4 * P, optimizer=8 * P, working=4 * P)   # DDP's gradient buckets
    ep, low = c.expert_parallel, 4 if precision == "float32" else 2
    routed = [commplan.routed_params(b) if ep > 1 else 0 for b in model.blocks]
    block = max(sum(p.numel() for p in b.parameters()) - r for b, r in zip(model.blocks, routed))
    root = P - sum(p.numel() for b in model.blocks for p in b.parameters())
    mine = [commplan.routed_params(b, ep) if ep > 1 else 0 for b in model.blocks]   # the largest share's
    held = (P - sum(routed)) / commplan.shard_size(c) + sum(mine)
    # two blocks gathered (one computing, one prefetched), one block's gradients reduced; under expert parallelism
    # one layer's local experts copied to bf16 for the grouped GEMM, and their bf16 gradients
    working = 2 * low * root + 2 * low * block + (low + 4) * block + (4 * max(mine) if low == 2 else 0)
    return dict(parameters=4 * held, gradients=4 * held, optimizer=8 * held, working=working)


def plan(c, sizes, rows, checkpointing):
    """Bytes per GPU of each part, and their total, at micro-batches of `rows` rows."""
    state = state_bytes(sizes.model, c, precision_of(c))
    act = activation_bytes(sizes.model.cfg, fit_of(sizes, precision_of(c)), rows, c.seq_len, checkpointing,
                           precision_of(c))
    parts = dict(state, encoder=2 * sizes.encoder, activations=act)   # the frozen encoder: bf16, on every GPU
    return dict(parts, total=sum(parts.values()))


def largest_micro_batch(c, sizes, checkpointing, usable):
    """Rows of seq_len per micro-batch that fit in the usable bytes (0 if not even one)."""
    rows = 0
    while rows < 4096 and plan(c, sizes, rows + 1, checkpointing)["total"] <= usable:
        rows += 1
    return rows


def run_time(c, model):
    """(tokens, FLOPs per token, wall seconds, GPU-hours) at the assumed MFU of the peak."""
    per_step = c.batch_size * c.seq_len * c.gradient_accumulation_steps
    n_tokens = c.tokens or c.max_iters * per_step
    per_token = model.flops_per_token(c.seq_len)
    seconds = n_tokens * per_token / (c.gpus * (c.peak_flops or 989e12) * c.mfu)
    return n_tokens, per_token, seconds, seconds * c.gpus / 3600


# ----------------------------------------------------------------------------------------------------------------
# Layouts: memory, communication (plumbing/commplan.py) and step time of each way to spread the run.

def layout_name(c):
    S = commplan.shard_size(c)
    name = {"ddp": "DDP", "fsdp": "FSDP", "hsdp": f"HSDP {S}x{c.gpus // S}"}[c.parallel]
    return name + (f" EP{c.expert_parallel}" if c.expert_parallel > 1 else "")


def layout_row(c, sizes):
    """A layout's memory per GPU (the config's micro-batch and checkpointing), bytes per GPU per step by link, and
    the step's seconds and the run's hours without and with overlap."""
    colls = commplan.collectives(sizes.model, c)
    n_tokens, _, seconds, _ = run_time(c, sizes.model)
    steps = n_tokens / (c.batch_size * c.seq_len * c.gradient_accumulation_steps)
    serial, overlapped = commplan.step_seconds(c, colls, seconds / steps)
    return dict(name=layout_name(c), memory=plan(c, sizes, c.batch_size, c.activation_checkpointing)["total"],
                **commplan.by_link(colls), compute=seconds / steps, serial=serial, overlapped=overlapped,
                hours=(steps * serial / 3600, steps * overlapped / 3600))


def candidates(c, model):
    """The layouts weighed on c.gpus: DDP, FSDP and, over whole nodes, HSDP with one node per shard group; for an
    MoE each sharded one also with expert parallelism over every divisor of the GPU count up to the number of
    routed experts (which need not split evenly: experts.shares)."""
    routed = {b.ffn.n_routed for b in model.blocks if commplan.routed_params(b)}
    eps = [e for e in range(1, c.gpus + 1) if c.gpus % e == 0 and e <= min(routed)] if routed else [1]
    shards = [("fsdp", 0)] + [("hsdp", c.gpus_per_node)] * (c.gpus > c.gpus_per_node and c.gpus % c.gpus_per_node == 0)
    return [SimpleNamespace(**{**vars(c), "parallel": "ddp", "expert_parallel": 1})] + \
        [SimpleNamespace(**{**vars(c), "parallel": p, "shard_processes": s, "expert_parallel": e})
         for p, s in shards for e in eps]


def recommended(rows, usable):
    """The fastest layout with overlap among those that fit (the less traffic breaking a tie), or None."""
    return min((r for r in rows if r["memory"] <= usable), key=lambda r: (r["overlapped"], r["serial"]), default=None)


def layout_table(c, sizes, usable):
    rows = [layout_row(layout, sizes) for layout in candidates(c, sizes.model)]
    best = recommended(rows, usable)
    lines = [f"layouts on {c.gpus} GPU(s), {c.gpus_per_node} a node (NVLink {c.nvlink_gb_s:g} GB/s, InfiniBand "
             f"{c.ib_gb_s:g} GB/s per GPU), checkpointing {'on' if c.activation_checkpointing else 'off'}: compute "
             f"{rows[0]['compute']:.2f} s a step at {c.mfu:.0%} MFU",
             f"{'':<17}{'GiB':>7}{'GB per GPU per step':>22}{'step (s)':>20}{'run (h)':>20}",
             f"{'layout':<17}{'per GPU':>7}{'NVLink':>11}{'InfiniBand':>11}{'serial':>10}{'overlap':>10}"
             f"{'serial':>10}{'overlap':>10}"]
    for r in rows:
        mark = "  <- recommended" if r is best else "" if r["memory"] <= usable else "  (does not fit)"
        lines.append(f"{r['name']:<17}{r['memory'] / GIB:>7.1f}{r['nvlink'] / 1e9:>11.1f}{r['ib'] / 1e9:>11.1f}"
                     f"{r['serial']:>10.2f}{r['overlapped']:>10.2f}{r['hours'][0]:>10,.1f}{r['hours'][1]:>10,.1f}"
                     f"{mark}")
    if best is None:
        lines.append(f"no layout fits {usable / GIB:.0f} GiB a GPU: more GPUs, or a smaller micro-batch")
    return lines


def measured(path, predicted):
    """A run's peak memory (allocated), tokens/s and MFU from its metrics.jsonl, beside the prediction. The first
    logged interval (compilation, warm-up) is left out of the speed."""
    steps = [r for _, r in read_log(path) if "tokens_per_s" in r]
    if not steps:
        return f"{path}: no training steps logged"
    speed = steps[1:] or steps
    line = (f"measured ({path}, steps {speed[0]['step']}-{steps[-1]['step']}): "
            f"{np.median([r['tokens_per_s'] for r in speed]):,.0f} tokens/s")
    if "mfu" in steps[-1]:
        line += f", MFU {np.median([r['mfu'] for r in speed]):.1%}"
    if "peak_memory_gib" not in steps[-1]:
        return line + "; no peak memory in the log (not a GPU run)"
    peak = max(r["peak_memory_gib"] for r in steps)
    ratio = peak * GIB / predicted
    return line + f"; peak memory {peak:.2f} GiB allocated, predicted {predicted / GIB:.2f} ({ratio:.2f}x)"


def report(c, argv):
    sizes, precision = sizes_of(c), precision_of(c)
    model, fit, d = sizes.model, sizes.fit, sizes.model.cfg.d_model
    total, active = model.num_params()
    usable = (1 - c.headroom) * c.gpu_memory_gib * GIB
    name = " ".join(a for a in argv if not a.startswith("--")) or "train.py's defaults"
    how = {"fsdp": "FSDP2 (float32 master weights, gradients and AdamW state sharded; bf16 compute)",
           "hsdp": f"HSDP (FSDP2 within groups of {commplan.shard_size(c)}, replicated across them; bf16 compute)",
           "ddp": "DDP (everything replicated; bf16 autocast)"}[c.parallel]
    if c.expert_parallel > 1:
        if any(commplan.routed_params(b) and b.ffn.n_routed < c.expert_parallel for b in model.blocks):
            raise SystemExit(f"expert_parallel={c.expert_parallel}: more GPUs than the "
                             f"{model.blocks[0].ffn.n_routed} routed experts")
        how += f", the routed experts split over {c.expert_parallel} GPUs"
    if precision == "float32":
        how = how.replace("bf16", "float32")
    count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
    lines = [f"{name}: {count(total)} parameters, {count(active)} active per token (vocabulary "
             f"{model.cfg.vocab_size:,}, {model.cfg.tokens_per_frame} x {model.cfg.latent_dim} latents per frame)",
             f"{how} over {c.gpus} GPU(s); micro-batch {c.batch_size} x {c.seq_len:,} tokens per GPU",
             f"activations measured on the CPU: {fit['per_token_layer'](d) / 1024:.1f} KiB per token per layer, "
             f"{fit['per_token_other'](d) / 1024:.1f} KiB per token outside the layers, "
             f"{fit['per_batch_layer'](d) / GIB:.2f} GiB per micro-batch per layer (weight copies)",
             "", f"{'GiB per GPU':<40}{'checkpointing off':>18}{'on':>10}"]
    plans = [plan(c, sizes, c.batch_size, ac) for ac in (False, True)]
    labels = dict(parameters="parameters (float32)", gradients="gradients (float32)",
                  optimizer="optimizer (AdamW m, v: float32)",
                  working="gathered weights, gradients in flight" if c.parallel == "fsdp" else "DDP gradient buckets",
                  encoder="frozen encoder and decoder (bf16)", activations="activations", total="total")
    for key, label in labels.items():
        lines.append(f"{label:<40}{plans[0][key] / GIB:>18.2f}{plans[1][key] / GIB:>10.2f}")
    fits = ["yes" if p["total"] <= usable else "no" for p in plans]
    largest = [(lambda r: f"{r}+" if r == 4096 else str(r))(largest_micro_batch(c, sizes, ac, usable))
               for ac in (False, True)]
    lines += [f"{f'fits {c.gpu_memory_gib:g} GiB ({usable / GIB:.0f} usable)':<40}{fits[0]:>18}{fits[1]:>10}",
              f"{'largest micro-batch that fits (rows)':<40}{largest[0]:>18}{largest[1]:>10}", ""]
    n_tokens, per_token, seconds, gpu_hours = run_time(c, model)
    wall = f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    lines.append(f"time, compute only: {count(n_tokens)} tokens x {per_token / 1e9:.2f} GFLOP per token on "
                 f"{c.gpus} GPU(s) at {c.mfu:.0%} MFU of {(c.peak_flops or 989e12) / 1e12:.0f} TFLOP/s: {wall} wall, "
                 f"{gpu_hours:,.1f} GPU-hours")
    own = layout_row(c, sizes)
    if c.gradient_accumulation_steps % c.gpus:
        lines.append(f"gradient_accumulation_steps={c.gradient_accumulation_steps} is no multiple of {c.gpus} GPUs "
                     f"(train.py refuses it): communication planned for {commplan.micro_batches(c)} per GPU")
    lines += [f"with communication ({own['name']}): {own['nvlink'] / 1e9:,.1f} GB over NVLink and "
              f"{own['ib'] / 1e9:,.1f} GB over InfiniBand per GPU per step; {own['serial']:.2f} s a step serial, "
              f"{own['overlapped']:.2f} s overlapped: {own['hours'][0]:,.1f} h wall serial, {own['hours'][1]:,.1f} h "
              f"overlapped", "", *layout_table(c, sizes, usable)]
    if c.metrics:
        lines.append(measured(c.metrics, plans[c.activation_checkpointing]["total"]))
    return "\n".join(lines)


def main(argv):
    c = configure({**settings(globals()), **train.DEFAULTS}, argv, [__file__, train.__file__],
                  "usage: python -m plumbing.memplan CONFIG [--gpus=8 --gpu_memory_gib=80 --tokens=57e9 --mfu=0.4 ...]")
    if c.gpus < 1 or not 0 < c.mfu <= 1 or c.parallel not in ("ddp", "fsdp", "hsdp"):
        raise SystemExit("gpus must be >= 1, mfu in (0, 1] and parallel 'ddp', 'fsdp' or 'hsdp'")
    if c.parallel == "hsdp" and c.gpus % commplan.shard_size(c):
        raise SystemExit(f"shard_processes={commplan.shard_size(c)} must divide the {c.gpus} GPUs")
    if c.expert_parallel != 1 and (c.ffn != "moe" or c.parallel == "ddp" or c.gpus % c.expert_parallel):
        raise SystemExit(f"expert_parallel={c.expert_parallel}: for ffn='moe' under fsdp or hsdp, a divisor of the "
                         f"{c.gpus} GPUs (at most the routed experts)")
    if c.metrics and not os.path.isfile(c.metrics):
        raise SystemExit(f"metrics={c.metrics!r}: no such file (give a run's metrics.jsonl)")
    print(report(c, argv))


if __name__ == "__main__":
    cli(main, sys.argv[1:])
