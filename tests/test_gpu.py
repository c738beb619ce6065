"""The GPU's own code paths, where a GPU is present (skipped elsewhere; CI has none): FlexAttention's training path
against the dense one, the compiled step (with the text loss in chunks, too) against eager, grouped GEMMs against
the loop, no host sync in a training step, and FSDP2 in bf16 evaluating uncompiled and training compiled with
recomputation. Their CPU stand-ins are in test_model.py, test_moe.py and plumbing/test_parallel.py."""
import copy

import pytest
import torch

from data import Tokenizer, to_device
from helpers import C, N, mixed_row, tiny
from model import training_losses
from moe import grouped_swiglu
from plumbing import fastpaths

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def gpu_batch():
    batch = to_device(mixed_row(Tokenizer()), "cuda")
    batch["latents"] = torch.randn(batch["cond"].shape[0], N, C, device="cuda")
    return batch


def step(model, batch, dtype=torch.float32):
    """Losses and gradients of one training step."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype, enabled=dtype != torch.float32):
        text, flow = training_losses(model, batch, torch.Generator("cuda").manual_seed(0))
    (text + flow).backward()
    core = getattr(model, "_orig_mod", model)
    return [text.detach(), flow.detach()] + [p.grad.clone() for p in core.parameters() if p.grad is not None]


def close(a, b, share):
    for x, y in zip(a, b):
        assert (x.float() - y.float()).abs().max() <= share * y.float().abs().max() + 1e-6


def gpu_model(**kw):
    model = tiny(d_model=64, n_head=4, n_kv_head=2, **kw).cuda()   # FlexAttention wants heads of >= 16
    torch.nn.init.normal_(model.flow_head.weight, std=0.02)
    return model


@pytest.mark.parametrize("ffn", ["modality", "moe"])
def test_flex_attention_trains_like_the_dense_mask(ffn):
    batch = gpu_batch()
    flex, sdpa = gpu_model(attention="flex", ffn=ffn, moe_granularity=2), gpu_model(attention="sdpa", ffn=ffn,
                                                                                   moe_granularity=2)
    sdpa.load_state_dict(flex.state_dict())
    close(step(flex, batch, torch.bfloat16), step(sdpa, batch, torch.bfloat16), 2e-2)


def test_compiled_step_matches_eager():
    batch = gpu_batch()
    model = gpu_model(attention="flex", ffn="moe", moe_granularity=2)
    eager = step(model, batch, torch.bfloat16)
    close(step(torch.compile(model), batch, torch.bfloat16), eager, 2e-2)


def test_chunked_text_loss_compiled_matches_eager(monkeypatch):
    """The text loss in chunks of 8 positions, each recomputed in the backward pass, inside the compiled model."""
    monkeypatch.setattr(fastpaths, "MAX_LOGITS", 8 * Tokenizer().vocab_size)
    batch = gpu_batch()
    model = gpu_model(attention="flex")
    eager = step(model, batch, torch.bfloat16)
    close(step(torch.compile(model), batch, torch.bfloat16), eager, 2e-2)


def test_grouped_gemm_equals_the_loop_on_gpu():
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 5, 8], device="cuda")
    leaves = [torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for shape in ((16, 16), (4, 16, 32),
                                                                                     (4, 16, 16))]
    g = torch.randn(16, 16, device="cuda")
    results = []
    for grouped in (True, False):
        xs = [t.clone().requires_grad_() for t in leaves]
        out = grouped_swiglu(*xs, counts, grouped=grouped)
        results.append([out, *torch.autograd.grad((out.float() * g).sum(), xs)])
    close(results[0], results[1], 2e-2)


@pytest.mark.parametrize("ffn", ["modality", "moe"])
def test_training_step_never_waits_for_the_host(ffn):
    """CUDA's sync debug mode turns every host-device synchronisation into an error."""
    batch = gpu_batch()
    model = gpu_model(attention="flex", ffn=ffn, moe_granularity=2)
    step(model, batch, torch.bfloat16)           # compiles FlexAttention and the block mask's construction first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(model, batch, torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def one_gpu_group(tmp_path):
    """A process group of one GPU (NCCL), for FSDP2 without torchrun."""
    import torch.distributed as dist
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("ffn", ["modality", "moe"])
def test_sharded_bf16_model_evaluates_uncompiled_and_trains_compiled_with_recomputation(ffn, one_gpu_group):
    """What CPU autocast hides: FSDP2 in bf16 hands CUDA's kernels only what they accept (the rotary angles reach
    view_as_complex in float32), so an uncompiled sharded model evaluates, as the whole model does; and blocks set
    to recompute, compiled, then sharded (parallel.wrap's order) train as the eager sharded model does."""
    from plumbing import build, parallel
    batch, bf16 = gpu_batch(), torch.bfloat16
    whole = gpu_model(attention="flex", ffn=ffn, moe_granularity=2)
    sharded = copy.deepcopy(whole)
    parallel.shard(sharded, "bfloat16")
    with torch.no_grad(), torch.autocast("cuda", bf16):
        losses = [training_losses(m.eval(), batch, torch.Generator("cuda").manual_seed(0)) for m in (sharded, whole)]
    close(*losses, 2e-2)
    compiled, eager = copy.deepcopy(whole).train(), copy.deepcopy(whole).train()
    compiled.activation_checkpointing = True
    build.compile_model(compiled)
    for m in (compiled, eager):
        parallel.shard(m, "bfloat16")
    close(step(compiled, batch, bf16)[:2], step(eager, batch, bf16)[:2], 2e-2)
