"""
Planning with a world model (section 5): the trained model, given 4 context frames and actions written as text
(§5.1), imagines the frames they lead to; the Cross-Entropy Method (App. F.1) searches action sequences whose last
imagined frame looks like the goal. Evaluated as NWM does: execute the plan in the simulator, compare the positions with
the ground-truth trajectory (ATE, RPE), in held-out mazes that training never saw.

    python plan.py --out_dir=out/toy_nav --mode=predict                         # prediction against copying
    python plan.py --out_dir=out/toy_nav --mode=score                           # the planning score's own quality
    python plan.py --out_dir=out/toy_nav                                        # the planning table
    python plan.py --out_dir=out/toy_nav --mode=rollout --actions="w w a d"     # imagined frames beside the truth
    python plan.py --out_dir=out/toy_nav --mode=rollout --actions="w w w w|a a a a|d d d d"   # counterfactuals
    python plan.py --out_dir=out/toy_nav --mode=rollout --sentences="turn around" --new_frames=4   # free-form text
"""
import os
import sys
import time

import numpy as np
import torch

import toyworld as tw
from data import NAV_CONTEXT, action_text, navigation_example, parse_actions
from model import KVCache
from plumbing.build import load_for_inference
from plumbing.export import local_folder
from plumbing.logs import report_to_run
from plumbing.outputs import refuse_overwrite, write_lines
from plumbing.pictures import save_rollout
from plumbing.settings import cli, configure, settings
from plumbing.stats import mean_ci
from sample import append_tokens, draw_image, prefill, prompt_batch

# ----------------------------------------------------------------------------------------------------------------
# Episodes: a goal-directed walk in a held-out maze. Its first 4 frames are the context, the next `horizon` steps
# the ground truth, and the frame at their end the goal. Only walks whose goal needs a turn are kept (around a
# corner, or back the way the robot came), so that driving straight on or standing still cannot reach it.

def walk_frames(maze, poses, image_size, view):
    return np.stack([tw.view(maze, p, image_size, view) for p in poses])


def needs_turn(start, end, min_distance=1.0, min_turn=np.pi / 3, min_bearing=np.pi / 4):
    """The goal pose is at least min_distance away, heads at least min_turn away from the start's heading, and lies
    at least min_bearing off it (around a corner or behind): straight on, forward driving ends ~1.5 blocks off."""
    d = end[:2] - start[:2]
    far = np.linalg.norm(d) >= min_distance
    aside = abs(tw.wrap_angle(np.arctan2(d[1], d[0]) - start[2])) >= min_bearing
    return bool(far and aside and abs(tw.wrap_angle(end[2] - start[2])) >= min_turn)


def episode(index, horizon=8, image_size=32, view="ray", warmup=4, tries=100):
    """The walk's first `warmup` steps are dropped: from a random heading it mostly turns on the spot at first."""
    maze = tw.maze_for(index, held_out=True)
    for attempt in range(tries):
        rng = np.random.default_rng([index, 1, attempt])
        poses, actions = tw.walk(rng, maze, tw.random_pose(rng, maze), warmup + NAV_CONTEXT - 1 + horizon, True)
        poses, actions = poses[warmup:], actions[warmup:]
        if needs_turn(poses[NAV_CONTEXT - 1], poses[-1]):
            break
    frames = walk_frames(maze, poses, image_size, view)
    return dict(maze=maze, start=poses[NAV_CONTEXT - 1], truth=poses[NAV_CONTEXT:], actions=actions[NAV_CONTEXT - 1:],
                context=frames[:NAV_CONTEXT], goal=frames[-1], frames=frames[NAV_CONTEXT:])


def ate(pred, truth):
    """Absolute trajectory error: RMSE of the positions [T, 2], no alignment (NWM)."""
    return float(np.sqrt(np.mean(np.sum((np.asarray(pred) - truth) ** 2, -1))))


def rpe(pred, truth):
    """Relative pose error: RMSE of the steps between consecutive positions (NWM)."""
    return ate(np.diff(pred, axis=0), np.diff(truth, axis=0))


# ----------------------------------------------------------------------------------------------------------------
# World models, one interface: actions [B, H, 3] -> the latents of the H frames they lead to, [B, H, N, C].

@torch.no_grad()
def imagine(model, tok, context, texts, steps=10, generator=None):
    """context latents [4, N, C]; texts: B lists of H action strings. Every frame is drawn as training shows it
    (§5.1, Fig. 11): the last 4 frames, true or imagined, then one action as text; the new frame joins that window.
    All B rows are one batch per step."""
    B, dev = len(texts), context.device
    window, frames = context.expand(B, *context.shape), []
    for h in range(len(texts[0])):
        prompt = prompt_batch([navigation_example(tok, list(w)) for w in window], model, tok.pad)
        cache = KVCache(model.cfg.n_layer)
        prefill(model, prompt, cache)
        pos, _ = append_tokens(model, cache, [tok.encode(t[h]) + [tok.boi] for t in texts], prompt["pos"][:, -1] + 1,
                               tok.pad)
        new_frame = len(prompt["latents"])   # an id after every frame of the batch, as generate numbers them
        z = draw_image(model, cache, None, torch.arange(B, device=dev), pos, new_frame, steps, 1.0, generator)
        window, frames = torch.cat([window[:, 1:], z[:, None]], 1), frames + [z]
    return torch.stack(frames, 1)


def model_world(model, tok, context, steps=10, generator=None):
    return lambda actions: imagine(model, tok, context, [[action_text(*a) for a in row] for row in actions],
                                   steps, generator)


def true_frames(maze, start, actions, image_size, view="ray"):
    """What the simulator shows after each of the actions [H, 3] from the start pose: [H, h, w, 3]."""
    return walk_frames(maze, tw.rollout_poses(maze, start, actions)[1:], image_size, view)


def oracle_world(maze, start, enc, image_size, view="ray"):
    """The simulator itself as the world model: the best a learned one could do."""
    def predict(actions):
        frames = np.stack([true_frames(maze, start, row, image_size, view) for row in actions])   # [B, H, h, w, 3]
        return enc.encode(frames.reshape(-1, *frames.shape[2:])).view(*frames.shape[:2], enc.tokens_per_frame, -1)
    return predict


def goal_distance(kind, enc, goal):
    """Score of final frames against the goal frame (lower is better): mean squared latent distance through the
    encoder, or LPIPS on decoded pixels (the paper's choice) when the lpips package is installed."""
    g = enc.encode(goal[None])
    if kind == "latent":
        return lambda z: ((z.cpu() - g) ** 2).mean((1, 2)).numpy()
    if kind != "lpips":
        raise SystemExit(f"unknown score '{kind}': use latent or lpips")
    try:
        import lpips
    except ImportError:
        raise SystemExit("score=lpips needs the lpips package (pip install lpips, with its AlexNet weights); "
                         "or use --score=latent")
    net = lpips.LPIPS(net="alex", verbose=False)
    pixels = lambda x: torch.as_tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    return lambda z: net(pixels(enc.decode(z)), pixels(goal[None])).flatten().detach().numpy()


# ----------------------------------------------------------------------------------------------------------------
# The Cross-Entropy Method (NWM, App. F.1): sample action sequences from a Gaussian, roll them all out, refit the
# Gaussian to the best few; the plan is the average of the final elites.

# The search starts from a slow forward drive (the "forward" baseline): from a zero mean, few refits leave the start.
# It spreads over 0.3 of dx's and dy's half-range (narrow basins) but over all turns (the goals need them).
CEM_START, CEM_SPREAD = np.array([0.25, 0.0, 0.0]), np.array([0.3, 0.3, 1.0])


def start(horizon):
    return np.tile(CEM_START, (horizon, 1)), np.tile((tw.ACTION_HIGH - tw.ACTION_LOW) / 2 * CEM_SPREAD, (horizon, 1))


def draw_candidates(rng, mu, sigma, samples, candidates="steps"):
    """[samples, horizon, 3] actions around mu. candidates: "steps", each step's action its own Gaussian draw;
    "nwm", NWM's: one translation (dx, dy) held over the horizon, and a turn only at the last step."""
    draw = rng.standard_normal((samples, *mu.shape))
    if candidates == "nwm":   # the first step's translation draw for every step; yaw drawn at the last only
        draw[:, :, :2] = draw[:, :1, :2]
        draw[:, :-1, 2] = 0.0
        mu = np.concatenate([mu[:-1] * [1, 1, 0], mu[-1:]])
    return np.clip(mu + sigma * draw, tw.ACTION_LOW, tw.ACTION_HIGH).round(2)


def cem(predict, score, rng, horizon=8, samples=120, elites=5, iterations=1, repeats=3, candidates="steps"):
    """The paper's "repeats this process 3 times" read as NWM's planning command does (num_repeat_eval 3, one CEM
    iteration): the world model is stochastic, so each candidate's score is the mean over `repeats` rollouts."""
    mu, sigma = start(horizon)
    for _ in range(iterations):
        a = draw_candidates(rng, mu, sigma, samples, candidates)
        best = a[np.argsort(np.mean([score(predict(a)[:, -1]) for _ in range(repeats)], 0))[:elites]]
        mu, sigma = best.mean(0), best.std(0) + 0.02
    return mu.round(2)


def plan_episode(planner, ep, c, enc, rng, model=None, tok=None, generator=None):
    """Actions [horizon, 3] chosen by one planner for one episode."""
    horizon = len(ep["truth"])
    if planner == "still":
        return np.zeros((horizon, 3))
    if planner == "random":
        return rng.uniform(tw.ACTION_LOW, tw.ACTION_HIGH, (horizon, 3)).round(2)
    if planner == "forward":
        return np.tile(CEM_START, (horizon, 1))
    if planner == "oracle":
        world = oracle_world(ep["maze"], ep["start"], enc, c.image_size, c.view)
    else:
        world = model_world(model, tok, enc.encode(ep["context"]).to(c.dev), c.steps, generator)
    return cem(world, goal_distance(c.score, enc, ep["goal"]), rng, horizon, c.samples, c.elites, c.iterations,
               c.repeats, c.candidates)


def evaluate(planners, c, enc, model=None, tok=None):
    """{planner: (per-episode [ATE, RPE, final position error] [E, 3], seconds per episode)}."""
    generator = torch.Generator(c.dev).manual_seed(c.seed)
    results = {}
    for planner in planners:
        rng, errors, t0 = np.random.default_rng(c.seed), [], time.time()
        for i in range(c.episodes):
            ep = episode(i, c.horizon, c.image_size, c.view)
            actions = plan_episode(planner, ep, c, enc, rng, model, tok, generator)
            went, truth = tw.rollout_poses(ep["maze"], ep["start"], actions)[1:, :2], ep["truth"][:, :2]
            errors.append((ate(went, truth), rpe(went, truth), float(np.linalg.norm(went[-1] - truth[-1]))))
        results[planner] = (np.array(errors), (time.time() - t0) / c.episodes)
    return results


# ----------------------------------------------------------------------------------------------------------------
# The planning score itself: the paper's is LPIPS, whose weights are a download; how well a score ranks candidates
# is measurable without any, on the simulator's own frames (no model error), against the true distance to the goal.

def ranks(x):
    return np.argsort(np.argsort(x, kind="stable"), kind="stable")


def score_quality(enc, c):
    """Per episode [E, 2]: Spearman's rank correlation between the score of CEM's first `samples` candidates and
    their true final distance to the goal position, and the regret of picking the best-scored one (its true distance
    minus the best candidate's), with a random pick's regret beside it [E]."""
    rng, out, chance = np.random.default_rng(c.seed), [], []
    for i in range(c.episodes):
        ep = episode(i, c.horizon, c.image_size, c.view)
        a = draw_candidates(rng, *start(c.horizon), c.samples, c.candidates)
        score = goal_distance(c.score, enc, ep["goal"])(oracle_world(ep["maze"], ep["start"], enc, c.image_size,
                                                                     c.view)(a)[:, -1])
        true = np.array([np.linalg.norm(tw.rollout_poses(ep["maze"], ep["start"], row)[-1, :2] - ep["truth"][-1, :2])
                         for row in a])
        out.append((np.corrcoef(ranks(score), ranks(true))[0, 1], true[np.argmin(score)] - true.min()))
        chance.append(true.mean() - true.min())
    return np.array(out), np.array(chance)


def score_table(quality, chance, c):
    return [f"{c.episodes} held-out episodes, {c.samples} candidates each (CEM's first draw, candidates "
            f"{c.candidates}, horizon {c.horizon}) rolled out in the simulator, scored by {c.score}; "
            f"mean [95% bootstrap CI over episodes]", "",
            "| rank correlation with the true final distance | regret of the best-scored (block widths) | "
            "regret of a random pick |", "| ---: | ---: | ---: |",
            f"| {mean_ci(quality[:, 0], 2)} | {mean_ci(quality[:, 1], 2)} | {mean_ci(chance, 2)} |"]


# ----------------------------------------------------------------------------------------------------------------
# World-model quality before any planning (NWM): imagine the frames the true actions lead to, each one joining the
# context of the next, and compare them with the simulator's after 1, 2, 4 and 8 actions.

PREDICT_STEPS = (1, 2, 4, 8)


def frame_errors(pred, truth, enc):
    """Per frame [T]: pixel MSE (pixels in [0, 1]) and the planner's latent MSE, for uint8 frames [T, h, w, 3]."""
    pixel = ((pred.astype(np.float64) - truth.astype(np.float64)) / 255) ** 2
    latent = (enc.encode(pred) - enc.encode(truth)) ** 2
    return pixel.mean((1, 2, 3)), latent.mean((1, 2)).double().numpy()


def psnr(mse):
    return 10 * np.log10(1 / np.maximum(mse, 1e-10))


def mean_frame(image_size, view, mazes=40):
    """The average view over walks in training mazes: what a predictor that has learned only blur would draw (pixel
    MSE rewards it wherever it is unsure), so a world model must beat it as well as copying."""
    frames = []
    for i in range(mazes):
        rng, maze = np.random.default_rng([i, 2]), tw.maze_for(i)
        poses, _ = tw.walk(rng, maze, tw.random_pose(rng, maze), 8, goal_directed=True)
        frames.append(walk_frames(maze, poses, image_size, view))
    return np.mean(frames, axis=(0, 1)).round().astype(np.uint8)


def predict_quality(model, tok, enc, c, first=0):
    """{predictor: [E, len(steps), 2] pixel and latent MSE} from held-out episode `first` on: model, copy, mean."""
    generator, steps = torch.Generator(c.dev).manual_seed(c.seed), PREDICT_STEPS
    out, mean = {"model": [], "copy": [], "mean": []}, mean_frame(c.image_size, c.view)
    for i in range(first, first + c.episodes):
        ep = episode(i, steps[-1], c.image_size, c.view)
        texts = [[action_text(*a) for a in ep["actions"]]]
        made = enc.decode(imagine(model, tok, enc.encode(ep["context"]).to(c.dev), texts, c.steps, generator)[0])
        truth, at = ep["frames"], [k - 1 for k in steps]
        for name, pred in (("model", made), ("copy", np.repeat(ep["context"][-1:], len(truth), 0)),
                           ("mean", np.repeat(mean[None], len(truth), 0))):
            out[name].append(np.stack(frame_errors(pred[at], truth[at], enc), 1))
    return {k: np.array(v) for k, v in out.items()}, steps


def planning_table(results, c):
    names = {"model": "CEM, trained model", "oracle": "CEM, simulator (oracle)", "forward": "CEM's start (forward)",
             "random": "random actions", "still": "no motion"}
    lines = [f"{c.episodes} held-out episodes whose goals need a turn, horizon {c.horizon}, {c.samples} samples, "
             f"top {c.elites}, {c.iterations} iterations, each scored over {c.repeats} rollouts, score {c.score}, "
             f"Euler steps {c.steps}, candidates {c.candidates}; "
             f"mean [95% bootstrap CI over episodes]", "",
             "| planner | ATE | RPE | final error | s / episode |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {names[p]} | {mean_ci(e[:, 0], 2)} | {mean_ci(e[:, 1], 2)} | {mean_ci(e[:, 2], 2)} | {sec:.1f} |"
              for p, (e, sec) in results.items()]
    if "model" in results:   # the same episodes for every planner: the paired difference is the sharper test
        lines += ["", "final error, CEM with the model minus another planner, paired over episodes:"]
        lines += [f"- {names[p]}: {mean_ci(results['model'][0][:, 2] - e[:, 2], 2)}" for p, (e, _) in results.items()
                  if p != "model"]
    return lines


def prediction_table(quality, steps, c):
    lines = [f"{c.episodes} held-out episodes, true actions, each imagined frame in the next one's 4-frame context; "
             f"Euler steps per frame: {c.steps}; mean [95% bootstrap CI]", "",
             "| actions ahead | predictor | pixel MSE | PSNR (dB) | latent MSE |",
             "| ---: | --- | ---: | ---: | ---: |"]
    names = {"model": "trained model", "copy": "copy last context frame", "mean": "mean frame (training mazes)"}
    for j, k in enumerate(steps):
        for name, errs in quality.items():
            lines.append(f"| {k} | {names[name]} | {mean_ci(errs[:, j, 0], 4)} | {psnr(errs[:, j, 0].mean()):.1f} | "
                         f"{mean_ci(errs[:, j, 1], 4)} |")
    lines.append("| any | simulator | 0 | inf | 0 |")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Rollouts: imagined frames for given actions (or sentences) from one episode's context, beside the truth.

def read_alternatives(c, ep=None):
    """[(texts, numeric actions or None)] per counterfactual: --actions parsed strictly, --sentences free."""
    alts = []
    for part in (p for p in c.actions.split("|") if p.strip()):
        try:
            steps = (ep["actions"] if ep is not None else [(0, 0, 0)]) if part.strip() == "episode" else \
                parse_actions(part)
        except ValueError as e:
            raise SystemExit(f"--actions: {e}")
        alts.append(([action_text(*a) for a in steps], np.array(steps)))
    alts += [([s.strip()] * c.new_frames, None) for s in c.sentences.split("|") if s.strip()]
    if not alts:
        raise SystemExit("rollout needs --actions (e.g. --actions=\"w w a d|d d d d\") or --sentences=\"...\"")
    return alts


def rollout(model, tok, enc, c, folder):
    ep = episode(c.episode_index, c.horizon, c.image_size, c.view)
    alts = read_alternatives(c, ep)
    H = max(len(texts) for texts, _ in alts)
    generator, rows = torch.Generator(c.dev).manual_seed(c.seed), []
    context = enc.encode(ep["context"]).to(c.dev)
    for texts, steps in alts:   # top row: context + imagined frames; below: the simulator's frames, grey if none
        made = enc.decode(imagine(model, tok, context, [texts], c.steps, generator)[0])
        truth = (np.full_like(made, 128) if steps is None
                 else true_frames(ep["maze"], ep["start"], steps, c.image_size, c.view))
        pad = lambda x: np.concatenate([ep["context"], x, x[-1:].repeat(H - len(x), 0)])
        rows += [pad(made), pad(truth)]
        print(f"{' | '.join(texts)}")
    return save_rollout(np.stack(rows), folder)                                    # [2 A, 4 + H, h, w, 3]


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy_nav"     # the world model: a run's out_dir, an export folder, or hf://owner/name[@revision]
weights = "auto"            # "auto": the weights' moving average where the run kept one, else the raw; or ema, raw
mode = "plan"               # "plan": the planning table; "predict": the prediction table; "rollout": imagined frames;
                            # "score": how well the score ranks candidates on the simulator's frames
planners = "model,oracle,forward,random,still"
episodes = 100              # held-out episodes (maze i of the held-out parity): final-error intervals about +-0.1
horizon = 6                 # planning steps (NWM: 8); predict always looks 8 actions ahead
samples = 32                # CEM candidates per iteration (NWM: 120)
elites = 5                  # top-K averaged (NWM: 5)
iterations = 2              # CEM refits (NWM: 1; these four sizes plan 100 episodes in ~3 CPU minutes)
repeats = 1                 # rollouts each candidate's score is averaged over (NWM: 3, as num_repeat_eval)
score = "latent"            # "latent" (encoder space) or "lpips" (needs the lpips package)
candidates = "steps"        # CEM's candidates: "steps" (each step drawn) or "nwm" (one translation, a last turn)
steps = 1                   # Euler steps per imagined frame; 1: the x-prediction itself, the model's mean frame
actions = "episode|w w w w|a a a a|d d d d"   # rollout: WASD keys, numeric steps or "episode" (its true actions)
sentences = ""              # rollout: free-form actions, '|' between them, each written before every new frame
new_frames = 4              # rollout: frames per sentence
episode_index = 0           # rollout: whose context
# --protocol=paper: NWM's planning as the paper runs it (App. F.1), whatever the sizes above say
protocol = ""
PAPER = dict(horizon=8, samples=120, elites=5, iterations=1, repeats=3, steps=25, candidates="nwm")
seed = 0
device = "auto"
out = ""                    # output folder; default out_dir/plan (a hub model: out/owner--name/plan)
overwrite = False           # replace the files of an earlier run in the output folder


def main(argv):
    c = configure(settings(globals()), argv, [__file__])
    if c.protocol not in ("", "paper"):
        raise SystemExit(f"protocol={c.protocol!r}: use 'paper' (NWM's planning, App. F.1) or leave it out")
    if c.protocol == "paper":
        vars(c).update(PAPER)
    if c.candidates not in ("steps", "nwm"):
        raise SystemExit(f"candidates={c.candidates!r}: use 'steps' or 'nwm'")
    if c.mode not in ("plan", "predict", "rollout", "score"):
        raise SystemExit(f"unknown mode '{c.mode}': use plan, predict, rollout or score")
    if min(c.episodes, c.horizon, c.samples, c.elites, c.iterations, c.repeats, c.steps, c.new_frames) < 1 or \
            c.elites > c.samples:
        raise SystemExit("episodes, horizon, samples, elites, iterations, repeats, steps and new_frames must be >= 1, "
                         "and elites <= samples")
    chosen = c.planners.split(",")
    if set(chosen) - {"model", "oracle", "forward", "random", "still"}:
        raise SystemExit(f"planners={c.planners!r}: choose from model, oracle, forward, random, still")
    if c.score not in ("latent", "lpips"):
        raise SystemExit(f"unknown score '{c.score}': use latent or lpips")
    if c.mode == "rollout":
        read_alternatives(c)   # a malformed action fails before the model loads
    folder = c.out or os.path.join(local_folder(c.out_dir), "plan")
    names = ["rollout.gif", "rollout.png"] if c.mode == "rollout" else [f"{c.mode}.md"]
    refuse_overwrite([os.path.join(folder, n) for n in names], c.overwrite)
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device, c.weights)
    c.dev, c.image_size, c.view = str(next(model.parameters()).device), cfg.image_size, getattr(cfg, "nav_view", "ray")
    os.makedirs(folder, exist_ok=True)
    if c.mode == "rollout":   # the pictures also go to the run's wandb / TensorBoard, where it had them
        paths = rollout(model, tok, enc, c, folder)
        print("\n".join(f"wrote {p}" for p in paths))
        return report_to_run(cfg, c.out_dir, pictures={"rollout": paths[1]})
    t0 = time.time()
    if c.mode == "predict":
        lines = prediction_table(*predict_quality(model, tok, enc, c), c)
    elif c.mode == "score":
        lines = score_table(*score_quality(enc, c), c)
    else:
        lines = planning_table(evaluate(chosen, c, enc, model, tok), c)
    lines += ["", f"{time.time() - t0:.0f} s in all"]
    print("\n".join(lines))
    print(f"wrote {write_lines(os.path.join(folder, f'{c.mode}.md'), lines)}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
