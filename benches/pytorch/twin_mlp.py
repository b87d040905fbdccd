#!/usr/bin/env python3
"""PyTorch twin of `benches/twin_mlp.rs` (workload A): the 2-D MLP [x, ln σ] → 3×256 SiLU → 2,
output/σ, 133,122 parameters.

    python3 benches/pytorch/twin_mlp.py --workload train --threads 2

train: multi-scale DSM (10 geometric σ from 1 to 0.01, uniform level per sample, λ = σ²), batch
1024 from a pool of 16 batches of N(0, I) points, Adam (lr 1e-3); default 200 steps.
sample: annealed Langevin, 10 levels × --steps (default 100) on 10,000 N(0, I) points, ε = 2e-5,
the untrained network. Prints parameters, last loss (train) and mean seconds per step.
"""

import torch
from torch import nn

from twin_common import parse_args, report, sample, train

DIM, HIDDEN, LAYERS, BATCH, POOL, POINTS = 2, 256, 3, 1024, 16, 10_000


class Mlp(nn.Module):
    """[x, ln σ] → Linear → (SiLU → Linear) × L → d, divided by σ."""

    def __init__(self):
        super().__init__()
        layers = [nn.Linear(DIM + 1, HIDDEN)]
        for _ in range(LAYERS - 1):
            layers += [nn.SiLU(), nn.Linear(HIDDEN, HIDDEN)]
        layers += [nn.SiLU(), nn.Linear(HIDDEN, DIM)]
        self.net = nn.Sequential(*layers)

    def forward(self, x, sigma):
        c = sigma.clamp_min(1e-12).log()[:, None]
        return self.net(torch.cat([x, c], 1)) / sigma[:, None]


def expected_params():
    d, h = DIM, HIDDEN
    return (d + 1) * h + h + (LAYERS - 1) * (h * h + h) + h * d + d


def main():
    args = parse_args(__doc__, (200, 100))
    net = Mlp()
    params = sum(p.numel() for p in net.parameters())
    assert params == expected_params(), f"{params} parameters, ScoreMlp has {expected_params()}"
    if args.workload == "train":
        loss, per_step = train(net, torch.randn(POOL, BATCH, DIM), args)
    else:
        loss, per_step = None, sample(net, lambda: torch.randn(POINTS, DIM), args)
    report("mlp", args, params, loss, per_step)


if __name__ == "__main__":
    main()
