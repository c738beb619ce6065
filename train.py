"""
Training: one model, one loss, L = lambda_LM * L_LM + lambda_flow * L_flow, on a weighted mixture of sources.

    python train.py configs/toy.py                          # one process (CPU or one GPU)
    python train.py configs/toy.py --max_iters=100 --batch_size=8
    torchrun --standalone --nproc_per_node=8 train.py configs/toy.py

The defaults below are the configuration; a config file (python, assigning some of these names) and then
--key=value arguments override them. Unknown keys and wrong types stop the run with a message that names them.
"""
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from plumbing.build import build, gpu_peak_flops
from plumbing.experts import clip_gradients, reduce_gradients
from plumbing.logs import Tracker, check_sinks, log_progress, source_losses, source_sums, write_settings
from plumbing.parallel import (checkpoint, ema_weights, first_on_each_node, processes, resume_or_start, update_ema,
                               wrap)
from plumbing.settings import cli, configure, settings
from plumbing.toyscores import oracle_parts, oracle_scores, summary

# ---- I/O
out_dir = "out/toy"
eval_interval = 250           # steps between evaluations (and checkpoints); the last step always evaluates
log_interval = 10
eval_iters = 8                # held-out batches for the validation losses
eval_samples = 256            # toy world: held-out items per split its oracle scores at the end (<= 64 before)
# --resume=auto continues the run in out_dir if it holds a checkpoint and starts it otherwise: one command line for
# a first launch and every restart or requeue (torchrun --max_restarts, SLURM --requeue)
resume = ""                   # --resume: continue the run in out_dir; --resume=auto: only if there is a checkpoint
init_from = ""                # a run's out_dir: start from its weights, as a new run (fine-tuning, e.g. on VQA)
wandb_log = False             # mirror metrics.jsonl and the sample grids to Weights & Biases (plumbing/logs.py)
wandb_project = "beyond-lm"
wandb_run_name = ""           # "": out_dir's name
wandb_mode = ""               # "": wandb's default (WANDB_MODE); "offline": only written, to out_dir/wandb
tensorboard_log = False       # the same to TensorBoard, in out_dir/tensorboard
# ---- data
dataset = "toyworld"           # or "shards": real data from the *_data sources below (data.py, README "Real data")
# §4.1's full mixture in shares of tokens: half text (520B text + 520B multimodal), the multimodal half split as
# App. F.1's base mixture splits it, a third video and two thirds image-text and actions, navigation 1% (where
# Fig. 13 saturates); image-text halved between the two directions
mixture = {"text": 1 / 2, "caption_to_image": (1 / 3 - 0.01) / 2, "image_to_caption": (1 / 3 - 0.01) / 2,
           "video": 1 / 6, "navigation": 0.01}
mixture_unit = "tokens"       # the weights share "tokens" (the paper's) or "examples" (each draw picks a source)
tokenizer = "toy"             # a BPE built in code from the toy world's words; or a tiktoken name such as "gpt2"
image_size = 32
max_shapes = 3
video_frames = 4
nav_view = "ray"              # navigation frames: "ray" (first person) or "topdown" (toyworld.view)
text_source = "toy"           # toy-world text: "toy" (its sentences) or "stdlib" (Python's source, held-out files)
video_source = "shapes"       # toy-world video: "shapes" (in motion) or "walks" (maze walks without their actions)
nav_pool = 0                  # navigation examples: 0 fresh every draw; n a fixed pool of n, reused epoch after epoch
cfg_dropout = 0.1             # caption dropped on this share of caption->image examples (classifier-free guidance)
caption_clean_image = False   # image->caption: the image clean, without flow loss (the paper's: noisy, with it)
batch_size = 4                # rows per micro-batch per process (App. E.2: 4 per GPU)
seq_len = 4096                # App. E.2
gradient_accumulation_steps = 1   # micro-batches per step, summed over all processes
# ---- real data (dataset="shards"): per source, comma-separated paths, globs (data/x/*.tar) or http(s) URLs
text_data = ""                # llm.c-layout token shards (.bin)
caption_to_image_data = ""    # webdataset tars: key.jpg (or key.latent.npy) + key.txt or key.json
image_to_caption_data = ""
video_data = ""               # webdataset tars of numbered frames: key.000.jpg, key.001.jpg, ...
navigation_data = ""          # NWM trajectory folders: 0.jpg ... T-1.jpg + traj_data.pkl
vqa_data = ""                 # webdataset tars: key.jpg + key.json {"question", "answer"} (or LLaVA conversations)
waypoint_spacing = {"recon": 0.25, "scand": 0.38, "tartan_drive": 0.72, "go_stanford": 0.12,
                    "sacson": 0.255}   # NWM's metres per action unit, by the dataset folder a trajectory lies in
val_data = {}                 # held-out sources for the validation losses, e.g. {"text": "data/fineweb/*val*.bin"}
prefetch = 8                  # micro-batches the loader threads prepare ahead of training
loader_threads = 4            # threads decoding this process's micro-batch slots (one slot stays on one thread)
stream_retries = 10           # http(s) shards: retries in a row of a failed open or lost connection, then the run stops
stream_max_wait = 60.0        # seconds: the longest wait between two of those retries (waits double from 1 s)
# ---- visual encoder
encoder = "pixels"             # "pixels", "siglip2" (the paper's), "dinov2", "webssl", "sdvae" or "flux"
patch_size = 4                 # pixels only: the patch side
encoder_weights = ""           # owner/name[@revision] or a folder; "" = the default, pinned; "random" = real shapes
decoder_weights = ""           # the RAE decoder's, likewise ("" = the default, if the encoder has one)
# ---- model
n_layer = 4
n_head = 4
n_kv_head = 4
d_model = 128
ffn = "modality"              # "shared", "modality" or "moe"
ffn_hidden = 0                # hidden units of the shared and modality FFNs; 0: ffn_mult * d_model, rounded up to 32
ffn_mult = 4.0                # the paper's 4 d_model: LLaMA's expansion multiplier 1.5 on SwiGLU's 8/3 (App. E.7)
moe_experts = 256             # total experts, shared ones included (the paper's MoE of §6.2-6.3)
moe_granularity = 16          # G = 4 d_model / d_expert (Eq. 4; the paper's 16): experts are 4 * d_model / G wide
moe_top_k = 0                 # active experts per token; 0: G, i.e. 4 * d_model hidden units as in the paper
moe_shared = "per_modality"   # "none", "global" or "per_modality"
moe_score = "softmax"
moe_renorm = False
moe_balance = "aux"           # "aux" (balance loss) or "bias" (auxiliary-loss-free)
moe_aux_coef = 0.01
moe_z_coef = 0.0
moe_bias_rate = 1e-3
qk_norm = True
prediction = "v"              # "v": velocity, the paper's recipe (§2.1); "x": clean latents (JiT; §6.3's final stack)
time_shift = 0.0              # 0: sqrt(tokens * channels / 4096); 1: no shift
time_sampling = "uniform"     # t ~ U[0, 1] per frame, then shifted (section 2.1); or "logit_normal"
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
# a moving average of the weights, ema <- ema_decay * ema + (1 - ema_decay) * weights after every step, kept in the
# checkpoints; evaluation scores it, and sampling and export use it. Off by default: the paper keeps none (its one
# EMA is loss centering's), and on the toy 0.999 drew and answered worse than the last weights (docs/log.md)
ema_decay = 0.0               # e.g. 0.999 (an average over the last ~1,000 steps); 0: none
# ---- sampling during evaluation
guidance = 3.0
sample_steps = 25
# ---- system
device = "auto"               # "auto": cuda if available, else mps, else cpu
dtype = "auto"                # "auto": bfloat16 autocast on GPU, float32 on CPU
compile = False               # torch.compile: the whole model on a GPU, each block on the CPU (needs a C++ compiler)
parallel = "ddp"              # under torchrun: "ddp" (replicated), "fsdp" (FSDP2, sharded) or "hsdp" (both)
shard_processes = 0           # hsdp: processes that share one sharded copy (0: one node's); the copies replicate
expert_parallel = 1           # ffn="moe" under fsdp/hsdp: processes that split the routed experts (all-to-all)
reduce_every_micro_batch = True   # FSDP: gradients stay sharded between micro-batches (False: whole, +4 B/param)
activation_checkpointing = False   # recompute each block in the backward pass: less memory, ~1/3 more compute
dist_timeout_s = 1800         # a process waiting this long for the others (a hang, a dead peer) stops the run
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
    """The generator of a micro-batch's flow times and noise: like the data a function of (seed, step, micro), so
    resumed runs and other process counts draw exactly the same noise, and checkpoints carry no RNG state."""
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
    """(w_LM, w_flow). Fixed lambdas by default; with loss centering (App. D.2) each loss is scaled to the center,
    an EMA of alpha * L_flow + (1 - alpha) * L_LM, which up-weights whichever loss is smaller."""
    if not c.loss_centering:
        return c.lambda_lm, c.lambda_flow
    target = centering_target(text_loss.detach(), flow_loss.detach(), c) if center is None else center
    return target / text_loss.detach().clamp(min=1e-8), target / flow_loss.detach().clamp(min=1e-8)


def centering_target(text_loss, flow_loss, c):
    return c.centering_alpha * flow_loss + (1 - c.centering_alpha) * text_loss


def update_center(center, text_loss, flow_loss, c):
    """The center's EMA step, once per optimizer step from the losses averaged over all its micro-batches and
    processes: the momentum means what it says per step, and every process holds (and checkpoints) the same one."""
    current = centering_target(text_loss, flow_loss, c)
    return current if center is None else c.centering_momentum * center + (1 - c.centering_momentum) * current


def losses(**named):
    """The losses that were measured: one with nothing to average is left out of the log, never written as 0."""
    return {k: v for k, v in named.items() if v is not None}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: held-out losses, and the toy world's oracle on what the model generates.

@torch.no_grad()
def held_out_losses(model, data, enc, c, device, batches, generator, bar):
    """Mean text and flow loss over the first validation batches (flow None when no batch generates a frame), and
    each source's over all of them (plumbing/logs.py's source_losses, named val_<source>_text_loss ...)."""
    from data import SOURCES
    from model import training_losses
    text, flow, by_source = [], [], 0
    for i in range(batches):
        batch = get_batch(data, enc, i, 0, c, device, "val")
        t, f, each = training_losses(model, batch, generator=generator, each=True)
        text.append(t.item())
        flow += [f.item()] if (~batch["cond"]).any() else []   # a batch without frames has no flow loss
        by_source = by_source + source_sums(batch, *each, len(SOURCES))
        bar.update(1)
    return (float(np.mean(text)) if text else None), (float(np.mean(flow)) if flow else None), \
        (source_losses(by_source.flatten().tolist(), SOURCES, "val_") if text else {})


def evaluate(model, tok, enc, data, c, device, step, write=True):
    """Held-out losses; on the toy world also its oracle's scores of what the model draws, writes and answers on
    unseen scenes and held-out bindings (plumbing/toyscores.py), with the same noise in every run."""
    from tqdm import tqdm
    model.eval()
    gen = torch.Generator(device).manual_seed(0)
    batches = c.eval_iters if getattr(data, "has_val", True) else 0
    oracle = hasattr(data, "held_out")   # real data has no oracle to score generations with
    n = c.eval_samples if step == c.max_iters else min(c.eval_samples, 64)
    # a bar over its parts, each held-out batch and each oracle task on each split (the final evaluation's, on
    # eval_samples items, takes minutes), cleared when done
    with tqdm(total=batches + (oracle_parts(data) if oracle else 0), desc=f"evaluating step {step}", unit="part",
              leave=False, disable=not write, dynamic_ncols=True) as bar:
        text, flow, per_source = held_out_losses(model, data, enc, c, device, batches, gen, bar)
        scores = {} if text is None else dict(val_text_loss=text, val_ppl=math.exp(text), **losses(val_flow_loss=flow),
                                              **per_source)
        if oracle:
            scores.update(oracle_scores(model, tok, enc, data, c, n, gen,
                                        write and os.path.join(c.out_dir, "samples.png"), bar=bar))
    model.train()
    return scores


# ----------------------------------------------------------------------------------------------------------------
# The training loop, one named step at a time. `run` holds what changes as it goes (step, loss center, real tokens
# seen, each micro-batch slot's reading position) beside what the processes are (rank, device, dtype).

def announce(run, c, raw_model):
    """Prints the model's size and cost; keeps what MFU needs."""
    total, active = raw_model.num_params()
    tokens, flops = c.batch_size * c.seq_len * c.gradient_accumulation_steps, raw_model.flops_per_token(c.seq_len)
    run.flops_per_step = flops * tokens
    run.peak = c.peak_flops or (gpu_peak_flops(run.dev) if run.device_type == "cuda" else 0.0)
    if run.master:
        print(f"model: {total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active per token; "
              f"{flops / 1e6:.1f} MFLOPs per token; device {run.dev} {run.dtype}; "
              f"{run.world} process(es), {tokens} tokens per step")


def train_step(run, c, model, raw_model, optimizer, loader, data, enc):
    """One optimizer step over this process's micro-batches. Returns the step's numbers, averaged over the global
    batch and read from the device in one sync (flow loss None without frames to generate)."""
    from data import SOURCES
    from model import training_losses
    from moe import auxiliary_loss, update_balance_biases
    lr = learning_rate_at(run.step, c)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # averaged over the step: text, flow (where frames are generated) and balance loss, such frames, real positions;
    # and summed, per source: text loss and positions, flow loss and generated frames (plumbing/logs.py)
    sums, by_source = torch.zeros(5, device=run.dev), 0
    for i, micro in enumerate(run.slots):
        made, run.consumed[micro] = loader.next()
        batch = get_batch(data, enc, run.step, micro, c, run.dev, batch=made)
        if run.fsdp:   # gradients reduce-scattered after each micro-batch (sharded), or whole until the last
            model.set_requires_gradient_sync(c.reduce_every_micro_batch or i == run.accum - 1)
        sync = model.no_sync() if run.ddp and not run.fsdp and i < run.accum - 1 else nullcontext()
        with sync, run.autocast:
            text_loss, flow_loss, each = training_losses(model, batch, flow_noise(c.seed, run.step, micro, run.dev),
                                                         each=True)
            w_lm, w_flow = loss_weights(text_loss, flow_loss, c, run.center)
            balance = auxiliary_loss(raw_model)
            loss = (w_lm * text_loss + w_flow * flow_loss + balance) / run.accum
        loss.backward()
        has_flow = (~batch["cond"]).any().float()
        sums += torch.stack([text_loss, flow_loss * has_flow, torch.as_tensor(balance, device=run.dev), has_flow,
                             (batch["doc"] >= 0).sum().float()]).detach() / run.accum
        by_source = by_source + source_sums(batch, *each, len(SOURCES))
    sums = torch.cat([sums, by_source.flatten()])
    if run.ddp:  # the losses of the whole global batch, not just this process's share, in one message
        torch.distributed.all_reduce(sums)  # SUM: gloo has no AVG
        sums[:5] /= run.world
    if run.expert_params:   # the experts' gradients, summed over their copies (plumbing/experts.py)
        reduce_gradients(run.expert_params, run.expert_mesh, run.world)
    grad_norm = clip_gradients(model.parameters(), c.grad_clip)
    text_l, flow_sum, balance_l, flow_share, real, *per_source, gnorm = \
        torch.cat([sums, grad_norm.view(1).float()]).tolist()
    flow_l = flow_sum / flow_share if flow_share else None   # a step without frames has no flow loss
    if not all(map(math.isfinite, (text_l, flow_l or 0.0, gnorm))):
        loader.close()
        raise SystemExit(f"step {run.step}: non-finite loss or gradient (text {text_l}, flow {flow_l}, grad norm "
                         f"{gnorm}); stopped before the update, the last checkpoint in {c.out_dir} (if any) is "
                         f"intact. Try a lower learning_rate or dtype=float32.")
    optimizer.step()
    update_ema(run, raw_model, c.ema_decay)   # the weights' moving average, if kept
    optimizer.zero_grad(set_to_none=True)
    if c.loss_centering and flow_l is not None:
        run.center = update_center(run.center, text_l, flow_l, c)
    update_balance_biases(raw_model, c.moe_bias_rate)
    run.step += 1
    run.seen += round(real * c.gradient_accumulation_steps)
    return dict(lr=lr, text_loss=text_l, flow_loss=flow_l, balance_loss=balance_l, grad_norm=gnorm,
                sources=source_losses(per_source, SOURCES))




def main(argv):
    c = configure(DEFAULTS, argv, [__file__])
    with processes(c) as run:   # however the run ends, its loader threads and process group end with it
        training(run, c)


def training(run, c):
    from tqdm import tqdm
    from plumbing.realdata import Prefetcher
    if run.master:   # a missing package or wandb login stops the run here, before it builds or writes anything
        check_sinks(c)
    # the model on the meta device: wrap makes it, sharded or whole
    tok, enc, data, model = first_on_each_node(run, lambda: build(c, run.dev, meta=True))
    announce(run, c, model)
    ckpt = resume_or_start(run, c, model, data)
    if run.master:   # metrics.jsonl and its mirrors; the wandb run's id goes into every checkpoint
        run.tracker = Tracker(c, run.log_path, (ckpt or {}).get("tracking_id", ""), run.step)
        run.extra["tracking_id"] = run.tracker.run_id
        run.closing.append(run.tracker.close)
        write_settings(c, os.path.join(c.out_dir, "settings.json"))
    raw_model, model, optimizer = wrap(run, c, model, ckpt, lambda m, fused: configure_optimizer(m, c, run.dev, fused))
    loader = Prefetcher(data, run.step, run.slots, c.batch_size, c.prefetch, c.loader_threads)
    run.closing.append(loader.close)
    pbar = tqdm(total=c.max_iters, initial=run.step, disable=not run.master, dynamic_ncols=True)
    run.t0, run.waited, run.seen_at_log = time.time(), 0.0, run.seen
    while run.step < c.max_iters:
        s = train_step(run, c, model, raw_model, optimizer, loader, data, enc)
        pbar.update(1)
        last = run.step == c.max_iters
        if run.master and (run.step % c.log_interval == 0 or last):
            log_progress(run, c, s, loader, data, pbar)
        if run.step % c.eval_interval == 0 or last:
            if run.master or run.fsdp:   # a sharded model runs forward passes on every rank together
                # in the precision it trains in (a sharded model's weights are in it), uncompiled: sampling's shapes
                # change at every position, and compiled blocks would recompile for them
                # (the moving average's weights, if the run keeps one: what sampling and export use)
                with run.autocast, torch.compiler.set_stance("force_eager"), ema_weights(run, raw_model):
                    scores = evaluate(raw_model, tok, enc, data, c, run.dev, run.step, write=run.master)
            if run.master and scores:   # held-out numbers only (shards without val_data have none): the step's
                # training losses are in its own record; tokens again, for the readers of evaluation records
                run.tracker.log(dict(step=run.step, tokens=run.seen, **scores),
                                {"samples": os.path.join(c.out_dir, "samples.png")})
                pbar.write(f"step {run.step}: {summary(scores)}")
            checkpoint(run, c, raw_model, optimizer)
            run.t0 = time.time()
    pbar.close()


if __name__ == "__main__":
    cli(main, sys.argv[1:])
