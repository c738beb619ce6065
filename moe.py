"""
Mixture-of-Experts FFN for multimodal pretraining (section 6, Table 2, Appendix E.7-E.8).

Many small experts replace the FFN; a router sends each token to k of them. Granularity is the paper's
G = 4 d_model / d_expert: experts are 4 d_model / G wide and G of them are active by default, 4 d_model hidden
units per token as in a 4 d_model FFN, while total parameters grow with the number of experts. (The dense and
modality FFNs here are 8/3 d_model wide: moe_top_k sets fewer active experts for equal FLOPs.)
Shared experts are always on: one for every token ("global"), or one for text and one for vision tokens
("per_modality", the paper's best); the router picks the other k - 1.

Dispatch is dropless: every (token, expert) assignment is kept, assignments are sorted by expert, and each
projection is one grouped matrix multiply over the sorted tokens (model.grouped_swiglu, torch._grouped_mm), then
the weighted outputs are added back per token. Nothing in it waits for the host; a loop over experts is the exact
reference.

The second half of the file measures what the experts learned: selection counts by modality, diffusion timestep
and task, the specialization score S_i and the text/vision/multimodal classes, coefficients of variation over
timestep bins, and the generation/understanding correlation (Figures 18-20).

    python moe.py --out_dir=out/toy_moe          # routing analysis of a trained MoE checkpoint: table + figures
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import grouped_swiglu


class MoEFFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, G = cfg.d_model, cfg.moe_granularity
        if 4 * d % G:
            raise ValueError(f"moe_granularity {G} must divide 4 * d_model = {4 * d} (G = 4 d_model / d_expert)")
        self.hidden = 4 * d // G
        self.n_shared = {"none": 0, "global": 1, "per_modality": 2}[cfg.moe_shared]
        self.n_routed = cfg.moe_experts - self.n_shared
        self.k = cfg.moe_top_k or G                      # default: G active experts, 4 d_model hidden units
        self.k_routed = self.k - (self.n_shared > 0)
        if not 0 < self.k_routed <= self.n_routed:
            raise ValueError(f"moe_top_k {self.k} does not fit {cfg.moe_experts} experts with shared={cfg.moe_shared}")
        self.cfg = cfg
        E = cfg.moe_experts                               # routed experts first, then the shared ones
        self.w_gate_up = nn.Parameter(torch.randn(E, d, 2 * self.hidden) * 0.02)
        self.w_down = nn.Parameter(torch.randn(E, self.hidden, d) * 0.02 / math.sqrt(2 * cfg.n_layer))
        self.router = nn.Linear(d, self.n_routed, bias=False)
        self.register_buffer("balance_bias", torch.zeros(self.n_routed))   # the auxiliary-loss-free method
        self.register_buffer("load", torch.zeros(self.n_routed), persistent=False)   # the step's, bias method

    # -- routing ----------------------------------------------------------------------------------------------
    def route(self, x, is_vision):
        """(expert ids [T, k], weights [T, k], router logits [T, n_routed]) for tokens x [T, d]. The router runs
        in fp32: its softmax decides discrete choices, which bf16 rounding would flip."""
        with torch.autocast(x.device.type, enabled=False):   # autocast would run the linear in bf16
            logits = F.linear(x.float(), self.router.weight.float())
        scores = logits.softmax(-1) if self.cfg.moe_score == "softmax" else logits.sigmoid()
        # the balance bias steers which experts are chosen, never how much their outputs weigh
        top = torch.topk(scores + self.balance_bias, self.k_routed, dim=-1).indices
        weights = scores.gather(-1, top)
        if self.cfg.moe_renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        if self.n_shared:
            shared = self.n_routed + (is_vision.long() if self.n_shared == 2 else torch.zeros_like(top[:, 0]))
            top = torch.cat([shared[:, None], top], dim=1)
            weights = torch.cat([torch.ones_like(weights[:, :1]), weights], dim=1)
        return top, weights, logits

    def balance_losses(self, top, logits):
        """Switch/OLMoE balance loss n * sum_i f_i P_i (f_i: share of routed assignments to expert i, P_i: mean
        router probability of i), plus the router z-loss mean(logsumexp(logits)^2), and the load (counts)."""
        routed = top[:, -self.k_routed:].reshape(-1)
        counts = expert_counts(routed, self.n_routed).float()
        f = counts / routed.numel()
        P = logits.softmax(-1).mean(0)
        aux = self.cfg.moe_aux_coef * self.n_routed * (f * P).sum() if self.cfg.moe_balance == "aux" else 0.0
        return aux + self.cfg.moe_z_coef * torch.logsumexp(logits, -1).pow(2).mean(), counts.detach()

    # -- dispatch -----------------------------------------------------------------------------------------------
    def forward(self, x, is_vision):
        shape = x.shape
        x, is_vision = x.reshape(-1, shape[-1]), is_vision.reshape(-1)
        top, weights, logits = self.route(x, is_vision)
        stats = dict(zip(("balance_loss", "load"), self.balance_losses(top, logits))) if self.training else {}
        flat = top.reshape(-1)
        order = torch.argsort(flat, stable=True)                    # assignments grouped by expert
        token = order // self.k
        y = grouped_swiglu(x[token], self.w_gate_up, self.w_down, expert_counts(flat, len(self.w_gate_up)))
        y = y * weights.reshape(-1)[order, None].to(y.dtype)
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype)).view(shape), stats

    def active_params(self):
        """k experts' weights and the router: with k = G, the experts alone equal a 4 d_model FFN's parameters."""
        return self.k * (self.w_gate_up[0].numel() + self.w_down[0].numel()) + self.router.weight.numel()


def expert_counts(ids, n):
    """How many assignments each of n experts got (scatter_add, not bincount: no host sync on the GPU)."""
    return torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids, torch.ones_like(ids))


def auxiliary_loss(model):
    """Once per training micro-batch, after its forward pass: the sum of the MoE layers' balance and z-losses (0 for
    dense models). Their expert loads are added to the step's count, which the bias method balances by."""
    total = 0.0
    for block, stats in zip(model.blocks, getattr(model, "ffn_stats", [])):
        if stats:
            total = total + stats["balance_loss"]
            if block.ffn.cfg.moe_balance == "bias":   # update_balance_biases reads and resets it
                block.ffn.load += stats["load"]
    return total


@torch.no_grad()
def update_balance_biases(model, rate):
    """Auxiliary-loss-free balancing, after each optimizer step: raise the bias of the experts that got fewer than
    the mean number of tokens over the whole step (every micro-batch, summed over every process, so all processes
    keep the same biases), lower the others. The rate is sized for sigmoid scores in (0, 1) (DeepSeek-V3: 1e-3);
    softmax scores average 1/E, so their step is rate / E, or the bias would outweigh the scores within steps."""
    layers = [m for m in model.modules() if isinstance(m, MoEFFN) and m.cfg.moe_balance == "bias"]
    if not layers:
        return
    load = torch.stack([m.load for m in layers])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(load)
    for m, used in zip(layers, load):
        scale = 1.0 / m.n_routed if m.cfg.moe_score == "softmax" else 1.0
        m.balance_bias += rate * scale * torch.sign(used.mean() - used)
        m.load.zero_()


# ----------------------------------------------------------------------------------------------------------------
# What the experts learned (Appendix E.8).

def specialization(count_text, count_vision, n_text, n_vision, k):
    """S_i = (R_text - R_vision) / (R_text + R_vision) with R_m(i) = C_m(i) / (N_m k); an expert is 'text' when
    S > 0.5, 'vision' when S < -0.5, otherwise 'multimodal' (experts never chosen are 'unused')."""
    r_text = np.asarray(count_text, float) / max(n_text * k, 1)
    r_vision = np.asarray(count_vision, float) / max(n_vision * k, 1)
    total = r_text + r_vision
    S = np.divide(r_text - r_vision, total, out=np.zeros_like(total), where=total > 0)
    classes = np.where(total == 0, "unused", np.where(S > 0.5, "text", np.where(S < -0.5, "vision", "multimodal")))
    return S, classes


def timestep_cv(counts_by_bin, tokens_by_bin):
    """Coefficient of variation of each expert's selection rate across diffusion-timestep bins: [bins, E] -> [E]."""
    rates = np.asarray(counts_by_bin, float) / np.maximum(np.asarray(tokens_by_bin, float)[:, None], 1)
    mean = rates.mean(0)
    return np.divide(rates.std(0), mean, out=np.zeros_like(mean), where=mean > 0)


def pearson(a, b):
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@torch.no_grad()
def routing_counts(model, batches, bins=10):
    """Selection counts of every MoE layer's routed experts over (task, batch) pairs, read off with forward hooks
    (the layers themselves are untouched). Returns one dict of numpy arrays per layer."""
    from model import add_noise, sample_time
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    stats = [dict(text=np.zeros(m.n_routed), vision=np.zeros(m.n_routed), n_text=0, n_vision=0,
                  tbins=np.zeros((bins, m.n_routed)), n_tbins=np.zeros(bins),
                  generation=np.zeros(m.n_routed), understanding=np.zeros(m.n_routed)) for m in layers]
    labels = {}

    def hook(i):
        def record(module, args, out):
            x, is_vision = args[0].reshape(-1, args[0].shape[-1]), args[1].reshape(-1)
            top = module.route(x, is_vision)[0][:, -module.k_routed:]
            s, vis = stats[i], is_vision.cpu().numpy()
            chosen = top.cpu().numpy()
            for name, rows in (("text", ~vis), ("vision", vis)):
                np.add.at(s[name], chosen[rows].reshape(-1), 1)
                s["n_" + name] += int(rows.sum())
            noisy = labels["noisy"]   # timestep statistics count frames being generated, not clean inputs
            tb = labels["tbin"][noisy]
            np.add.at(s["tbins"], (np.repeat(tb, module.k_routed), chosen[noisy].reshape(-1)), 1)
            np.add.at(s["n_tbins"], tb, 1)
            if labels["task"] in ("generation", "understanding"):
                np.add.at(s[labels["task"]], chosen[vis].reshape(-1), 1)
        return record
    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    model.eval()
    gen = torch.Generator(next(model.parameters()).device).manual_seed(0)   # the same noise every time
    for task, batch in batches:
        z0, cond = batch["latents"], batch["cond"]
        t = torch.where(cond, torch.ones_like(z0[:, 0, 0]), sample_time(len(z0), model.cfg, z0.device, gen))
        zt = add_noise(z0, torch.randn(z0.shape, device=z0.device, generator=gen), t)
        frame = batch["frame"].reshape(-1)
        per_pos = torch.cat([t, t.new_ones(1)])[frame].cpu().numpy()                      # text (-1): t = 1
        noisy = torch.cat([~cond, cond.new_zeros(1)])[frame].cpu().numpy()
        labels.update(task=task, tbin=np.minimum((per_pos * bins).astype(int), bins - 1), noisy=noisy)
        model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
    for h in handles:
        h.remove()
    return stats, [m.k_routed for m in layers]


def analyze(stats, ks):
    """The paper's routing analysis, one row per layer, plus per-expert arrays for the figures."""
    rows = []
    for layer, (s, k) in enumerate(zip(stats, ks)):
        S, classes = specialization(s["text"], s["vision"], s["n_text"], s["n_vision"], k)
        cv = timestep_cv(s["tbins"], s["n_tbins"])
        seen = (classes == "vision") | (classes == "multimodal")   # text experts hardly see frames: CV is noise
        rows.append(dict(layer=layer, text=int((classes == "text").sum()), vision=int((classes == "vision").sum()),
                         multimodal=int((classes == "multimodal").sum()), unused=int((classes == "unused").sum()),
                         timestep_cv=float(cv[seen].mean()) if seen.any() else 0.0,
                         gen_und_r=pearson(s["generation"], s["understanding"]), S=S.tolist()))
    return rows


def plot(rows, stats, path):
    from sample import pyplot, save_figure
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    layers = [r["layer"] for r in rows]
    bottom = np.zeros(len(rows))
    for name, colour in (("text", "tab:blue"), ("multimodal", "tab:gray"), ("vision", "tab:orange")):
        values = np.array([r[name] for r in rows])
        axes[0].bar(layers, values, bottom=bottom, label=name, color=colour)
        bottom += values
    axes[0].set(title="experts by specialization (Fig. 18)", xlabel="layer", ylabel="experts")
    axes[0].legend()
    rates = stats[-1]["tbins"] / np.maximum(stats[-1]["n_tbins"][:, None], 1)
    im = axes[1].imshow(rates.T, aspect="auto", cmap="viridis")
    axes[1].set(title="last layer: selection rate by timestep bin", xlabel="t bin (0 noise .. 9 clean)",
                ylabel="expert")
    fig.colorbar(im, ax=axes[1])
    axes[2].plot(layers, [r["gen_und_r"] for r in rows], "o-")
    axes[2].set(title="generation vs understanding selection, Pearson r", xlabel="layer", ylim=(-1, 1))
    return [save_figure(fig, path)]


def main(argv):
    from train import configure, get_batch, load_for_inference
    c = configure({"out_dir": "out/toy_moe", "batches": 8, "device": "auto"}, argv)
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device)
    if not any(isinstance(m, MoEFFN) for m in model.modules()):
        raise SystemExit(f"the checkpoint in {c.out_dir} has no MoE layers (ffn={model.cfg.ffn!r})")
    from data import ToyWorldData
    dev = next(model.parameters()).device
    batches = []   # held-out batches of one task each, so every selection is labelled with its task
    for task, source in (("generation", "caption_to_image"), ("understanding", "image_to_caption"),
                         ("text", "text")):
        data = ToyWorldData(tok, cfg.seq_len, enc.tokens_per_frame, {source: 1.0}, cfg.seed, cfg.image_size,
                            cfg.max_shapes, cfg.video_frames, cfg.cfg_dropout, caption_clean_image=True)
        batches += [(task, get_batch(data, enc, i, 0, cfg, dev, "val")) for i in range(c.batches)]
    stats, ks = routing_counts(model, batches)
    rows = analyze(stats, ks)
    header = "| layer | text | vision | multimodal | unused | timestep CV | gen/und r |\n" + "|---" * 7 + "|\n"
    table = header + "".join(f"| {r['layer']} | {r['text']} | {r['vision']} | {r['multimodal']} | {r['unused']} | "
                             f"{r['timestep_cv']:.3f} | {r['gen_und_r']:.3f} |\n" for r in rows)
    print(table)
    with open(os.path.join(c.out_dir, "routing.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(c.out_dir, "routing.md"), "w") as f:
        f.write(table)
    for path in [os.path.join(c.out_dir, "routing.json"), os.path.join(c.out_dir, "routing.md"),
                 *plot(rows, stats, os.path.join(c.out_dir, "routing.png"))]:
        print(f"wrote {path}")


if __name__ == "__main__":
    import moe  # run main from the module model.py imports, so isinstance() sees one MoEFFN class
    moe.main(sys.argv[1:])
