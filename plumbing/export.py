"""
A trained run exported for use anywhere, and exports read back. An export is a folder: model.safetensors (the
weights, the moving average's where the run kept one), config.json (all that rebuilds the model: the run's resolved
settings, the model's arguments, step, precision) and README.md (a model card for the Hugging Face hub: the run's
held-out scores and its samples.png), which can go up to a hub repository. Exporting builds no model: each tensor
is read from the checkpoint (its shards, or its file mapped) and written on its own, so an export needs the memory
of the largest tensor, whatever the model's size.

    python -m plumbing.export --out_dir=out/toy --dest=out/toy-export                  # float32
    python -m plumbing.export --out_dir=out/toy --dest=out/toy-bf16 --dtype=bfloat16 --push_to_hub=me/toy
    python -m plumbing.export --dest=out/toy-export --push_to_hub=me/toy               # an export made before

Every command that reads a trained model (sample.py, plan.py, plumbing.image_metrics, --init_from) takes, where
it takes a run's out_dir, an export folder or an export on the hub, hf://owner/name[@revision] (model_source):

    python sample.py --out_dir=out/toy-export        python sample.py --out_dir=hf://me/toy@v1
"""
import json
import os
import re
import shutil
import sys

import torch

from plumbing.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, read_shards
from plumbing.outputs import refuse_overwrite
from plumbing.settings import cli, configure, settings

HUB = "hf://"                 # a model source on the hub: hf://owner/name[@revision], as huggingface_hub's paths
EXPORT_FORMAT = 1             # raised when config.json changes meaning; an export of another format stops with a line
FILES = ("model.safetensors", "config.json", "README.md", "samples.png")   # what an export holds (samples: if any)


# ----------------------------------------------------------------------------------------------------------------
# Model sources: a run's out_dir, an export folder, or an export on the hub, each read into the dict a checkpoint
# is (config, model_args, step, ...). An export's dict also names its weights file ("file") and which weights it
# holds ("weights": "ema" or "raw").

def hub_repo(source):
    """(owner/name, revision) of hf://owner/name[@revision]; anything else stops with one line."""
    name, _, revision = source[len(HUB):].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or "@" in revision or source.endswith("@"):
        raise SystemExit(f"{source}: a model on the hub is hf://owner/name[@revision] (a branch, tag or commit)")
    return name, revision or "main"


def model_source(source):
    """The checkpoint dict of a trained model: `source` a run's out_dir (its ckpt.pt, either kind), an export
    folder (config.json), or hf://owner/name[@revision] (an export downloaded into huggingface_hub's cache: both
    files from the commit the first came from, so a push in between cannot mix two exports)."""
    source = os.fspath(source)
    if source.startswith(HUB):
        from plumbing.hub import hub_file
        repo, revision = hub_repo(source)
        folder = os.path.dirname(hub_file(repo, "config.json", revision))
        read_export(folder, source, weights=False)   # a repository of something else stops before a download
        hub_file(repo, "model.safetensors", os.path.basename(folder))   # the snapshot folder: named by its commit
        return read_export(folder, source)
    if os.path.isfile(os.path.join(source, "config.json")) and not os.path.isfile(os.path.join(source, "ckpt.pt")):
        return read_export(source, source)
    path = os.path.join(source, "ckpt.pt")
    ckpt = dict(load_checkpoint(path), path=path)
    if "weights" in ckpt:   # an export from before config.json: its metadata pickled in ckpt.pt beside the weights
        ckpt.update(file=os.path.join(source, ckpt["weights"]), weights="raw")
    return ckpt


def read_export(folder, name, weights=True):
    """An export folder's config.json as a checkpoint dict (with weights=True: once its weights file is found
    there); `name`: what the user gave, for the messages."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            meta = json.load(f)
        if not (isinstance(meta, dict) and {"config", "model_args", "weights", "step"} <= meta.keys()):
            raise ValueError("not an export's config.json")
    except (OSError, ValueError) as e:
        raise SystemExit(f"{name} is not an export: its config.json is not one that python -m plumbing.export "
                         f"writes ({type(e).__name__}); export the run again")
    if (meta.get("export_format"), meta.get("checkpoint_format")) != (EXPORT_FORMAT, CHECKPOINT_FORMAT):
        raise SystemExit(f"{name} is an export of format {meta.get('export_format')} (checkpoint format "
                         f"{meta.get('checkpoint_format')}) and this code reads {EXPORT_FORMAT} "
                         f"({CHECKPOINT_FORMAT}): export the run again with this code, or use the code that made it")
    file = os.path.join(folder, "model.safetensors")
    if weights and not os.path.isfile(file):
        raise SystemExit(f"{name} has a config.json but no model.safetensors: export the run again")
    return dict(meta, file=file, path=os.path.join(folder, "config.json"))


def local_folder(source):
    """Where a command's outputs go by default: beside the run or export, or for a model on the hub
    out/owner--name[@revision] (never into huggingface_hub's cache, which other programs share)."""
    source = os.fspath(source)
    if not source.startswith(HUB):
        return source
    repo, revision = hub_repo(source)
    return os.path.join("out", repo.replace("/", "--") + (f"@{revision.replace('/', '--')}" if "@" in source else ""))


def chosen_weights(ckpt, weights, source):
    """"ema" or "raw": which weights of `source` to use. weights="auto" takes the moving average's where the run kept
    one (train.py's ema_decay), else the raw; "ema" or "raw" asks for those, and stops with a line where they are
    not there. An export holds one of the two."""
    if weights not in ("auto", "ema", "raw"):
        raise SystemExit(f"weights={weights!r}: use auto (the moving average's where the run kept one), ema or raw")
    held = [ckpt["weights"]] if "file" in ckpt else ["raw", "ema"] if ckpt["config"].get("ema_decay", 0) else ["raw"]
    if weights in ("auto", *held):
        return held[-1] if weights == "auto" else weights
    raise SystemExit(f"{source} holds no {weights} weights: " + (
        f"the export holds the {held[0]} weights; export the run with --weights={weights}" if "file" in ckpt else
        "the run kept no moving average (ema_decay=0); use --weights=auto or raw"))


def read_state(ckpt, which, model):
    """The whole state dict of a source's weights `which` ("ema" or "raw") on this one process. model: the model
    they go into, whose state dict the shards of a sharded checkpoint are read into."""
    if "file" in ckpt:
        return read_weights(ckpt["file"])
    key = "ema" if which == "ema" else "model"
    if "shards" not in ckpt:
        return ckpt[key]
    state = {key: model.state_dict()}
    read_shards(ckpt["path"], ckpt, state)
    return state[key]


def read_weights(path):
    """An export's tensors, floating ones in float32 (the model's own precision) whichever precision the file holds."""
    from safetensors.torch import load_file
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}


# ----------------------------------------------------------------------------------------------------------------
# Writing an export: the weights a tensor at a time, the model card, config.json last (a folder without it is not
# an export, so one cut short is never read as whole).

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def export(out_dir, dest, dtype="float32", weights="auto", overwrite=False, card_license="other", repo=""):
    """DEST/model.safetensors, config.json and README.md (+ samples.png, if the run drew one) from the checkpoint in
    out_dir (either kind); repo: the hub repository the card names for sampling ("": a placeholder)."""
    if dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"export dtype {dtype!r}: use float32 or bfloat16")
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path)
    if "weights" in ckpt:
        raise SystemExit(f"{path} is an export already: copy it, or export the run's own out_dir")
    which = chosen_weights(ckpt, weights, out_dir)
    if os.path.realpath(dest) == os.path.realpath(out_dir):
        raise SystemExit(f"--dest={dest} is the run's own out_dir: give the export a folder of its own")
    refuse_overwrite([os.path.join(dest, name) for name in FILES], overwrite)
    shapes, read = checkpoint_tensors(path, ckpt, "ema" if which == "ema" else "model")
    os.makedirs(dest, exist_ok=True)
    write_safetensors(os.path.join(dest, "model.safetensors"),   # integer tensors, if any, kept as they are
                      [(k, getattr(torch, dtype) if dt.is_floating_point else dt, shape, lambda k=k: read(k))
                       for k, (dt, shape) in sorted(shapes.items())])
    config = export_config(ckpt, which, dtype)
    samples = os.path.join(out_dir, "samples.png")
    if os.path.exists(samples):
        shutil.copyfile(samples, os.path.join(dest, "samples.png.tmp"))
        os.replace(os.path.join(dest, "samples.png.tmp"), os.path.join(dest, "samples.png"))
    elif os.path.exists(os.path.join(dest, "samples.png")):   # an earlier export's, replaced (--overwrite)
        os.remove(os.path.join(dest, "samples.png"))
    card = model_card(config, last_evaluation(os.path.join(out_dir, "metrics.jsonl"), ckpt["step"]),
                      os.path.exists(samples), card_license, repo or "OWNER/NAME",
                      os.path.basename(os.path.normpath(repo or dest)))
    write_text(os.path.join(dest, "README.md"), card)
    write_text(os.path.join(dest, "config.json"), json.dumps(config, indent=1) + "\n")
    print(f"wrote {dest} ({which} weights of step {ckpt['step']}, {dtype}): sample with python sample.py "
          f"--out_dir={dest}")


def checkpoint_tensors(path, ckpt, key):
    """({name: (dtype, shape)}, read(name)) of the state dict `key` ("model" or "ema") of a checkpoint: from its
    shards one tensor at a time (torch.distributed.checkpoint reads only what is asked), or from its file mapped."""
    if "shards" not in ckpt:
        return {k: (v.dtype, tuple(v.shape)) for k, v in ckpt[key].items()}, lambda name: ckpt[key][name]
    import torch.distributed.checkpoint as dcp
    saved = dcp.FileSystemReader(os.path.join(os.path.dirname(path), ckpt["shards"])).read_metadata()
    shapes = {k[len(key) + 1:]: (v.properties.dtype, tuple(v.size)) for k, v in saved.state_dict_metadata.items()
              if k.startswith(key + ".")}

    def read(name):
        state = {key: {name: torch.empty(shapes[name][1], dtype=shapes[name][0])}}
        read_shards(path, ckpt, state)
        return state[key][name]
    return shapes, read


def write_safetensors(path, tensors):
    """tensors: [(name, dtype, shape, read)], read() giving the tensor. The safetensors header (each tensor's dtype,
    shape and byte range) is known from the shapes alone, so it is written first and each tensor's bytes follow as
    it is read; the file appears under its name only when whole."""
    import math
    header, start = {"__metadata__": {"format": "pt"}}, 0   # "pt": what loaders of the hub's safetensors look for
    for name, dtype, shape, _ in tensors:
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        header[name] = dict(dtype=SAFETENSORS_DTYPES[dtype], shape=list(shape), data_offsets=[start, start + size])
        start += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, dtype, shape, read in tensors:
            f.write(read().to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(path + ".tmp", path)


def write_text(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def export_config(ckpt, which, dtype):
    """config.json: the run's whole configuration as load_for_inference resolves it (a setting it predates: its
    former default), the model's arguments, and what the file holds; enough to rebuild the model with nothing else."""
    from model import FORMER_DEFAULTS, ModelConfig, UnifiedTransformer
    c = {**FORMER_DEFAULTS, **ckpt["config"]}
    with torch.device("meta"):   # the sizes, without memory
        total, active = UnifiedTransformer(ModelConfig(**ckpt["model_args"])).num_params()
    return json_safe(dict(export_format=EXPORT_FORMAT, checkpoint_format=CHECKPOINT_FORMAT, step=ckpt["step"],
                          tokens=ckpt.get("tokens", 0), weights=which, ema_decay=c.get("ema_decay", 0.0),
                          dtype=dtype, parameters=total, active_parameters=active, tokenizer=c["tokenizer"],
                          encoder=c["encoder"], image_size=c["image_size"], patch_size=c["patch_size"],
                          model_args=ckpt["model_args"], config=c))


def json_safe(obj):
    """JSON's types only: tuples as lists, a numpy number as Python's; anything else stops the export with a line
    (a setting that JSON cannot hold would rebuild another model)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    raise SystemExit(f"a setting of {type(obj).__name__} {obj!r} cannot go into config.json: give it as a number, "
                     f"string, list or dict")


def last_evaluation(log, step):
    """The scores of the run's last evaluation at or before `step` (its metrics.jsonl), {} if none."""
    from plumbing.logs import read_log
    records = [r for _, r in read_log(log)] if os.path.exists(log) else []
    scored = [r for r in records if r.get("step", 0) <= step and any(k.startswith("val_") or k + "_ci" in r
                                                                     for k in r)]
    return scored[-1] if scored else {}


def model_card(config, scores, samples, card_license, repo, title):
    """README.md: the hub's metadata (YAML front matter), what the model is, the held-out table, the samples."""
    c = config["config"]
    moving = f"moving average of the weights (decay {config['ema_decay']:g})"
    tags = ["beyond-lm", "multimodal", "flow-matching", "text-to-image", "unified-model"] + \
        (["mixture-of-experts"] if c.get("ffn") == "moe" else [])
    lines = ["---", "library_name: pytorch", f"license: {card_license}", "pipeline_tag: any-to-any", "tags:",
             *[f"- {t}" for t in tags], "---", "", f"# {title}", "",
             "A unified multimodal model: one decoder-only Transformer that writes text by next-token prediction and "
             "draws images, video frames and navigation views by flow matching, trained with the beyond-lm "
             "project's train.py (plain PyTorch).", "", "| | |", "| --- | --- |",
             f"| weights | {moving if config['weights'] == 'ema' else 'as trained'}, {config['dtype']} "
             f"(model.safetensors) |",
             f"| trained | {config['step']:,} steps, {config['tokens']:,} tokens ({c['dataset']}) |",
             f"| parameters | {config['parameters'] / 1e6:.2f}M, {config['active_parameters'] / 1e6:.2f}M active per "
             f"token |",
             f"| model | {c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads, ffn {c['ffn']}, "
             f"prediction {c['prediction']} |",
             f"| pictures | {config['encoder']} encoder, {config['image_size']} px, tokenizer {config['tokenizer']} |",
             ""]
    if scores:
        scored = "moving average" if c.get("ema_decay", 0) else "weights as trained"
        lines += [f"## Held-out evaluation at step {scores['step']:,} (the {scored}, during training)", "",
                  "| score | value | 95% interval |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v:.4g} | " + ("{:.3f} .. {:.3f}".format(*scores[k + "_ci"]) if k + "_ci" in scores
                                          else "") + " |"
                  for k, v in scores.items() if (k.startswith("val_") or k + "_ci" in scores) and
                  isinstance(v, (int, float))]
        lines.append("")
    if samples:
        lines += ["![Samples of the last evaluation: prompt, drawing, truth, caption](samples.png)", ""]
    lines += ["## Use", "", "With the project's code (its README says how to install it):", "", "```bash",
              f"python sample.py --out_dir=hf://{repo} --prompt=\"a small red circle at the top left\"",
              f"python sample.py --out_dir=hf://{repo} --mode=text --prompt=\"there is\"", "```", "",
              "config.json holds the run's whole configuration; `python -c \"from plumbing.build import "
              f"load_for_inference; load_for_inference('hf://{repo}')\"` returns the model, tokenizer and encoder.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Pushing an export to the hub: huggingface_hub's create_repo and upload_folder (one commit), with its token (hf auth
# login or HF_TOKEN) and endpoint (HF_ENDPOINT); each way it fails is one line.

def push(dest, repo, private=False):
    """Uploads the export in `dest` to the hub repository `repo` (owner/name), made first if it does not exist."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HfHubHTTPError
    check_repo(repo)
    meta = read_export(dest, dest)   # only a whole export goes up
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise SystemExit(f"HF_HUB_OFFLINE is set: unset it to push {dest} to {repo}")
    if not get_token():
        raise SystemExit(f"pushing to {repo} needs a hub token with write access: hf auth login, or set HF_TOKEN")
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=dest, allow_patterns=list(FILES),
                                 commit_message=f"Export of step {meta['step']} ({meta['weights']} weights)")
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise SystemExit(f"the hub refused to write {repo} (HTTP {status}): the token needs write access to "
                             f"{repo.split('/')[0]}'s repositories (hf auth login, or HF_TOKEN)")
        raise SystemExit(f"pushing {dest} to {repo} failed (HTTP {status}: {str(e).splitlines()[0]}): run again")
    except Exception as e:   # the network failed past huggingface_hub's own retries (its errors vary by version)
        raise SystemExit(f"pushing {dest} to {repo} on {endpoint} failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): check the network (HF_ENDPOINT for a "
                         f"mirror) and run again")
    print(f"pushed {dest} to {endpoint}/{repo} (commit {info.oid}): sample with python sample.py "
          f"--out_dir=hf://{repo}")
    return info.oid


def check_repo(repo):
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise SystemExit(f"push_to_hub={repo!r}: give owner/name (a user's or organisation's name, then the model's)")


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = ""                  # the run to export (either kind of checkpoint); "": push the export in dest as it is
dest = ""                     # the export's folder
dtype = "float32"             # the weights' precision in model.safetensors: float32 or bfloat16 (half the size)
weights = "auto"              # "auto": the moving average where the run kept one (ema_decay), else the raw; or ema, raw
card_license = "other"        # the model card's license: an id the hub knows (apache-2.0, mit, cc-by-4.0, ...) or other
push_to_hub = ""              # owner/name: also upload the export to this hub repository (made if needed)
private = False               # a repository that push_to_hub makes is private
overwrite = False             # replace an export already in dest


def main(argv):
    c = configure(settings(globals()), argv, [__file__], "usage: python -m plumbing.export --out_dir=RUN --dest=FOLDER"
                  " [--dtype=bfloat16] [--push_to_hub=owner/name] [--key=value ...]")
    if not c.dest or not (c.out_dir or c.push_to_hub):
        raise SystemExit("give --dest=FOLDER and --out_dir=RUN (export the run there), --push_to_hub=owner/name "
                         "(upload the export in FOLDER), or both")
    if c.push_to_hub:
        check_repo(c.push_to_hub)   # before the work, not after
    if c.out_dir:
        export(c.out_dir, c.dest, c.dtype, c.weights, c.overwrite, c.card_license, c.push_to_hub)
    if c.push_to_hub:
        push(c.dest, c.push_to_hub, c.private)


if __name__ == "__main__":
    cli(main, sys.argv[1:])
