"""One FFN layer, forward and backward: the MoE's grouped-GEMM dispatch against a plain loop over experts and
against the dense FFN of equal active FLOPs (and the modality FFNs, which run as a two-expert grouped GEMM).

    python bench/bench_moe.py                                   # CPU: small sizes
    python bench/bench_moe.py --device=cuda --tokens=32768 --d_model=1024 --experts=64 --granularity=4

Weights and routing are random (a fresh router spreads tokens about evenly). On a GPU everything runs under bf16
autocast; `--compile=True` compiles each layer first.
"""
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import build  # noqa: E402
import model  # noqa: E402
import moe  # noqa: E402
import train  # noqa: E402
from bench_train import timed  # noqa: E402

DEFAULTS = dict(device="auto", dtype="auto", tokens=4096, d_model=256, experts=16, granularity=4,
                shared="per_modality", steps=10, warmup=3, compile=False, loop=True)


def main(argv):
    c = train.configure(DEFAULTS, argv)
    dev = build.resolve_device(c.device)
    dtype = getattr(torch, c.dtype if c.dtype != "auto" else "bfloat16" if dev.startswith("cuda") else "float32")
    grouped = moe.GROUPED_MM and (dev.startswith("cuda") or dtype == torch.bfloat16)   # as grouped_swiglu decides
    cfg = model.ModelConfig(d_model=c.d_model, n_head=max(1, c.d_model // 64), n_kv_head=1, ffn="moe",
                            moe_experts=c.experts, moe_granularity=c.granularity, moe_shared=c.shared)
    torch.manual_seed(0)
    x = torch.randn(1, c.tokens, c.d_model, device=dev, requires_grad=True)
    is_vision = torch.rand(1, c.tokens, device=dev) < 0.5
    g = torch.randn_like(x)
    path = "grouped GEMM" if grouped else "loop"
    layers = {"dense FFN (equal active FLOPs)": model.SharedFFN(cfg), f"modality FFNs ({path})": model.ModalityFFN(cfg),
              f"MoE ({path})": moe.MoEFFN(cfg)}
    if c.loop and grouped:   # the same MoE layer (same weights) dispatched by a plain loop over experts
        layers["MoE (loop over experts)"] = layers[f"MoE ({path})"]
    mlp = moe.grouped_swiglu
    print(f"{c.tokens} tokens, d_model {c.d_model}, FFN hidden {cfg.ffn_hidden}; MoE: {c.experts} experts "
          f"{cfg.ffn_hidden // c.granularity} wide, top-{c.granularity}, shared={c.shared}; {dev} "
          f"{str(dtype).split('.')[-1]}")
    base = None
    for name, layer in layers.items():
        layer = layer.to(dev)
        run = torch.compile(layer) if c.compile else layer
        loop = name.endswith("(loop over experts)")
        moe.grouped_swiglu = functools.partial(mlp, grouped=False) if loop else mlp   # what MoEFFN calls

        def step():
            with torch.autocast(dev.split(":")[0], dtype, enabled=dtype != torch.float32):
                y = run(x, is_vision)[0]
            torch.autograd.backward(y, g)
        dt = timed(step, c.steps, c.warmup, dev)
        base = base or dt
        print(f"  {name:<40} {dt * 1e3:8.2f} ms  ({dt / base:.2f}x dense)")
    moe.grouped_swiglu = mlp


if __name__ == "__main__":
    main(sys.argv[1:])
