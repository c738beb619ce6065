"""The library's defaults are the paper's recipe, and every setting a shipped config changes from them is either a
listed difference (docs/differences.md) or not the method (a size, a path, a schedule length, a log)."""
import glob
import os

import pytest

import train
from helpers import ROOT
from plumbing.settings import configure

# every default the paper states: (setting, its value, where the paper says so)
PAPER = [
    ("lambda_lm", 1.0, "§2.1: L = λ_LM L_LM + λ_flow L_flow, 1.0 and 3.0"),
    ("lambda_flow", 3.0, "§2.1"),
    ("loss_centering", False, "§2.1's fixed λs; centering is App. D.2's option"),
    ("prediction", "v", "§2.1: the model predicts a velocity field (x-prediction is §3 and §6.3's)"),
    ("time_sampling", "uniform", "§2.1, App. B: t ~ U[0, 1] per image or frame"),
    ("time_shift", 0.0, "App. E.4: shifted toward noise by RAE's sqrt(N C / 4096) rule, which 0 applies"),
    ("cfg_dropout", 0.1, "App. E.3: 10% conditioning dropout"),
    ("guidance", 3.0, "App. E.3: classifier-free guidance scale 3.0"),
    ("sample_steps", 25, "App. B, E.3: a 25-step Euler sampler"),
    ("caption_clean_image", False, "App. B: text after an image conditions on its noisy latents"),
    ("learning_rate", 3e-4, "App. E.2: AdamW, peak LR 3e-4"),
    ("warmup_iters", 1000, "App. E.2: 1000 warmup steps"),
    ("min_lr_ratio", 0.05, "App. E.2: cosine decay to 5% of the peak"),
    ("ffn", "modality", "§2.2, App. C: one text FFN and one vision FFN"),
    ("ffn_mult", 4.0, "App. E.7: expansion multiplier 1.5 (on SwiGLU's 8/3: 4 d_model, 8192 at d_model 2048)"),
    ("moe_granularity", 16, "§6.1, Eq. 4: G = 16 adopted"),
    ("moe_experts", 256, "§6.2: the 256-expert model analysed"),
    ("moe_top_k", 0, "§6.1: 16 active at G = 16 (0: G)"),
    ("moe_shared", "per_modality", "§6.1, Table 2: per-modality shared experts are best"),
    ("moe_balance", "aux", "§6.2: an auxiliary load-balancing loss"),
    ("mixture", {"text": 1 / 2, "caption_to_image": (1 / 3 - 0.01) / 2, "image_to_caption": (1 / 3 - 0.01) / 2,
                 "video": 1 / 6, "navigation": 0.01},
     "§4.1: 520B text + 520B multimodal tokens; App. F.1: the multimodal part a third video, two thirds image-text "
     "and actions, navigation 0.1-25% (Fig. 13: saturated at 1%)"),
    ("mixture_unit", "tokens", "§4.1, App. F.1: the shares are of tokens"),
    ("seq_len", 4096, "App. E.2: a sequence length of 4096"),
    ("batch_size", 4, "App. E.2: a batch size of 4 per GPU"),
    # not the paper's, each listed in docs/differences.md: SigLIP 2 (§3) and LLaMA-3's BPE are downloads
    ("encoder", "pixels", None),
    ("tokenizer", "toy", None),
]
# settings that are not the method: where things go, how long and how often, sizes of a small model, machinery
NOT_THE_METHOD = {"out_dir", "max_iters", "eval_interval", "log_interval", "eval_iters", "eval_samples", "init_from",
                  "resume", "wandb_log", "wandb_project", "wandb_run_name", "wandb_mode", "tensorboard_log",
                  "batch_size", "gradient_accumulation_steps", "seq_len", "n_layer", "d_model", "n_head",
                  "n_kv_head", "image_size", "patch_size", "max_shapes", "video_frames", "dataset", "prefetch",
                  "loader_threads", "stream_retries", "stream_max_wait", "val_data", "device", "dtype", "compile",
                  "parallel", "shard_processes", "expert_parallel", "reduce_every_micro_batch",
                  "activation_checkpointing", "dist_timeout_s", "seed", "peak_flops", "encoder_weights",
                  "decoder_weights", "waypoint_spacing",
                  *[k for k in train.DEFAULTS if k.endswith("_data")]}
DIFFERENCES = open(os.path.join(ROOT, "docs", "differences.md"), encoding="utf-8").read()


@pytest.mark.parametrize("setting,value,where", PAPER, ids=[p[0] for p in PAPER])
def test_the_library_default_is_the_paper_s(setting, value, where):
    assert train.DEFAULTS[setting] == value, f"{setting}: the paper's is {value!r} ({where})"
    if where is None:   # a default that cannot be the paper's here must say so
        assert f"`{setting}" in DIFFERENCES


def shipped_changes():
    """(config, setting, value) for every method setting a shipped config resolves to other than the default."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        c = vars(configure(train.DEFAULTS, [path]))
        out += [(os.path.basename(path), k, v) for k, v in c.items()
                if k in train.DEFAULTS and v != train.DEFAULTS[k] and k not in NOT_THE_METHOD]
    return out


def test_every_setting_a_config_changes_is_a_listed_difference():
    """Named in docs/differences.md as `setting` (its reason and measurement there), or not the method."""
    changes = shipped_changes()
    assert ("toy.py", "prediction", "x") in changes and ("toy.py", "learning_rate", 2e-3) in changes
    missing = sorted({f"{config}: {k}" for config, k, _ in changes if f"`{k}" not in DIFFERENCES})
    assert not missing, f"not in docs/differences.md: {missing}"
