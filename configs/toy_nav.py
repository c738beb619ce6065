# The toy world with navigation (section 5): the same model also learns an egocentric maze world from 4 context
# frames and actions written as text, and becomes a world model that plan.py plans with.
#   python train.py configs/toy_nav.py && python plan.py --out_dir=out/toy_nav
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_nav"
# The paper needs only ~1% navigation data because 200B tokens of video and images already taught its model how
# views move. Here nothing else looks like a maze (shapes on black), the model is tiny and trains for minutes, so
# navigation is the main source: half of the examples, and as they are long (120-213 positions against ~60 for a
# caption), most of the tokens. The rest keeps the toy world's text and image skills alive.
mixture = {"text": 0.05, "caption_to_image": 0.25, "image_to_caption": 0.15, "video": 0.05, "navigation": 0.5}
max_iters = 800           # ~8 min on 2 idle CPU cores with OMP_NUM_THREADS=1, ~13 min when they are shared
eval_interval = 400
