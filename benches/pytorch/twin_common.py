"""What the PyTorch twins share: their command line, the noise levels, the DSM loss, the
annealed Langevin loop and the one-line report (see `benches/twins/common.rs`)."""

import argparse
import math
import time

import torch

# NCSN's 10 geometric levels from 1 to 0.01, largest first (scorefield's GeometricSigmas::ncsn).
SIGMAS = torch.exp(torch.linspace(math.log(1.0), math.log(0.01), 10, dtype=torch.float64)).to(
    torch.float32
)
EPS = 2e-5


def parse_args(doc, default_steps):
    """--workload train|sample, --steps, --warmup, --threads; sets torch's thread count."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--workload", choices=["train", "sample"], required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = default_steps[args.workload == "sample"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def dsm_loss(net, x):
    """Multi-scale DSM, a uniform level per sample, λ = σ²: ½‖σ·s(x + σz, σ) + z‖² per sample,
    and each sample's σ."""
    b = x.shape[0]
    sigma = SIGMAS[torch.randint(0, len(SIGMAS), (b,))]
    shape = (b,) + (1,) * (x.dim() - 1)
    z = torch.randn_like(x)
    s = net(x + sigma.view(shape) * z, sigma)
    return 0.5 * (s * sigma.view(shape) + z).square().flatten(1).sum(1), sigma


def train(net, data, args):
    """Warm-up then timed steps on the batches of `data` in turn; (last loss, s/step). A step
    is what scorefield's `Trainer::step` does: the loss, its gradient, the global gradient norm
    checked for finiteness, Adam, an EMA of the weights (0.999), and the loss, the per-sample
    losses and their levels read back to the host."""
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ema = [p.detach().clone() for p in params]
    batch = 0

    def step():
        nonlocal batch
        per_sample, sigma = dsm_loss(net, data[batch % len(data)])
        loss = per_sample.mean()
        batch += 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm {norm}")
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - 0.999)
        per_sample.detach().tolist(), sigma.tolist()
        return loss.item()

    loss = float("nan")
    for _ in range(args.warmup):
        loss = step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    return loss, (time.perf_counter() - start) / max(args.steps, 1)


@torch.no_grad()
def annealed_langevin(net, x, steps_per_level):
    """x ← x + (α_i/2)·s(x, σ_i) + √α_i·z, α_i = ε·σ_i²/σ_L², T steps per level."""
    sigma_l = SIGMAS[-1].item()
    for sigma in SIGMAS.tolist():
        alpha = EPS * sigma * sigma / (sigma_l * sigma_l)
        level = torch.full((x.shape[0],), sigma)
        for _ in range(steps_per_level):
            s = net(x, level)
            x = x + (alpha / 2) * s + math.sqrt(alpha) * torch.randn_like(x)
    return x


def sample(net, init, args):
    """An untimed sample with --warmup steps per level, then the timed one; s/step."""
    net.eval()
    if args.warmup > 0:
        annealed_langevin(net, init(), args.warmup)
    x = init()
    start = time.perf_counter()
    annealed_langevin(net, x, args.steps)
    return (time.perf_counter() - start) / (len(SIGMAS) * max(args.steps, 1))


def report(name, args, params, loss, per_step):
    loss = f" loss={loss:.6f}" if loss is not None else ""
    print(
        f"pytorch {torch.__version__} {name} {args.workload} threads={torch.get_num_threads()} "
        f"params={params} steps={args.steps}{loss} s_per_step={per_step:.6f}"
    )
