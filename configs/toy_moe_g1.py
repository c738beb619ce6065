# Granularity ablation (Table 2): G = 1, 4 experts of width ffn_hidden / 1, 1 active, no shared expert; compare
# with configs/toy_moe.py --moe_shared=none (G = 4).   python train.py configs/toy_moe_g1.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy_moe.py")).read())
out_dir = "out/toy_moe_g1"
moe_granularity = 1
moe_experts = 4
moe_shared = "none"
