# The toy run with a fine-grained MoE FFN (section 6): 16 experts of width 128 (G = 4 d_model / d_expert = 4, the
# paper's definition), 3 active per token: the token's modality-shared expert (one for text, one for vision) and
# the router's top 2 of the other 14. 3 x 128 = 384 hidden units against the dense SwiGLU's 352: about the active
# FLOPs of configs/toy_dense.py (the paper's G active would be 512).   python train.py configs/toy_moe.py
# Ablations: --moe_shared=none|global|per_modality; sparsity at fixed compute: --moe_experts=8|16|32|64.
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_moe"
ffn = "moe"
moe_granularity = 4
moe_experts = 16
moe_top_k = 3
moe_shared = "per_modality"
moe_aux_coef = 0.01
