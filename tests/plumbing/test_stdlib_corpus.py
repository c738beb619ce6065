"""stdlib_corpus.py and the toy world's two claims-suite variants: Python's source as text (held-out files never drawn
in training, only they in validation) and maze walks without their actions as video."""
import numpy as np
import pytest

from data import FRAME, Tokenizer, ToyWorldData
from plumbing import stdlib_corpus


def test_the_split_is_fixed_disjoint_and_a_tenth():
    train, val = stdlib_corpus.files("train"), stdlib_corpus.files("val")
    assert not set(train[0]) & set(val[0]) and len(train[0]) > 100 and len(val[0]) > 10
    assert 0.03 < val[1].sum() / (train[1].sum() + val[1].sum()) < 0.25      # a tenth of the files, by size too
    assert all(stdlib_corpus.held_out(p) for p in val[0]) and not any(stdlib_corpus.held_out(p) for p in train[0])
    assert stdlib_corpus.held_out("os.py") == (__import__("zlib").crc32(b"os.py") % 10 == 0)   # the path decides


READ = stdlib_corpus.read.__wrapped__   # uncached


def replay(split, steps, monkeypatch):
    """The files a ToyWorldData with Python's source as text reads for `steps` batches of one split."""
    opened = []
    monkeypatch.setattr(stdlib_corpus, "read", lambda path: opened.append(path) or READ(path))
    tok = Tokenizer("bytes")
    data = ToyWorldData(tok, 256, 16, {"text": 0.5, "caption_to_image": 0.5}, seed=3, max_shapes=2,
                        text_source="stdlib")
    text = [tok.decode(row) for s in range(steps) for row in data.batch(s, 0, 8, split)["tokens"].tolist()]
    return opened, text


def test_training_never_draws_a_held_out_file(monkeypatch):
    """Replay training batches: every document comes from a training file; validation batches only from held-out
    ones. The documents are real source, fill most of a row, and fit it."""
    opened, text = replay("train", 40, monkeypatch)
    assert len(opened) > 100 and not any(stdlib_corpus.held_out(p) for p in opened)
    assert any("def " in t or "import " in t for t in text)
    opened, _ = replay("val", 10, monkeypatch)
    assert opened and all(stdlib_corpus.held_out(p) for p in opened)
    rng = np.random.default_rng(0)
    lengths = [len(stdlib_corpus.document(rng, "train", 254).encode()) for _ in range(200)]
    assert max(lengths) <= 254 and np.mean(lengths) > 200


def test_walks_as_video_and_a_bad_source_stops():
    """Action-free camera motion: consecutive views of one walk, as a video example with no text between frames."""
    tok = Tokenizer("bytes")
    data = ToyWorldData(tok, 256, 16, {"video": 1.0}, video_source="walks", nav_view="topdown")
    frames = data.walk(np.random.default_rng(0), 4)[0]
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8 and (frames[1:] != frames[:-1]).any()
    ex = data.example(np.random.default_rng(1))
    assert ex.ids == [tok.bos] + [tok.boi, FRAME, tok.eoi] * 4 + [tok.eos]
    import train
    from plumbing.build import build
    from plumbing.settings import configure
    c = configure(train.DEFAULTS, ["configs/toy.py", "--text_source=code"])
    with pytest.raises(SystemExit, match="text_source='code'"):
        build(c, "cpu")


def test_validation_documents_are_a_systematic_sample_of_held_out_files(monkeypatch):
    """Evenly spread over the held-out bytes: many files, none of training's, the same for one seed, shifted for
    another."""
    opened = []
    monkeypatch.setattr(stdlib_corpus, "read", lambda path: opened.append(path) or READ(path))
    docs = stdlib_corpus.validation_documents(256, 254, seed=0)
    assert len(docs) == 256 and all(len(d.encode()) <= 254 for d in docs) and np.mean([len(d) for d in docs]) > 200
    assert all(stdlib_corpus.held_out(p) for p in opened)
    assert len(set(opened)) > 0.5 * len(stdlib_corpus.files("val")[0])
    again, other = (stdlib_corpus.validation_documents(256, 254, seed=s) for s in (0, 1))
    assert docs == again != other
