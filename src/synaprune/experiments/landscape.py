"""landscape (seed 004, figure 8.2): SGD's trajectory over its landscape, escaping a saddle.

Goodfellow, Vinyals & Saxe (2015), as shown in Goodfellow, Bengio & Courville (fig. 8.2): the
cost has "a saddle point of high cost near where the parameters are initialized", and "the SGD
training trajectory escapes this saddle point readily". Here: an MLP 64-16-10 with tanh
(1,210 parameters, float64), cross-entropy on the 1347 training digits. The point theta* with
every weight and hidden bias 0 and the output bias at the log class frequencies is a critical
point (the hidden units are all 0, so no weight gets a gradient, and the output bias is
optimal); its Hessian couples the two weight matrices and has eigenvalues of both signs, which
``run_cell`` checks with Lanczos. Runs start at theta* plus PyTorch's default uniform init
scaled by ``scale`` (1e-3), and plain SGD (torch.optim.SGD, step 0.2, batch 32, a seeded
shuffle) trains for ``steps`` steps; the full-batch loss is recorded at 51 checkpoints.

The figure (``plot``) draws the first seed's trajectory projected on the two principal
directions of its iterates (:func:`synaprune.landscape.trajectory_pca`, origin at the final
point) over the loss on that plane (:func:`synaprune.landscape.slice_2d`), and every seed's loss
curve.

Decision (``summarize``): the start is next to a saddle (Lanczos finds negative and positive
eigenvalues of the Hessian at theta*) and SGD escapes: the full-batch loss ends below half of
the saddle's. The claim holds when theta* is a saddle and the 95% Wilson interval of the escape
rate is above 1/2, and fails when the interval is below 1/2 or theta* is not a saddle.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NAME = "landscape"
SEED = "004"
CLAIM = (
    "SGD started next to the high-cost saddle at zero weights escapes it readily: the training "
    "loss falls below half of the saddle's."
)

_QUICK = {"seeds": 4, "steps": 500, "grid": 15}
_FULL = {"seeds": 20, "steps": 3000, "grid": 51}  # ~20 min on one shared core
_HIDDEN = 16
_LR = 0.2
_BATCH = 32
_SCALE = 1e-3
_CHECKPOINTS = 50  # intervals between full-batch evaluations (and stored iterates)


def cells(quick: bool) -> list[dict[str, Any]]:
    """One cell per seed; ``grid`` is the slice's resolution (used by ``plot``)."""
    spec = _QUICK if quick else _FULL
    return [{"seed": s, "steps": spec["steps"], "lr": _LR, "batch": _BATCH, "scale": _SCALE,
             "hidden": _HIDDEN, "grid": spec["grid"]} for s in range(spec["seeds"])]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    from synaprune.problems import get_problem

    return get_problem("digits").data("train")


def _saddle(model: nn.Module, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """theta*: zero weights and hidden bias, output bias = log class frequencies."""
    point = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    counts = torch.bincount(labels, minlength=10).to(torch.float64)
    point["2.bias"] = (counts / counts.sum()).log()
    return point


def _train(cell: dict[str, Any]) -> tuple[nn.Module, list[dict[str, torch.Tensor]], list[int]]:
    """The model at the end, its iterates at each checkpoint, and the checkpoint steps."""
    from synaprune.problems._base import mlp

    x, y = _data()
    g = torch.Generator().manual_seed(cell["seed"])
    model = mlp([64, cell["hidden"], 10], nn.Tanh, g)  # default uniform init from g
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_saddle(model, y)[name] + cell["scale"] * p)
    opt = torch.optim.SGD(model.parameters(), lr=cell["lr"])
    steps = cell["steps"]
    marks = sorted({round(i * steps / _CHECKPOINTS) for i in range(_CHECKPOINTS + 1)})
    iterates = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    order, position = torch.randperm(x.shape[0], generator=g), 0
    for step in range(1, steps + 1):
        if position + cell["batch"] > x.shape[0]:
            order, position = torch.randperm(x.shape[0], generator=g), 0
        idx = order[position:position + cell["batch"]]
        position += cell["batch"]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step in marks:
            iterates.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return model, iterates, marks


def _full_loss(model: nn.Module, params: dict[str, torch.Tensor]) -> float:
    x, y = _data()
    with torch.no_grad():
        return float(F.cross_entropy(torch.func.functional_call(model, params, (x,)), y))


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one seed from next to theta*; the loss curve, the escape and the saddle's Hessian."""
    from synaprune.curvature import HessianOperator, lanczos
    from synaprune.landscape import trajectory_pca

    model, iterates, marks = _train(cell)
    x, y = _data()
    saddle = _saddle(model, y)
    saddle_loss = _full_loss(model, saddle)
    curve = [_full_loss(model, it) for it in iterates]
    out: dict[str, Any] = {"saddle_loss": saddle_loss, "start_loss": curve[0],
                           "final_loss": curve[-1]}
    below = [m for m, loss in zip(marks, curve, strict=True) if loss < saddle_loss / 2]
    out["escaped"] = bool(curve[-1] < saddle_loss / 2)
    out["escape_step"] = below[0] if below else math.nan
    out["status"] = "ok" if all(map(math.isfinite, curve)) else "diverged"
    # The saddle: extreme Hessian eigenvalues at theta* (the model's parameters set to it).
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(saddle[name])
    op = HessianOperator(model, F.cross_entropy, (x, y))
    eig = lanczos(op, k=1, which="both", generator=torch.Generator().manual_seed(0)).eigenvalues
    out["hessian_min"], out["hessian_max"] = float(eig[0]), float(eig[-1])
    if out["status"] == "ok":
        pca = trajectory_pca(iterates)
        out["explained_1"] = float(pca.explained_variance_ratio[0])
        out["explained_2"] = float(pca.explained_variance_ratio[1])
    for i, loss in enumerate(curve):
        out[f"loss_{i}"] = loss
        out[f"step_{i}"] = marks[i]
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Escape rate with a Wilson interval, the saddle's eigenvalues, median escape step."""
    from synaprune.bench import wilson_interval

    n = len(rows)
    escaped = sum(bool(r["escaped"]) for r in rows)
    low, high = wilson_interval(escaped, n)
    lam_min = max(r["hessian_min"] for r in rows)  # identical in every row: one theta*
    lam_max = min(r["hessian_max"] for r in rows)
    saddle = lam_min < 0 < lam_max
    steps = [r["escape_step"] for r in rows if math.isfinite(r["escape_step"])]
    finals = np.array([r["final_loss"] for r in rows])
    held = (True if saddle and low > 0.5 else False if (not saddle or high < 0.5) else None)
    explained = np.array([r.get("explained_1", math.nan) + r.get("explained_2", math.nan)
                          for r in rows])
    verdict = (
        f"Hessian at theta* has eigenvalues from {lam_min:.3g} to {lam_max:.3g} "
        f"({'a saddle' if saddle else 'not a saddle'}); {escaped}/{n} runs escaped (loss below "
        f"half the saddle's {rows[0]['saddle_loss']:.3f}; 95% Wilson interval "
        f"{low:.2f}-{high:.2f}), median escape at step "
        f"{np.median(steps) if steps else math.nan:.0f} of {rows[0]['steps']}, median final loss "
        f"{np.median(finals):.3f}; the PCA plane holds {100 * np.nanmedian(explained):.1f}% of "
        "the trajectory's variance (median)"
    )
    return {"held": held, "verdict": verdict, "escaped": escaped, "runs": n,
            "escape_low": low, "escape_high": high, "hessian_min": lam_min,
            "hessian_max": lam_max, "median_escape_step": float(np.median(steps)) if steps
            else math.nan}


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Left: seed 0's trajectory over the loss on its PCA plane; right: every loss curve.

    The trajectory is recomputed from the first row's cell (``run_cell`` is deterministic), as
    the rows hold numbers only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synaprune.landscape import draw_slice, slice_2d, trajectory_pca

    first = min(rows, key=lambda r: r["seed"])
    cell = {k: first[k] for k in ("seed", "steps", "lr", "batch", "scale", "hidden", "grid")}
    model, iterates, _ = _train(cell)
    pca = trajectory_pca(iterates)
    coords = pca.coordinates
    lo, hi = coords.min(dim=0).values, coords.max(dim=0).values
    pad = 0.25 * (hi - lo)
    alphas = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), cell["grid"],
                            dtype=torch.float64)
    betas = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), cell["grid"],
                           dtype=torch.float64)
    losses = slice_2d(model, F.cross_entropy, _data(), pca.origin, *pca.directions, alphas,
                      betas)
    # theta* projected on the plane (it lies within about `scale` of the start).
    _, y = _data()
    saddle = _saddle(model, y)
    offset = torch.cat([(saddle[n] - pca.origin[n]).reshape(-1) for n in saddle])
    point = [float(offset @ torch.cat([d[n].reshape(-1) for n in saddle]))
             for d in pca.directions]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    contours = draw_slice(ax, alphas, betas, losses, trajectory=coords)
    fig.colorbar(contours, ax=ax, label="log10 training cross-entropy")
    ax.plot(*point, "x", color="red", ms=9, mew=2, label="saddle theta* (projected)")
    ratio = pca.explained_variance_ratio
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
    ax.set_title(f"seed {cell['seed']}: SGD over the loss in its PCA plane")
    ax.legend(fontsize=7, loc="lower left")
    for row in rows:
        marks = [row[f"step_{i}"] for i in range(_CHECKPOINTS + 1) if f"step_{i}" in row]
        bx.plot(marks, [row[f"loss_{i}"] for i in range(len(marks))], color="tab:blue",
                alpha=0.4, lw=0.8)
    bx.axhline(first["saddle_loss"], color="red", ls="--", lw=1, label="loss at the saddle")
    bx.axhline(first["saddle_loss"] / 2, color="gray", ls=":", lw=1, label="half of it")
    bx.set_yscale("log")
    bx.set_xlabel("SGD step")
    bx.set_ylabel("full-batch training cross-entropy")
    bx.set_title(f"{len(rows)} seeds from next to the saddle")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
