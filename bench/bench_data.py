"""Data-loader throughput on this machine, single loader thread: python bench/bench_data.py [image_size]

Writes synthetic shards in a temporary folder (500x375 JPEGs with captions, pre-encoded SigLIP-sized latents,
a 20M-token text shard, NWM trajectories) and times realdata.ShardData on each source alone, at seq_len 4096 with
256 tokens per frame (the real config's layout)."""
import io
import os
import pickle
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from plumbing import realdata  # noqa: E402


def photo(rng, w=500, h=375):
    """Smooth colour gradients plus texture: compresses like a photograph (~40 kB at quality 90), unlike noise."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * x * rng.random() + rng.random() * 6), np.cos(5 * y * rng.random()), x * y], -1)
    img = (base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def timed(d, steps, batch_size=1):
    d.batch(0, 0, batch_size)                 # opens the files
    t = time.perf_counter()
    frames = tokens = 0
    for s in range(1, steps + 1):
        b = d.batch(s, 0, batch_size)
        frames += 0 if b["images"] is None else len(b["images"])
        tokens += int((b["doc"] >= 0).sum())
    dt = time.perf_counter() - t
    return dt / steps, frames / dt, tokens / dt


def main(size=224):
    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp()
    jpgs = [photo(rng) for _ in range(64)]
    with tarfile.open(f"{root}/pairs.tar", "w") as tar:
        for i in range(2000):
            add(tar, f"{i:06d}.jpg", jpgs[i % 64])
            add(tar, f"{i:06d}.txt", f"a photograph number {i} of something in a place with some light".encode())
    with tarfile.open(f"{root}/latents.tar", "w") as tar:
        for i in range(600):
            buf = io.BytesIO()
            np.save(buf, rng.standard_normal((256, 1152)).astype(np.float16))
            add(tar, f"{i:06d}.latent.npy", buf.getvalue())
            add(tar, f"{i:06d}.txt", f"latent number {i}".encode())
    with tarfile.open(f"{root}/video.tar", "w") as tar:
        for k in range(100):
            for i in range(8):
                add(tar, f"v{k}.{i:03d}.jpg", jpgs[(k + i) % 64])
    tok = data.Tokenizer()
    lengths = rng.integers(200, 3000, 20000)
    ids = np.concatenate([np.r_[tok.eot, rng.integers(0, 256, n)] for n in lengths])
    realdata.write_shard(f"{root}/text.bin", ids, tok.vocab_size)
    for t in range(4):
        folder = f"{root}/nwm/t{t}"
        os.makedirs(folder)
        for i in range(60):
            open(f"{folder}/{i}.jpg", "wb").write(jpgs[(t + i) % 64])
        pickle.dump({"position": np.cumsum(np.full((60, 2), 0.25), 0), "yaw": np.zeros(60)},
                    open(f"{folder}/traj_data.pkl", "wb"))
    print(f"image_size {size}, seq_len 4096, 256 tokens per frame, one loader thread, batch of 1 row of 4096")
    for name, source, path, latent in (("caption->image (JPEG 500x375)", "caption_to_image", "pairs.tar", False),
                                       ("caption->image (latents .npy)", "caption_to_image", "latents.tar", True),
                                       ("video (4 frames per clip)", "video", "video.tar", False),
                                       ("navigation (NWM windows)", "navigation", "nwm/*", False),
                                       ("text (token shard)", "text", "text.bin", False)):
        d = realdata.ShardData(tok, 4096, 256, 1152, {source: 1.0}, {source: f"{root}/{path}"}, 1, image_size=size,
                           video_frames=4)
        per_row, frames_s, tokens_s = timed(d, 40 if source != "text" else 400)
        print(f"{name:32s} {1000 * per_row:7.1f} ms per 4096-token row  {frames_s:8.0f} frames/s  "
              f"{tokens_s / 1e6:6.2f}M positions/s" + ("  (latent)" if latent else ""))

    # the training loop's view: realdata.Prefetcher over 4 slots of JPEG caption->image rows, 1 or 2 threads
    for threads in (1, 2):
        d = realdata.ShardData(tok, 4096, 256, 1152, {"caption_to_image": 1.0},
                               {"caption_to_image": f"{root}/pairs.tar"}, 4, image_size=size)
        loader = realdata.Prefetcher(d, 0, range(4), 1, depth=8, threads=threads)
        loader.next()
        t, frames = time.perf_counter(), 0
        for _ in range(40):
            frames += len(loader.next()[0]["images"])
        rate = frames / (time.perf_counter() - t)
        loader.close()
        print(f"Prefetcher, {threads} thread(s), JPEG caption->image: {rate:6.0f} frames/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 224)
