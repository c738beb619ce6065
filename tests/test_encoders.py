"""encoders.py: pixel patches round-trip, and the hub downloader against a local HTTP server on 127.0.0.1."""
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import encoders


def test_pixel_patches_round_trip():
    enc = encoders.PixelPatches(32, 8)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z = enc.encode(images)
    assert z.shape == (3, 16, 192) and z.min() >= -1 and z.max() <= 1
    assert np.array_equal(enc.decode(z), images)
    # token 1 is the patch right of the top-left one
    assert torch.equal(z[0, 1], torch.as_tensor(images[0, :8, 8:16]).float().div(127.5).sub(1).reshape(-1))
    with pytest.raises(ValueError, match="expected images of shape"):
        enc.encode(images[:, :16])


class Hub(BaseHTTPRequestHandler):
    files, cut, ranges = {}, set(), []

    def do_GET(self):
        if self.path.startswith("/gated/"):
            return self.send_error(401)
        data = self.files.get(self.path)
        if data is None:
            return self.send_error(404)
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if "Range" in self.headers else 0
        self.ranges.append(start)
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.cut:   # the connection drops half-way through, once
            self.cut.discard(self.path)
            body = body[:len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("BLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BLM_OFFLINE", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hub.files.clear(), Hub.cut.clear(), Hub.ranges.clear()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def cached(tmp_path):
    return sorted(os.path.relpath(os.path.join(d, f), tmp_path / "cache") for d, _, fs in os.walk(tmp_path / "cache")
                  for f in fs)


def test_download_resumes_after_a_cut_connection(hub, tmp_path):
    data = os.urandom(300_000)
    Hub.files["/org/model/resolve/main/model.pt"] = data
    Hub.cut.add("/org/model/resolve/main/model.pt")
    with pytest.raises(SystemExit, match="run again to resume from [1-9][0-9]* bytes"):
        encoders.hub_file("org/model", "model.pt", endpoint=hub)
    assert cached(tmp_path) == ["org/model/main/model.pt.part"]
    kept = os.path.getsize(tmp_path / "cache/org/model/main/model.pt.part")
    path = encoders.hub_file("org/model", "model.pt", endpoint=hub, sha256=hashlib.sha256(data).hexdigest())
    assert Hub.ranges == [0, kept] and 0 < kept <= 150_000 and open(path, "rb").read() == data
    assert cached(tmp_path) == ["org/model/main/model.pt"]
    assert encoders.hub_file("org/model", "model.pt", endpoint=hub) == path and len(Hub.ranges) == 2  # cached


def test_size_and_checksum_mismatches_leave_nothing(hub, tmp_path):
    Hub.files["/org/m/resolve/main/a.bin"] = b"x" * 1000
    with pytest.raises(SystemExit, match="got 1000 bytes, expected 999"):
        encoders.hub_file("org/m", "a.bin", size=999, endpoint=hub)
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        encoders.hub_file("org/m", "a.bin", sha256="0" * 64, endpoint=hub)
    assert cached(tmp_path) == []


def test_404_401_and_offline_errors(hub, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"not found \(404\); check the repository and file names"):
        encoders.hub_file("org/nothing", "model.pt", endpoint=hub)
    with pytest.raises(SystemExit, match=r"access denied \(401\).*set HF_TOKEN"):
        encoders.hub_file("gated/model", "model.pt", endpoint=hub)
    assert cached(tmp_path) == []
    monkeypatch.setenv("BLM_OFFLINE", "1")
    with pytest.raises(SystemExit, match="offline and .*org/m/main/a.bin is not in the cache"):
        encoders.hub_file("org/m", "a.bin", endpoint=hub)
    assert Hub.ranges == []


def test_siglip_vision_tower_matches_transformers(tmp_path):
    """A small random SigLIP saved in the real key layout (a full SiglipModel, text tower included) loads into
    our encoder; its latents equal the reference's last hidden state before post_layernorm, then LayerNorm."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                           image_size=56, patch_size=14),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    reference = transformers.SiglipModel(config).eval()
    reference.save_pretrained(tmp_path)                    # model.safetensors + config.json, as on the hub
    from safetensors.torch import load_file
    ours = encoders.SiglipVision.from_config(json.load(open(tmp_path / "config.json")))
    ours.load_vision_tower(load_file(tmp_path / "model.safetensors")).eval()
    pixels = torch.rand(2, 3, 56, 56) * 2 - 1
    with torch.no_grad():
        hidden = reference.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        want = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=1e-6)
        got = ours(pixels)
    assert got.shape == (2, 16, 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a SigLIP vision tower"):
        ours.load_vision_tower({"vision_model.embeddings.patch_embed.weight": torch.zeros(1)})
