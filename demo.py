"""
A web demo of a trained run, in the browser: type a caption and the model draws it; show it a toy scene or your own
picture and it describes it or answers a question; give it the first frames of a toy video and it continues them;
drive the navigation model's robot with W/A/S/D and it imagines what the robot sees, beside the simulator's truth.
The work is sample.py's and plan.py's; this file is the page around them. Gradio is optional: pip install gradio.

    python demo.py --out_dir=out/toy --nav_out_dir=out/toy_nav      # then open http://127.0.0.1:7860
    python demo.py --out_dir=out/toy --share                         # also a public link (gradio's tunnel)
"""
import sys

import numpy as np
import torch

import toyworld as tw
from data import action_text, image_to_caption, parse_actions, vqa_example
from plan import episode, imagine, true_frames
from plumbing.build import load_for_inference
from plumbing.pictures import to_rgb, upscale
from plumbing.settings import cli, configure, settings
from sample import continue_video, describe, draw

SCALE = 8           # pictures are 32 px: shown 8 times larger, nearest neighbour (a browser would blur them)
MAX_ACTIONS = 16    # each action is one imagined frame: a longer rollout keeps the page waiting
ROLLOUT_HORIZON = 6  # the episodes plan.py --mode=rollout shows (its --horizon), so both show the same context
TITLE = "Unified multimodal toy model"


class Run:
    """A trained run for the page, or why it could not be loaded: the tabs it serves show the reason instead."""

    def __init__(self, source, device, what, loaded=None):
        self.source, self.error = source, ""
        try:
            self.model, self.tok, self.enc, self.cfg = loaded or load_for_inference(source, device)
        except SystemExit as e:   # load_for_inference's one-line messages: no checkpoint, unreadable, ...
            self.model, self.error = None, f"No model for --{what}={source}: {e}"
            return
        self.N, self.dev = self.enc.tokens_per_frame, next(self.model.parameters()).device

    def need(self):
        if self.model is None:
            raise ValueError(self.error)

    def generator(self, seed):
        return torch.Generator(self.dev).manual_seed(int(seed))

    def fits(self, need, what):
        if need > self.cfg.seq_len:
            raise ValueError(f"{what} needs {need} positions but the model was trained on {self.cfg.seq_len}")


def sheet(rows):
    """Rows of frames [R, T, h, w, 3] -> one picture, a white line around each frame, enlarged for the page."""
    f = np.pad(np.asarray(rows), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    R, T, h, w, _ = f.shape
    return upscale(f.transpose(0, 2, 1, 3, 4).reshape(R * h, T * w, 3), SCALE // 2)


# ----------------------------------------------------------------------------------------------------------------
# What each tab does, as plain functions of a Run (the tests call them without a browser). Bad input raises
# ValueError with a one-line message, which the page shows.

def caption_to_image(run, caption, seed=0, steps=25, guidance=3.0):
    """uint8 [H * SCALE, W * SCALE, 3]: the model's drawing of the caption."""
    run.need()
    run.fits(len(run.tok.encode(caption)) + run.N + 3, "this caption")
    z = draw(run.model, run.tok, [caption], int(steps), float(guidance), run.generator(seed))
    return upscale(run.enc.decode(z)[0], SCALE)


def toy_scene(run, seed=0):
    """A random toy scene (enlarged) and the caption the toy world writes for it: something to ask about."""
    run.need()
    shapes = tw.random_scene(np.random.default_rng(int(seed)), run.cfg.max_shapes, run.cfg.image_size)
    return upscale(tw.render(shapes, run.cfg.image_size), SCALE), tw.caption(shapes, run.cfg.image_size)


def image_to_text(run, picture, question=""):
    """The model's caption of the picture (any size or mode, as sample.py --image reads one), or its answer to the
    question; greedy, so the same picture always gets the same words."""
    run.need()
    if picture is None:
        raise ValueError("no picture: make a toy scene or upload one")
    z = run.enc.encode(to_rgb(np.asarray(picture, np.uint8), run.cfg.image_size)[None].copy()).to(run.dev)
    question = question.strip()
    prompt = vqa_example(run.tok, z[0], [(question, "")], prompt_only=True) if question else \
        image_to_caption(run.tok, z[0], "", prompt_only=True)
    run.fits(prompt.length(run.N) + 1, "this question")
    room = run.cfg.seq_len - prompt.length(run.N)
    text = describe(run.model, run.tok, z, min(96, room), questions=[question] if question else None)[0]
    return text.strip() or "(no words: the model ended its text at once)"


def video(run, seed=0, context_frames=2, new_frames=2, steps=25):
    """A toy video's first frames as context and the model's next ones: a picture whose top row is the true video
    and whose bottom row is the context followed by the generated frames."""
    run.need()
    K, T = int(context_frames), int(context_frames) + int(new_frames)
    if min(K, T - K) < 1:
        raise ValueError("context_frames and new_frames must be >= 1")
    run.fits(1 + T * (run.N + 2), f"{T} frames")
    truth = tw.random_video(np.random.default_rng(int(seed)), T, run.cfg.image_size, run.cfg.max_shapes)
    context = run.enc.encode(truth[:K]).to(run.dev)[None]
    made = run.enc.decode(continue_video(run.model, run.tok, context, T - K, int(steps), 1.0, run.generator(seed))[0])
    return sheet([truth, np.concatenate([truth[:K], made])])


def navigate(run, actions, episode_index=0, seed=0, steps=1):
    """The actions (W/A/S/D keys, or numeric steps, as plan.py reads them) from a held-out maze episode's 4 context
    frames: a picture whose top row is the context and the frames the model imagines, the bottom row what the
    simulator shows; and the actions as the model read them. steps: Euler steps per frame (plan.py's default 1)."""
    run.need()
    try:
        moves = parse_actions(actions) if actions.strip() else []
    except ValueError as e:
        raise ValueError(f"actions: {e}")
    if len(moves) > MAX_ACTIONS:
        raise ValueError(f"{len(moves)} actions: at most {MAX_ACTIONS} at once (each is one imagined frame)")
    if int(episode_index) < 0:
        raise ValueError(f"episode {int(episode_index)}: held-out episodes are numbered from 0")
    view, size = getattr(run.cfg, "nav_view", "ray"), run.cfg.image_size
    ep = episode(int(episode_index), ROLLOUT_HORIZON, size, view)
    if not moves:   # nothing to imagine yet: the context, where the robot starts
        return sheet([ep["context"], ep["context"]]), ""
    texts = [action_text(*a) for a in moves]
    context = run.enc.encode(ep["context"]).to(run.dev)
    made = run.enc.decode(imagine(run.model, run.tok, context, [texts], int(steps), run.generator(seed))[0])
    truth = true_frames(ep["maze"], ep["start"], np.array(moves), size, view)
    return sheet([np.concatenate([ep["context"], made]), np.concatenate([ep["context"], truth])]), " | ".join(texts)


# ----------------------------------------------------------------------------------------------------------------
# The page.

def need_gradio():
    try:
        import gradio
    except ImportError:
        raise SystemExit("demo.py needs gradio, an optional dependency: pip install gradio")
    return gradio


def page(main, nav):
    """The gradio Blocks of the four tabs; a tab whose run is missing says why (and its buttons say it again)."""
    gr = need_gradio()

    def on(fn, run):
        def call(*args):
            try:
                return fn(run, *args)
            except ValueError as e:   # shown on the page as a message, not a traceback
                raise gr.Error(str(e), print_exception=False)
        return call

    def note(run, how="python train.py configs/toy.py"):
        if run.error:
            gr.Markdown(f"**{run.error}** (this tab needs one: `{how}` trains it)")

    # PNG, not gradio's default WebP: lossless, so the page shows the model's pixels exactly (the test compares them)
    shown = dict(format="png", interactive=False, buttons=["download", "fullscreen"])

    with gr.Blocks(title=TITLE, analytics_enabled=False) as ui:
        gr.Markdown(f"## {TITLE}\nOne decoder-only Transformer: text by next-token prediction, pictures by flow "
                    f"matching. Run: `{main.source}`; navigation run: `{nav.source}`.")
        with gr.Tab("Caption → image"):
            note(main)
            caption = gr.Textbox("a big red circle at the top left", label="Caption", elem_id="caption")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0)
                steps = gr.Slider(1, 50, 25, step=1, label="Euler steps")
                guidance = gr.Slider(1.0, 6.0, 3.0, step=0.5, label="Guidance")
            go = gr.Button("Draw", variant="primary", elem_id="draw")
            drawn = gr.Image(label="The model's picture", elem_id="drawn", **shown)
            go.click(on(caption_to_image, main), [caption, seed, steps, guidance], drawn)
        with gr.Tab("Image → text"):
            note(main)
            start = toy_scene(main) if main.model is not None else (None, "")
            with gr.Row():
                picture = gr.Image(start[0], label="A toy scene, or upload a picture", format="png",
                                   sources=["upload", "clipboard"], elem_id="picture")
                with gr.Column():
                    truth = gr.Textbox(start[1], label="The toy world's own caption of its scene", interactive=False)
                    scene_seed = gr.Number(0, label="Scene seed", precision=0)
                    gr.Button("New toy scene").click(on(toy_scene, main), scene_seed, [picture, truth])
            question = gr.Textbox("", label="Question (empty: a caption)", elem_id="question",
                                  placeholder="how many shapes are there? (for a run fine-tuned by configs/toy_vqa.py)")
            ask = gr.Button("Describe / answer", variant="primary", elem_id="ask")
            answer = gr.Textbox(label="The model says", interactive=False, elem_id="answer")
            ask.click(on(image_to_text, main), [picture, question], answer)
        with gr.Tab("Video"):
            note(main)
            with gr.Row():
                video_seed = gr.Number(0, label="Seed", precision=0)
                known = gr.Slider(1, 4, 2, step=1, label="Context frames")
                new = gr.Slider(1, 6, 2, step=1, label="New frames")
            go_video = gr.Button("Continue the video", variant="primary", elem_id="continue")
            frames = gr.Image(label="Top: the true video. Bottom: the context, then the model's frames",
                              elem_id="frames", **shown)
            go_video.click(on(video, main), [video_seed, known, new], frames)
        with gr.Tab("Navigation (W/A/S/D)"):
            note(nav, "python train.py configs/toy_nav.py")
            gr.Markdown("W: forward, S: back, A / D: turn left / right while moving on. Each key press imagines the "
                        "whole walk again from the same 4 context frames (first four columns).")
            with gr.Row():
                keys = {k: gr.Button(k.upper(), elem_id=f"key_{k}") for k in "wasd"}
                clear = gr.Button("Reset")
            actions = gr.Textbox("", label="Actions (keys, or numeric steps 'dx=+0.50 dy=+0.00 dyaw=+0.00; ...')",
                                 elem_id="actions")
            with gr.Row():
                ep_index = gr.Number(0, label="Held-out maze episode", precision=0)
                go_nav = gr.Button("Imagine", variant="primary", elem_id="imagine")
            rollout = gr.Image(label="Top: context, then imagined frames. Bottom: the simulator", elem_id="rollout",
                               **shown)
            read = gr.Textbox(label="The actions as the model reads them", interactive=False)
            imagine_it = (on(navigate, nav), [actions, ep_index], [rollout, read])
            for k, button in keys.items():   # a key appends itself, then the walk is imagined again
                button.click(lambda text, k=k: f"{text} {k}".strip(), actions, actions).then(*imagine_it)
            clear.click(lambda: "", None, actions).then(*imagine_it)
            go_nav.click(*imagine_it)
            actions.submit(*imagine_it)
    return ui


def load(c):
    """The main run and the navigation run (the same one loaded once when they coincide); at least one must load."""
    main = Run(c.out_dir, c.device, "out_dir")
    nav = Run(c.nav_out_dir, c.device, "nav_out_dir",
              (main.model, main.tok, main.enc, main.cfg) if c.nav_out_dir == c.out_dir and main.model else None)
    if main.model is None and nav.model is None:
        raise SystemExit(f"{main.error}; {nav.error}")
    return main, nav


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy"          # the model that draws, describes, continues videos: as sample.py's --out_dir reads it
nav_out_dir = "out/toy_nav"  # the navigation model (configs/toy_nav.py), the W/A/S/D tab's world model
host = "127.0.0.1"           # 0.0.0.0: reachable from other machines too
port = 7860
share = False                # also a public *.gradio.live link through gradio's tunnel (72 hours)
device = "auto"              # "auto": cuda, else mps, else cpu


def serve(c, block=True):
    """Start the page; block=False returns (ui, url) with the server running in a thread (the tests' way)."""
    gr = need_gradio()   # before the models load: a missing gradio is said at once
    ui = page(*load(c))
    # gradio's default look in the system's fonts: its own theme fetches web fonts, which an offline machine lacks
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace"])
    _, url, public = ui.launch(server_name=c.host, server_port=c.port, share=c.share, prevent_thread_lock=True,
                               theme=theme, footer_links=[], quiet=True)
    if block:
        print(f"demo at {public or url} (Ctrl-C stops it)")
        ui.block_thread()
    return ui, url


def main(argv):
    serve(configure(settings(globals()), argv, [__file__]))


if __name__ == "__main__":
    cli(main, sys.argv[1:])
