"""The main job, ``make demo``: plain gradient descent against SynaPrune where GD gets stuck.

XOR with a 2-2-1 sigmoid network and MSE, full batch. Two starts:

* random initialisations, uniform in [-1, 1]: a known share of them end on a plateau or in a bad
  stationary point under plain GD;
* the *symmetric* start, both hidden units identical: gradient descent keeps them identical
  forever, so the net is a 2-1-1 net that cannot fit XOR (stuck at loss ~0.167), however long it
  trains. The batch gradient cancels exactly in the direction that would split the units.

Every method trains the same starts for the same number of steps; success means the final loss
is below 0.01 (all four points on the right side of 0.5 with margin).

    synaprune demo --steps 2000 --seeds 8
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from synaprune._io import atomic_output
from synaprune.optim import ActivationGradientPenalty, SynaPrune
from synaprune.probes import PerExampleGradStats

SUCCESS = 0.01
X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)


@dataclass(frozen=True)
class Method:
    name: str
    options: dict  # SynaPrune keyword options
    beta: float = 0.0  # activation-gradient penalty weight (mechanism C); 0 is off
    gamma: float = 0.0  # weight stabiliser


LR = 1.0
METHODS = [
    Method("sgd (momentum 0.9)", dict(momentum=0.9)),
    Method("synaprune-a (blend)", dict(momentum=0.9, aggregation="blend", blend=0.5,
                                       blend_schedule="linear")),
    Method("synaprune-b (noise)", dict(momentum=0.9, noise=0.05, noise_schedule="exponential",
                                       noise_decay=0.998)),
    Method("synaprune-c (penalty)", dict(momentum=0.9), beta=1e-3, gamma=1.0),
    Method("synaprune (a+b+c)", dict(momentum=0.9, aggregation="blend", blend=0.5,
                                     blend_schedule="linear", noise=0.05,
                                     noise_schedule="exponential", noise_decay=0.998),
           beta=1e-3, gamma=1.0),
]


def make_net(seed: int, symmetric: bool) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1)
        if symmetric:
            net[0].weight[1] = net[0].weight[0]
            net[0].bias[1] = net[0].bias[0]
            net[2].weight[0, 1] = net[2].weight[0, 0]
    return net


def train(method: Method, net: nn.Module, steps: int, seed: int) -> list[float]:
    """Train one start; return the loss curve (one value per step)."""
    stats = PerExampleGradStats(net) if method.options.get("aggregation", "mean") != "mean" \
        else None
    penalty = (ActivationGradientPenalty(net, beta=method.beta, gamma=method.gamma)
               if method.beta > 0 else None)
    blend_steps = {"blend_steps": steps // 2} if "blend_schedule" in method.options else {}
    opt = SynaPrune(net.parameters(), lr=LR, seed=seed, **method.options, **blend_steps)
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(X), Y)
        (penalty(loss) if penalty else loss).backward()
        opt.step()
        value = loss.item()
        curve.append(value)
        if not math.isfinite(value):
            break
    for hook_owner in (stats, penalty):
        if hook_owner is not None:
            hook_owner.remove()
    return curve


def run_demo(*, steps: int = 2000, seeds: int = 8, plot: str = "out/demo.png",
             progress: bool = True) -> dict[str, dict[str, list[list[float]]]]:
    """Train every method from the same starts; print a table; save loss curves as a PNG."""
    torch.set_num_threads(1)
    starts: dict[str, Callable[[int], nn.Module]] = {
        "random start": lambda s: make_net(s, symmetric=False),
        "symmetric start": lambda s: make_net(s, symmetric=True),
    }
    curves: dict[str, dict[str, list[list[float]]]] = {}
    total = len(starts) * len(METHODS) * seeds
    bar = tqdm(total=total, desc="training", unit="run", disable=not progress)
    t0 = time.perf_counter()
    for start_name, make in starts.items():
        curves[start_name] = {}
        for method in METHODS:
            runs = []
            for s in range(seeds):
                runs.append(train(method, make(s), steps, seed=s))
                bar.update()
            curves[start_name][method.name] = runs
    bar.close()

    print(f"\nXOR, 2-2-1 sigmoid net, MSE, full batch, lr {LR}, {steps} steps, {seeds} starts "
          f"each ({time.perf_counter() - t0:.0f} s)")
    print(f"success: final loss < {SUCCESS}\n")
    for start_name, by_method in curves.items():
        print(f"{start_name}:")
        print(f"  {'method':<24} {'loss at step 0':>15} {'median final':>13} {'worst final':>12}"
              f" {'success':>8}")
        for name, runs in by_method.items():
            finals = sorted(r[-1] if math.isfinite(r[-1]) else math.inf for r in runs)
            ok = sum(f < SUCCESS for f in finals)
            print(f"  {name:<24} {runs[0][0]:>15.4f} {finals[len(finals) // 2]:>13.2e} "
                  f"{finals[-1]:>12.2e} {ok:>5}/{len(runs)}")
        print()
    print("On the symmetric start only weight noise (B) can split the two hidden units: the\n"
          "aggregation (A) and the penalty (C) act on both units alike, so they keep the symmetry\n"
          "that traps gradient descent.\n"
          f"With {seeds} starts per row, a difference of a run or two is noise: `synaprune bench` "
          "counts\nhundreds of seeds with confidence intervals (docs/results.md).")
    if plot:
        _plot(curves, Path(plot))
        print(f"loss curves: {plot}")
    return curves


def _plot(curves: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (start_name, by_method) in zip(axes[0], curves.items(), strict=True):
        for i, (name, runs) in enumerate(by_method.items()):
            color = f"C{i}"
            for j, r in enumerate(runs):
                ax.plot(r, color=color, alpha=0.5, lw=0.8, label=name if j == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE")
        ax.axhline(SUCCESS, color="k", ls=":", lw=0.8)
        ax.set_title(f"XOR 2-2-1, {start_name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
