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
