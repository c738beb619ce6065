# The paper's understanding protocol in miniature (§2, App. E.6: VQA scored after fine-tuning, the encoder frozen,
# the same recipe at a lower learning rate): start from configs/toy.py's trained run and fine-tune it on the toy
# world's questions about clean images.   python train.py configs/toy.py && python train.py configs/toy_vqa.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
init_from = "out/toy"
out_dir = "out/toy_vqa"
mixture = {"vqa": 1.0}
learning_rate = learning_rate / 4
max_iters = 200
warmup_iters = 20
eval_interval = 100
