# The toy run with a fine-grained MoE FFN (section 6): 16 experts a quarter of the dense FFN's width (G = 4),
# 4 active per token: the token's modality-shared expert (one for text, one for vision) and the router's top 3 of
# the other 14. Same active FLOPs as configs/toy_dense.py.   python train.py configs/toy_moe.py
# Ablations: --moe_shared=none|global|per_modality; sparsity at fixed compute: --moe_experts=8|16|32|64.
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_moe"
ffn = "moe"
moe_granularity = 4
moe_experts = 16
moe_shared = "per_modality"
moe_aux_coef = 0.01
