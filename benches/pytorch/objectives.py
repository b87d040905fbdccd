#!/usr/bin/env python3
"""PyTorch twin of `benches/objectives_twin.rs`: training steps of one score-matching
objective with the same network as scorefield's `ScoreMlp`, for side-by-side timing.

    python benches/pytorch/objectives.py --objective exact --dim 64 --steps 20

runs a short warm-up (`--warmup` steps, 3 by default, not counted), then `--steps` training
steps as scorefield's `Trainer::step` takes them (Adam with lr 1e-3, betas (0.9, 0.999),
eps 1e-8; the global gradient norm checked; an EMA of the weights, 0.999) on a pool of 64 batches of 64
standard-normal samples (drawn at set-up, used in turn), on the CPU with `--threads` threads
(2 by default), in f32, and prints one line: the parameter count (checked against the closed
form of `ScoreMlp`'s), the last loss and the mean in-process time per step.
`--steps 0` runs the set-up and the warm-up only: timing it gives the fixed cost (the Python
start-up and `import torch`) to subtract from a timed run.

The network (`crates/scorefield-nn/src/mlp.rs`), H = 128 hidden units, L = 3 hidden layers:

    e      = SiLU(W_e · sinusoidal(ln σ, 32) + b_e)            DSM only
    h_0    = W_0 x + b_0 (+ P_0 e)
    h_i    = W_i SiLU(h_{i-1}) + b_i (+ P_i e)                 i = 1 .. L-1
    s(x)   = (W_out SiLU(h_{L-1}) + b_out) (/ σ)               DSM only

The objectives, as PyTorch code usually writes them:

- exact:     tr J by a loop of d `autograd.grad` calls with `create_graph=True` (one row of
             the Jacobian each), then `backward` through all of them: double backward;
- sliced:    sliced SM-VR, one Rademacher v per sample, vᵀJv from one `autograd.grad` of
             vᵀs with `create_graph=True`, loss mean(vᵀJv + ½‖s‖²);
- fd_sliced: the same loss with J v ≈ [s(x + h v) − s(x − h v)]/(2h), h = 1e-3, from one
             forward pass on the 3·64 rows [x; x + h v; x − h v];
- dsm:       multi-scale denoising SM over 10 geometric σ from 1 to 0.01, a uniform level
             per sample, λ = σ²: loss mean(½‖σ s(x + σ z, σ) + z‖²).
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 64
POOL = 64  # the data: this many batches of N(0, I) samples drawn at set-up, used in turn
HIDDEN = 128
LAYERS = 3
EMBEDDING = 32
FD_STEP = 1e-3


class ScoreMlp(nn.Module):
    """scorefield's `ScoreMlp`: unconditioned, or conditioned on ln σ with the output / σ."""

    def __init__(self, dim, conditioned):
        super().__init__()
        self.input = nn.Linear(dim, HIDDEN)
        self.hidden = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(LAYERS - 1))
        self.output = nn.Linear(HIDDEN, dim)
        self.conditioned = conditioned
        if conditioned:
            self.embed = nn.Linear(EMBEDDING, HIDDEN)
            self.projections = nn.ModuleList(
                nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(LAYERS)
            )
            half = EMBEDDING // 2
            j = torch.arange(half, dtype=torch.float64)
            freqs = torch.exp(-math.log(10_000.0) * j / half).to(torch.float32)
            self.register_buffer("freqs", freqs)

    def forward(self, x, sigma=None):
        terms = []
        if self.conditioned:
            angles = sigma.clamp_min(1e-12).log()[:, None] * self.freqs[None, :]
            e = F.silu(self.embed(torch.cat([angles.sin(), angles.cos()], 1)))
            terms = [p(e) for p in self.projections]
        h = self.input(x)
        if terms:
            h = h + terms[0]
        for i, layer in enumerate(self.hidden):
            h = layer(F.silu(h))
            if terms:
                h = h + terms[i + 1]
        out = self.output(F.silu(h))
        if self.conditioned:
            out = out / sigma[:, None]
        return out


def expected_params(dim, conditioned):
    """`ScoreMlp`'s parameter count, from the layer shapes in mlp.rs."""
    h = HIDDEN
    n = (dim * h + h) + (LAYERS - 1) * (h * h + h) + (h * dim + dim)
    if conditioned:
        n += (EMBEDDING * h + h) + LAYERS * h * h
    return n


def exact_loss(net, x):
    x = x.detach().requires_grad_(True)
    s = net(x)
    trace = torch.zeros(x.shape[0])
    for i in range(x.shape[1]):
        (row,) = torch.autograd.grad(s[:, i].sum(), x, create_graph=True)
        trace = trace + row[:, i]
    return (trace + 0.5 * s.square().sum(1)).mean()


def rademacher(shape):
    return torch.randint(0, 2, shape).to(torch.float32).mul_(2.0).sub_(1.0)


def sliced_loss(net, x):
    v = rademacher(x.shape)
    x = x.detach().requires_grad_(True)
    s = net(x)
    (vj,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)  # vᵀJ per sample
    vjv = (vj * v).sum(1)
    return (vjv + 0.5 * s.square().sum(1)).mean()


def fd_sliced_loss(net, x):
    b = x.shape[0]
    v = rademacher(x.shape)
    shift = FD_STEP * v
    s_all = net(torch.cat([x, x + shift, x - shift], 0))
    s, plus, minus = s_all[:b], s_all[b : 2 * b], s_all[2 * b :]
    jv = (plus - minus) * (0.5 / FD_STEP)
    vjv = (v * jv).sum(1)
    return (vjv + 0.5 * s.square().sum(1)).mean()


SIGMAS = torch.exp(torch.linspace(math.log(1.0), math.log(0.01), 10, dtype=torch.float64)).to(
    torch.float32
)


def dsm_loss(net, x):
    b = x.shape[0]
    sigma = SIGMAS[torch.randint(0, len(SIGMAS), (b,))]
    z = torch.randn_like(x)
    s = net(x + sigma[:, None] * z, sigma)
    return (0.5 * (s * sigma[:, None] + z).square().sum(1)).mean()


LOSSES = {"exact": exact_loss, "sliced": sliced_loss, "fd_sliced": fd_sliced_loss, "dsm": dsm_loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=sorted(LOSSES), required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conditioned = args.objective == "dsm"
    net = ScoreMlp(args.dim, conditioned)
    params = sum(p.numel() for p in net.parameters())
    expected = expected_params(args.dim, conditioned)
    assert params == expected, f"{params} parameters, ScoreMlp has {expected}"
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ema = [p.detach().clone() for p in params]
    data = torch.randn(POOL, BATCH, args.dim)
    loss_fn = LOSSES[args.objective]

    batch = 0

    def step():
        nonlocal batch
        loss = loss_fn(net, data[batch % POOL])
        batch += 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # What scorefield's Trainer::step also does: the global gradient norm checked, an EMA
        # of the weights, the losses read back.
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm {norm}")
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - 0.999)
        return loss.item()

    loss = float("nan")
    for _ in range(args.warmup):
        loss = step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - start
    per_step = elapsed / args.steps * 1e3 if args.steps else float("nan")
    print(
        f"pytorch {torch.__version__} objective={args.objective} dim={args.dim} "
        f"params={params} steps={args.steps} loss={loss:.6g} step_ms={per_step:.3f}"
    )


if __name__ == "__main__":
    main()
