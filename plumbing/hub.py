"""
Files over the network, and the weight files they bring. Published weights come from the Hugging Face hub through
huggingface_hub: its cache (HF_HOME, shared with transformers and diffusers, so nothing is fetched twice), its token
(`hf auth login` or HF_TOKEN), its endpoint (HF_ENDPOINT) and offline switch (HF_HUB_OFFLINE); each published default is
pinned to a commit. What is this project's own: which files, and one line for each way a download fails. Webdataset
shards streamed over HTTP survive a flaky network: a failed open or a lost connection is retried with exponential
backoff and the read resumes at the byte where it stopped, so a stream yields the same samples as an unbroken one.
"""
import io
import json
import os
import sys
import time
from urllib.parse import urlparse

import torch

# ----------------------------------------------------------------------------------------------------------------
# The hub. A weights source is a local folder, or "owner/name[/folder][@revision]" on the hub; without a revision,
# a published default (encoders.SEMANTIC, encoders.VAES) reads the commit pinned here, so every run of a config
# loads the same weights, and any other repository reads "main". The RAE decoders follow "main": no published
# commit of theirs could be confirmed when these were pinned.

PINNED = {
    "google/siglip2-so400m-patch14-224": "78e403963a4f6a3640d07803284752326fdf4edf",
    "facebook/webssl-dino300m-full2b-224": "8529cdb3fb75014932af3b896455fc21c386168e",
    "facebook/dinov2-large": "47b73eefe95e8d44ec3623f8890bd894b6ea2d6c",
    "stabilityai/sd-vae-ft-mse": "31f26fdeee1355a5c34592e401dd41e45d25a493",
    "black-forest-labs/FLUX.1-schnell": "741f7c3ce8b383c54771c7003378a50191e9efe9",
}


def hub_file(repo, filename, revision="main", repo_type="model", endpoint=None):
    """Local path of a file of a hub repository at a revision (branch, tag or commit), downloaded into the
    huggingface_hub cache unless it is there. The ranks of a node share the cache and its file lock: one downloads
    a file while the others wait for it. Any failure stops with one line that says what to do."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    what = f"{repo}/{filename} at revision {revision}"
    try:
        return hf_hub_download(repo, filename, revision=revision, repo_type=repo_type, endpoint=endpoint)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} cannot be reached"
        raise SystemExit(f"{why} and {what} is not in the cache ({constants.HF_HUB_CACHE}): download it once online "
                         f"(HF_ENDPOINT for a mirror), or give a local folder with the same files")
    except GatedRepoError as e:
        raise SystemExit(f"{repo} is gated (HTTP {e.response.status_code}): accept its terms on its hub page, then "
                         f"log in (hf auth login) or set HF_TOKEN")
    except RepositoryNotFoundError:
        raise SystemExit(f"no repository {repo} on {endpoint} (a private one needs hf auth login or HF_TOKEN): "
                         f"check the name, owner/name[/folder][@revision]")
    except RevisionNotFoundError:
        raise SystemExit(f"{repo} has no revision {revision!r}: give a branch, tag or commit of it after the '@'")
    except EntryNotFoundError:
        raise SystemExit(f"{repo} has no file {filename} at revision {revision}: check the repository and folder")
    except Exception as e:   # the network failed past huggingface_hub's own retries (its errors vary by version)
        raise SystemExit(f"download of {what} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         f"): run again")


def weights_file(source, filename):
    """The path of `filename` in a weights source: a local folder, or owner/name[/folder][@revision] on the hub."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: the folder must hold the model's {filename}")
        return path
    name, _, revision = source.partition("@")
    if name.count("/") < 1 or name.startswith((".", "/")):
        raise SystemExit(f"weights '{source}': no such folder, and not a hub repository (owner/name[/folder]"
                         f"[@revision])")
    owner, repo, *folder = name.split("/")
    return hub_file(f"{owner}/{repo}", "/".join([*folder, filename]), revision or PINNED.get(f"{owner}/{repo}", "main"))


def weights_folder(source, filenames):
    """The folder that holds `filenames` of a weights source, each fetched first: a library loads the model from it."""
    paths = [weights_file(source, name) for name in filenames]
    return os.path.dirname(paths[0])


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


# ----------------------------------------------------------------------------------------------------------------
# Shards streamed over HTTP. The byte offset read so far is all a resumed read needs: a Range request continues there
# (a server that ignores ranges sends the shard again, and the bytes already read are skipped), so the tar reader
# above it never sees the cut, and a run's samples stay a function of its stream positions alone.

RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)   # worth another try; any other error status is final


class RemoteShard(io.RawIOBase):
    """A shard at an http(s) URL, read once from start to end like a file. A failed open (a retryable status, no
    connection) or a connection lost mid-way is retried up to `retries` times in a row, waiting 1, 2, 4, ... seconds
    (at most `max_wait`); bytes received reset the count. Only then does it raise a ValueError naming the shard.
    The hub's URLs carry the Hugging Face token, so gated datasets stream."""

    def __init__(self, url, retries=10, max_wait=60.0):
        super().__init__()
        self.url, self.retries, self.max_wait = url, retries, max_wait
        self.headers = {"Accept-Encoding": "identity", **hub_token(url)}   # identity: offsets count the file's bytes
        self.pos, self.size, self.etag, self.response = 0, None, None, None
        self.attempt(lambda: None)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.attempt(lambda: self.receive(buffer))

    def attempt(self, action):
        """action() on a connection, reconnecting (and resuming) after each failure, until it succeeds or the retries
        run out."""
        import http.client
        import requests
        import urllib3
        from tqdm import tqdm
        failures = 0
        while True:
            try:
                if self.response is None:
                    self.connect()
                return action()
            except (OSError, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException) as e:
                self.drop()
                failures += 1
                where = f"lost shard {self.url} at byte {self.pos}" if self.pos else f"cannot open shard {self.url}"
                if failures > self.retries:
                    raise ValueError(f"{where} after {self.retries} retries ({type(e).__name__}: {e}): check the "
                                     f"server or the network, then resume the run")
                wait = min(self.max_wait, 2.0 ** (failures - 1))
                tqdm.write(f"{where} ({type(e).__name__}): retry {failures} of {self.retries} in {wait:g} s",
                           file=sys.stderr)
                time.sleep(wait)

    def connect(self):
        """A response positioned at self.pos: a Range request, or the whole shard with the bytes before it skipped."""
        import requests
        headers = dict(self.headers, **({"Range": f"bytes={self.pos}-"} if self.pos else {}))
        r = requests.get(self.url, headers=headers, stream=True, timeout=60)
        if r.status_code >= 400:
            r.close()
            if r.status_code in RETRY_STATUS:
                raise requests.HTTPError(f"{r.status_code} {r.reason}")
            raise ValueError(f"cannot open shard {self.url}: {r.status_code} {r.reason}")
        ranged, got = r.status_code == 206, r.headers.get("Content-Range", "")
        if ranged and not got.startswith(f"bytes {self.pos}-"):
            r.close()
            raise ValueError(f"shard {self.url}: asked for the bytes from {self.pos}, got '{got}'")
        total = got.rpartition("/")[2] if ranged else r.headers.get("Content-Length", "")
        etag, size = r.headers.get("ETag"), int(total) if total.isdigit() else None
        if etag and self.etag and etag != self.etag or size and self.size and size != self.size:
            r.close()
            raise ValueError(f"shard {self.url} changed on the server while it was read (its ETag or size): the run "
                             f"stops rather than mix two versions of it")
        self.etag, self.size = etag or self.etag, size or self.size
        skip = 0 if ranged else self.pos
        while skip:   # the server ignored the range: read again up to where the cut was
            got = len(r.raw.read(min(skip, 1 << 20)))
            if not got:
                r.close()
                raise ConnectionError(f"the shard ended at byte {self.pos - skip} while skipping to {self.pos}")
            skip -= got
        self.response = r

    def receive(self, buffer):
        n = self.response.raw.readinto(buffer)
        if n == 0 and self.size is not None and self.pos < self.size:   # closed before the promised length
            raise ConnectionError(f"the connection closed at byte {self.pos} of {self.size}")
        self.pos += n
        return n

    def drop(self):
        if self.response is not None:
            self.response.close()
        self.response = None

    def close(self):
        self.drop()
        super().close()


def hub_token(url):
    """The Authorization header for a URL on the hub (huggingface.co, or HF_ENDPOINT), if a token is set (hf auth
    login, HF_TOKEN); no other host sees it (requests drops it when the hub redirects to its CDN)."""
    hosts = {"huggingface.co", "hf.co", urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).netloc}
    if urlparse(url).netloc not in hosts:
        return {}
    from huggingface_hub import get_token
    token = get_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
