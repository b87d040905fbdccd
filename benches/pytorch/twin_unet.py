#!/usr/bin/env python3
"""PyTorch twin of `benches/twin_unet.rs` (workload B): scorefield's NCSN U-Net
(`crates/scorefield-nn/src/unet.rs`, width 32, multipliers [1, 2, 4], 8 groups, 64 sinusoidal
features of ln σ, embedding MLP 128 wide; 789,153 parameters), written here layer for layer.

    python3 benches/pytorch/twin_unet.py --workload train --threads 2

train: multi-scale DSM (10 geometric σ from 1 to 0.01, uniform level per sample, λ = σ²), batch
64 of 1×28×28 from a pool of 8 batches of U(0, 1) pixels, Adam (lr 1e-3); default 10 steps.
sample: annealed Langevin, 10 levels × --steps (default 10) on 64 U(0, 1) images, ε = 2e-5, the
untrained network. Prints parameters, last loss (train) and mean seconds per step.

    e  = Linear(128→128)(SiLU(Linear(64→128)(sinusoidal(ln σ, 64))))
    h1 = Res(w)(conv3(x → w));  h2 = Res(2w)(conv3/2(h1));  h3 = Res(4w)(conv3/2(h2))
    u2 = Res(4w → 2w)(cat(conv3(up2(h3) → 2w), h2));  u1 = Res(2w → w)(cat(conv3(up2(u2)), h1))
    s  = conv3(SiLU(GN(u1)) → 1) / σ
    Res(h) = skip(h) + conv3(SiLU(GN(conv3(SiLU(GN(h))) + Linear(e))))
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from twin_common import parse_args, report, sample, train

SIDE, BATCH, POOL, PARAMS = 28, 64, 8, 789_153
WIDTH, MULT, GROUPS, EMBEDDING, EMBED_HIDDEN = 32, (1, 2, 4), 8, 64, 128


def conv3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=1e-5)
        self.conv1 = conv3(cin, cout)
        self.embed = nn.Linear(EMBED_HIDDEN, cout)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=1e-5)
        self.conv2 = conv3(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x))) + self.embed(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class NcsnUnet(nn.Module):
    def __init__(self):
        super().__init__()
        w1, w2, w3 = (m * WIDTH for m in MULT)
        self.embed_in = nn.Linear(EMBEDDING, EMBED_HIDDEN)
        self.embed_out = nn.Linear(EMBED_HIDDEN, EMBED_HIDDEN)
        self.conv_in = conv3(1, w1)
        self.res1 = ResBlock(w1, w1)
        self.down1 = conv3(w1, w2, 2)
        self.res2 = ResBlock(w2, w2)
        self.down2 = conv3(w2, w3, 2)
        self.res3 = ResBlock(w3, w3)
        self.up1 = conv3(w3, w2)
        self.res_up1 = ResBlock(2 * w2, w2)
        self.up2 = conv3(w2, w1)
        self.res_up2 = ResBlock(2 * w1, w1)
        self.norm_out = nn.GroupNorm(GROUPS, w1, eps=1e-5)
        self.conv_out = conv3(w1, 1)
        half = EMBEDDING // 2
        j = torch.arange(half, dtype=torch.float64)
        self.register_buffer("freqs", torch.exp(-math.log(10_000.0) * j / half).float())

    def forward(self, x, sigma):
        angles = sigma.clamp_min(1e-12).log()[:, None] * self.freqs[None, :]
        e = self.embed_out(F.silu(self.embed_in(torch.cat([angles.sin(), angles.cos()], 1))))
        h1 = self.res1(self.conv_in(x), e)
        h2 = self.res2(self.down1(h1), e)
        h3 = self.res3(self.down2(h2), e)
        u = self.up1(F.interpolate(h3, scale_factor=2, mode="nearest"))
        u = self.res_up1(torch.cat([u, h2], 1), e)
        u = self.up2(F.interpolate(u, scale_factor=2, mode="nearest"))
        u = self.res_up2(torch.cat([u, h1], 1), e)
        return self.conv_out(F.silu(self.norm_out(u))) / sigma[:, None, None, None]


def main():
    args = parse_args(__doc__, (10, 10))
    net = NcsnUnet()
    params = sum(p.numel() for p in net.parameters())
    assert params == PARAMS, f"{params} parameters, scorefield's NcsnUnet has {PARAMS}"
    if args.workload == "train":
        loss, per_step = train(net, torch.rand(POOL, BATCH, 1, SIDE, SIDE), args)
    else:
        loss, per_step = None, sample(net, lambda: torch.rand(BATCH, 1, SIDE, SIDE), args)
    report("unet", args, params, loss, per_step)


if __name__ == "__main__":
    main()
