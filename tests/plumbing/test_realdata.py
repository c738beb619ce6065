"""Real data (plumbing/realdata.py): token shards and the prepare/download commands, webdataset tars (good, broken,
streamed over HTTP, pre-encoded latents), video and NWM navigation, disjoint slots, exact resumption, a train.py
smoke run."""
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from local_hub import Hub, cdn_path

import data
import train
from data import Example, Tokenizer, action_text, robot_frame_actions
from helpers import ROOT
from plumbing import realdata
from plumbing.realdata import ShardData, read_shard, write_shard

SIZE, N, C = 16, 16, 48          # 16x16 images in 4x4 pixel patches: 16 tokens of 48 channels


def encoded(array, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def solid(value, h=SIZE, w=SIZE):
    return np.full((h, w, 3), value, np.uint8)


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def pairs_tar(path, first, n):
    """n good samples, caption 'caption <i>', image of value i."""
    return write_tar(path, [m for i in range(first, first + n) for m in
                            ((f"{i:05d}.jpg", encoded(solid(i))), (f"{i:05d}.txt", f"caption {i}".encode()))])


def make(mixture, seq_len=128, n_slots=1, spacing=None, stream=None, unit="examples", **sources):
    sources = {k.removesuffix("_data"): v for k, v in sources.items()}     # text_data=... -> {"text": ...}
    return ShardData(Tokenizer(), seq_len, N, C, mixture, sources, n_slots, seed=0, image_size=SIZE,
                     video_frames=2, cfg_dropout=0.0, waypoint_spacing=spacing or {"nwm": 1.0, "nwm2": 1.0},
                     stream=stream, mixture_unit=unit)


def take(source, data, slot=0, n=None):
    """Every example a fresh stream of `source` yields for `slot` in its first epoch."""
    stream = data_stream(data, source, slot)
    out = []
    while stream.state[0] == 0 and (n is None or len(out) < n):
        stream.peek()
        if stream.state[0] == 0:
            out.append(stream.pop())
    return out


def data_stream(d, source, slot=0):
    return realdata.Stream(d, source, d.files[source], slot, d.n_slots)


def text_of(tok, ex):
    return tok.decode(ex.ids)


# ---------------------------------------------------------------------------------------------------------------
# Token shards

@pytest.mark.slow
def test_prepare_text_command_writes_llmc_shards_that_read_back(tmp_path):
    docs = [f"document {i}: " + "words " * (i % 17) for i in range(40)]
    (tmp_path / "a.txt").write_text(docs[0])
    with open(tmp_path / "b.jsonl", "w") as f:
        for d in docs[1:]:
            f.write(json.dumps({"text": d}) + "\n")
        f.write("not json\n")
    out = subprocess.run([sys.executable, "data.py", "prepare-text", f"--inputs={tmp_path}/a.txt,{tmp_path}/*.jsonl",
                          f"--out_dir={tmp_path}/shards", "--tokenizer=bytes", "--shard_tokens=300"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "b.jsonl:40: no \"text\" field, line skipped" in out
    shards = sorted(os.listdir(tmp_path / "shards"))
    assert len(shards) > 2 and shards[0] == "text_000000.bin" and not any(s.endswith(".tmp") for s in shards)
    header = np.fromfile(tmp_path / "shards" / shards[0], np.int32, 256)
    assert header[:2].tolist() == [20240520, 1] and header[2] >= 300     # whole documents: a little over
    tok = Tokenizer()
    d = make({"text": 1.0}, seq_len=64, text_data=f"{tmp_path}/shards/*.bin")
    pieces = take("text", d)
    # documents come back whole, longer ones cut into row-sized pieces: BOS on the first, EOS on the last
    joined, doc = [], []
    for ex in pieces:
        assert len(ex.ids) <= 64
        doc += [t for t in ex.ids if t < 256]
        if ex.ids[-1] == tok.eos:
            joined.append(bytes(doc).decode())
            doc = []
    assert sorted(joined) == sorted(docs) and max(len(ex.ids) for ex in pieces) > 60    # long ones were cut
    assert pieces[0].ids[0] == tok.bos and sum(ex.ids[0] == tok.bos for ex in pieces) == len(docs)


def test_shard_versions_and_bad_shards(tmp_path):
    write_shard(str(tmp_path / "big.bin"), [0, 70000, 5], vocab_size=100_000)
    assert np.fromfile(tmp_path / "big.bin", np.int32, 256)[1] == 2
    assert read_shard(str(tmp_path / "big.bin")).tolist() == [0, 70000, 5]
    write_shard(str(tmp_path / "small.bin"), [1, 2, 3], vocab_size=261)
    assert read_shard(str(tmp_path / "small.bin")).dtype == np.uint16
    (tmp_path / "junk.bin").write_bytes(b"x" * 2000)
    with pytest.raises(ValueError, match="junk.bin is not a token shard"):
        read_shard(str(tmp_path / "junk.bin"))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "small.bin").read_bytes()[:-2])
    with pytest.raises(ValueError, match="cut.bin is truncated"):
        read_shard(str(tmp_path / "cut.bin"))
    d = make({"text": 1.0}, text_data=str(tmp_path / "big.bin"))
    with pytest.raises(ValueError, match="holds token 70000 but the tokenizer has 261"):
        take("text", d)


@pytest.mark.slow
def test_download_fineweb_links_shards_from_the_hugging_face_cache(hub, tmp_path):  # noqa: F811
    shards = {}
    for name in ("edu_fineweb_val_000000.bin", "edu_fineweb_train_000001.bin"):
        write_shard(str(tmp_path / name), np.arange(200_000) % 50_000, 50_262)
        shards[name] = (tmp_path / name).read_bytes()
    Hub.repos["datasets/karpathy/fineweb-edu-100B-gpt2-token-shards"] = shards
    Hub.cut[cdn_path(shards["edu_fineweb_train_000001.bin"])] = 1   # a dropped connection: asked again
    paths = realdata.download_fineweb(str(tmp_path / "fw"), shards=1)
    assert [os.path.basename(p) for p in paths] == list(shards)
    for p in paths:
        assert open(p, "rb").read() == shards[os.path.basename(p)] and len(read_shard(p)) == 200_000
        assert os.path.realpath(p).startswith(str(tmp_path / "hf" / "hub"))   # a link into huggingface_hub's cache
    asked = len(Hub.requests)
    assert realdata.download_fineweb(str(tmp_path / "fw"), shards=1) == paths
    assert not [r for r in Hub.requests[asked:] if r[0] == "GET"]           # nothing downloaded twice


# ---------------------------------------------------------------------------------------------------------------
# Webdataset tars

def test_tar_reader_converts_odd_images_and_counts_broken_samples(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 0] = 200                               # red, but fully transparent: lands on white
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32, 0] = 255                            # left half red, right half blue
    wide[:, 32:, 2] = 255
    palette = Image.fromarray(solid(90)).convert("P")
    pal = io.BytesIO()
    palette.save(pal, "PNG")
    members = [("a.jpg", encoded(solid(10))), ("a.txt", b"ten"),
               ("b.png", encoded(rgba, "PNG")), ("b.json", json.dumps({"caption": "clear"}).encode()),
               ("c.jpg", encoded(np.full((SIZE, SIZE), 77, np.uint8))), ("c.txt", b"gray"),
               ("d.png", pal.getvalue()), ("d.txt", b"palette"),
               ("e.jpg", b"\xff\xd8 this is not a jpeg"), ("e.txt", b"corrupt"),
               ("f.jpg", encoded(solid(30))),                                     # no caption
               ("g.jpg", encoded(solid(40))), ("g.json", b"{\"url\": \"x\"}"),      # json without a caption
               ("h.webp", encoded(wide, "WEBP")), ("h.txt", b"wide"),
               ("i.jpg", encoded(solid(50))), ("i.txt", b"x" * 500)]              # longer than a row
    path = write_tar(tmp_path / "pairs.tar", members)
    d = make({"image_to_caption": 1.0}, image_to_caption_data=path)
    tok = Tokenizer()
    exs = take("image_to_caption", d)
    assert [text_of(tok, e) for e in exs] == ["ten", "clear", "gray", "palette", "wide"]
    frames = [e.frames[0] for e in exs]
    assert all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f in frames)
    assert abs(int(frames[0].mean()) - 10) <= 2 and (frames[1] == 255).all() and abs(int(frames[2].mean()) - 77) <= 2
    assert abs(int(frames[3].mean()) - 90) <= 2
    left, right = frames[4][:, 0].astype(int), frames[4][:, -1].astype(int)   # centre crop keeps both halves
    assert (left[:, 0] > 200).all() and (left[:, 2] < 60).all() and (right[:, 2] > 200).all()
    assert d.stats == {"bad_frame": 1, "no_caption": 2, "too_long": 1}

    # a tar cut short: the samples before the cut still come, the cut is counted, nothing crashes
    whole = open(path, "rb").read()
    open(tmp_path / "cut.tar", "wb").write(whole[:len(whole) // 2])
    d = make({"image_to_caption": 1.0}, image_to_caption_data=str(tmp_path / "cut.tar"))
    kept = [text_of(tok, e) for e in take("image_to_caption", d)]
    assert 0 < len(kept) < 5 and kept == ["ten", "clear", "gray", "palette", "wide"][:len(kept)]
    assert d.stats["truncated_shards"] == 1


def test_tars_stream_over_http_and_bad_shards_stop_with_their_name(hub, tmp_path):  # noqa: F811
    path = pairs_tar(tmp_path / "p.tar", 0, 6)
    Hub.files["/shards/p-0001.tar"] = open(path, "rb").read()
    local = make({"caption_to_image": 1.0}, caption_to_image_data=path)
    remote = make({"caption_to_image": 1.0}, caption_to_image_data=f"{hub}/shards/p-{{0001..0001}}.tar")
    a, b = take("caption_to_image", local), take("caption_to_image", remote)
    assert len(a) == 6 and [e.ids for e in a] == [e.ids for e in b]
    assert all(np.array_equal(x.frames[0], y.frames[0]) for x, y in zip(a, b))

    gone = make({"caption_to_image": 1.0}, caption_to_image_data=f"{hub}/shards/missing.tar")
    with pytest.raises(ValueError, match=r"cannot open shard http://127.0.0.1:\d+/shards/missing.tar: 404"):
        take("caption_to_image", gone)
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    junk = make({"caption_to_image": 1.0}, caption_to_image_data=str(tmp_path / "junk.tar"))
    with pytest.raises(ValueError, match="cannot open shard .*junk.tar"):
        take("caption_to_image", junk)
    with pytest.raises(ValueError, match="no file matches '.*nothing/\\*.tar'"):
        make({"caption_to_image": 1.0}, caption_to_image_data=str(tmp_path / "nothing/*.tar"))
    with pytest.raises(ValueError, match="the mixture weights video but video_data is empty"):
        make({"caption_to_image": 1.0, "video": 0.5}, caption_to_image_data=path)
    empty = write_tar(tmp_path / "empty.tar", [("a.jpg", b"broken"), ("a.txt", b"x")])
    with pytest.raises(ValueError, match="no usable caption_to_image example in .*empty.tar"):
        make({"caption_to_image": 1.0}, caption_to_image_data=empty).batch(0, 0, 1)


QUICK = {"retries": 2, "max_wait": 0.01}   # RemoteShard's (train.py's stream_retries, stream_max_wait): short waits


def test_a_flaky_server_gives_the_batches_of_a_good_one(hub, tmp_path):  # noqa: F811
    """Shards from a server that fails opens (503, 502), drops connections mid-shard, and for one shard ignores
    Range requests give exactly the batches of the same shards from a good server, epoch after epoch."""
    for k in range(2):
        Hub.files[f"/p{k}"] = open(pairs_tar(tmp_path / f"p{k}.tar", 100 * k, 30), "rb").read()
        Hub.files[f"/good/p{k}.tar"] = Hub.files[f"/flaky/p{k}.tar"] = Hub.files[f"/p{k}"]
    Hub.fail["/flaky/p0.tar"] = [503, 502]
    Hub.cut["/flaky/p0.tar"] = 2                      # resumed with a Range request from the byte it reached
    Hub.cut["/flaky/p1.tar"] = 1
    Hub.no_ranges.add("/flaky/p1.tar")                # sent whole again: the bytes already read are skipped
    good, flaky = (make({"caption_to_image": 1.0}, n_slots=2, stream=QUICK,
                        caption_to_image_data=f"{hub}/{server}/p{{0..1}}.tar") for server in ("good", "flaky"))
    for (t1, i1), (t2, i2) in zip(batches(good, range(8), (0, 1)), batches(flaky, range(8), (0, 1))):
        assert np.array_equal(t1, t2) and np.array_equal(i1, i2)
    assert good.state(0)["caption_to_image"][0] >= 2 and good.state(0) == flaky.state(0)   # over two epochs
    asked = [r for _, p, r in Hub.requests if p == "/flaky/p0.tar"]   # the Range header of each request
    resumed = [int(r[6:-1]) for r in asked if r]
    assert asked[:3] == [None] * 3 and len(resumed) == 2 and 0 < resumed[0] < resumed[1] < len(Hub.files["/p0"])
    assert [r is not None for _, p, r in Hub.requests if p == "/flaky/p1.tar"][:2] == [False, True]
    assert not good.stats and not flaky.stats


def test_a_stream_stops_naming_its_shard_only_when_the_retries_run_out(hub, tmp_path):  # noqa: F811
    data = open(pairs_tar(tmp_path / "p.tar", 0, 30), "rb").read()
    Hub.files["/down.tar"] = Hub.files["/lost.tar"] = data
    Hub.files["/short.tar"] = data[:len(data) // 2]  # served whole, but the tar itself is cut short: counted
    Hub.fail["/down.tar"] = [503] * 3
    Hub.fail["/lost.tar"] = [None, 503, 503, 503]    # the connection drops half-way, then the server is down
    Hub.cut["/lost.tar"] = 1
    with pytest.raises(ValueError, match=rf"^cannot open shard {hub}/down.tar after 2 retries \(HTTPError: 503"):
        take("caption_to_image", make({"caption_to_image": 1.0}, stream=QUICK, caption_to_image_data=f"{hub}/down.tar"))
    with pytest.raises(ValueError, match=rf"^lost shard {hub}/lost.tar at byte [1-9]\d* after 2 retries"):
        take("caption_to_image", make({"caption_to_image": 1.0}, stream=QUICK, caption_to_image_data=f"{hub}/lost.tar"))
    short = make({"caption_to_image": 1.0}, stream=QUICK, caption_to_image_data=f"{hub}/short.tar")
    assert 0 < len(take("caption_to_image", short)) < 30 and short.stats["truncated_shards"] == 1


def test_video_clips_in_frame_order(tmp_path):
    members = [(f"v1.{i:03d}.jpg", encoded(solid(20 * i))) for i in (3, 0, 4, 1, 2)]   # 5 frames, out of order
    members += [("v2.000.jpg", encoded(solid(0)))]                                    # too short for a clip
    d = make({"video": 1.0}, video_data=write_tar(tmp_path / "v.tar", members))
    clips = take("video", d)
    assert [[round(f.mean() / 20) for f in c.frames] for c in clips] == [[0, 1], [2, 3]]
    assert all(c.cond == [False, False] for c in clips) and d.stats == {"short_video": 1}


def test_pre_encoded_latents_skip_the_encoder(tmp_path):
    rng = np.random.default_rng(0)
    z = [rng.standard_normal((N, C)).astype(np.float16) for _ in range(3)]
    members = []
    for i, zi in enumerate(z):
        buf = io.BytesIO()
        np.save(buf, zi)
        members += [(f"{i}.latent.npy", buf.getvalue()), (f"{i}.txt", f"latent {i}".encode())]
    buf = io.BytesIO()
    np.save(buf, z[0][:4])
    members += [("9.latent.npy", buf.getvalue()), ("9.txt", b"wrong shape")]
    d = make({"caption_to_image": 1.0}, seq_len=40, caption_to_image_data=write_tar(tmp_path / "z.tar", members))
    batch = d.batch(0, 0, 2)
    assert batch["images"].dtype == np.float16 and batch["images"].shape == (2, N, C)

    class NoEncoder:
        latent_dim = C

        def encode(self, images):
            raise AssertionError("pre-encoded latents must not be encoded again")
    c = train.configure(train.DEFAULTS, ["--batch_size=2"])
    out = train.get_batch(d, NoEncoder(), 0, 0, c, "cpu", batch=batch)
    assert out["latents"].dtype == torch.float32 and torch.equal(out["latents"], torch.from_numpy(
        np.stack(z[:2])).float())
    assert d.stats == {} and take("caption_to_image", d) and d.stats["bad_frame"] == 1   # the [4, C] latent
    with pytest.raises(ValueError, match="mixes images and pre-encoded latents"):
        data.collate([[Example([Tokenizer().boi, data.FRAME], [z[0]], [False]),
                       Example([Tokenizer().boi, data.FRAME], [solid(1)], [False])]], 40, N, 0)


def test_vqa_samples_from_question_answer_and_llava_json(tmp_path):
    """Fine-tuning data for the understanding protocol: key.jpg + key.json with "question" and "answer", or LLaVA's
    "conversations" (human and gpt turns, <image> dropped); the image clean, only the answers learned;
    a sample without a question is skipped and counted."""
    llava = {"conversations": [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "a cat"},
                               {"from": "human", "value": "how many?"}, {"from": "gpt", "value": "one"}]}
    path = write_tar(tmp_path / "vqa.tar", [
        ("0.jpg", encoded(solid(10))), ("0.json", json.dumps({"question": "what color?", "answer": "grey"}).encode()),
        ("1.jpg", encoded(solid(20))), ("1.json", json.dumps(llava).encode()),
        ("2.jpg", encoded(solid(30))), ("2.json", json.dumps({"caption": "no question"}).encode())])
    d = make({"vqa": 1.0}, vqa_data=path)
    tok, exs = Tokenizer(), take("vqa", d)
    assert [text_of(tok, ex) for ex in exs] == ["what color? grey", "what is it? a cat\nhow many? one"]
    assert all(ex.cond == [True] for ex in exs) and d.stats["no_question"] == 1
    batch = realdata.collate([[exs[1]]], 64, N, tok.pad)
    assert tok.decode([t for t in batch["targets"][0] if t >= 0]) == " a cat\n one"     # the answers, their ends


# ---------------------------------------------------------------------------------------------------------------
# Navigation (NWM layout)

def nwm_folder(root, name, T=9, bad=None):
    """A trajectory: frame i is a flat image of value 10 i; the robot drives forward 0.5 per step along a path
    that turns left by a quarter turn between frames 4 and 5."""
    folder = root / name
    folder.mkdir(parents=True)
    position, yaw = [[0.0, 0.0]], [0.0]
    for i in range(1, T):
        step = np.array([np.cos(yaw[-1]), np.sin(yaw[-1])]) * 0.5
        position.append((np.array(position[-1]) + step).tolist())
        yaw.append(yaw[-1] + (np.pi / 2 if i == 5 else 0.0))
    for i in range(T):
        (folder / f"{i}.jpg").write_bytes(b"garbage" if i == bad else encoded(solid(10 * i)))
    with open(folder / "traj_data.pkl", "wb") as f:
        pickle.dump({"position": np.array(position), "yaw": np.array(yaw)}, f)
    return folder, np.array(position), np.array(yaw)


def test_navigation_windows_from_an_nwm_folder(tmp_path):
    """§5.1's layout (Fig. 11) from real trajectories: 4 context frames, one action, the frame it leads to; translations
    in units of the dataset's waypoint spacing (NWM), yaw in radians."""
    folder, position, yaw = nwm_folder(tmp_path / "nwm", "traj0")
    d = make({"navigation": 1.0}, seq_len=400, navigation_data=str(tmp_path / "nwm/*"))
    tok = Tokenizer()
    exs = take("navigation", d)
    assert len(exs) == 9 - 4                            # a window at every start with a frame after its context
    actions = robot_frame_actions(position, yaw)
    assert action_text(*actions[3]) == "dx=+0.50 dy=+0.00 dyaw=+0.00"
    assert action_text(*actions[4]) == "dx=+0.50 dy=+0.00 dyaw=+1.57"     # the quarter turn
    assert action_text(*actions[5]) == "dx=+0.50 dy=+0.00 dyaw=+0.00"     # forward again, in its new frame
    for t, ex in enumerate(exs):
        assert [round(f.mean() / 10) for f in ex.frames] == list(range(t, t + 5))
        assert ex.cond == [True] * 4 + [False] and text_of(tok, ex) == action_text(*actions[t + 3])
    recon = take("navigation", make({"navigation": 1.0}, seq_len=400, navigation_data=str(tmp_path / "nwm/*"),
                                    spacing={"nwm": 0.25}))                 # RECON's 0.25 m per unit
    assert text_of(tok, recon[1]) == "dx=+2.00 dy=+0.00 dyaw=+1.57"         # 0.5 m forward: 2 units; yaw as is
    d = make({"navigation": 1.0}, seq_len=400, navigation_data=str(tmp_path / "nwm/*"), spacing={"recon": 0.25})
    with pytest.raises(ValueError, match="traj0: no folder of its path names a dataset of waypoint_spacing"):
        take("navigation", d)

    broken, _, _ = nwm_folder(tmp_path / "nwm2", "traj1", bad=6)
    d = make({"navigation": 1.0}, seq_len=400, navigation_data=str(broken))
    assert all(6 not in [round(f.mean() / 10) for f in ex.frames] for ex in take("navigation", d))
    assert d.stats["bad_frame"] >= 1
    (tmp_path / "nwm3/traj2").mkdir(parents=True)
    d = make({"navigation": 1.0}, seq_len=400, navigation_data=str(tmp_path / "nwm3/traj2"))
    with pytest.raises(ValueError, match="cannot read trajectory .*traj2.*want traj_data.pkl"):
        take("navigation", d)


def test_toy_world_trajectories_read_back_through_the_nwm_loader(tmp_path):
    """The same loader serves real NWM data and the toy maze: a walk written by realdata.write_nwm_trajectory comes
    back as windows whose action texts are the moves it made (a step into a wall slides: the move, not the
    command, is what the poses record) and whose frames are its renders (JPEG-compressed)."""
    import toyworld as tw
    rng = np.random.default_rng(3)
    maze = tw.maze_for(0)
    poses, _ = tw.walk(rng, maze, tw.random_pose(rng, maze), 7)
    actions = robot_frame_actions(poses[:, :2], poses[:, 2])
    frames = np.stack([tw.render_view(maze, p, SIZE) for p in poses])
    realdata.write_nwm_trajectory(str(tmp_path / "nwm/walk0"), frames, poses[:, :2], poses[:, 2])
    tok, exs = Tokenizer(), take("navigation", make({"navigation": 1.0}, seq_len=400,
                                                     navigation_data=str(tmp_path / "nwm/*")))
    assert len(exs) == len(poses) - 4
    for t, ex in enumerate(exs):
        assert text_of(tok, ex) == action_text(*actions[t + 3])
        assert np.abs(np.stack(ex.frames).astype(int) - frames[t:t + 5]).mean() < 8


# ---------------------------------------------------------------------------------------------------------------
# Slots and resumption

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two token shards, two pair tars, a video tar and two trajectories: every kind of source."""
    root = tmp_path_factory.mktemp("world")
    tok = Tokenizer()
    for s in range(2):
        ids = [t for i in range(60) for t in [tok.eot, *tok.encode(f"shard {s} doc {i}" + " x" * (i % 9))]]
        write_shard(str(root / f"text_{s}.bin"), ids, tok.vocab_size)
    pairs_tar(root / "pairs_0.tar", 0, 30)
    pairs_tar(root / "pairs_1.tar", 100, 30)
    write_tar(root / "video.tar", [(f"v{k}.{i:03d}.jpg", encoded(solid(k * 10 + i))) for k in range(12)
                                   for i in range(5)])
    nwm_folder(root / "nwm", "a")
    nwm_folder(root / "nwm", "b", T=7)
    return dict(text_data=f"{root}/text_*.bin", caption_to_image_data=f"{root}/pairs_0.tar",
                image_to_caption_data=f"{root}/pairs_*.tar", video_data=f"{root}/video.tar",
                navigation_data=f"{root}/nwm/*")


MIXTURE = {"text": 0.3, "caption_to_image": 0.3, "image_to_caption": 0.2, "video": 0.1, "navigation": 0.1}


def test_slots_read_disjoint_data(world):
    tok = Tokenizer()
    d = make(MIXTURE, n_slots=2, **world)
    for source in ("text", "image_to_caption", "caption_to_image"):      # 2 files for 2 slots, and 1 shared file
        a, b = (set(text_of(tok, e) for e in take(source, d, slot)) for slot in (0, 1))
        assert a and b and not a & b, source
        whole = set(text_of(tok, e) for e in take(source, make(MIXTURE, **world)))
        assert a | b == whole, source
    a, b = ({tuple(round(f.mean()) for f in e.frames) for e in take("video", d, slot)} for slot in (0, 1))
    assert len(a) == len(b) == 12 and not a & b                          # 12 videos of 2 clips, 6 per slot


def batches(d, steps, slots):
    out = []
    for step in steps:
        for micro in slots:
            b = d.batch(step, micro, 3)
            out.append((b["tokens"], b["images"]))
    return out


@pytest.mark.slow
def test_a_resumed_stream_continues_exactly(world):
    slots = (0, 1)
    whole = make(MIXTURE, seq_len=400, n_slots=2, **world)
    first = batches(whole, range(3), slots)
    states = {m: whole.state(m) for m in slots}
    rest = batches(whole, range(3, 12), slots)       # several epochs of the small sources
    resumed = make(MIXTURE, seq_len=400, n_slots=2, **world)
    resumed.load_state({m: json.loads(json.dumps(s)) for m, s in states.items()})   # as a checkpoint keeps them
    again = batches(resumed, range(3, 12), slots)
    for (t1, i1), (t2, i2) in zip(rest, again):
        assert np.array_equal(t1, t2) and np.array_equal(i1, i2)
    assert not np.array_equal(first[0][0], rest[0][0])
    # and a stream resumed in the middle of a video's clips, or of a cut document, takes up where it left
    stream = data_stream(whole, "video")
    seen = [stream.pop() for _ in range(3) if stream.peek()]
    assert stream.state[3] == 1                        # one clip of the second video taken
    again = realdata.Stream(whole, "video", whole.files["video"], 0, 2, stream.state)
    assert [[round(f.mean()) for f in s.frames] for s in seen] == [[0, 1], [2, 3], [20, 21]]
    assert [round(f.mean()) for f in again.peek().frames] == [round(f.mean()) for f in stream.peek().frames] == [22, 23]


def test_a_token_mixture_fills_its_shares_of_the_tokens_and_resumes_exactly(world):
    """mixture_unit="tokens" (the paper's shares): each stream's tokens taken match the weights, though a video
    example is 1.5 times a text document's here, and drawing by examples gives video 61% of the tokens. The counts behind
    the shares are part of a stream's state, so a resumed run draws the same sources."""
    mixture = {"text": 0.5, "video": 0.5}
    taken = {}
    for unit in ("examples", "tokens"):
        d = make(mixture, seq_len=400, unit=unit, **world)
        batches(d, range(30), (0,))
        tokens = {s: st.tokens for s, st in d.streams[0].items()}
        taken[unit] = tokens["video"] / sum(tokens.values())
    assert abs(taken["tokens"] - 0.5) < 0.02 and taken["examples"] > 0.58, taken
    whole = make(mixture, seq_len=400, unit="tokens", **world)
    batches(whole, range(3), (0,))
    resumed = make(mixture, seq_len=400, unit="tokens", **world)
    resumed.load_state({0: json.loads(json.dumps(whole.state(0)))})
    for (t1, i1), (t2, i2) in zip(batches(whole, range(3, 8), (0,)), batches(resumed, range(3, 8), (0,))):
        assert np.array_equal(t1, t2) and np.array_equal(i1, i2)
    with pytest.raises(ValueError, match="mixture_unit='bytes': use 'tokens'"):
        make(mixture, unit="bytes", **world)


def test_prefetcher_hands_out_the_state_after_each_batch(world):
    d = make(MIXTURE, seq_len=400, n_slots=2, **world)
    loader = realdata.Prefetcher(d, 0, range(2), 3, depth=3, threads=2)   # one thread per slot
    got = [loader.next() for _ in range(6)]
    loader.close()
    ref = make(MIXTURE, seq_len=400, n_slots=2, **world)
    for i, (batch, state) in enumerate(got):
        expect = ref.batch(i // 2, i % 2, 3)
        assert np.array_equal(batch["tokens"], expect["tokens"]) and state == ref.state(i % 2)
    assert loader.wait >= 0


# ---------------------------------------------------------------------------------------------------------------
# train.py on real data: a smoke run on the local shards, resumed exactly

def real_args(world, out_dir, *extra):
    return ["configs/real.py", "--encoder=pixels", "--image_size=32", "--patch_size=8", "--n_layer=1",
            "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=400", "--batch_size=2",
            "--gradient_accumulation_steps=2", "--tokenizer=bytes", "--device=cpu", "--compile=False",
            "--log_interval=1", "--warmup_iters=2", "--eval_iters=1", "--video_frames=2", "--prefetch=2",
            f"--out_dir={out_dir}", *[f"--{k}={v}" for k, v in world.items()],
            f"--val_data={{'text': '{world['text_data']}'}}", "--waypoint_spacing={'nwm': 1.0}", *extra]


def real_run(world, out_dir, *extra):
    train.main(real_args(world, out_dir, *extra))
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


@pytest.mark.slow
def test_train_smoke_run_on_real_data_resumes_exactly(world, tmp_path):
    full = real_run(world, tmp_path / "a", "--max_iters=4", "--eval_interval=4")
    losses = {r["step"]: (r["text_loss"], r["flow_loss"]) for r in full if "val_text_loss" not in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v).all() for v in losses.values())
    assert all(0 <= r["data_share"] <= 1 and r["data_wait_s"] >= 0 for r in full if "data_share" in r)
    assert [r["step"] for r in full if "val_text_loss" in r] == [4]
    state = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)["data_state"]
    assert state["n_slots"] == 2 and sorted(state["slots"]) == [0, 1] and len(state["slots"][0]["text"]) == 6   # position, counts

    real_run(world, tmp_path / "b", "--max_iters=2", "--eval_interval=2")
    resumed = real_run(world, tmp_path / "b", "--max_iters=4", "--eval_interval=4", "--resume")
    again = {r["step"]: (r["text_loss"], r["flow_loss"]) for r in resumed if "val_text_loss" not in r}
    assert again == losses
    # two processes (torchrun, gloo), each reading its own slot, then resumed on one: the same run again
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                    *real_args(world, tmp_path / "c", "--max_iters=2", "--eval_interval=2")], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    resumed = real_run(world, tmp_path / "c", "--max_iters=4", "--eval_interval=4", "--resume")
    again = {r["step"]: (r["text_loss"], r["flow_loss"]) for r in resumed if "val_text_loss" not in r}
    assert again.keys() == losses.keys() and all(again[s] == pytest.approx(losses[s], rel=1e-5) for s in losses)
    with pytest.raises(SystemExit, match="resume with --gradient_accumulation_steps=2"):
        real_run(world, tmp_path / "b", "--max_iters=6", "--resume", "--gradient_accumulation_steps=4")
    with pytest.raises(SystemExit, match="bad configuration: no file matches 'nowhere/\\*.tar'"):
        real_run(world, tmp_path / "e", "--video_data=nowhere/*.tar")
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    with pytest.raises(SystemExit, match="data: cannot open shard .*junk.tar"):
        real_run(world, tmp_path / "d", f"--caption_to_image_data={tmp_path / 'junk.tar'}", "--max_iters=2",
                 "--mixture={'caption_to_image': 1.0}")


def test_training_on_a_flaky_server_matches_training_on_a_good_one(world, hub, tmp_path):  # noqa: F811
    """The image-text shards streamed: from a server that fails opens and drops connections, the run logs exactly
    the losses of the run on a good server."""
    for name in ("pairs_0.tar", "pairs_1.tar"):
        data = open(os.path.join(os.path.dirname(world["caption_to_image_data"]), name), "rb").read()
        Hub.files[f"/good/{name}"] = Hub.files[f"/flaky/{name}"] = data
        Hub.fail[f"/flaky/{name}"], Hub.cut[f"/flaky/{name}"] = [503], 2
    logs = [real_run(world, tmp_path / server, "--max_iters=3", "--eval_interval=3", "--stream_max_wait=0.01",
                     f"--caption_to_image_data={hub}/{server}/pairs_0.tar",
                     f"--image_to_caption_data={hub}/{server}/pairs_{{0..1}}.tar") for server in ("good", "flaky")]
    losses = [[(r["step"], r["text_loss"], r["flow_loss"]) for r in log if "val_text_loss" not in r] for log in logs]
    assert len(losses[0]) == 3 and losses[0] == losses[1] and logs[0][-1] == logs[1][-1]   # and the evaluation
    assert {p for _, p, r in Hub.requests if r} == {"/flaky/pairs_0.tar", "/flaky/pairs_1.tar"}   # both resumed
