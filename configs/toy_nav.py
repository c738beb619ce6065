# The toy world with navigation (section 5): the same model also learns an egocentric maze world from 4 context
# frames and actions written as text, and becomes a world model that plan.py plans with.
#   python train.py configs/toy_nav.py && python plan.py --out_dir=out/toy_nav
import os

exec(open(os.path.join(os.path.dirname(__file__), "toy.py")).read())
out_dir = "out/toy_nav"
# The paper needs only ~1% navigation data because 200B tokens of video and images already taught its model how
# views move. Here nothing else looks like a maze (shapes on black), the model is tiny and trains for minutes, so
# navigation is the main source: 80% of the examples, and as they are long (120-213 positions against ~60 for a
# caption) over 90% of the tokens; the rest keeps the toy world's text and image skills from vanishing. With half
# the examples (the first run), predicted frames were still shapeless blurs after 800 steps.
mixture = {"text": 0.04, "caption_to_image": 0.1, "image_to_caption": 0.04, "video": 0.02, "navigation": 0.8}
max_iters = 1000          # ~10 min on 2 CPU cores with OMP_NUM_THREADS=1 (train.py's progress bar shows the rest)
eval_interval = 500
