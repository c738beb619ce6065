# The paper's understanding protocol in miniature (§2, App. E.6: VQA scored after fine-tuning, the encoder frozen,
# the same recipe at a lower learning rate): configs/toy.py's trained run fine-tuned on understanding data with
# clean images, the toy world's questions (VQA) and its captions.
#   python train.py configs/toy.py && python train.py configs/toy_vqa.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
init_from = "out/toy"
out_dir = "out/toy_vqa"
mixture = {"vqa": 0.5, "image_to_caption": 0.5}
caption_clean_image = True    # understanding data shows its pictures clean (the pretraining default is noisy)
learning_rate = learning_rate / 4
batch_size = 16
max_iters = 200
warmup_iters = 20
eval_interval = 200
