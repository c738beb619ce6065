"""Images per second of caption -> image sampling (25 Euler steps, guidance 3.0), with and without the KV cache.

    python bench/bench_sample.py configs/toy.py                 # the toy config, random weights
    python bench/bench_sample.py configs/toy.py --d_model=1024 --n_layer=24 --n_head=16 --n_kv_head=4 \
        --image_size=224 --patch_size=14 --device=cuda         # ~300M parameters, 256 tokens per image

Weights are random (speed does not depend on them); the uncached sampler is the reference the tests compare the
cached one with (tests/helpers.py, used by tests/test_sample.py), so both compute the same images.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import build  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from tests.helpers import reference_draw  # noqa: E402


def main(argv):
    c = train.configure(train.DEFAULTS, argv)
    dev = build.resolve_device(c.device)
    tok, enc, _, model = train.build(c, dev)
    model.eval()
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    captions = ["a big red circle at the top left and a small blue square at the center"] * 16
    total, active = model.num_params()
    print(f"{total / 1e6:.1f}M parameters, {model.cfg.tokens_per_frame} tokens per image, device {dev} {dtype}")
    for name, fn in (("cached", lambda g: sample.draw(model, tok, captions, 25, 3.0, g)),
                     ("uncached", lambda g: reference_draw(model, tok, captions, 25, 3.0, g))):
        with torch.autocast(dev.split(":")[0], dtype, enabled=dtype != torch.float32):
            fn(torch.Generator(dev).manual_seed(0))            # warm-up
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.time()
            fn(torch.Generator(dev).manual_seed(0))
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
        dt = time.time() - t0
        print(f"{name:>9}: {len(captions) / dt:8.2f} images/s ({dt:.2f} s for a batch of {len(captions)})")


if __name__ == "__main__":
    main(sys.argv[1:])
