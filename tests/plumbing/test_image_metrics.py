"""plumbing/image_metrics.py: the Frechet distance against closed forms and torchmetrics, its bootstrap interval
against the spread of fresh samples, and the command end to end on a tiny trained toy checkpoint and a tiny local
tar, with a random-weight SigLIP-shaped tower as the feature extractor (no download)."""
import io
import json
import os
import sys
import tarfile
import types
import urllib.error

import numpy as np
import pytest
import torch

import toyworld
import train
from encoders import HALF, SemanticEncoder, SiglipVision
from helpers import TINY
from plumbing import image_metrics as im


def gaussians(rng, n, mean, cov):
    return torch.from_numpy(rng.multivariate_normal(mean, cov, n))


def test_frechet_distance_matches_the_closed_form_of_commuting_gaussians():
    """C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T: FD = |m1 - m2|^2 + sum (sqrt a - sqrt b)^2."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64)
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    expected = float((m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert im.frechet_distance(m1, q @ torch.diag(a) @ q.T, m2, q @ torch.diag(b) @ q.T) == pytest.approx(expected)
    assert im.frechet_distance(m1, torch.diag(a), m1, torch.diag(a)) == pytest.approx(0, abs=1e-9)


def test_with_more_dimensions_than_samples_the_samples_space_gives_the_same_distance():
    rng = np.random.default_rng(2)
    x1, x2 = torch.from_numpy(rng.normal(size=(12, 40))), torch.from_numpy(rng.normal(0.3, 2, size=(9, 40)))
    w1, w2 = torch.arange(12.0).double() % 3, torch.ones(9).double()
    assert im.sample_fd(x1, x2, w1, w2) == pytest.approx(im.frechet_distance(*im.moments(x1, w1),
                                                                             *im.moments(x2, w2)), rel=1e-6)


@pytest.mark.slow
def test_frechet_distance_of_samples_matches_torchmetrics():
    """Non-commuting sample covariances: the same number as torchmetrics' FID with the features fed as they are."""
    fid = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(0)
    real = gaussians(rng, 300, np.zeros(5), np.eye(5))
    fake = gaussians(rng, 200, np.full(5, 0.3), np.diag([1, 2, 0.5, 1, 3]) + 0.4)

    class Features(torch.nn.Module):
        num_features = 5

        def forward(self, x):
            return x
    metric = fid.FrechetInceptionDistance(feature=Features())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = im.frechet_distance(*im.moments(real), *im.moments(fake))
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)


def test_the_bootstrap_interval_matches_the_spread_of_fresh_samples():
    """FD of fresh draws of both sets varies about as much as the bootstrap says."""
    rng = np.random.default_rng(1)
    mean2, cov2 = np.full(3, 0.5), np.diag([1.0, 2.0, 0.5])
    fresh = [im.frechet_distance(*im.moments(gaussians(rng, 300, np.zeros(3), np.eye(3))),
                                 *im.moments(gaussians(rng, 300, mean2, cov2))) for _ in range(100)]
    fd, low, high = im.fd_with_interval(gaussians(rng, 300, np.zeros(3), np.eye(3)), gaussians(rng, 300, mean2, cov2),
                                        resamples=400, seed=0)
    assert low < fd < high
    assert 0.7 < (high - low) / (np.percentile(fresh, 97.5) - np.percentile(fresh, 2.5)) < 1.4
    assert im.fd_with_interval(np.eye(4), np.eye(4)[[3, 2, 1, 0]], resamples=0)[0] == pytest.approx(0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The command, on a tiny checkpoint.

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    train.main([*TINY, f"--out_dir={d}", "--max_iters=2", "--eval_interval=2"])
    return d


def toy_tar(path, n, seed=0, extra=()):
    """A webdataset tar: `extra` members as they are, then n toy scenes (key.png + key.txt)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in extra:
            add(name, data)
        for i in range(n):
            scene = toyworld.random_scene(rng, 1, 16)
            png = io.BytesIO()
            Image.fromarray(toyworld.render(scene, 16)).save(png, format="PNG")
            add(f"{i:04d}.png", png.getvalue())
            add(f"{i:04d}.txt", toyworld.caption(scene, 16).encode())
    return str(path)


def tiny_tower():
    """A SigLIP-shaped vision tower with random weights: 16 tokens of 32 channels for a 16 px image."""
    torch.manual_seed(0)
    return SemanticEncoder(SiglipVision(width=32, depth=1, heads=2, hidden=64, patch=4, image_size=16), None, HALF)


@pytest.mark.slow
def test_the_command_scores_a_checkpoint_against_a_held_out_tar(run_dir, tmp_path):
    tar = toy_tar(tmp_path / "held-out.tar", 6, extra=[("0000a.txt", b"a caption without its image")])
    tower = tiny_tower()
    args = [f"--out_dir={run_dir}", f"--images={tar}", "--num_images=5", "--steps=2", "--resamples=50",
            "--batch_size=2", "--device=cpu", f"--out={tmp_path / 'scores'}"]
    im.main(args, extract=tower.encode)
    out = json.load(open(tmp_path / "scores" / "image_metrics.json"))
    assert (out["images"], out["dims"], out["features"], out["checkpoint_step"]) == (5, 32, "given", 2)
    assert out["skipped_no_image"] == 1 and out["fd_low"] < out["fd"] < out["fd_high"]
    assert os.path.exists(tmp_path / "scores" / "image_metrics.png")
    # the number is the FD of the tower's mean-pooled features of the first 5 held-out images and of those drawn
    model, tok, enc, cfg = im.load_for_inference(str(run_dir), "cpu")
    c = im.configure(im.settings(vars(im)), args)
    _, real, fake = im.score(model, tok, enc, cfg, c, tower.encode, "given")
    assert np.array_equal(real, im.held_out_tars([tar], 5, 16, lambda t: True)[0])
    feats = [im.image_features(tower.encode, x, "mean") for x in (real, fake)]
    assert feats[0].shape == (5, 32) and im.fd_with_interval(*feats, 0)[0] == pytest.approx(out["fd"], rel=1e-9)
    assert im.fd_with_interval(feats[0], feats[0], 0)[0] == pytest.approx(0, abs=1e-6)
    with pytest.raises(SystemExit, match="image_metrics.json exists: pass --overwrite"):
        im.main(args, extract=tower.encode)


def test_the_toy_world_is_scored_in_the_runs_pixel_space_with_the_oracle(run_dir, tmp_path):
    im.main([f"--out_dir={run_dir}", "--num_images=4", "--steps=2", "--resamples=10", "--pool=flat",
             "--device=cpu", f"--out={tmp_path}"])
    out = json.load(open(tmp_path / "image_metrics.json"))
    assert (out["features"], out["dims"]) == ("pixels", 16 * 16 * 3) and 0 <= out["gen_accuracy"] <= 1


def test_the_toy_worlds_gen_accuracy_is_the_oracles_on_the_split_asked(run_dir, tmp_path, monkeypatch):
    """With a drawing that is the true render of each held-out caption, gen_accuracy is the oracle's score of those
    renders (at 16 px it reads these 1-shape scenes well: > 0.8) and fd is 0; with the render of the next caption's
    scene it falls to near chance (each image is scored against its own caption); the captions are those of the split
    asked."""
    held_out, shown = im.held_out_toy, {}

    def recording(*args):
        shown["real"], shown["captions"] = held_out(*args)
        return shown["real"], shown["captions"]

    def scored(split, shift):
        monkeypatch.setattr(im, "draw_images", lambda model, tok, enc, captions, c: np.roll(shown["real"], shift, 0))
        out = tmp_path / f"{split}-{shift}"
        im.main([f"--out_dir={run_dir}", "--num_images=16", "--resamples=0", "--pool=flat", f"--split={split}",
                 "--device=cpu", f"--out={out}"])
        return json.load(open(out / "image_metrics.json"))
    monkeypatch.setattr(im, "held_out_toy", recording)
    for split in ("unseen_scenes", "held_out_bindings"):
        right = scored(split, 0)
        truth = [toyworld.parse_caption(t) for t in shown["captions"]]
        assert all(toyworld.held_out(objects) == (split == "held_out_bindings") for objects in truth)
        oracle = np.mean([toyworld.score_image(x, t) for x, t in zip(shown["real"], shown["captions"])])
        assert right["gen_accuracy"] == pytest.approx(oracle) and oracle > 0.8   # measured 1.0 and 0.86
        assert right["fd"] == pytest.approx(0, abs=1e-6)
        wrong = scored(split, 1)["gen_accuracy"]
        assert wrong < 0.6   # measured 0.39 and 0.25: one object each, so the count always agrees (1 check of 4)


def test_geneval_mode_writes_genevals_folder_layout(run_dir, tmp_path):
    lines = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
             {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a red cup"}]
    (tmp_path / "evaluation_metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    im.main([f"--out_dir={run_dir}", "--mode=geneval", f"--prompts={tmp_path / 'evaluation_metadata.jsonl'}",
             "--samples_per_prompt=2", "--steps=2", "--device=cpu", f"--out={tmp_path / 'geneval'}"])
    from PIL import Image
    for i, line in enumerate(lines):
        folder = tmp_path / "geneval" / f"{i:05d}"
        assert json.load(open(folder / "metadata.jsonl")) == line
        assert sorted(os.listdir(folder / "samples")) == ["0000.png", "0001.png"]
        assert Image.open(folder / "samples" / "0000.png").size == (16, 16)
    assert not os.path.exists(str(tmp_path / "geneval") + ".part")


def test_fid_and_clip_score_stop_with_one_line_without_their_weights(tmp_path, monkeypatch):
    images = np.zeros((2, 16, 16, 3), np.uint8)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="^fid needs torch-fidelity .*: pip install torch-fidelity"):
            im.inception_fid(images, images)
    fid = pytest.importorskip("torchmetrics.image.fid")

    def offline(**kwargs):   # what torch.hub raises for the Inception weights without a network
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(fid, "FrechetInceptionDistance", offline)
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))   # installed, say
    with pytest.raises(SystemExit, match=r"^fid: the Inception-v3 weights are unavailable \(URLError: .*\): run "
                                         r"once with network access, or give --inception_weights="):
        im.inception_fid(images, images)
    with pytest.raises(SystemExit, match=f"^clip_score: the CLIP model '{tmp_path}' is unavailable \\(OSError"):
        im.clip_score(images, ["a", "b"], str(tmp_path))


def test_fid_without_torch_fidelity_stops_before_a_model_loads_or_an_image_is_drawn(tmp_path, monkeypatch):
    """--fid's packages and weights are loaded first: without torch-fidelity the command stops with one line, having
    loaded no model, drawn no image and written nothing."""
    pytest.importorskip("torchmetrics")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)   # import fails as if not installed
    work = []
    monkeypatch.setattr(im, "load_for_inference", lambda *a: work.append("load"))
    monkeypatch.setattr(im, "draw_images", lambda *a: work.append("draw"))
    with pytest.raises(SystemExit, match="^fid needs torch-fidelity .*: pip install torch-fidelity, or leave --fid "
                                         "off$"):
        im.main([f"--out_dir={tmp_path / 'run'}", "--num_images=4", "--steps=2", "--fid", "--device=cpu",
                 f"--out={tmp_path / 'scores'}"])
    assert work == [] and not os.path.exists(tmp_path / "scores")
    with pytest.raises(SystemExit, match="^--inception_weights='nowhere.pth': no such file"):
        im.main([f"--out_dir={tmp_path / 'run'}", "--fid", "--inception_weights=nowhere.pth",
                 f"--out={tmp_path / 'scores'}"])


def tiny_clip(folder):
    """A CLIP with random weights and a byte-level vocabulary (no merges), saved as transformers saves one."""
    transformers = pytest.importorskip("transformers")
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    pixels = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    transformers.CLIPProcessor(pixels, tokenizer).save_pretrained(folder)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
    config = transformers.CLIPConfig(text_config=dict(**text, **small),
                                     vision_config=dict(image_size=16, patch_size=8, **small), projection_dim=8)
    transformers.CLIPModel(config).save_pretrained(folder)
    return transformers.CLIPModel.from_pretrained(folder), transformers.CLIPProcessor.from_pretrained(folder)


def test_clip_score_in_batches_is_the_mean_of_each_pairs_clipped_cosine(tmp_path):
    model, processor = tiny_clip(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    captions = ["a red cup", "a dog on a much longer caption than the others", "x", "two cats", "a bench"]
    each = []
    for image, caption in zip(images, captions):
        with torch.no_grad():
            out = model(**processor(text=[caption], images=[image], return_tensors="pt"))
        each.append(100 * max(0.0, float(torch.cosine_similarity(out.image_embeds, out.text_embeds)[0])))
    assert min(each) == 0 < max(each)   # some cosines negative: clipped
    assert im.clip_score(images, captions, str(tmp_path), batch=2) == pytest.approx(np.mean(each), rel=1e-5)
