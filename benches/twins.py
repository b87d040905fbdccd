#!/usr/bin/env python3
"""Runs every workload of the PyTorch twins against its scorefield bench, alternately, and
prints ours, PyTorch and the ratio ours/PyTorch for each thread count.

    python3 benches/twins.py                          # torch from `python3`
    python3 benches/twins.py --python /path/to/venv/bin/python --rounds 5 --threads 1 2

Builds the release bench binaries once (`cargo bench --no-run`, honouring CARGO_TARGET_DIR),
then for each workload and thread count runs ours, PyTorch, ours, PyTorch, … (`--rounds`
pairs), each a fresh process with its own untimed warm-up, and reads the in-process mean
seconds per step from each program's one-line report. It asserts both report the same
parameter count. The table shows the medians of each side and the median of the pairwise
ratios (alternating pairs keep a drifting machine from biasing the ratio), with min–max.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, bench, workload, steps, warm-up): steps are training steps, or Langevin steps per
# level (10 levels) when sampling; fewer than the programs' defaults, since the per-step time
# is what is compared.
WORKLOADS = [
    ("A-train: MLP DSM step, batch 1024", "twin_mlp", "train", 50, 5),
    ("A-sample: Langevin step, 10,000 points", "twin_mlp", "sample", 10, 1),
    ("B-train: U-Net DSM step, batch 64", "twin_unet", "train", 5, 2),
    ("B-sample: Langevin step, 64 images", "twin_unet", "sample", 2, 1),
]


def build():
    """Builds the two bench binaries and returns {name: path}."""
    out = subprocess.run(
        ["cargo", "bench", "--no-run", "--message-format=json",
         "--bench", "twin_mlp", "--bench", "twin_unet"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    binaries = {}
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            binaries[msg["target"]["name"]] = msg["executable"]
    return binaries


def run(cmd):
    """Runs one twin and returns (params, seconds per step) from its report line."""
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    line = out.strip().splitlines()[-1]
    params = int(re.search(r"params=(\d+)", line).group(1))
    per_step = float(re.search(r"s_per_step=([0-9.e+-]+)", line).group(1))
    return params, per_step


def fmt(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="python3", help="a Python with torch")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs per cell")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", help="run only the workloads whose name contains this")
    args = parser.parse_args()

    binaries = build()
    rows = []
    for name, bench, workload, steps, warmup in WORKLOADS:
        if args.only and args.only not in name:
            continue
        script = os.path.join(ROOT, "benches", "pytorch", bench + ".py")
        for threads in args.threads:
            common = ["--workload", workload, "--steps", str(steps), "--warmup", str(warmup),
                      "--threads", str(threads)]
            ours, theirs, ratios = [], [], []
            for _ in range(args.rounds):
                p_ours, s_ours = run([binaries[bench]] + common)
                p_theirs, s_theirs = run([args.python, script] + common)
                assert p_ours == p_theirs, f"{name}: {p_ours} parameters against {p_theirs}"
                ours.append(s_ours)
                theirs.append(s_theirs)
                ratios.append(s_ours / s_theirs)
            row = (name, threads, p_ours, ours, theirs, ratios)
            rows.append(row)
            print(f"{name} threads={threads}: ours {[fmt(s) for s in ours]} "
                  f"pytorch {[fmt(s) for s in theirs]}", file=sys.stderr, flush=True)

    print("| workload | threads | params | scorefield | PyTorch | ours/PyTorch (min–max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, threads, params, ours, theirs, ratios in rows:
        print(f"| {name} | {threads} | {params:,} | {fmt(statistics.median(ours))} | "
              f"{fmt(statistics.median(theirs))} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")
    # Two-thread scaling: the 1-thread median over the 2-thread median, per side.
    by = {(r[0], r[1]): r for r in rows}
    for name, *_ in WORKLOADS:
        if (name, 1) in by and (name, 2) in by:
            one, two = by[(name, 1)], by[(name, 2)]
            print(f"scaling 1→2 threads, {name}: scorefield "
                  f"{statistics.median(one[3]) / statistics.median(two[3]):.2f}×, PyTorch "
                  f"{statistics.median(one[4]) / statistics.median(two[4]):.2f}×")


if __name__ == "__main__":
    main()
