"""plumbing/hub.py against the local hub (tests/local_hub.py): downloads through huggingface_hub's cache, revisions and
pins, tokens, one-line errors, eight processes downloading one file once; shards streamed through a flaky server."""
import os
import subprocess
import sys
import time

import pytest
from local_hub import Hub, cdn_path, commit_of

import plumbing.hub
from helpers import ROOT



def gets(path):
    """The Range header of each GET the local hub answered on `path` (None: the whole file)."""
    return [r for method, p, r in Hub.requests if method == "GET" and p == path]


@pytest.mark.slow
def test_downloads_land_in_the_hf_cache_resume_a_cut_and_come_once(hub, tmp_path, monkeypatch):
    """A connection cut half-way is resumed in the same call with a Range request from the bytes already written.
    huggingface_hub (2.x) writes a download in chunks of constants.DOWNLOAD_CHUNK_SIZE (10 MiB) and resumes from
    the last whole chunk, so a cut inside the first chunk starts again at byte 0: the chunk is made 64 KiB here,
    to stand for a file of many chunks at the size of a test."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    data = os.urandom(300_000)
    Hub.repos["org/model"] = {"model.pt": data, "config.json": b'{"hidden_size": 8}'}
    Hub.cut[cdn_path(data)] = 1   # the first answer stops after 150,000 bytes: two whole chunks
    path = plumbing.hub.hub_file("org/model", "model.pt")
    commit = commit_of("org/model")
    assert path == str(tmp_path / f"hf/hub/models--org--model/snapshots/{commit}/model.pt")
    assert open(path, "rb").read() == data
    assert gets(cdn_path(data)) == [None, f"bytes={2 << 16}-"]   # asked again after the cut, from where it stopped
    assert plumbing.hub.hub_file("org/model", "model.pt") == path and len(gets(cdn_path(data))) == 2   # cached
    before = len(Hub.requests)   # a commit that is cached needs no request at all
    assert plumbing.hub.hub_file("org/model", "model.pt", revision=commit) == path and len(Hub.requests) == before


def test_weights_sources_pick_a_revision_and_the_defaults_are_pinned(hub, monkeypatch):
    Hub.repos["org/vae"] = {"vae/config.json": b"{}", "vae/weights.safetensors": b"w" * 100}
    commit = commit_of("org/vae")
    path = plumbing.hub.weights_file(f"org/vae/vae@{commit}", "config.json")
    assert path.endswith(f"snapshots/{commit}/vae/config.json") and Hub.requests[-1][1].endswith(
        f"/resolve/{commit}/vae/config.json")
    plumbing.hub.weights_file("org/vae/vae", "weights.safetensors")   # no pin: main
    assert any(p == "/org/vae/resolve/main/vae/weights.safetensors" for _, p, _ in Hub.requests)
    monkeypatch.setitem(plumbing.hub.PINNED, "org/vae", "0" * 40)     # a default without '@' reads its pinned commit
    with pytest.raises(SystemExit, match=f"^org/vae has no revision '{'0' * 40}': give a branch, tag or commit"):
        plumbing.hub.weights_file("org/vae/vae", "config.json")
    assert plumbing.hub.weights_file("org/vae/vae@main", "config.json") == path
    with pytest.raises(SystemExit, match=r"weights 'nothing': no such folder, and not a hub repository"):
        plumbing.hub.weights_file("nothing", "config.json")


def test_hub_failures_stop_with_one_line(hub, monkeypatch):
    from huggingface_hub import constants
    Hub.repos["org/model"] = {"config.json": b"{}"}
    Hub.repos["org/gated"] = {"model.safetensors": b"secret weights"}
    Hub.gated["org/gated"] = "hf_right"
    with pytest.raises(SystemExit, match=f"^no repository org/nothing on {hub} .*hf auth login or HF_TOKEN"):
        plumbing.hub.hub_file("org/nothing", "model.pt")
    with pytest.raises(SystemExit, match="^org/model has no file model.pt at revision main: check"):
        plumbing.hub.hub_file("org/model", "model.pt")
    with pytest.raises(SystemExit, match=r"^org/gated is gated \(HTTP 401\): accept its terms .* set HF_TOKEN$"):
        plumbing.hub.hub_file("org/gated", "model.safetensors")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SystemExit, match=r"^org/gated is gated \(HTTP 403\)"):
        plumbing.hub.hub_file("org/gated", "model.safetensors")
    monkeypatch.delenv("HF_TOKEN")
    with open(constants.HF_TOKEN_PATH, "w") as f:   # where `hf auth login` saves it
        f.write("hf_right")
    assert open(plumbing.hub.hub_file("org/gated", "model.safetensors"), "rb").read() == b"secret weights"
    os.remove(constants.HF_TOKEN_PATH)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(Hub.requests)
    assert open(plumbing.hub.hub_file("org/gated", "model.safetensors"), "rb").read() == b"secret weights"   # cached
    with pytest.raises(SystemExit, match=r"^HF_HUB_OFFLINE is set and org/model/config.json at revision main is "
                                         r"not in the cache \(.*hf/hub\): download it once online"):
        plumbing.hub.hub_file("org/model", "config.json")
    assert len(Hub.requests) == before


CHILD = """
import os, sys, time
import plumbing.hub
open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
print(plumbing.hub.hub_file("org/big", "model.safetensors"))
"""


@pytest.mark.slow
def test_eight_ranks_download_a_file_once_and_all_get_it_whole(hub, tmp_path):
    """As 8 ranks of a node start: 8 processes ask for the same file at the same moment, while it arrives slowly.
    huggingface_hub's file lock lets one download it; the others wait, then find it in the cache."""
    data = os.urandom(2_000_000)
    Hub.repos["org/big"] = {"model.safetensors": data}
    Hub.delay = 0.01                    # ~0.3 s for the file: every process asks before it has arrived
    go = tmp_path / "go"
    ranks = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"rank{i}"), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    while not all(os.path.exists(tmp_path / f"rank{i}.ready") for i in range(8)):
        assert all(r.poll() is None for r in ranks), [r.communicate() for r in ranks if r.poll() is not None]
        time.sleep(0.01)
    go.touch()
    outputs = [r.communicate(timeout=120) for r in ranks]
    assert [r.returncode for r in ranks] == [0] * 8, [err[-500:] for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and open(paths.pop(), "rb").read() == data
    assert gets(cdn_path(data)) == [None]   # one download for the node


def test_a_gated_dataset_streams_with_the_hub_token(hub, monkeypatch):
    data = os.urandom(50_000)
    Hub.repos["datasets/org/gated"] = {"p.tar": data}
    Hub.gated["datasets/org/gated"] = "hf_right"
    url = f"{hub}/datasets/org/gated/resolve/main/p.tar"
    with pytest.raises(ValueError, match=f"^cannot open shard {url}: 401"):   # final at once: no retries
        plumbing.hub.RemoteShard(url, retries=3, max_wait=0.01)
    assert [p for _, p, _ in Hub.requests] == [url.removeprefix(hub)]
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    assert plumbing.hub.RemoteShard(url).read() == data
    assert plumbing.hub.hub_token(Hub.cdn + cdn_path(data)) == {}   # only the hub sees the token
    assert plumbing.hub.hub_token(url)
