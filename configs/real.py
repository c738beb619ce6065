# The paper's kind of data at ~300M active parameters: web text (FineWeb-Edu token shards), image-text pairs (CC12M
# for caption->image, CC3M for image->caption), 1-FPS video frames and NWM navigation, in SigLIP 2 latents at
# 224 px (16x16 = 256 tokens of 1152 channels per frame). Fill data/ with the README's "Real data" commands first.
#   python train.py configs/real.py                                          # one GPU (bf16 autocast)
#   torchrun --standalone --nproc_per_node=8 train.py configs/real.py         # 8 GPUs, same global batch
out_dir = "out/real"
dataset = "shards"
# the mixture is the library default, the paper's (§4.1, App. F.1): half the tokens text, navigation 1%
text_data = "data/fineweb/edu_fineweb_train_*.bin"
caption_to_image_data = "data/cc12m/*.tar"
image_to_caption_data = "data/cc3m/*.tar"
video_data = "data/video/*.tar"
navigation_data = "data/nwm/*/*"          # NWM trajectory folders, e.g. data/nwm/recon/<trajectory>
# held-out text; add a held-out visual source (e.g. "caption_to_image": "data/cc12m-val/*.tar") for val_flow_loss:
# without frames it is absent from the log, and scaling.py refuses to fit the run
val_data = {"text": "data/fineweb/edu_fineweb_val_*.bin"}
tokenizer = "gpt2"
encoder = "siglip2"
image_size = 224
patch_size = 14
video_frames = 4
seq_len = 4096
# 8 rows of 4096 tokens per micro-batch, 64 micro-batches per step over all processes: 2.1M tokens per step (App. E.2)
batch_size = 8
gradient_accumulation_steps = 64
# 22 layers, d_model 1024, GQA 16 q / 4 kv heads, a text and a vision FFN: ~300M active, ~540M total parameters
n_layer = 22
d_model = 1024
n_head = 16
n_kv_head = 4
learning_rate = 3e-4
warmup_iters = 1000
max_iters = 20000
min_lr_ratio = 0.05
eval_interval = 1000
eval_iters = 20
compile = True
# 18 GiB per GPU with activation checkpointing, 49 GiB without (python -m plumbing.memplan configs/real.py;
# docs/multi-gpu.md): without it, a step computes ~1/4 less (no second forward pass) and still fits 80 GB
activation_checkpointing = True
