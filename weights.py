"""
Files from the Hugging Face hub: published encoder and decoder weights, and llm.c's FineWeb token shards. Each is
downloaded once into a local cache (BLM_CACHE, default ~/.cache/beyond-lm), resumably, and never left half-written.
A weights source is a hub repository ("owner/name[/subfolder]") or a local folder holding the same files.
"""
import json
import os

import torch


# ----------------------------------------------------------------------------------------------------------------
# Weights from the Hugging Face hub: downloaded once into a cache, resumable, never half-written.

HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def cache_dir():
    return os.environ.get("BLM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "beyond-lm"))


def hub_file(repo, filename, revision="main", size=None, sha256=None, endpoint=None):
    """Local path of repo/filename, downloading it first if the cache lacks it. A partial download (.part) is
    resumed with an HTTP Range request; the file is renamed into place only once its size (and sha256, if given)
    check out. HF_TOKEN is sent for gated repositories; BLM_OFFLINE=1 only reads the cache."""
    import requests
    from tqdm import tqdm
    dest = os.path.join(cache_dir(), repo, revision, filename)
    if os.path.exists(dest):
        return dest
    url = f"{endpoint or HUB}/{repo}/resolve/{revision}/{filename}"
    if os.environ.get("BLM_OFFLINE") == "1":
        raise SystemExit(f"offline and {dest} is not in the cache: download {url} there, or unset BLM_OFFLINE")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            if r.status_code in (401, 403):
                raise SystemExit(f"{url}: access denied ({r.status_code}); for a gated repository accept its terms "
                                 f"on the hub and set HF_TOKEN")
            if r.status_code == 404:
                raise SystemExit(f"{url}: not found (404); check the repository and file names")
            if r.status_code == 416:   # the partial file is already complete
                total = have
            else:
                r.raise_for_status()
                if r.status_code == 200:   # the server ignored the range: start again
                    have = 0
                total = have + int(r.headers.get("Content-Length", 0)) if "Content-Length" in r.headers else None
                with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B",
                                                                     unit_scale=True, desc=filename) as bar:
                    for chunk in r.iter_content(1 << 16):   # small chunks: a cut loses little
                        f.write(chunk)
                        bar.update(len(chunk))
    except requests.RequestException as e:
        raise SystemExit(f"download of {url} failed ({e.__class__.__name__}); run again to resume from "
                         f"{os.path.getsize(part) if os.path.exists(part) else 0} bytes")
    got = os.path.getsize(part)
    if (total is not None and got != total) or (size is not None and got != size):
        os.remove(part)
        raise SystemExit(f"{url}: got {got} bytes, expected {size or total}; the partial file was removed, run again")
    if sha256 is not None:
        import hashlib
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            os.remove(part)
            raise SystemExit(f"{url}: sha256 mismatch; the file was removed, run again")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------------------------
# Published weights: a hub repository (optionally "owner/name/subfolder") or a local folder with the same files.

def weights_file(source, filename):
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: the folder must hold the model's {filename}")
        return path
    if source.count("/") < 1 or source.startswith((".", "/")):
        raise SystemExit(f"weights '{source}': no such folder, and not a hub repository (owner/name[/subfolder])")
    owner, name, *sub = source.split("/")
    return hub_file(f"{owner}/{name}", "/".join([*sub, filename]))


def read_weights(source, filename, keep=lambda key: True):
    """config.json and the tensors whose names pass `keep` (safetensors reads only those; .pt files load with
    weights_only=True and may wrap their state dict in {"model": ...})."""
    config = json.load(open(weights_file(source, "config.json")))
    path = weights_file(source, filename)
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            return config, {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state.get("state_dict", state))
    return config, {k: v for k, v in state.items() if keep(k)}
