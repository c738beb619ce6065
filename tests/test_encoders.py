"""encoders.py: pixel patches round-trip, the towers and decoders against transformers/diffusers, and loading them
from local folders and from the local hub (tests/local_hub.py)."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from local_hub import Hub, commit_of

import encoders
import plumbing.hub
from plumbing import pictures, realdata


def test_pixel_patches_round_trip():
    enc = encoders.PixelPatches(32, 8)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    z = enc.encode(images)
    assert z.shape == (3, 16, 192) and z.min() >= -1 and z.max() <= 1
    assert np.array_equal(enc.decode(z), images)
    # token 1 is the patch right of the top-left one
    assert torch.equal(z[0, 1], torch.as_tensor(images[0, :8, 8:16]).float().div(127.5).sub(1).reshape(-1))
    with pytest.raises(ValueError, match="expected images of shape"):
        enc.encode(images[:, :16])


def test_siglip_vision_tower_matches_transformers(tmp_path):
    """A small random SigLIP saved in the real key layout (a full SiglipModel, text tower included) loads into
    our encoder; its latents equal the reference's last hidden state before post_layernorm, then LayerNorm."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                           image_size=56, patch_size=14),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    reference = transformers.SiglipModel(config).eval()
    reference.save_pretrained(tmp_path)                    # model.safetensors + config.json, as on the hub
    from safetensors.torch import load_file
    ours = encoders.SiglipVision.from_config(json.load(open(tmp_path / "config.json")))
    ours.load_published(load_file(tmp_path / "model.safetensors")).eval()
    pixels = torch.rand(2, 3, 56, 56) * 2 - 1
    with torch.no_grad():
        hidden = reference.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        want = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], eps=1e-6)
        got = ours(pixels)
    assert got.shape == (2, 16, 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a SigLIP vision tower"):
        ours.load_published({"vision_model.embeddings.patch_embed.weight": torch.zeros(1)})


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_matches_transformers_with_and_without_registers(tmp_path, registers):
    """DINOv2 saved by transformers in the hub's key layout; at 56 px its 8x8 position grid is interpolated to our
    4x4 input grid (bicubic; antialiased for the register models, as the reference does)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=7, image_size=56,
              layerscale_value=0.5)
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        reference = transformers.Dinov2WithRegistersModel(config)
    else:
        reference = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    reference.eval().save_pretrained(tmp_path)
    with torch.no_grad():   # make position embeddings and layer scales non-trivial
        reference.embeddings.position_embeddings.normal_()
        for layer in reference.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.5, 1.5)
    reference.save_pretrained(tmp_path)
    from safetensors.torch import load_file
    ours = encoders.DinoVision.from_config(json.load(open(tmp_path / "config.json")))
    ours.load_published(load_file(tmp_path / "model.safetensors")).eval()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1 + registers:]
        got = ours(pixels)
    assert got.shape == (2, 16, 32)
    torch.testing.assert_close(got, torch.nn.functional.layer_norm(hidden, (32,), eps=1e-6), atol=1e-5, rtol=1e-5)


def vit_mae_decoder(tmp_path, latent_dim=40, width=24, grid=4, patch=4):
    """A small random ViT-MAE from transformers; its decoder saved as an RAE decoder checkpoint (model.pt with the
    published key names, a trainable CLS token, config.json). Returns the reference model and the CLS input whose
    decoder_embed is that token (the reference embeds its CLS from the encoder's output)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(hidden_size=latent_dim, num_attention_heads=2, num_hidden_layers=1,
                                       intermediate_size=8, decoder_hidden_size=width, decoder_num_hidden_layers=2,
                                       decoder_num_attention_heads=2, decoder_intermediate_size=56,
                                       image_size=grid * patch, patch_size=patch, mask_ratio=0.0)
    reference = transformers.ViTMAEForPreTraining(config).eval()
    reference.save_pretrained(tmp_path / "mae")
    from safetensors.torch import load_file
    # the RAE checkpoints name the blocks decoder_layers.N (transformers 5 saves them as decoder_encoder.layer.N)
    state = {k.replace("decoder_encoder.layer.", "decoder_layers."): v
             for k, v in load_file(tmp_path / "mae/model.safetensors").items() if k.startswith("decoder.")}
    cls_in = torch.randn(1, 1, latent_dim)
    with torch.no_grad():
        state["decoder.trainable_cls_token"] = reference.decoder.decoder_embed(cls_in)
    os.makedirs(tmp_path / "rae")
    torch.save({"model": state}, tmp_path / "rae/model.pt")
    json.dump({"decoder_num_attention_heads": 2, "layer_norm_eps": 1e-12}, open(tmp_path / "rae/config.json", "w"))
    return reference, cls_in


def test_rae_decoder_matches_transformers_vit_mae_decoder(tmp_path):
    reference, cls_in = vit_mae_decoder(tmp_path)
    assert any("attention.attention.query" in k for k in torch.load(tmp_path / "rae/model.pt")["model"])
    config, state = plumbing.hub.read_weights(str(tmp_path / "rae"), "model.pt")
    ours = encoders.RAEDecoder.from_published(config, state, grid=4).eval()
    assert ours.patch == 4 and len(ours.blocks) == 2
    z = torch.randn(3, 16, 40)
    with torch.no_grad():
        logits = reference.decoder(torch.cat([cls_in.expand(3, -1, -1), z], 1), torch.arange(16).expand(3, -1)).logits
        want = reference.unpatchify(logits, (16, 16))
        got = ours(z)
    assert got.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # without saved positions the decoder computes MAE's own (columns first), as the RAE code does
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    torch.testing.assert_close(encoders.sincos_positions(24, 16), get_2d_sincos_pos_embed(24, 16, True, 1).float())
    with pytest.raises(ValueError, match="not an RAE decoder"):
        encoders.RAEDecoder.from_published({}, {"decoder.weight": torch.zeros(1)})


@pytest.mark.slow
def test_semantic_encoder_from_local_folders_normalises_and_decodes(tmp_path):
    """build_encoder reads a tower folder and a decoder folder with the published file names; encode applies the
    tower's mean/std and resizes to its input size, decode maps back through the decoder to uint8 pixels."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=40, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=4)
    transformers.SiglipVisionModel(config).save_pretrained(tmp_path / "tower")
    vit_mae_decoder(tmp_path)
    enc = encoders.build_encoder("siglip2", 32, device="cpu", weights=str(tmp_path / "tower"),
                                 decoder_weights=str(tmp_path / "rae"))
    assert (enc.tokens_per_frame, enc.latent_dim) == (16, 40)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(enc.encode(images), enc.tower(x * 2 - 1))
    out = enc.decode(enc.encode(images))
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    want = ((enc.decoder(enc.encode(images)) * 0.5 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
    assert np.array_equal(out, want.to(torch.uint8).numpy())
    no_decoder = encoders.build_encoder("dinov2", weights="random")
    assert (no_decoder.tokens_per_frame, no_decoder.latent_dim) == (256, 1024)
    with pytest.raises(ValueError, match="set decoder_weights"):
        no_decoder.decode(torch.zeros(1, 256, 1024))
    with pytest.raises(SystemExit, match="no such folder, and not a hub repository"):
        encoders.build_encoder("siglip2", weights=str(tmp_path / "nothing-here"))
    with pytest.raises(SystemExit, match="model.safetensors is missing"):
        encoders.build_encoder("siglip2", weights=str(tmp_path / "rae"))
    with pytest.raises(ValueError, match="unknown encoder 'clip'.*siglip2"):
        encoders.build_encoder("clip")


def test_vae_latents_are_scaled_unshuffled_tokens(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, layers_per_block=1,
                                  scaling_factor=0.3611, shift_factor=0.1159)
    vae.save_pretrained(tmp_path / "vae")
    enc = encoders.build_encoder("flux", 64, weights=str(tmp_path / "vae"))
    assert (enc.tokens_per_frame, enc.latent_dim) == (16, 16)    # 64 px / 8 = 8x8x4, unshuffled: 4x4 tokens of 16
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    z = enc.encode(images)
    with torch.no_grad():
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        mean = vae.encode(x).latent_dist.mean
    want = (mean - 0.1159) * 0.3611
    # token (i, j) holds the 2x2 block of latent positions at rows 2i..2i+1, columns 2j..2j+1
    torch.testing.assert_close(z[:, 1].reshape(2, 4, 2, 2), want[:, :, 0:2, 2:4], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        decoded = vae.decode(mean).sample
    want_pixels = ((decoded + 1) / 2).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert np.abs(enc.decode(z).astype(int) - want_pixels).max() <= 1


def publish(repo, folder, prefix=""):
    """A folder's files as a repository of the local hub."""
    Hub.repos[repo] = {prefix + name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_the_default_encoders_come_from_the_hub_at_their_pinned_commits(hub, tmp_path, monkeypatch):
    """With weights="" the published defaults are downloaded (through plumbing/hub.py) at the commit PINNED names
    (here the local hub's), the RAE decoder at main; a VAE's files arrive in one folder that diffusers reads."""
    transformers, diffusers = pytest.importorskip("transformers"), pytest.importorskip("diffusers")
    import plumbing.hub
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=40, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=4)
    transformers.SiglipVisionModel(config).save_pretrained(tmp_path / "tower")
    vit_mae_decoder(tmp_path)
    diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                            layers_per_block=1).save_pretrained(tmp_path / "vae")
    tower, rae = encoders.SEMANTIC["siglip2"][1:3]
    flux = encoders.VAES["flux"].removesuffix("/vae")
    publish(tower, tmp_path / "tower"), publish(rae, tmp_path / "rae"), publish(flux, tmp_path / "vae", "vae/")
    for repo in (tower, flux):
        monkeypatch.setitem(plumbing.hub.PINNED, repo, commit_of(repo))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    enc = encoders.build_encoder("siglip2", 32)
    local = encoders.build_encoder("siglip2", 32, weights=str(tmp_path / "tower"),
                                   decoder_weights=str(tmp_path / "rae"))
    torch.testing.assert_close(enc.decoder(enc.encode(images)), local.decoder(local.encode(images)), rtol=0, atol=0)
    vae, local = encoders.build_encoder("flux", 32), encoders.build_encoder("flux", 32, weights=str(tmp_path / "vae"))
    torch.testing.assert_close(vae.encode(images), local.encode(images), rtol=0, atol=0)
    asked = {p for method, p, _ in Hub.requests if method == "HEAD"}
    assert {f"/{tower}/resolve/{commit_of(tower)}/model.safetensors", f"/{rae}/resolve/main/model.pt",
            f"/{flux}/resolve/{commit_of(flux)}/vae/diffusion_pytorch_model.safetensors"} <= asked


def test_a_vae_that_cannot_load_stops_with_one_line(tmp_path, monkeypatch):
    """diffusers failing inside its own imports (a RuntimeError, as when a module shadows one of its dependencies)
    and a folder that holds no VAE both stop with the repo's one line, not a traceback."""
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("Failed to import diffusers.models.autoencoders because of the following error")
    monkeypatch.setitem(sys.modules, "diffusers", Broken("diffusers"))
    (tmp_path / "vae").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / "vae" / name).write_text("{}")
    with pytest.raises(SystemExit, match=r"need the optional diffusers package, which did not import \(RuntimeError"):
        encoders.build_encoder("sdvae", 64, weights=str(tmp_path / "vae"))
    monkeypatch.undo()
    pytest.importorskip("diffusers")
    with pytest.raises(SystemExit, match="not a diffusers AutoencoderKL"):
        encoders.build_encoder("sdvae", 64, weights=str(tmp_path / "vae"))


def test_any_image_becomes_square_rgb():
    from PIL import Image
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)          # left half opaque red, right half transparent
    out = pictures.to_rgb(rgba, 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[5, 0] == (255, 0, 0)).all() and (out[5, -1] == 255).all()   # transparency over white
    gray = pictures.to_rgb(np.full((30, 10), 77, np.uint8), 8)
    assert gray.shape == (8, 8, 3) and (gray == 77).all()
    assert pictures.to_rgb(Image.new("P", (7, 9)), 4).shape == (4, 4, 3)


def test_preencode_turns_image_shards_into_latent_shards(tmp_path):
    """Images become <key>.latent.npy (float16 latents of the same encoder), captions are copied, video frames keep
    their numbers, a corrupt image is skipped and counted, and a finished shard is not redone."""
    import io
    import tarfile
    from PIL import Image
    from plumbing.pictures import load_image
    rng = np.random.default_rng(0)

    def png(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "PNG")
        return buf.getvalue()

    members = {"a.png": png(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), "a.txt": b"a red circle",
               "b.png": png(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)), "b.json": b'{"caption": "x"}',
               "c.png": b"not an image", "c.txt": b"lost",
               "v.000.png": png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
               "v.001.png": png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))}
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    enc = encoders.PixelPatches(32, 8)
    stats = realdata.preencode([str(tmp_path / "shard-0.tar")], str(tmp_path / "out"), enc, 32, batch=2)
    assert stats["corrupt_images"] == 1 and stats["shards"] == 1
    assert os.listdir(tmp_path / "out") == ["shard-0.tar"]
    with tarfile.open(tmp_path / "out/shard-0.tar") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar}
    assert sorted(got) == ["a.latent.npy", "a.txt", "b.json", "b.latent.npy", "v.000.latent.npy", "v.001.latent.npy"]
    assert got["a.txt"] == b"a red circle"
    for key in ("a", "b", "v.001"):
        z = np.load(io.BytesIO(got[f"{key}.latent.npy"]))
        want = enc.encode(load_image(members[f"{key}.png"], 32)[None])[0].to(torch.float16).numpy()
        assert z.dtype == np.float16 and z.shape == (16, 192) and np.array_equal(z, want)
    again = realdata.preencode([str(tmp_path / "shard-0.tar")], str(tmp_path / "out"), enc, 32)
    assert again["shards_already_done"] == 1 and again["shards"] == 0
