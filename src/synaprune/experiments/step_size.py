"""step-size (seed 001, experiment 3): the gradient norm SGD reaches after a fixed budget.

The seed's argument (Ghadimi & Lan 2013): after T steps of SGD with step eta, the expected
squared gradient norm at a random iterate is bounded by (f_0 - f*) / (eta T) + L eta sigma^2,
so once the first term is small the gradient norm left grows with the step. Here: the
``digits:hidden=32`` problem (64-32-10 ReLU, cross-entropy, 1347 training digits, seeded
init), plain SGD (torch.optim.SGD, batch 32, a seeded shuffle each epoch) for a fixed number
of steps at each step size, then the full-batch training gradient norm, averaged over the last
10% of the run (10 evaluations) to measure the level SGD hovers at rather than one iterate.
A run whose final loss is non-finite or above its initial loss is marked ``diverged`` and left
out of the decision (its numbers are kept when finite).

Decision (``summarize``): the least-squares slope of log(gradient norm) on log(step) over all
runs, with a 95% bootstrap interval over runs; the claim holds when the interval is above 0
and fails when it is below 0.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import torch

from synaprune.experiments.width_spread import bootstrap_interval

NAME = "step-size"
SEED = "001"
CLAIM = (
    "After a fixed budget of SGD steps on the digits, the full-batch gradient norm reached "
    "grows with the step size."
)

_QUICK = {"lrs": (0.01, 0.1, 0.5), "seeds": 2, "steps": 300}
# Full: 6 seeds per step size in about 20 minutes on one (shared) core.
_FULL = {"lrs": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0), "seeds": 6, "steps": 2000}
_BATCH = 32
_PROBLEM = "digits:hidden=32"
_WINDOW = 10  # evaluations of the full-batch gradient over the last 10% of the budget


def cells(quick: bool) -> list[dict[str, Any]]:
    """One cell per (step size, seed)."""
    spec = _QUICK if quick else _FULL
    return [{"lr": lr, "seed": s, "steps": spec["steps"], "batch": _BATCH}
            for lr in spec["lrs"] for s in range(spec["seeds"])]


def _full_grad_norm(problem: Any, model: torch.nn.Module) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    loss = problem.loss(model)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return math.sqrt(sum(float(g.square().sum()) for g in grads)), loss.item()


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """SGD for ``steps`` steps; the gradient norm averaged over the last 10% of the run."""
    from synaprune.problems import get_problem

    problem = get_problem(_PROBLEM)
    model = problem.build_model(seed=cell["seed"])
    x, y = problem.data("train")
    opt = torch.optim.SGD(model.parameters(), lr=cell["lr"])
    g = torch.Generator().manual_seed(10_000 + cell["seed"])
    steps, batch = cell["steps"], cell["batch"]
    # Evaluation steps: _WINDOW evenly spaced over the last 10% of the budget, the last at T.
    evaluate = {steps - round(i * 0.1 * steps / (_WINDOW - 1)) for i in range(_WINDOW)}
    norms, losses = [], []
    _, start_loss = _full_grad_norm(problem, model)
    order = torch.randperm(x.shape[0], generator=g)
    position = 0
    status = "ok"
    for step in range(1, steps + 1):
        if position + batch > x.shape[0]:
            order, position = torch.randperm(x.shape[0], generator=g), 0
        idx = order[position:position + batch]
        position += batch
        opt.zero_grad(set_to_none=True)
        loss = problem.loss(model, x[idx], y[idx])
        if not torch.isfinite(loss):
            status = "diverged"
            break
        loss.backward()
        opt.step()
        if step in evaluate:
            norm, full_loss = _full_grad_norm(problem, model)
            norms.append(norm)
            losses.append(full_loss)
    if status == "ok" and not all(math.isfinite(v) for v in norms + losses):
        status = "diverged"
    if status == "diverged":
        return {"status": status, "grad_norm": math.nan, "final_grad_norm": math.nan,
                "final_loss": math.nan, "train_accuracy": math.nan}
    if losses[-1] > start_loss:
        # Blown up but finite (e.g. every ReLU dead at a huge loss): its gradient norm says
        # nothing about the step size's noise floor, so it stays out of the slope.
        status = "diverged"
    return {"status": status, "grad_norm": float(np.mean(norms)), "final_grad_norm": norms[-1],
            "final_loss": losses[-1], "train_accuracy": problem.accuracy(model)}


def _slope(log_lr: np.ndarray, log_norm: np.ndarray) -> np.ndarray:
    """Least-squares slope, vectorised over the leading (draws) axis."""
    xc = log_lr - log_lr.mean(axis=-1, keepdims=True)
    yc = log_norm - log_norm.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(axis=-1) / (xc * xc).sum(axis=-1)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Slope of log gradient norm on log step size with a bootstrap interval; per-step medians."""
    ok = [r for r in rows if r["status"] == "ok"]
    diverged = len(rows) - len(ok)
    table = []
    for lr in sorted({r["lr"] for r in rows}):
        values = np.array([r["grad_norm"] for r in ok if r["lr"] == lr])
        n_all = sum(1 for r in rows if r["lr"] == lr)
        if values.size:
            low, high = bootstrap_interval([values], lambda a: np.median(a, axis=-1))
            median = float(np.median(values))
            loss = float(np.median([r["final_loss"] for r in ok if r["lr"] == lr]))
        else:
            low = high = median = loss = math.nan
        table.append({"lr": lr, "runs": n_all, "diverged": n_all - int(values.size),
                      "median_grad_norm": median, "low": low, "high": high,
                      "median_final_loss": loss})
    if len({r["lr"] for r in ok}) < 2:
        return {"held": None, "verdict": "fewer than two step sizes without divergence",
                "table": table}
    pairs = np.array([[math.log(r["lr"]), math.log(r["grad_norm"])] for r in ok])
    slope = float(_slope(pairs[:, 0], pairs[:, 1]))
    low, high = bootstrap_interval([pairs], lambda p: _slope(p[..., 0], p[..., 1]))
    held = True if low > 0 else False if high < 0 else None
    medians = ", ".join(f"{t['lr']:g}: {t['median_grad_norm']:.3g}" for t in table)
    verdict = (
        f"slope of log(gradient norm) on log(step) = {slope:.2f} (95% bootstrap interval "
        f"{low:.2f} to {high:.2f}, {len(ok)} runs, {diverged} diverged); median gradient norm "
        f"per step size {medians}"
    )
    return {"held": held, "verdict": verdict, "slope": slope, "slope_low": low,
            "slope_high": high, "table": table}


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Gradient norm after the budget against the step size (every run, and medians)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ok = [r for r in rows if r["status"] == "ok"]
    ax.scatter([r["lr"] for r in ok], [r["grad_norm"] for r in ok], s=10, alpha=0.5,
               label="one run (mean over the last 10%)")
    t = [r for r in summary["table"] if math.isfinite(r["median_grad_norm"])]
    med = np.array([r["median_grad_norm"] for r in t])
    err = np.array([med - [r["low"] for r in t], [r["high"] for r in t] - med])
    ax.errorbar([r["lr"] for r in t], med, yerr=err, color="k", marker="o", capsize=3,
                label="median, 95% bootstrap")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step size")
    ax.set_ylabel("full-batch gradient norm")
    ax.set_title(f"after {rows[0]['steps']} steps, batch {rows[0]['batch']}")
    ax.legend(fontsize=8)
    bx.scatter([r["lr"] for r in ok], [r["final_loss"] for r in ok], s=10, alpha=0.5)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("SGD step size")
    bx.set_ylabel("final training loss")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
