# The toy run with one shared FFN for all tokens: the dense baseline for configs/toy.py (modality FFNs) and
# configs/toy_moe.py (MoE), all three at equal active compute.   python train.py configs/toy_dense.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_dense"
ffn = "shared"
