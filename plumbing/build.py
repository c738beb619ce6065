"""
A run's pieces built from its settings (tokenizer, frozen encoder, data source, model), the model compiled, and a
trained model loaded back (a run, an export, or one on the hub) for sampling, planning and analysis.
"""
import dataclasses
from types import SimpleNamespace

import torch

import moe
from data import SOURCES, Tokenizer, ToyWorldData
from encoders import build_encoder
from model import FORMER_DEFAULTS, ModelConfig, UnifiedTransformer
from plumbing.export import chosen_weights, model_source, read_state
from plumbing.realdata import ShardData


def resolve_device(name):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def gpu_peak_flops(device):
    """The accelerator's dense bfloat16 peak FLOP/s, for MFU; 0 when unknown."""
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("4090", 165e12)):
        if key in name:
            return peak
    return 0.0


def keep_freed_memory():
    """On Linux (glibc), keep the memory that freed tensors leave for the next step instead of handing it back to
    the system: each step allocates the same activations again, and a page handed back costs a page fault when it
    returns (thousands a step on the CPU). PyTorch's CPU tuning guide reaches the same end with jemalloc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:   # not glibc (macOS, Windows, musl): nothing to set
        return
    libc.mallopt(-3, 32 << 20)      # M_MMAP_THRESHOLD at glibc's maximum: blocks up to 32 MiB come from the heap
    libc.mallopt(-1, 2 ** 31 - 1)   # M_TRIM_THRESHOLD: never give the heap's top back
    libc.mallopt(-2, 64 << 20)      # M_TOP_PAD: grow the heap in 64 MiB steps


def build(c, device, meta=False):
    """Tokenizer, frozen encoder, data source and model for a configuration; the model initialised on `device`, or
    left on the meta device (no memory) to be sharded first (parallel.wrap). A setting that cannot work stops the
    run with a one-line message."""
    if device == "cpu":
        keep_freed_memory()
    try:
        tok, enc, data, model = _build(c, device)
    except ValueError as e:
        raise SystemExit(f"bad configuration: {e}")
    return tok, enc, data, model if meta or device == "meta" else init_model(model, device, c.seed)


def init_model(model, device, seed, fill=None):
    """The model's weights made on `device` and initialised (model.init_weights) from the seed alone: the same
    weights on one process and on many, whatever ran before. `fill`: parallel.fill_shard for a sharded model."""
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights(*[fill] if fill else [])
    return model


def _build(c, device):
    if c.ffn == "moe" and str(device).startswith("cuda") and not moe.GROUPED_MM:
        raise ValueError(f"ffn='moe' on a GPU needs torch >= 2.9 for its grouped expert GEMM (torch {torch.__version__}"
                         f" would loop over the experts with a host sync in every layer): upgrade torch, or use "
                         f"ffn='modality'")
    tok = Tokenizer(c.tokenizer)
    enc = build_encoder(c.encoder, c.image_size, c.patch_size, device, c.encoder_weights, c.decoder_weights)
    if c.dataset not in ("toyworld", "shards"):
        raise SystemExit(f"unknown dataset '{c.dataset}': available: toyworld, shards")
    if c.dataset == "shards":   # (a checkpoint's config from before a setting has none of it: its default)
        stream = {k: getattr(c, f"stream_{k}") for k in ("retries", "max_wait") if hasattr(c, f"stream_{k}")}
        data = ShardData(tok, c.seq_len, enc.tokens_per_frame, enc.latent_dim, c.mixture,
                         {s: getattr(c, f"{s}_data", "") for s in SOURCES}, c.gradient_accumulation_steps, c.seed,
                         c.image_size, c.video_frames, c.cfg_dropout, c.val_data, c.caption_clean_image,
                         getattr(c, "waypoint_spacing", {}), stream, getattr(c, "mixture_unit", "examples"))
    else:   # checkpoints from before text_source and video_source existed used the defaults
        text, video = getattr(c, "text_source", "toy"), getattr(c, "video_source", "shapes")
        if text not in ("toy", "stdlib") or video not in ("shapes", "walks"):
            raise ValueError(f"text_source={text!r}, video_source={video!r}: use 'toy' or 'stdlib', and 'shapes' or "
                             f"'walks'")
        data = ToyWorldData(tok, c.seq_len, enc.tokens_per_frame, c.mixture, c.seed, c.image_size, c.max_shapes,
                            c.video_frames, c.cfg_dropout, c.caption_clean_image, c.nav_view, text, video,
                            mixture_unit=getattr(c, "mixture_unit", "examples"), nav_pool=getattr(c, "nav_pool", 0))
    fields = {f.name for f in dataclasses.fields(ModelConfig)}   # config keys named like the model's settings
    mcfg = ModelConfig(**{k: v for k, v in vars(c).items() if k in fields}, vocab_size=tok.vocab_size,
                       max_seq_len=c.seq_len, latent_dim=enc.latent_dim, tokens_per_frame=enc.tokens_per_frame)
    with torch.device("meta"):   # weights are made where they will live: init_model, or shards (parallel.wrap)
        return tok, enc, data, UnifiedTransformer(mcfg)


def compile_model(model):
    """torch.compile, each block on its own (regional compilation, as torchtitan does): every block has the same code,
    so one compilation serves them all, and a block's activation checkpointing is compiled with it. On the CPU the
    matrix multiplies and attention stay in PyTorch's kernels and the elementwise rest (norms, rotary, SwiGLU's
    gate, residuals) fuses; compiled whole, the CPU step was slower than eager."""
    for block in model.blocks:
        block.compile()
    return model


def check_same_model(saved, current, path):
    """A checkpoint only loads into the model it was trained as: name the first difference. A setting the checkpoint
    predates counts as its default. Settings the model does not use are not compared: ffn_mult (the resolved
    ffn_hidden is), and the MoE's unless both are MoEs, so a checkpoint from before a default changed still loads."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    moe = saved.get("ffn", defaults["ffn"]) == "moe" and current["ffn"] == "moe"
    for key in current:
        was = saved.get(key, defaults[key])
        if was != current[key] and key != "ffn_mult" and (moe or not key.startswith("moe_")):
            raise SystemExit(f"checkpoint {path} was trained with {key}={was!r} but the config asks for "
                             f"{current[key]!r}: use the checkpoint's config or another out_dir")


# ----------------------------------------------------------------------------------------------------------------
# A trained run, loaded back.

def load_for_inference(source, device="auto", weights="auto"):
    """Model (eval mode), tokenizer, encoder and config of a trained model: `source` a run's out_dir (either kind of
    checkpoint), an export folder, or hf://owner/name[@revision] (plumbing/export.py's model_source). The checkpoint
    holds the run's whole configuration (every training setting), so nothing here depends on train.py's defaults.
    weights: "auto" (the moving average's where the run kept one), "ema" or "raw". The config also carries the
    checkpoint's step, the weights chosen and, for a run's own checkpoint, its tracking run id, for commands that
    report back to the run's tracker (an export or a hub model reports nowhere: its sinks are turned off)."""
    ckpt = model_source(source)
    which = chosen_weights(ckpt, weights, source)
    # a setting the checkpoint's config predates: what it resolved to then (model.FORMER_DEFAULTS), else its default
    c = SimpleNamespace(**{**FORMER_DEFAULTS, **ckpt["config"]}, checkpoint_step=ckpt.get("step", 0),
                        tracking_id=ckpt.get("tracking_id", ""), weights=which)
    if "file" in ckpt:
        c.wandb_log = c.tensorboard_log = False
    device = resolve_device(device)
    tok, enc, _, model = build(c, device)
    check_same_model(ckpt["model_args"], vars(model.cfg), ckpt["path"])
    model.load_state_dict(read_state(ckpt, which, model))
    return model.eval(), tok, enc, c
