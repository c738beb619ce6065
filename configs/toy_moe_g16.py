# Granularity ablation (Eq. 4, Fig. 15), G = 4 d_model / d_expert as in the paper, G active: G = 16, 64 experts of
# width 32, 16 active, no shared expert; compare with configs/toy_moe_g1.py and with G = 4 (see there).
#   python train.py configs/toy_moe_g16.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy_moe.py")).read())
out_dir = "out/toy_moe_g16"
moe_granularity = 16
moe_experts = 64
moe_top_k = 0
moe_shared = "none"
