# The paper's default model (section 2.2, Appendix C): 16 layers, d_model 2048, GQA 32 q / 8 kv heads, a text and a
# vision FFN of 4 d_model = 8192 SwiGLU units (Appendix E.7's backbone): 2.3B parameters, 1.5B active per token
# with LLaMA-3's 128,256-token vocabulary, as the paper counts (tests/plumbing/test_memplan.py,
# docs/multi-gpu.md). Here the text is GPT-2 tokens (the repo's FineWeb-Edu shards; tiktoken has no LLaMA-3
# encoding): 1.98B / 1.18B as the paper counts, 1.99B total / 1.09B active by model.num_params (which leaves the
# embedding table out of active).
# Data and batch as Appendix E.2: 4096-token rows, 512 rows (2.1M tokens) per step, AdamW 3e-4, 1000
# warmup steps, cosine to 5%; 1T tokens (Appendix C's comparison). The real-data sources are configs/real.py's.
#   python -m plumbing.memplan configs/paper_dense.py --gpus=64               # memory per GPU, time, before a run
#   torchrun --nproc_per_node=8 --nnodes=8 ... train.py configs/paper_dense.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "real.py")).read())
out_dir = "out/paper_dense"
n_layer = 16
d_model = 2048
n_head = 32
n_kv_head = 8
# 4 rows per micro-batch as the paper's 4 per GPU; 128 micro-batches per step over all GPUs: 512 x 4096 tokens
batch_size = 4
gradient_accumulation_steps = 128
max_iters = 476_837           # 1T tokens / 2,097,152 per step
parallel = "fsdp"             # FSDP2: sharded parameters, gradients and optimizer state (docs/multi-gpu.md)
activation_checkpointing = True
