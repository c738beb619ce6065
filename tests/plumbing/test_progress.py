"""Progress bars of long work, each with its total: sampling's passes, the evaluation's parts (held-out batches,
the oracle's tasks), pre-encoding's shards, and the claims runner's runs with the time left by their estimates."""
import io
import tarfile

import numpy as np
import pytest
import torch
import tqdm

import encoders
import sample
import train
from data import Example, Tokenizer
from findings import runs
from helpers import TINY, tiny
from plumbing import realdata


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar shown while the test runs, as (description, total, count) when it closes."""
    closed = []

    class Recorded(tqdm.tqdm):
        def close(self):
            if not self.disable and not getattr(self, "recorded", False):
                self.recorded = True
                closed.append((self.desc, self.total, self.n))
            super().close()
    monkeypatch.setattr(tqdm, "tqdm", Recorded)   # the commands import it as they run: from tqdm import tqdm
    return closed


def test_sampling_counts_its_passes_against_their_total(bars):
    """An image costs its BOI fed (a caption's prompt ends with it already), its Euler steps and commit, its EOI fed
    back: the bar ends at its total. Text ends at or before max_tokens - 1 passes."""
    model, tok = tiny().eval(), Tokenizer()
    g = torch.Generator().manual_seed(0)
    sample.draw(model, tok, ["a red circle", "x"], steps=3, guidance=2.0, generator=g, progress=True)
    context = torch.randn(2, 1, model.cfg.tokens_per_frame, model.cfg.latent_dim, generator=g)
    sample.continue_video(model, tok, context, 3, steps=2, generator=g, progress=True)
    sample.generate(model, tok, [Example([tok.bos, *tok.encode("ab")])], max_tokens=6, allow_images=False,
                    generator=g, progress=True)
    (_, total1, n1), (_, total2, n2), (_, total3, n3) = bars
    assert (total1, n1) == (3 + 2, 3 + 2) and (total2, n2) == (3 * (2 + 3), 3 * (2 + 3))
    assert total3 == 5 and n3 <= 5


def test_the_evaluation_counts_its_batches_and_the_oracles_tasks(bars, tmp_path):
    """eval_iters held-out batches, then each oracle task (drawing, captioning) on each of the two splits."""
    c = train.configure(train.DEFAULTS, [*TINY, "--eval_iters=2", f"--out_dir={tmp_path}"])
    tok, enc, data, model = train.build(c, "cpu")
    train.evaluate(model, tok, enc, data, c, "cpu", step=c.max_iters)
    assert bars == [(f"evaluating step {c.max_iters}", 2 + 2 * 2, 2 + 2 * 2)]


def test_preencoding_counts_shards(bars, tmp_path):
    """A tar is a stream: the shards are the total known before reading, the images counted beside them."""
    from PIL import Image
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for i in range(3):
                png = io.BytesIO()
                Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(png, "PNG")
                for name, data in ((f"{i}.png", png.getvalue()), (f"{i}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    shards = [str(tmp_path / f"shard-{s}.tar") for s in range(2)]
    stats = realdata.preencode(shards, str(tmp_path / "out"), encoders.PixelPatches(32, 8), 32, batch=2)
    assert bars == [("pre-encoding", 2, 2)] and stats["images"] == 6 and stats["shards"] == 2


def test_the_claims_runner_says_run_k_of_n_and_the_time_left_by_estimate(bars, capsys):
    """One line per ended run above the bar; the bar's postfix: the unfinished runs' estimates over the jobs."""
    todo = {("1/a", 0): {}, ("1/a", 1): {}, ("1/b", 0): {}}
    say = runs.progress(todo, {("1/a", 0): 3600.0, ("1/a", 1): 7200.0, ("1/b", 0): 1800.0}, jobs=2)
    say("1/a seed 0: scoring")
    say("1/a seed 0: done in 3600 s", ("1/a", 0))
    say("1/a seed 1: done in 7000 s", ("1/a", 1))
    assert tqdm.tqdm.format_meter(**say.bar.format_dict).startswith("claims: run 2 of 3 ended |")
    assert tqdm.tqdm.format_meter(**say.bar.format_dict).endswith(", about 15 min left by estimate")
    say.close()
    assert capsys.readouterr().out.splitlines() == ["1/a seed 0: scoring", "1/a seed 0: done in 3600 s",
                                                    "1/a seed 1: done in 7000 s"]
    assert bars == [("claims", 3, 2)]
