"""
Planning with a world model (section 5, App. F.1): the trained model, given 4 context frames and actions written as
text, imagines the frames they lead to; the Cross-Entropy Method searches action sequences whose last imagined
frame looks like the goal. Evaluated as NWM does: execute the plan in the simulator, compare the positions with
the ground-truth trajectory (ATE, RPE), in held-out mazes that training never saw.

    python plan.py --out_dir=out/toy_nav --episodes=20                          # the planning table
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
from config import configure, load_for_inference, settings
from data import NAV_CONTEXT, action_text, navigation_example, parse_actions
from files import cli, refuse_overwrite, save_gif, save_grid
from model import KVCache
from sample import append_tokens, commit_image, draw_image, prefill, prompt_batch

# ----------------------------------------------------------------------------------------------------------------
# Episodes: a goal-directed walk in a held-out maze. Its first 4 frames are the context, the next `horizon` steps
# the ground truth, and the frame at their end the goal.

def episode(index, horizon=8, image_size=32, warmup=4):
    """The walk's first `warmup` steps are dropped: from a random heading it mostly turns on the spot at first."""
    maze = tw.maze_for(index, held_out=True)
    rng = np.random.default_rng([index, 1])
    poses, actions = tw.walk(rng, maze, tw.random_pose(rng, maze), warmup + NAV_CONTEXT - 1 + horizon, True)
    poses, actions = poses[warmup:], actions[warmup:]
    frames = np.stack([tw.render_view(maze, p, image_size) for p in poses])
    return dict(maze=maze, start=poses[NAV_CONTEXT - 1], truth=poses[NAV_CONTEXT:], actions=actions[NAV_CONTEXT - 1:],
                context=frames[:NAV_CONTEXT], goal=frames[-1])


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
    """context latents [4, N, C]; texts: B lists of H action strings. The shared context is prefilled once; then
    per step every row appends its action's text and BOI and all rows draw their next frame in one batch."""
    cfg, B, dev = model.cfg, len(texts), context.device
    prompt = prompt_batch([navigation_example(tok, list(context), [])], model, tok.pad)
    cache = KVCache(cfg.n_layer)
    prefill(model, prompt, cache)
    cache = cache.select(torch.zeros(B, dtype=torch.long, device=dev))
    pos, rows, frames = (prompt["pos"][:, -1] + 1).expand(B), torch.arange(B, device=dev), []
    for h in range(len(texts[0])):
        feed = [[tok.eoi] * (h > 0) + tok.encode(t[h]) + [tok.boi] for t in texts]   # EOI closes the last frame
        pos = append_tokens(model, cache, feed, pos, tok.pad)
        z = draw_image(model, cache, None, rows, pos, NAV_CONTEXT + h, steps, 1.0, generator)
        commit_image(model, cache, rows, z, pos, NAV_CONTEXT + h, tok.pad)
        pos, frames = pos + cfg.tokens_per_frame, frames + [z]
    return torch.stack(frames, 1)


def model_world(model, tok, context, steps=10, generator=None):
    return lambda actions: imagine(model, tok, context, [[action_text(*a) for a in row] for row in actions],
                                   steps, generator)


def true_frames(maze, start, actions, image_size):
    """What the simulator shows after each of the actions [H, 3] from the start pose: [H, h, w, 3]."""
    return np.stack([tw.render_view(maze, p, image_size) for p in tw.rollout_poses(maze, start, actions)[1:]])


def oracle_world(maze, start, enc, image_size):
    """The simulator itself as the world model: the best a learned one could do."""
    def predict(actions):
        frames = np.stack([true_frames(maze, start, row, image_size) for row in actions])   # [B, H, h, w, 3]
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

# The search starts from a slow forward drive (robots mostly move forward; from a zero mean few refits get away from
# the start), its first samples within 0.3 of each action's half-range: the distance to a goal view has narrow
# basins, so wider samples leave the elites to chance (docs/world-model.md).
CEM_START, CEM_SPREAD = np.array([0.25, 0.0, 0.0]), 0.3


def cem(predict, score, rng, horizon=8, samples=120, elites=5, iterations=3):
    mu = np.tile(CEM_START, (horizon, 1))
    sigma = np.tile((tw.ACTION_HIGH - tw.ACTION_LOW) / 2 * CEM_SPREAD, (horizon, 1))
    for _ in range(iterations):
        a = np.clip(mu + sigma * rng.standard_normal((samples, horizon, 3)), tw.ACTION_LOW, tw.ACTION_HIGH).round(2)
        best = a[np.argsort(score(predict(a)[:, -1]))[:elites]]
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
        world = oracle_world(ep["maze"], ep["start"], enc, c.image_size)
    else:
        world = model_world(model, tok, enc.encode(ep["context"]).to(c.dev), c.steps, generator)
    return cem(world, goal_distance(c.score, enc, ep["goal"]), rng, horizon, c.samples, c.elites, c.iterations)


def evaluate(planners, c, enc, model=None, tok=None):
    """{planner: (ATE, RPE, final position error, seconds per episode)}, each averaged over episodes x repeats."""
    generator = torch.Generator(c.dev).manual_seed(c.seed)
    results = {}
    for planner in planners:
        rng, errors, t0 = np.random.default_rng(c.seed), [], time.time()
        for i in range(c.episodes):
            ep = episode(i, c.horizon, c.image_size)
            for _ in range(c.repeats):
                actions = plan_episode(planner, ep, c, enc, rng, model, tok, generator)
                went = tw.rollout_poses(ep["maze"], ep["start"], actions)[1:, :2]
                truth = ep["truth"][:, :2]
                errors.append((ate(went, truth), rpe(went, truth), float(np.linalg.norm(went[-1] - truth[-1]))))
        results[planner] = (*np.mean(errors, 0), (time.time() - t0) / c.episodes)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Rollouts: imagined frames for given actions (or sentences) from one episode's context, beside the truth.

def read_alternatives(c):
    """[(texts, numeric actions or None)], one per counterfactual: --actions parsed strictly, --sentences free."""
    alts = []
    for part in (p for p in c.actions.split("|") if p.strip()):
        try:
            steps = parse_actions(part)
        except ValueError as e:
            raise SystemExit(f"--actions: {e}")
        alts.append(([action_text(*a) for a in steps], np.array(steps)))
    alts += [([s.strip()] * c.new_frames, None) for s in c.sentences.split("|") if s.strip()]
    if not alts:
        raise SystemExit("rollout needs --actions (e.g. --actions=\"w w a d|d d d d\") or --sentences=\"...\"")
    return alts


def rollout(model, tok, enc, c, folder):
    ep = episode(c.episode_index, c.horizon, c.image_size)
    alts = read_alternatives(c)
    H = max(len(texts) for texts, _ in alts)
    generator, rows = torch.Generator(c.dev).manual_seed(c.seed), []
    context = enc.encode(ep["context"]).to(c.dev)
    for texts, steps in alts:   # top row: context + imagined frames; below: the simulator's frames, grey if none
        made = enc.decode(imagine(model, tok, context, [texts], c.steps, generator)[0])
        truth = np.full_like(made, 128) if steps is None else true_frames(ep["maze"], ep["start"], steps, c.image_size)
        pad = lambda x: np.concatenate([ep["context"], x, x[-1:].repeat(H - len(x), 0)])
        rows += [pad(made), pad(truth)]
        print(f"{' | '.join(texts)}")
    rows = np.stack(rows)                                                          # [2 A, 4 + H, h, w, 3]
    A, T, h, w = len(alts), *rows.shape[1:4]
    framed = np.pad(rows, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    movie = framed.reshape(A, 2, T, h + 2, w + 2, 3).transpose(2, 1, 3, 0, 4, 5).reshape(T, 2 * h + 4, A * w + 2 * A, 3)
    return [save_gif(movie, os.path.join(folder, "rollout.gif"), ms_per_frame=500),
            save_grid(rows.reshape(-1, h, w, 3), os.path.join(folder, "rollout.png"), ncol=T)]


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy_nav"     # the run whose checkpoint is the world model
mode = "plan"               # "plan": the evaluation table; "rollout": imagined frames for given actions
planners = "model,oracle,forward,random,still"
episodes = 20               # held-out episodes (maze i of the held-out parity)
horizon = 8                 # planning steps (NWM: 8)
samples = 120               # CEM candidates per iteration (NWM: 120)
elites = 5                  # top-K averaged (NWM: 5)
iterations = 3              # CEM refits
repeats = 3                 # independent plans per episode, metrics averaged (NWM: 3)
score = "latent"            # "latent" (encoder space) or "lpips" (needs the lpips package)
steps = 10                  # Euler steps per imagined frame
actions = "w w w w|a a a a|d d d d"   # rollout: WASD keys or numeric steps, '|' between counterfactuals
sentences = ""              # rollout: free-form actions, '|' between them, each written before every new frame
new_frames = 4              # rollout: frames per sentence
episode_index = 0           # rollout: whose context
seed = 0
device = "auto"
out = ""                    # output folder; default out_dir/plan
overwrite = False           # replace the files of an earlier run in the output folder


def main(argv):
    c = configure(settings(globals()), argv, [__file__])
    if c.mode not in ("plan", "rollout"):
        raise SystemExit(f"unknown mode '{c.mode}': use plan or rollout")
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
    folder = c.out or os.path.join(c.out_dir, "plan")
    names = ["rollout.gif", "rollout.png"] if c.mode == "rollout" else ["plan.md"]
    refuse_overwrite([os.path.join(folder, n) for n in names], c.overwrite)
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device)
    c.dev, c.image_size = str(next(model.parameters()).device), cfg.image_size
    os.makedirs(folder, exist_ok=True)
    if c.mode == "rollout":
        for path in rollout(model, tok, enc, c, folder):
            print(f"wrote {path}")
        return
    results = evaluate(chosen, c, enc, model, tok)
    names = {"model": "CEM, trained model", "oracle": "CEM, simulator (oracle)", "forward": "CEM's start (forward)",
             "random": "random actions", "still": "no motion"}
    lines = [f"{c.episodes} held-out episodes x {c.repeats} repeats, horizon {c.horizon}, {c.samples} samples, "
             f"top {c.elites}, {c.iterations} iterations, score {c.score}, {c.steps} Euler steps", "",
             "| planner | ATE | RPE | final error | s / episode |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {names[p]} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.1f} |" for p, r in results.items()]
    print("\n".join(lines))
    with open(os.path.join(folder, "plan.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(folder, 'plan.md')}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
