# Granularity ablation (Table 2): G = 16, 64 experts of width ffn_hidden / 16, 16 active, no shared expert; compare
# with configs/toy_moe.py --moe_shared=none (G = 4).   python train.py configs/toy_moe_g16.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy_moe.py")).read())
out_dir = "out/toy_moe_g16"
moe_granularity = 16
moe_experts = 64
moe_shared = "none"
