# Granularity ablation (Eq. 4, Fig. 15), G = 4 d_model / d_expert as in the paper, G active: G = 1, 4 experts of
# width 512, 1 active, no shared expert; compare with configs/toy_moe_g16.py and with G = 4:
#   python train.py configs/toy_moe.py --moe_shared=none --moe_top_k=0 --out_dir=out/toy_moe_g4
# All three have 512 active hidden units per token.   python train.py configs/toy_moe_g1.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy_moe.py")).read())
out_dir = "out/toy_moe_g1"
moe_granularity = 1
moe_experts = 4
moe_top_k = 0
moe_shared = "none"
