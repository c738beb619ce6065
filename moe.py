"""
Mixture-of-Experts FFN for multimodal pretraining (section 6: Eq. 4, Table 2; Appendix E.7-E.8).

Many small experts replace the FFN; a router sends each token to k of them. Granularity is the paper's
G = 4 d_model / d_expert: experts are 4 d_model / G wide and G of them are active by default, 4 d_model hidden
units per token as in a 4 d_model FFN, while total parameters grow with the number of experts. (The dense and
modality FFNs here are 8/3 d_model wide: moe_top_k sets fewer active experts for equal FLOPs.)
Shared experts are always on: one for every token ("global"), or one for text and one for vision tokens
("per_modality", the paper's best); the router picks the other k - 1.

Dispatch is dropless: assignments are sorted by expert, each projection is one grouped matrix multiply over them
(grouped_swiglu, shared with model.ModalityFFN), and the weighted outputs are added back per token. Under expert
parallelism (plumbing/experts.py) each process holds a share of the routed experts, and the sorted rows travel to
their experts' processes and back by all-to-all; the shared experts stay with every token.

What the experts learned (the routing analysis of Appendix E.8) is measured by routing.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import experts


# the grouped GEMM kernel (torch._grouped_mm, bfloat16): on GPUs, and on the CPU in recent torch
GROUPED_MM = hasattr(torch, "_grouped_mm") and tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 9)


def runs_in_bf16(device_type, *tensors):
    """Whether the step computes in bfloat16 anyway: under bf16 autocast on that device, or with bf16 tensors."""
    autocast = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16
    return autocast or any(t.dtype == torch.bfloat16 for t in tensors)


def grouped_swiglu(xs, w_gate_up, w_down, counts, grouped=None):
    """SwiGLU with E weight sets, w_gate_up [E, d, 2h] and w_down [E, h, d], each over its run of counts[e] rows of
    xs [A, d]. In a bf16 step: one grouped matrix multiply per projection, run lengths on the device (no host sync,
    one compiled graph). In a float32 step: a loop over the sets, the exact reference."""
    if not len(counts):   # expert parallelism left this process no experts: no rows, but tied to the inputs and
        # weights all the same, so that its backward pass runs the all-to-all every other process runs
        return xs.new_zeros(0, w_down.shape[-1]) + 0 * (xs.sum() + w_gate_up.sum() + w_down.sum()).to(xs.dtype)
    if grouped is None:   # the grouped kernel wants 16-byte rows: widths in multiples of 8
        grouped = GROUPED_MM and runs_in_bf16(xs.device.type, xs, w_gate_up) and xs.shape[1] % 8 == 0 and \
            w_down.shape[1] % 8 == 0
    if grouped:
        offs = counts.cumsum(0).to(torch.int32)       # where each set's run of rows ends
        bf = torch.bfloat16                            # the kernel's one type; autocast does not reach it
        gate, up = torch._grouped_mm(xs.to(bf), w_gate_up.to(bf), offs=offs).chunk(2, dim=-1)
        return torch._grouped_mm((F.silu(gate) * up).to(bf), w_down.to(bf), offs=offs)
    outs = []
    for e, xe in enumerate(torch.split(xs, counts.tolist())):
        gate, up = (xe @ w_gate_up[e]).chunk(2, dim=-1)
        outs.append((F.silu(gate) * up) @ w_down[e])
    return torch.cat(outs)


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
        # routed experts' weights, then the shared ones' (the same draws, in the same order, as one [E, ...] tensor:
        # init_weights fills them in turn); shared experts are their own tensors so that expert parallelism can
        # split the routed ones over processes while every process keeps the shared ones
        h, E = self.hidden, self.n_routed
        self.w_gate_up = nn.Parameter(torch.randn(E, d, 2 * h) * 0.02)
        if self.n_shared:
            self.shared_w_gate_up = nn.Parameter(torch.randn(self.n_shared, d, 2 * h) * 0.02)
        self.w_down = nn.Parameter(torch.randn(E, h, d) * 0.02 / math.sqrt(2 * cfg.n_layer))
        if self.n_shared:
            self.shared_w_down = nn.Parameter(torch.randn(self.n_shared, h, d) * 0.02 / math.sqrt(2 * cfg.n_layer))
        self.router = nn.Linear(d, self.n_routed, bias=False)
        self.register_buffer("balance_bias", torch.zeros(self.n_routed))   # the auxiliary-loss-free method
        self.register_buffer("load", torch.zeros(self.n_routed), persistent=False)   # the step's, bias method
        self.expert_group = None   # expert parallelism's process group (plumbing/experts.split_experts), if split

    def _load_from_state_dict(self, state, prefix, *args):
        """Checkpoints written before the shared experts had their own tensors hold one [E, ...] tensor per
        projection, the shared experts last: split them."""
        if self.n_shared and state.get(prefix + "w_gate_up", torch.empty(0)).shape[:1] == (self.cfg.moe_experts,):
            for name in ("w_gate_up", "w_down"):
                state[prefix + name], state[prefix + "shared_" + name] = \
                    state[prefix + name].split([self.n_routed, self.n_shared])
        super()._load_from_state_dict(state, prefix, *args)

    # -- routing ----------------------------------------------------------------------------------------------
    def route(self, x):
        """(routed expert ids [T, k_routed], their weights [T, k_routed], router logits [T, n_routed]) for tokens
        x [T, d]. The router runs in fp32: its softmax decides discrete choices, which bf16 rounding would flip."""
        with torch.autocast(x.device.type, enabled=False):   # autocast would run the linear in bf16
            logits = self.router(x.float())   # a module call: FSDP2 gathers its float32 weight (parallel.shard)
        scores = logits.softmax(-1) if self.cfg.moe_score == "softmax" else logits.sigmoid()
        # the balance bias steers which experts are chosen, never how much their outputs weigh
        top = torch.topk(scores + self.balance_bias, self.k_routed, dim=-1).indices
        weights = scores.gather(-1, top)
        if self.cfg.moe_renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        return top, weights, logits

    def balance_losses(self, top, logits, real):
        """Switch/OLMoE balance loss n * sum_i f_i P_i (f_i: share of routed assignments to expert i, P_i: mean
        router probability of i), plus the router z-loss mean(logsumexp(logits)^2), and the load (counts), over
        the real tokens: padding would pile one embedding's choices onto a few experts. Weighted, not indexed:
        no host sync."""
        w, n = real.float(), real.sum().clamp(min=1)
        counts = expert_counts(top.reshape(-1), self.n_routed, w.repeat_interleave(self.k_routed))
        f = counts / (n * self.k_routed)
        P = (logits.softmax(-1) * w[:, None]).sum(0) / n
        aux = self.cfg.moe_aux_coef * self.n_routed * (f * P).sum() if self.cfg.moe_balance == "aux" else 0.0
        return aux + self.cfg.moe_z_coef * (torch.logsumexp(logits, -1).pow(2) * w).sum() / n, counts.detach()

    # -- dispatch -----------------------------------------------------------------------------------------------
    def forward(self, x, modality):
        """modality [B, S]: 1 vision, 0 text, -1 padding (model.make_ffn); a bool is_vision works too."""
        shape = x.shape
        x, modality = x.reshape(-1, shape[-1]), modality.reshape(-1)
        top, weights, logits = self.route(x)
        stats = dict(zip(("balance_loss", "load"), self.balance_losses(top, logits, modality >= 0))) \
            if self.training else {}
        flat = top.reshape(-1)
        order = torch.argsort(flat, stable=True)                    # assignments grouped by expert
        token, counts = order // self.k_routed, expert_counts(flat, self.n_routed)
        if self.expert_group is None:
            y = grouped_swiglu(x[token], self.w_gate_up, self.w_down, counts)
        else:   # this process's experts are a share of them: rows to their processes and back, in the step's dtype
            rows = x[token].to(torch.bfloat16) if runs_in_bf16(x.device.type, x) else x[token]
            y = experts.dispatch(rows, counts, lambda xs, n: grouped_swiglu(xs, self.w_gate_up.to_local(),
                                                                           self.w_down.to_local(), n),
                                 self.expert_group)
        y = y * weights.reshape(-1)[order, None].to(y.dtype)
        out = torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))
        if self.n_shared:   # every token through its shared expert, weight 1: the one, or its modality's
            which = (modality > 0).long() if self.n_shared == 2 else torch.zeros_like(modality, dtype=torch.long)
            order = torch.argsort(which, stable=True)
            y = grouped_swiglu(x[order], self.shared_w_gate_up, self.shared_w_down, expert_counts(which, self.n_shared))
            out.index_add_(0, order, y.to(x.dtype))
        return out.view(shape), stats

    def active_params(self):
        """k experts' weights and the router: with k = G, the experts alone equal a 4 d_model FFN's parameters."""
        per_expert = math.prod(self.w_gate_up.shape[1:]) + math.prod(self.w_down.shape[1:])   # shapes: no gather
        return self.k * per_expert + self.router.weight.numel()


def expert_counts(ids, n, weights=None):
    """How many assignments each of n experts got, or their summed weights (scatter_add, not bincount: no host sync
    on the GPU)."""
    ones = torch.ones_like(ids) if weights is None else weights
    return torch.zeros(n, dtype=ones.dtype, device=ids.device).scatter_add_(0, ids, ones)


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
    """Auxiliary-loss-free balancing, after each optimizer step: raise the bias of experts that got fewer than the
    mean tokens over the step (summed over every process: all keep the same biases), lower the others. The rate
    suits sigmoid scores (DeepSeek-V3: 1e-3); softmax scores average 1/E, so their step is rate / E."""
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

