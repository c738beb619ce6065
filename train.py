"""
Training: one model, one loss, L = lambda_LM * L_LM + lambda_flow * L_flow, on a weighted mixture of sources.

    python train.py configs/toy.py                          # one process (CPU or one GPU)
    python train.py configs/toy.py --max_iters=100 --batch_size=8
    torchrun --standalone --nproc_per_node=8 train.py configs/toy.py

The defaults below are the configuration; a config file (python, assigning some of these names) and then
--key=value arguments override them. Unknown keys and wrong types stop the run with a message that names them.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from config import build, configure, resolve_device, settings
from files import (check_same_model, cli, crash_point, full_state, load_checkpoint, load_optimizer_state, previous,
                   read_log, save_checkpoint)

# ---- I/O
out_dir = "out/toy"
eval_interval = 250           # steps between evaluations (and checkpoints); the last step always evaluates
log_interval = 10
eval_iters = 8                # held-out batches for the validation losses
eval_samples = 32             # held-out captions/images scored by the toy world's oracle at each evaluation
resume = False                # continue the run in out_dir from its checkpoint
# ---- data
dataset = "toyworld"           # or "shards": real data from the *_data sources below (data.py, README "Real data")
mixture = {"text": 0.25, "caption_to_image": 0.45, "image_to_caption": 0.2, "video": 0.1}
tokenizer = "bytes"           # byte-level tiktoken encoding built in code; or a tiktoken name such as "gpt2"
image_size = 32
max_shapes = 3
video_frames = 4
cfg_dropout = 0.1             # caption dropped on this share of caption->image examples (classifier-free guidance)
batch_size = 16               # rows per micro-batch per process
seq_len = 256
gradient_accumulation_steps = 1   # micro-batches per step, summed over all processes
# ---- real data (dataset="shards"): per source, comma-separated paths, globs (data/x/*.tar) or http(s) URLs
text_data = ""                # llm.c-layout token shards (.bin)
caption_to_image_data = ""    # webdataset tars: key.jpg (or key.latent.npy) + key.txt or key.json
image_to_caption_data = ""
video_data = ""               # webdataset tars of numbered frames: key.000.jpg, key.001.jpg, ...
navigation_data = ""          # NWM trajectory folders: 0.jpg ... T-1.jpg + traj_data.pkl
val_data = {}                 # held-out sources for the validation losses, e.g. {"text": "data/fineweb/*val*.bin"}
prefetch = 8                  # micro-batches the loader threads prepare ahead of training
loader_threads = 4            # threads decoding this process's micro-batch slots (one slot stays on one thread)
# ---- visual encoder
encoder = "pixels"             # "pixels", "siglip2" (the paper's), "dinov2", "webssl", "sdvae" or "flux"
patch_size = 4                 # pixels only: the patch side
encoder_weights = ""           # hub repository or local folder; "" = the published default; "random" = real shapes
decoder_weights = ""           # the RAE decoder's, likewise ("" = the default, if the encoder has one)
# ---- model
n_layer = 4
n_head = 4
n_kv_head = 4
d_model = 128
ffn = "modality"              # "shared", "modality" or "moe"
moe_experts = 16              # total experts, shared ones included
moe_granularity = 4           # G: experts are ffn_hidden / G wide
moe_top_k = 0                 # active experts per token; 0: G, the dense FFN's FLOPs
moe_shared = "per_modality"   # "none", "global" or "per_modality"
moe_score = "softmax"
moe_renorm = False
moe_balance = "aux"           # "aux" (balance loss) or "bias" (auxiliary-loss-free)
moe_aux_coef = 0.01
moe_z_coef = 0.0
moe_bias_rate = 1e-3
qk_norm = True
prediction = "x"              # "x" or "v"
time_shift = 0.0              # 0: sqrt(tokens * channels / 4096); 1: no shift
time_sampling = "logit_normal"
attention = "auto"            # "auto", "flex" or "sdpa"
# ---- loss
lambda_lm = 1.0
lambda_flow = 3.0
loss_centering = False        # Appendix D.2: adaptive weights from an EMA of the two losses
centering_alpha = 0.5
centering_momentum = 0.99
# ---- optimizer: AdamW, linear warmup, cosine decay to min_lr_ratio of the peak
learning_rate = 3e-4
max_iters = 5000
warmup_iters = 1000
min_lr_ratio = 0.05
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# ---- sampling during evaluation
guidance = 3.0
sample_steps = 25
# ---- system
device = "auto"               # "auto": cuda if available, else mps, else cpu
dtype = "auto"                # "auto": bfloat16 autocast on GPU, float32 on CPU
compile = False
parallel = "ddp"              # under torchrun: "ddp" (replicated) or "fsdp" (FSDP2, sharded parameters)
activation_checkpointing = False   # recompute each block in the backward pass: less memory, ~1/3 more compute
seed = 1337
peak_flops = 0.0              # accelerator's peak FLOP/s for MFU; 0: look it up from the GPU name

DEFAULTS = settings(globals())


# ----------------------------------------------------------------------------------------------------------------
# Building the pieces from a configuration.


def get_batch(data, enc, step, micro, c, device, split="train", batch=None):
    """A micro-batch on the device, its frames encoded; `batch` when the loader thread has made it already."""
    from data import tensor_to_device, to_device
    batch = data.batch(step, micro, c.batch_size, split) if batch is None else batch
    frames = batch.pop("images")
    latents = (torch.zeros(0, data.N, enc.latent_dim) if frames is None else
               torch.from_numpy(frames) if frames.dtype.kind == "f" else   # pre-encoded shards: no encoder pass
               enc.encode(frames))
    batch = to_device(batch, device)
    batch["latents"] = tensor_to_device(latents, device).float()   # pre-encoded float16 latents travel at half the size
    return batch


def flow_noise(seed, step, micro, device):
    """The generator for a micro-batch's flow-matching times and noise. Like the data, it is a function of
    (seed, step, micro-batch), so a resumed run, or the same global batch split over other processes, draws
    exactly the same noise, and checkpoints need not carry RNG state."""
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0]))


def configure_optimizer(model, c, device, fused=False):
    """AdamW; weight decay on matrices only (not on norms, biases or the patch positions)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "patch_pos"]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "patch_pos"]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c.learning_rate, betas=(c.beta1, c.beta2), fused=fused)


def learning_rate_at(step, c):
    """Linear warmup, then cosine decay to min_lr_ratio of the peak at max_iters (App. E.2)."""
    if step < c.warmup_iters:
        return c.learning_rate * (step + 1) / (c.warmup_iters + 1)
    progress = min(1.0, (step - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return c.learning_rate * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_weights(text_loss, flow_loss, c, center):
    """(w_LM, w_flow, new center). Fixed lambdas by default; with loss centering (App. D.2) each loss is scaled to
    an EMA of alpha * L_flow + (1 - alpha) * L_LM, which up-weights whichever loss is smaller."""
    if not c.loss_centering:
        return c.lambda_lm, c.lambda_flow, center
    current = (c.centering_alpha * flow_loss + (1 - c.centering_alpha) * text_loss).detach()
    center = current if center is None else c.centering_momentum * center + (1 - c.centering_momentum) * current
    return center / text_loss.detach().clamp(min=1e-8), center / flow_loss.detach().clamp(min=1e-8), center


def gpu_peak_flops(device):
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("4090", 165e12)):
        if key in name:
            return peak
    return 0.0


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: held-out losses, and the toy world's oracle on what the model generates.

@torch.no_grad()
def evaluate(model, tok, enc, data, c, device, step, write=True):
    import toyworld
    from model import training_losses
    from files import save_grid
    from sample import describe, draw
    model.eval()
    gen = torch.Generator(device).manual_seed(c.seed)
    text, flow, scores = [], [], {}
    for i in range(c.eval_iters if getattr(data, "has_val", True) else 0):
        t, f = training_losses(model, get_batch(data, enc, i, 0, c, device, "val"), generator=gen)
        text.append(t.item())
        flow.append(f.item())
    if text:
        scores = dict(val_text_loss=float(np.mean(text)), val_ppl=float(math.exp(np.mean(text))),
                      val_flow_loss=float(np.mean(flow)))
    if not hasattr(data, "eval_prompts"):     # real data: no oracle to score generations with
        model.train()
        return scores
    scenes = data.eval_prompts(c.eval_samples)
    captions = [toyworld.caption(s, c.image_size) for s in scenes]
    truth = np.stack([toyworld.render(s, c.image_size) for s in scenes])
    images = enc.decode(draw(model, tok, captions, c.sample_steps, c.guidance, gen))
    gen_acc = float(np.mean([toyworld.score_image(im, cap) for im, cap in zip(images, captions)]))
    written = describe(model, tok, enc.encode(truth).to(device), generator=gen)
    und_acc = float(np.mean([toyworld.score_caption(w, s, c.image_size) for w, s in zip(written, scenes)]))
    model.train()
    scores.update(gen_accuracy=gen_acc, und_accuracy=und_acc)
    if not write:
        return scores
    n = min(16, len(images))   # the grid: generated images, the true renders of the same captions beneath them
    grid = np.concatenate([np.concatenate([images[i:i + 8], truth[i:i + 8]]) for i in range(0, n, 8)])
    save_grid(grid, os.path.join(c.out_dir, "samples.png"))
    with open(os.path.join(c.out_dir, "samples.txt"), "w") as f:
        f.write(f"step {step}\n" + "".join(f"prompt: {p}\n  model's caption of its true render: {w}\n"
                                            for p, w in zip(captions[:n], written[:n])))
    return scores


# ----------------------------------------------------------------------------------------------------------------
# The training loop.

def main(argv):
    from tqdm import tqdm
    from model import training_losses
    from realdata import Prefetcher
    from moe import auxiliary_loss, update_balance_biases
    c = configure(DEFAULTS, argv, [__file__])

    # processes: torchrun sets RANK/WORLD_SIZE; each process takes an equal share of the accumulation steps
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world, local_rank = 0, 1, 0
    dev = resolve_device(c.device)
    if ddp:
        from torch.distributed import init_process_group
        rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        if dev == "cuda":
            dev = f"cuda:{local_rank}"
            torch.cuda.set_device(dev)
        init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    if c.gradient_accumulation_steps % world:
        raise SystemExit(f"gradient_accumulation_steps={c.gradient_accumulation_steps} must be a multiple of the "
                         f"{world} processes")
    accum = c.gradient_accumulation_steps // world
    master = rank == 0
    device_type = torch.device(dev).type
    dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if device_type == "cuda" else "float32")
    autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, getattr(torch, dtype))
    torch.manual_seed(c.seed)

    tok, enc, data, model = build(c, dev)
    model.activation_checkpointing = c.activation_checkpointing
    ckpt_path, metrics_path = os.path.join(c.out_dir, "ckpt.pt"), os.path.join(c.out_dir, "metrics.jsonl")
    step, center, ckpt, saved = 0, None, None, {}
    if c.resume:   # the whole model's weights first; the optimizer's state once it exists
        ckpt = load_checkpoint(ckpt_path)
        check_same_model(ckpt["model_args"], vars(model.cfg), ckpt_path)
        model.load_state_dict(ckpt["model"])
        step, center = ckpt["step"], ckpt["loss_center"]
        saved = ckpt.get("data_state", {})
        if any(saved.get("slots", {}).values()) and saved["n_slots"] != c.gradient_accumulation_steps:
            raise SystemExit(f"{ckpt_path} read its data in {saved['n_slots']} micro-batch slots: resume with "
                             f"--gradient_accumulation_steps={saved['n_slots']}")
        data.load_state(saved.get("slots", {}))
        if master and os.path.exists(metrics_path):  # drop lines logged after the checkpoint: they happen again
            lines = [ln for ln, r in read_log(metrics_path) if r["step"] <= step]
            with open(metrics_path + ".tmp", "w") as f:
                f.writelines(lines)
            os.replace(metrics_path + ".tmp", metrics_path)
    elif found := [p for p in (ckpt_path, previous(ckpt_path)) if os.path.exists(p)]:
        raise SystemExit(f"{found[0]} exists: pass --resume to continue that run, or --out_dir=... for a new one")
    elif master and os.path.exists(metrics_path):   # a run that died before its first checkpoint: its log aside
        aside = next(f"{metrics_path}.{i}" for i in range(1, 10 ** 6) if not os.path.exists(f"{metrics_path}.{i}"))
        os.replace(metrics_path, aside)
        print(f"{metrics_path} of a run without a checkpoint moved to {aside}; this run starts a new log")
    if master:
        os.makedirs(c.out_dir, exist_ok=True)
    raw_model = model
    if c.parallel not in ("ddp", "fsdp"):
        raise SystemExit(f"parallel={c.parallel!r}: use 'ddp' or 'fsdp'")
    fsdp = ddp and c.parallel == "fsdp"
    if fsdp:   # FSDP2: each block's parameters sharded over the processes, gathered just in time
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(getattr(torch, dtype), reduce_dtype=torch.float32) if dtype != "float32" else \
            MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    optimizer = configure_optimizer(model, c, dev, fused=device_type == "cuda" and not fsdp)
    if ckpt is not None:
        load_optimizer_state(raw_model, optimizer, ckpt["optimizer"], fsdp)
    if c.compile:
        model = torch.compile(model)
    if ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    total, active = raw_model.num_params()
    flops_per_step = raw_model.flops_per_token(c.seq_len) * c.batch_size * c.seq_len * c.gradient_accumulation_steps
    peak = c.peak_flops or (gpu_peak_flops(dev) if device_type == "cuda" else 0.0)
    if master:
        print(f"model: {total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active per token; "
              f"{raw_model.flops_per_token(c.seq_len) / 1e6:.1f} MFLOPs per token; device {dev} {dtype}; "
              f"{world} process(es), {c.batch_size * c.seq_len * c.gradient_accumulation_steps} tokens per step")

    def log(record):
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        crash_point("log")

    def checkpoint():
        weights, opt_state = full_state(raw_model, optimizer, fsdp)   # collective under FSDP: every rank calls
        slots = [consumed]                    # every slot's reading position, from the process that owns it
        if ddp:
            slots = [None] * world
            torch.distributed.all_gather_object(slots, consumed)
        if master:
            data_state = dict(step=step, n_slots=c.gradient_accumulation_steps, slots={k: v for s in slots
                                                                                     for k, v in s.items()})
            save_checkpoint(ckpt_path, dict(model=weights, optimizer=opt_state, step=step, config=vars(c),
                                            model_args=vars(raw_model.cfg), loss_center=center,
                                            data_state=data_state))

    slots = range(rank * accum, (rank + 1) * accum)   # this process's global micro-batch indices
    loader = Prefetcher(data, step, slots, c.batch_size, c.prefetch, c.loader_threads)
    consumed = {k: v for k, v in saved.get("slots", {}).items() if k in slots}   # saved by the next checkpoint
    pbar = tqdm(total=c.max_iters, initial=step, disable=not master, dynamic_ncols=True)
    t0, last, waited = time.time(), {}, 0.0
    while step < c.max_iters:
        lr = learning_rate_at(step, c)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(3, device=dev)   # text, flow and MoE balance losses, averaged over the step
        for i in range(accum):
            micro = rank * accum + i
            made, consumed[micro] = loader.next()
            batch = get_batch(data, enc, step, micro, c, dev, batch=made)
            if fsdp:   # gradients are reduced on the last micro-batch only
                model.set_requires_gradient_sync(i == accum - 1)
            sync = model.no_sync() if ddp and not fsdp and i < accum - 1 else nullcontext()
            with sync, autocast:
                text_loss, flow_loss = training_losses(model, batch, flow_noise(c.seed, step, micro, dev))
                w_lm, w_flow, center = loss_weights(text_loss, flow_loss, c, center)
                balance = auxiliary_loss(raw_model)
                loss = (w_lm * text_loss + w_flow * flow_loss + balance) / accum
            loss.backward()
            sums += torch.stack([text_loss, flow_loss, torch.as_tensor(balance, device=dev)]).detach() / accum
        if ddp:  # log the losses of the whole global batch, not just this process's share
            torch.distributed.all_reduce(sums)  # SUM: gloo has no AVG
            sums /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm   # FSDP: a DTensor
        text_l, flow_l, balance_l, gnorm = torch.cat([sums, grad_norm.view(1).float()]).tolist()   # one host sync
        if not all(map(math.isfinite, (text_l, flow_l, gnorm))):
            loader.close()
            raise SystemExit(f"step {step}: non-finite loss or gradient (text {text_l}, flow {flow_l}, grad norm "
                             f"{gnorm}); stopped before the update, the last checkpoint in {c.out_dir} is intact. "
                             f"Try a lower learning_rate or dtype=float32.")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_balance_biases(raw_model, c.moe_bias_rate)
        step += 1
        pbar.update(1)

        if master and (step % c.log_interval == 0 or step == c.max_iters):
            dt, t0 = time.time() - t0, time.time()
            steps_done = c.log_interval if step % c.log_interval == 0 else step % c.log_interval
            tok_s = c.batch_size * c.seq_len * c.gradient_accumulation_steps * steps_done / dt
            data_wait, waited = loader.wait - waited, loader.wait   # seconds the loop waited for data
            last = dict(step=step, text_loss=text_l, flow_loss=flow_l, loss=c.lambda_lm * text_l +
                        c.lambda_flow * flow_l, lr=lr, grad_norm=gnorm, tokens_per_s=tok_s,
                        data_wait_s=data_wait / steps_done, data_share=data_wait / dt,
                        **({"balance_loss": balance_l} if c.ffn == "moe" else {}),
                        **{f"skipped_{k}": v for k, v in getattr(data, "stats", {}).items()})
            if peak:
                last["mfu"] = flops_per_step * steps_done / dt / peak
            if device_type == "cuda":
                last["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
            log(last)
            pbar.set_postfix_str(f"text {text_l:.3f} flow {flow_l:.4f} {tok_s:,.0f} tok/s data {data_wait / dt:.0%}"
                                 + (f" mfu {100 * last['mfu']:.1f}%" if peak else "")
                                 + (f" mem {last['peak_memory_gib']:.1f} GiB" if device_type == "cuda" else ""))
        if step % c.eval_interval == 0 or step == c.max_iters:
            if master or fsdp:   # a sharded model runs forward passes on every rank together
                scores = evaluate(raw_model, tok, enc, data, c, dev, step, write=master)
            if master:
                log(dict(step=step, text_loss=text_l, flow_loss=flow_l, **scores))
                pbar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            checkpoint()
            t0 = time.time()
    pbar.close()
    loader.close()
    if ddp:   # DDP's wrapper holds the process group: drop it, so the group is torn down here, not at exit
        del model
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    cli(main, sys.argv[1:])
