"""plumbing/hub.py against the local hub (tests/local_hub.py): downloads through huggingface_hub's cache, revisions and
pins, tokens, one-line errors, eight processes downloading one file once; shards streamed through a flaky server.
plumbing/export.py likewise: a run exported, pushed, read back by its repository id (at a revision) and sampled;
config.json alone rebuilds the model; each way a source or a push fails is one line."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from local_hub import Hub, cdn_path, commit_of

import plumbing.hub
from helpers import ROOT, TINY



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


# ----------------------------------------------------------------------------------------------------------------
# Exports (plumbing/export.py) on the hub and back.

@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A tiny run that keeps a moving average of its weights (decay 0.5: far from the weights after 3 steps),
    evaluated (samples.png) and checkpointed at step 3."""
    import train
    out = tmp_path_factory.mktemp("ema") / "run"
    train.main([*TINY, f"--out_dir={out}", "--max_iters=3", "--eval_interval=3", "--ema_decay=0.5"])
    return out


def files_under(folder):
    return {os.path.join(d, f) for d, _, names in os.walk(folder) for f in names}


@pytest.mark.slow
def test_an_export_goes_to_the_hub_and_comes_back_bit_identical(ema_run, hub, tmp_path, monkeypatch):
    """Exported (the moving average: the default where the run kept one) and pushed; read back by repository id,
    its weights are the checkpoint's moving average bit for bit, an export of the raw weights pushed after it is
    the raw weights, and the first commit still reads the first export. sample.py draws from the hub's copy into
    out/owner--name/samples, and nothing is written into huggingface_hub's cache but what was downloaded."""
    import sample
    from plumbing import build, export
    monkeypatch.chdir(tmp_path)   # sample.py's outputs for a hub model go to out/ under the working folder
    monkeypatch.setenv("HF_TOKEN", Hub.writer)
    ckpt = torch.load(ema_run / "ckpt.pt", weights_only=True)
    export.main([f"--out_dir={ema_run}", f"--dest={tmp_path / 'ema'}", "--push_to_hub=me/toy",
                 "--card_license=apache-2.0"])
    assert sorted(Hub.repos["me/toy"]) == ["README.md", "config.json", "model.safetensors", "samples.png"]
    card = Hub.repos["me/toy"]["README.md"].decode()
    assert card.startswith("---\nlibrary_name: pytorch\nlicense: apache-2.0\n") and "hf://me/toy" in card
    assert "| gen_unseen_scenes |" in card and "![" in card   # the held-out table and the samples
    assert json.loads(Hub.repos["me/toy"]["config.json"])["weights"] == "ema"
    first = Hub.heads["me/toy"]
    model, _, _, cfg = build.load_for_inference("hf://me/toy", "cpu")
    got, ema, raw = model.state_dict(), ckpt["ema"], ckpt["model"]
    assert got.keys() == ema.keys() and all(torch.equal(got[k], ema[k]) for k in ema)
    assert not all(torch.equal(ema[k], raw[k]) for k in raw)   # an average that differs from the weights
    assert cfg.weights == "ema" and cfg.checkpoint_step == 3 and not cfg.wandb_log and not cfg.tensorboard_log
    export.main([f"--out_dir={ema_run}", f"--dest={tmp_path / 'raw'}", "--weights=raw"])
    export.main([f"--dest={tmp_path / 'raw'}", "--push_to_hub=me/toy"])   # an export made before, pushed
    got = build.load_for_inference("hf://me/toy", "cpu")[0].state_dict()
    assert all(torch.equal(got[k], raw[k]) for k in raw)
    got = build.load_for_inference(f"hf://me/toy@{first}", "cpu")[0].state_dict()
    assert all(torch.equal(got[k], ema[k]) for k in ema)
    cache = files_under(tmp_path / "hf")
    sample.main([f"--out_dir=hf://me/toy@{first}", "--num_samples=2", "--steps=2", "--device=cpu"])
    assert (tmp_path / "out" / f"me--toy@{first}" / "samples" / "images.png").exists()
    assert files_under(tmp_path / "hf") == cache


@pytest.mark.slow
def test_config_json_alone_rebuilds_the_model(ema_run, tmp_path):
    """build() from config.json's settings and the file's tensors, nothing else: the same model, strictly loaded;
    bfloat16 halves the file and rounds the weights; the run's raw weights are the checkpoint's, as asked for."""
    from types import SimpleNamespace
    from safetensors.torch import load_file
    from plumbing import build, export
    export.export(str(ema_run), str(tmp_path / "x"))
    export.export(str(ema_run), str(tmp_path / "half"), "bfloat16")
    config = json.load(open(tmp_path / "x" / "config.json"))
    assert {k: config[k] for k in ("export_format", "step", "weights", "dtype", "tokenizer", "encoder", "image_size",
                                   "patch_size")} == dict(export_format=export.EXPORT_FORMAT, step=3, weights="ema",
                                                          dtype="float32", tokenizer="toy", encoder="pixels",
                                                          image_size=16, patch_size=4)
    _, _, _, model = build.build(SimpleNamespace(**config["config"]), "cpu")
    model.load_state_dict(load_file(tmp_path / "x" / "model.safetensors"))   # strict: every tensor, no other
    assert vars(model.cfg) == config["model_args"]
    want = build.load_for_inference(str(ema_run), "cpu")[0].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    half = load_file(tmp_path / "half" / "model.safetensors")
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], want[k].bfloat16()) for k in want)
    assert json.load(open(tmp_path / "half" / "config.json"))["dtype"] == "bfloat16"
    raw = build.load_for_inference(str(ema_run), "cpu", "raw")[0].state_dict()
    ckpt = torch.load(ema_run / "ckpt.pt", weights_only=True)
    assert all(torch.equal(raw[k], ckpt["model"][k]) for k in raw)
    with pytest.raises(SystemExit, match="exists: pass --overwrite"):   # an export is never replaced unasked
        export.export(str(ema_run), str(tmp_path / "x"))


def fake_export(folder, **changes):
    """An export folder with a config.json of the right keys and a model.safetensors that no model reads: enough for
    the checks that come before any weights are read."""
    from plumbing import export
    from plumbing.checkpoints import CHECKPOINT_FORMAT
    os.makedirs(folder, exist_ok=True)
    meta = {**dict(export_format=export.EXPORT_FORMAT, checkpoint_format=CHECKPOINT_FORMAT, step=1, weights="ema",
                   config={}, model_args={}), **changes}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(meta, f)
    export.write_safetensors(os.path.join(folder, "model.safetensors"), [])
    return str(folder)


def test_model_sources_and_pushes_fail_with_one_line(hub, tmp_path, monkeypatch):
    from plumbing import export
    source = export.model_source
    with pytest.raises(SystemExit, match=f"^no checkpoint at {tmp_path}/nothing/ckpt.pt: train one first"):
        source(str(tmp_path / "nothing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"hidden_size": 8}')   # someone else's config.json
    with pytest.raises(SystemExit, match=f"^{tmp_path}/junk is not an export: its config.json is not one that "):
        source(str(tmp_path / "junk"))
    os.remove(os.path.join(fake_export(tmp_path / "cut"), "model.safetensors"))
    with pytest.raises(SystemExit, match="cut has a config.json but no model.safetensors: export the run again"):
        source(str(tmp_path / "cut"))
    fake_export(tmp_path / "old", export_format=0)
    with pytest.raises(SystemExit, match=r"old is an export of format 0 \(checkpoint format 2\) and this code reads 1"):
        source(str(tmp_path / "old"))
    for bad in ("hf://nothing", "hf://a/b/c", "hf://a/b@", "hf://a b/c"):
        with pytest.raises(SystemExit, match=r"a model on the hub is hf://owner/name\[@revision\]"):
            source(bad)
    with pytest.raises(SystemExit, match=f"^no repository org/missing on {hub} "):
        source("hf://org/missing")
    Hub.repos["org/other"] = {"config.json": b"{}"}   # a repository that holds something else
    with pytest.raises(SystemExit, match="^hf://org/other is not an export"):
        source("hf://org/other")
    ok = fake_export(tmp_path / "ok")
    held = export.model_source(ok)
    with pytest.raises(SystemExit, match="holds no raw weights: the export holds the ema weights; export the run "
                                         "with --weights=raw"):
        export.chosen_weights(held, "raw", ok)
    with pytest.raises(SystemExit, match="weights='best': use auto"):
        export.chosen_weights(held, "best", ok)
    with pytest.raises(SystemExit, match="holds no ema weights: the run kept no moving average"):
        export.chosen_weights({"config": {"ema_decay": 0.0}}, "ema", "out/run")
    with pytest.raises(SystemExit, match=r"^push_to_hub='me': give owner/name"):
        export.main([f"--dest={ok}", "--push_to_hub=me"])
    with pytest.raises(SystemExit, match="^give --dest=FOLDER and --out_dir=RUN"):
        export.main([f"--dest={ok}"])
    with pytest.raises(SystemExit, match="junk is not an export"):   # only a whole export goes up
        export.push(str(tmp_path / "junk"), "me/x")
    with pytest.raises(SystemExit, match="^pushing to me/x needs a hub token with write access: hf auth login"):
        export.push(ok, "me/x")
    monkeypatch.setenv("HF_TOKEN", "hf_reader")
    with pytest.raises(SystemExit, match=r"^the hub refused to write me/x \(HTTP 403\): the token needs write access"):
        export.push(ok, "me/x")
    assert "me/x" not in Hub.repos
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(SystemExit, match=r"^pushing .*ok to me/x on http://127.0.0.1:9 failed \(.*\): check the "
                                         r"network"):
        export.push(ok, "me/x")
