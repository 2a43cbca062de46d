"""gradient-growth (seed 004, figure 8.1): the gradient norm grows while validation error falls.

Goodfellow, Bengio & Courville (ch. 8.2.1): training "often does not arrive at a critical point
of any kind": in their figure the norm of the minibatch gradients grows throughout a successful
training run. Here: a small convolutional net on scikit-learn's 8x8 digits (conv 3x3 1->8, ReLU,
max-pool 2, conv 3x3 8->16, ReLU, max-pool 2, linear 64->10; float64, PyTorch's default
uniform init from a seeded generator), cross-entropy, plain SGD (torch.optim.SGD, step 0.1),
batch 32, a seeded shuffle each epoch, on the fixed 75/25 split of ``digits`` (1347 training,
450 validation images). Each training batch is shifted by a random -1..1 pixels in each
direction (zero fill): as in the book's large-data setting, the network cannot fit its training
distribution exactly, so the run does not end at a point where every example is fitted and the
gradient vanishes (without it, the loss on these 1347 images goes to 0 and so does the
gradient). Recorded per epoch: the mean norm of the minibatch gradients of that epoch (the
book's running average) and the validation classification error.

Decision (``summarize``, over seeds): the claim holds when the mean gradient norm of the last
epoch over that of the first has a 95% bootstrap interval above 1 and the validation error of
the last epoch is below the first's (bootstrap interval of the drop above 0); it fails when
either interval lies on the other side.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synaprune.experiments.width_spread import bootstrap_interval

NAME = "gradient-growth"
SEED = "004"
CLAIM = (
    "During a successful SGD run of a convolutional net on the digits, the minibatch gradient "
    "norm grows from the first epoch to the last while the validation error falls."
)

_QUICK = {"seeds": 2, "epochs": 4}
_FULL = {"seeds": 16, "epochs": 40}
_BATCH = 32
_LR = 0.1
_MOMENTUM = 0.0
_SHIFT = 1  # pixels of random translation of each training batch


def cells(quick: bool) -> list[dict[str, Any]]:
    """One cell per seed."""
    spec = _QUICK if quick else _FULL
    return [{"seed": s, "epochs": spec["epochs"], "lr": _LR, "momentum": _MOMENTUM,
             "batch": _BATCH, "shift": _SHIFT} for s in range(spec["seeds"])]


def _conv_net(generator: torch.Generator) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    ).to(torch.float64)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Conv2d | nn.Linear):
                # PyTorch's default for both: uniform on +-1/sqrt(fan_in), weight and bias.
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)
    return model


def _split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from synaprune.problems import get_problem

    x, y = get_problem("digits").data(name)
    return x.reshape(-1, 1, 8, 8), y


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one seed; fields grad_norm_e, val_error_e, train_loss_e for each epoch e."""
    g = torch.Generator().manual_seed(cell["seed"])
    model = _conv_net(g)
    x, y = _split("train")
    x_val, y_val = _split("test")
    opt = torch.optim.SGD(model.parameters(), lr=cell["lr"], momentum=cell["momentum"])
    out: dict[str, Any] = {"status": "ok"}
    shift = cell["shift"]
    for epoch in range(cell["epochs"]):
        order = torch.randperm(x.shape[0], generator=g)
        norms, losses = [], []
        for start in range(0, x.shape[0] - cell["batch"] + 1, cell["batch"]):
            idx = order[start:start + cell["batch"]]
            batch = x[idx]
            if shift:
                padded = F.pad(batch, (shift,) * 4)
                i, j = torch.randint(0, 2 * shift + 1, (2,), generator=g).tolist()
                batch = padded[:, :, i:i + 8, j:j + 8]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(batch), y[idx])
            loss.backward()
            norms.append(math.sqrt(sum(float(p.grad.square().sum())
                                       for p in model.parameters())))
            losses.append(loss.item())
            opt.step()
        with torch.no_grad():
            error = float((model(x_val).argmax(dim=1) != y_val).to(torch.float64).mean())
        out[f"grad_norm_{epoch}"] = float(np.mean(norms))
        out[f"train_loss_{epoch}"] = float(np.mean(losses))
        out[f"val_error_{epoch}"] = error
        if not all(map(math.isfinite, norms + losses)):
            out["status"] = "diverged"
    return out


def _curves(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    epochs = rows[0]["epochs"]
    return np.array([[r[f"{key}_{e}"] for e in range(epochs)] for r in rows])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth of the gradient norm and fall of the validation error, first epoch to last."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return {"held": None, "verdict": "every run diverged"}
    norms, errors = _curves(ok, "grad_norm"), _curves(ok, "val_error")
    growth = norms[:, -1] / norms[:, 0]
    drop = errors[:, 0] - errors[:, -1]
    g_low, g_high = bootstrap_interval([growth], lambda a: a.mean(axis=-1))
    d_low, d_high = bootstrap_interval([drop], lambda a: a.mean(axis=-1), seed=1)
    mean_curve = norms.mean(axis=0)
    peak = mean_curve.argmax()
    held = (True if g_low > 1 and d_low > 0
            else False if g_high < 1 or d_high < 0 else None)
    verdict = (
        f"gradient norm last/first epoch = {growth.mean():.2f} (95% bootstrap interval "
        f"{g_low:.2f}-{g_high:.2f}, {len(ok)} seeds, mean curve peaks at epoch {peak + 1} of "
        f"{norms.shape[1]} at {mean_curve[peak] / mean_curve[0]:.2f}x the first, ends at "
        f"{mean_curve[-1] / mean_curve[peak]:.2f}x the peak); validation error "
        f"{100 * errors[:, 0].mean():.1f}% -> "
        f"{100 * errors[:, -1].mean():.1f}% (drop {100 * drop.mean():.1f} points, interval "
        f"{100 * d_low:.1f}-{100 * d_high:.1f})"
    )
    return {"held": held, "verdict": verdict, "growth": float(growth.mean()),
            "growth_low": g_low, "growth_high": g_high,
            "final_val_error": float(errors[:, -1].mean()), "peak_epoch": int(peak + 1),
            "diverged": len(rows) - len(ok)}


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Left: per-epoch gradient norms of every seed and their mean; right: validation error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    norms, errors = _curves(ok, "grad_norm"), _curves(ok, "val_error")
    epochs = np.arange(1, norms.shape[1] + 1)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for row in norms:
        ax.scatter(epochs, row, s=5, color="tab:blue", alpha=0.35)
    ax.plot(epochs, norms.mean(axis=0), color="k", lw=2, label="mean over seeds")
    ax.set_xlabel("epoch")
    ax.set_ylabel("minibatch gradient norm (epoch mean)")
    ax.set_title("gradient norm")
    ax.legend(fontsize=8)
    for row in errors:
        bx.plot(epochs, 100 * row, color="tab:orange", alpha=0.3, lw=0.8)
    bx.plot(epochs, 100 * errors.mean(axis=0), color="k", lw=2)
    bx.set_xlabel("epoch")
    bx.set_ylabel("validation error (%)")
    bx.set_yscale("log")
    bx.set_title("validation classification error")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
