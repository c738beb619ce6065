# The toy world with navigation (section 5): the same model also learns an egocentric maze world from 4 context
# frames and actions written as text, and becomes a world model that plan.py plans with.
#   python train.py configs/toy_nav.py && python plan.py --out_dir=out/toy_nav --mode=predict && python plan.py ...
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_nav"
# The paper needs only ~1% navigation data because 200B tokens of video and images already taught its model how
# views move. Here nothing else looks like a maze and the model trains for minutes, so navigation is 90% of the
# examples; the rest keeps the toy world's text and image skills from vanishing.
mixture = {"text": 0.02, "caption_to_image": 0.04, "image_to_caption": 0.02, "video": 0.02, "navigation": 0.9}
# A CPU-sized model does not learn the ray-cast first-person view in half an hour (its frames stay blurs); the
# egocentric top-down map (plain colours; a turn rotates it, a step slides it) it does. nav_view="ray" for GPU runs.
nav_view = "topdown"
batch_size = 8            # more, smaller steps: what a short run learns most from
# 5000 steps: ~21 CPU minutes on one core (0.25 s/step); 650 steps left one action ahead at pixel MSE 0.041, 5000 0.017
max_iters = 5000
eval_interval = 1000      # each evaluation samples images: rarer ones keep the run inside half an hour
eval_samples = 4
eval_iters = 2
