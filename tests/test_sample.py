"""sample.py: the KV-cached modal-switching sampler against plain recomputation, guidance, seeds, files, errors."""
import numpy as np
import pytest
import torch

import sample
import train
from data import FRAME, Example, Tokenizer, collate, image_to_caption
from helpers import full_pass, reference_draw
from model import KVCache, ModelConfig, UnifiedTransformer

N, C = 4, 6


def tiny():
    torch.manual_seed(0)
    model = UnifiedTransformer(ModelConfig(vocab_size=Tokenizer().vocab_size, n_layer=2, n_head=4, n_kv_head=2,
                                           d_model=32, latent_dim=C, tokens_per_frame=N, attention="sdpa"))
    torch.nn.init.normal_(model.flow_head.weight, std=0.1)   # zero-initialised heads would make images trivial
    return model.eval()


CAPTIONS = ["a big red circle at the top left", "a small cyan square at the center and a big blue triangle"]


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_cached_images_equal_recomputed_images(guidance):
    """Cached and uncached paths agree, with guidance and with guidance 1 (the conditional branch alone)."""
    model, tok = tiny(), Tokenizer()
    cached = sample.draw(model, tok, CAPTIONS, steps=6, guidance=guidance, generator=torch.Generator().manual_seed(1))
    plain = reference_draw(model, tok, CAPTIONS, 6, guidance, torch.Generator().manual_seed(1))
    assert (cached - plain).abs().max() < 1e-4
    assert cached.abs().mean() > 0.1


def test_guidance_changes_the_image():
    model, tok = tiny(), Tokenizer()
    a = sample.draw(model, tok, CAPTIONS, 4, 1.0, torch.Generator().manual_seed(1))
    b = sample.draw(model, tok, CAPTIONS, 4, 3.0, torch.Generator().manual_seed(1))
    assert (a - b).abs().max() > 1e-3


def test_cached_text_logits_equal_a_full_pass():
    """Prefill (left-padded rows of different lengths, one with an image) then one token at a time."""
    model, tok = tiny(), Tokenizer()
    torch.manual_seed(3)
    rows = [image_to_caption(tok, torch.randn(N, C), "", prompt_only=True), Example([tok.bos, *tok.encode("ab")])]
    more = [tok.encode("xyz"), tok.encode("uvw")]
    b = sample.prompt_batch(rows, model, tok.pad)
    cache = KVCache(model.cfg.n_layer)
    with torch.no_grad():
        logits, _ = model(b["tokens"], b["doc"], b["frame"], b["vis_idx"], b["latents"], torch.ones(1), pos=b["pos"],
                          cache=cache)
        steps = [logits[:, -1]]
        pos = b["pos"][:, -1] + 1
        for j in range(3):
            feed = torch.tensor([[more[0][j]], [more[1][j]]])
            logits, _ = model(feed, torch.zeros_like(feed), torch.full_like(feed, -1), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0, N, C), torch.zeros(0), pos=pos[:, None], cache=cache)
            steps.append(logits[:, -1])
            pos += 1
        for r, ex in enumerate(rows):
            whole = Example(ex.ids + more[r], ex.frames, ex.cond)
            _, (full, _) = full_pass(model, tok, [whole])
            n = ex.length(N)
            for j in range(4):
                assert (steps[j][r] - full[0, n - 1 + j]).abs().max() < 1e-4


def test_describe_equals_greedy_recomputation():
    model, tok = tiny(), Tokenizer()
    latents = torch.randn(3, N, C, generator=torch.Generator().manual_seed(0))
    texts = sample.describe(model, tok, latents, max_tokens=12)
    for z, text in zip(latents, texts):
        ex = image_to_caption(tok, z, "", prompt_only=True)
        for _ in range(12):
            _, (logits, _) = full_pass(model, tok, [ex])
            nxt = logits[0, ex.length(N) - 1]
            nxt[tok.boi] = float("-inf")                  # describe() never switches to drawing
            nxt = int(nxt.argmax())
            if nxt == tok.eos:
                break
            ex.ids.append(nxt)
        assert text == tok.decode(ex.ids[4:])


class Scripted(torch.nn.Module):
    """Wraps a model and makes every text step emit the next token of a script (per row)."""

    def __init__(self, model, scripts):
        super().__init__()
        self.inner, self.cfg, self.scripts, self.k = model, model.cfg, scripts, 0

    def forward(self, tokens, doc, frame, vis_idx, zt, t, **kw):
        logits, flow = self.inner(tokens, doc, frame, vis_idx, zt, t, **kw)
        text_step = kw.get("commit", True) and not (frame >= 0).any() and len(tokens) == len(self.scripts)
        if text_step:   # not an Euler step, not an image's commit, not the unconditional prefix
            logits = logits.clone()
            for r, script in enumerate(self.scripts):
                logits[r, -1, script[min(self.k, len(script) - 1)]] = 1e4
            self.k += 1
        return logits, flow


def test_modal_switching_writes_a_well_formed_image_block_mid_text():
    tok = Tokenizer()
    a, b = tok.encode("ab"), tok.encode("cd")
    # row 0's logits at step 3 are those of its BOI: ignored, as the image comes next; step 4 is EOI's
    model = Scripted(tiny(), [[*a, tok.boi, 0, ord("x"), *b, tok.eos], [*b, tok.eos]])
    prompt = Example([tok.bos, *tok.encode("hi")])
    out_a, out_b = sample.generate(model, tok, [prompt, prompt], max_tokens=20, steps=3,
                                   generator=torch.Generator().manual_seed(0))
    assert out_a.ids == [*prompt.ids, *a, tok.boi, FRAME, tok.eoi, ord("x"), *b, tok.eos]
    assert len(out_a.frames) == 1 and out_a.frames[0].shape == (N, C)
    assert out_b.ids == [*prompt.ids, *b, tok.eos] and out_b.frames == []
    # laid out as a training sequence, the block is BOI, exactly N latent tokens, EOI
    row = collate([[Example(out_a.ids, [None], [False])]], 32, N, tok.pad)
    boi = list(row["tokens"][0]).index(tok.boi)
    assert (row["frame"][0][boi + 1:boi + 1 + N] == 0).all() and row["tokens"][0][boi + 1 + N] == tok.eoi
    assert sample.as_text(tok, out_a.ids) == "hiab <image> xcd"


def test_video_continuation_and_same_seed_same_image():
    model, tok = tiny(), Tokenizer()
    context = torch.randn(2, 3, N, C, generator=torch.Generator().manual_seed(0))
    new = sample.continue_video(model, tok, context, 2, steps=3, generator=torch.Generator().manual_seed(5))
    again = sample.continue_video(model, tok, context, 2, steps=3, generator=torch.Generator().manual_seed(5))
    other = sample.continue_video(model, tok, context, 2, steps=3, generator=torch.Generator().manual_seed(6))
    assert new.shape == (2, 2, N, C) and torch.equal(new, again) and not torch.equal(new, other)


def test_video_continuation_is_unguided_by_default(monkeypatch):
    """Every Euler step runs only the B conditional rows: no unconditional branch, which would hold no context."""
    model, tok = tiny(), Tokenizer()
    context = torch.randn(2, 3, N, C, generator=torch.Generator().manual_seed(0))
    rows, real = [], sample.draw_image
    monkeypatch.setattr(sample, "draw_image", lambda model, cache, uncond, r, *a: rows.append(
        (len(r), a[3])) or real(model, cache, uncond, r, *a))
    sample.continue_video(model, tok, context, 2, steps=3, generator=torch.Generator().manual_seed(5))
    assert rows == [(2, 1.0), (2, 1.0)]


# ---- the command line, on a checkpoint from a tiny run ------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    train.main(["--n_layer=2", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=128", "--batch_size=4",
                "--image_size=16", "--patch_size=4", "--max_shapes=1", "--video_frames=2", "--eval_samples=2",
                "--eval_iters=1", "--sample_steps=2", "--max_iters=2", "--eval_interval=2", "--device=cpu",
                f"--out_dir={d}"])
    return d


@pytest.mark.slow
def test_command_line_modes_write_their_files(run_dir, tmp_path, capsys):
    from PIL import Image
    out = tmp_path / "o"
    common = [f"--out_dir={run_dir}", f"--out={out}", "--steps=2", "--num_samples=3", "--max_tokens=5"]
    sample.main([*common, "--prompt=a big red circle at the top left"])
    assert np.asarray(Image.open(out / "images.png")).shape == (4 * 18, 4 * 3 * 18, 3)  # 16 px + border, x4
    sample.main([*common, "--mode=video", "--context_frames=1", "--new_frames=1"])
    gif = Image.open(out / "video_0.gif")
    assert gif.n_frames == 2 and gif.size == (4 * 32, 4 * 16)     # truth beside context + generated
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(gray)  # grayscale, not square, not 16 px
    sample.main([*common, "--mode=caption", f"--image={gray}"])
    sample.main([*common, "--mode=text", "--prompt=there is"])
    printed = capsys.readouterr().out
    assert f"wrote {out / 'images.png'}" in printed and printed.count("[2] ") == 2


def test_clear_errors(run_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SystemExit, match="cannot read image .*bad.png"):
        sample.main([f"--out_dir={run_dir}", "--mode=caption", f"--image={bad}", f"--out={tmp_path}"])
    with pytest.raises(SystemExit, match="unknown mode 'poem'"):
        sample.main([f"--out_dir={run_dir}", "--mode=poem"])
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=False)
    ckpt["config"]["d_model"] = 64
    other = tmp_path / "other"
    other.mkdir()
    torch.save(ckpt, other / "ckpt.pt")
    with pytest.raises(SystemExit, match="trained with d_model=32 but the config asks for 64"):
        sample.main([f"--out_dir={other}"])
    with pytest.raises(SystemExit, match="no checkpoint at"):
        sample.main([f"--out_dir={tmp_path / 'nothing'}"])
