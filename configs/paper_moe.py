# The paper's MoE (section 6.1, Appendix E.7, Table 5): the backbone of configs/paper_dense.py with a fine-grained
# MoE FFN, G = 16 (experts 4 d_model / G = 512 wide), 16 active per token: the token's modality-shared expert (one
# for text, one for vision: the paper's best, Table 2) and the router's top 15 of the other 254. The expert count is
# the one knob of Table 5's sparsity sweep: --moe_experts=32|64|128|256|512|1008 (2.30 ... 51.46B total, 1.5B
# active with LLaMA-3's vocabulary; 13.59B at 256, the model of sections 6.2-6.3; tests/plumbing/test_memplan.py).
# Batch as Appendix E.7: 512 rows of 4096 tokens per step; 27,248 steps = 57B tokens, on 64 H200s in the paper.
#   python -m plumbing.memplan configs/paper_moe.py --gpus=64 --tokens=57e9 --mfu=0.3
import os

exec(open(os.path.join(os.path.dirname(__file__), "paper_dense.py")).read())
out_dir = "out/paper_moe"
ffn = "moe"
moe_experts = 256
moe_granularity = 16
moe_top_k = 0                 # G = 16 active
moe_shared = "per_modality"
moe_aux_coef = 0.01           # the auxiliary load-balancing loss (section 6.2)
prediction = "x"              # §6.3's final stack (MoE + SigLIP 2): x-prediction (§6.1, Fig. 15)
max_iters = 27_248
# §6.1: "all MoE experiments are trained for 57B tokens on a 50/50 mixture of DCLM text and Shutterstock image data"
# (image-text pairs, halved here between the two directions)
mixture = {"text": 0.5, "caption_to_image": 0.25, "image_to_caption": 0.25}
