"""Images per second through each frozen encoder and decoder, with random weights of the published shapes (speed
and memory do not depend on the weights, and nothing is downloaded).

    python bench/bench_encoders.py                       # siglip2 + its RAE decoder, webssl, dinov2; batch 16
    python bench/bench_encoders.py siglip2 --batch=64    # on a GPU the encoders run in bfloat16
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import encoders  # noqa: E402


def timed(fn, repeats):
    fn()   # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*", default=["siglip2", "webssl", "dinov2"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {dev}, torch {torch.__version__}, batch {a.batch}, {torch.get_num_threads()} threads")
    for name in a.names:
        enc = encoders.build_encoder(name, 224, device=dev, weights="random")
        images = np.random.default_rng(0).integers(0, 256, (a.batch, 224, 224, 3), dtype=np.uint8)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, z = timed(lambda: enc.encode(images), a.repeats)
        line = f"{name:8s} encode {a.batch / seconds:8.1f} images/s  latents {tuple(z.shape[1:])}"
        if enc.decoder is not None:
            seconds, _ = timed(lambda: enc.decode(z), a.repeats)
            line += f"  decode {a.batch / seconds:8.1f} images/s"
        if dev == "cuda":
            line += f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        print(line, flush=True)
        del enc


if __name__ == "__main__":
    main()
