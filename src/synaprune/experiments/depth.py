"""``synaprune experiment depth``: the objective against the number of added layers.

Seed 003 ("Extra Layers for Error Correction"): a first layer of ``width`` ReLU neurons from
:func:`synaprune.init.pretrain`, then layers of ``width`` ReLU neurons plus a linear carry unit
holding the previous fit (:func:`synaprune.init.add_layers`), with the seed's 100 random
perturbations after each added neuron, with and without connecting every layer to the input.
The seed's problem and sizes: y = sin(3 x0) sin(3 x1), N = 100 points, 10 data sets (here 6, so
that the full run takes about 20 minutes on one shared core); 200 layers of 1 neuron, 20 of 5
(here 40, so that both widths reach 200 neurons).

The objective is the training MSE (seed 003 plots the sum, N times it). A cell records it after
each layer in ``layer_grid(width, quick)``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from synaprune.experiments._seed003 import curve_band, figure, fmt, paired_fraction, seed_data
from synaprune.init import add_layers, pretrain

NAME = "depth"
SEED = "003"
CLAIM = ("Adding layers of n ReLU neurons plus a linear pass-through neuron never raises the "
         "objective and lowers it steadily; 5 neurons per layer lower it faster than 1, and "
         "connecting every layer to the input lowers it much faster.")
VERSION = "1"

_PERTURBATIONS = {True: 10, False: 100}  # per added neuron (the seed: 100)
_POINTS = {True: 50, False: 100}
_SEEDS = {True: 1, False: 6}
_LAYERS = {(1, True): 10, (5, True): 4, (1, False): 200, (5, False): 40}


def layer_grid(last: int) -> list[int]:
    """Layer counts at which a cell with ``last`` layers records the objective."""
    return sorted({*range(1, min(last, 20) + 1), *range(20, last + 1, 10), last})


def cells(quick: bool) -> list[dict[str, Any]]:
    return [{"width": w, "connect_input": c, "layers": _LAYERS[(w, quick)],
             "N": _POINTS[quick], "perturbations": _PERTURBATIONS[quick], "seed": s}
            for w, c, s in itertools.product((1, 5), (False, True), range(_SEEDS[quick]))]


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    x, y = seed_data(cell["N"], cell["seed"])
    width, tries = cell["width"], cell["perturbations"]
    result = pretrain(x, y, neurons=width, activation="relu", perturbations=tries,
                      seed=20_000 + cell["seed"])
    result = add_layers(result, x, y, layers=cell["layers"] - 1, width=width,
                        connect_input=cell["connect_input"], perturbations=tries,
                        seed=30_000 + cell["seed"])
    after_layer: dict[int, float] = {}
    for layers, obj in zip(result.layers, result.objectives, strict=True):
        after_layer[layers] = obj  # the last entry of each layer: its final objective
    monotone = all(b <= a for a, b in itertools.pairwise(result.objectives))
    return {
        **{f"obj_layer_{k:03d}": after_layer[k] for k in layer_grid(cell["layers"])},
        "initial": result.objectives[0],
        "final": result.objective,
        "monotone": monotone,
        "rejected": result.rejected,
        "unfilled": result.unfilled,
        "neurons": sum(result.module.widths),
        "perturbations_accepted": result.perturbations_accepted,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    monotone = all(r["monotone"] for r in rows)
    first = {id(r): r["obj_layer_001"] for r in rows}
    steady = all(r["final"] < first[id(r)] for r in rows)
    common = min(r["layers"] for r in rows if r["width"] == 5)
    key = f"obj_layer_{common:03d}"

    def pick(width: int, connect: bool) -> dict[int, dict[str, Any]]:
        return {r["seed"]: r for r in rows if r["width"] == width and r["connect_input"] == connect}

    wider = [(pick(5, c)[s][key], pick(1, c)[s][key]) for c in (False, True)
             for s in pick(5, c) if s in pick(1, c)]
    w_wins, w_n, w_lo, w_hi = paired_fraction(wider)
    connected = {w: paired_fraction([(pick(w, True)[s]["final"], pick(w, False)[s]["final"])
                                     for s in pick(w, True) if s in pick(w, False)])
                 for w in (1, 5)}
    c5 = connected[5]
    decided = w_n >= 5 and c5[1] >= 5
    held = (monotone and steady and w_lo > 0.5 and c5[2] > 0.5) if decided else (
        False if not (monotone and steady) else None)

    def median(width: int, connect: bool, field: str) -> float:
        values = sorted(r[field] for r in pick(width, connect).values())
        return values[len(values) // 2]

    medians = ", ".join(
        f"width {w}{' + input' if c else ''}: {fmt(median(w, c, 'obj_layer_001'))} -> "
        f"{fmt(median(w, c, key))} at {common} layers -> {fmt(median(w, c, 'final'))}"
        for w in (1, 5) for c in (False, True))
    verdict = (
        f"objective never rose on any step of {len(rows)} runs ({'yes' if monotone else 'NO'}); "
        f"final below the first layer's on every run ({'yes' if steady else 'NO'}); median "
        f"objective {medians}; 5 neurons per layer beat 1 at {common} layers on {w_wins}/{w_n} "
        f"paired runs (95 % Wilson {w_lo:.2f}-{w_hi:.2f}); connecting to the input beat not "
        f"connecting at the last layer on {c5[0]}/{c5[1]} seeds with 5 neurons "
        f"({c5[2]:.2f}-{c5[3]:.2f}) and {connected[1][0]}/{connected[1][1]} with 1 "
        f"({connected[1][2]:.2f}-{connected[1][3]:.2f})"
    )
    return {"held": held, "verdict": verdict, "monotone": monotone, "steady": steady,
            "wider_wins": w_wins, "wider_pairs": w_n, "connected_wins_width5": c5[0],
            "connected_pairs_width5": c5[1]}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = figure(2)
    for ax, width in zip(axes, (1, 5), strict=True):
        group = [r for r in rows if r["width"] == width]
        if not group:
            continue
        grid = layer_grid(min(r["layers"] for r in group))
        for connect, color in ((False, "C0"), (True, "C3")):
            curves = [[r[f"obj_layer_{k:03d}"] for k in grid] for r in group
                      if r["connect_input"] == connect]
            label = "every layer reads the input" if connect else "no input connection"
            curve_band(ax, grid, curves, label, color)
        ax.set_title(f"{width} ReLU neuron{'s' if width > 1 else ''} + 1 linear carry per "
                     f"layer, N = {group[0]['N']}, {group[0]['perturbations']} perturbations",
                     fontsize=9)
        ax.set_xlabel("layers")
        ax.set_ylabel("objective (training MSE)")
        ax.legend(fontsize=8)
    fig.suptitle("seed 003: extra layers for error correction (median, band: interquartile)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
