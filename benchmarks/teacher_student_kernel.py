"""Cost of the seed-batched teacher-student gradient, four ways: autograd through the
kernel's [k, n, d] orthogonal component (the first formula), autograd through
:func:`synaprune.problems.relu_kernel` (that component's value outside autograd: the formula
before the closed-form gradient), the closed-form gradient of ``_PopulationLoss`` under
``vmap`` over the students, and the same closed form called once on the stacked [S, k, d]
students (what the runner does now, through ``Problem.stacked_loss``).

Exact command (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/teacher_student_kernel.py --k 8 12 16 --seeds 256

For each k, the seed-batched runner's step is timed: the loss of ``--seeds`` stacked students
(by ``vmap``, or stacked), summed, and one ``backward`` (what
:func:`synaprune.bench.run_seeds` does each step). The four are alternated in each of
``--rounds`` rounds in this one process; ratios are medians over rounds. Their gradients are
compared too. (``torch.func.grad`` always records the graph of its backward, so under it the
closed form takes its second-order path, with the accurate S^2; the runner's step does not.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from synaprune.problems._teacher_student import _population_loss, population_loss, relu_kernel


def reference_kernel(w: Tensor, v: Tensor) -> Tensor:
    """The kernel with autograd through the [k, n, d] orthogonal component (the old formula)."""
    dot = w @ v.T
    w_sq, v_sq = w.square().sum(1), v.square().sum(1)
    safe = torch.where(w_sq > 0, w_sq, torch.ones_like(w_sq))
    v_perp = v[None] - (dot / safe[:, None])[:, :, None] * w[:, None, :]
    s_sq = w_sq[:, None] * v_perp.square().sum(2)
    generic = s_sq > 1e-16 * w_sq[:, None] * v_sq[None, :]
    s = torch.where(generic, torch.sqrt(torch.where(generic, s_sq, torch.ones_like(s_sq))), 0.0)
    angle = torch.atan2(s, torch.where(~generic & (dot == 0), torch.ones_like(dot), dot))
    return (s + (math.pi - angle) * dot) / (2 * math.pi)


def main() -> None:
    """Print a Markdown table: k, ms per batched gradient (reference, now), ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10, help="gradients timed per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.seeds} seeds, float64")
    print()
    print("| k | orthogonal component (ms) | relu_kernel (ms) | closed form, vmap (ms) | "
          "closed form, stacked (ms) | vmap closed form vs relu_kernel | stacked vs vmap | "
          "stacked vs orthogonal | max gradient difference |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in args.k:
        print(_row(k, args.seeds, args.rounds, args.reps))


def _row(k: int, seeds: int, rounds: int, reps: int) -> str:
    """One table row: both gradients of ``seeds`` students at width k, alternated."""
    w = torch.randn(seeds, k, k, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64) / math.sqrt(k)
    ones, teacher = torch.ones(k, dtype=torch.float64), torch.eye(k, dtype=torch.float64)
    teacher_term = ones @ relu_kernel(teacher, teacher) @ ones

    def reference(x: Tensor) -> Tensor:
        student = ones @ reference_kernel(x, x) @ ones
        cross = ones @ reference_kernel(x, teacher) @ ones
        return 0.5 * (student - 2.0 * cross + teacher_term)

    def autograd_kernel(x: Tensor) -> Tensor:
        return _population_loss(x, ones, k, ones, teacher_term)

    def closed_form(x: Tensor) -> Tensor:
        return population_loss(x, ones, k, ones, teacher_term)

    def runner_step(loss: Callable[[Tensor], Tensor], stacked: bool = False
                    ) -> Callable[[], Tensor]:
        leaf = w.clone().requires_grad_(True)
        losses = loss if stacked else vmap(loss)

        def step() -> Tensor:
            leaf.grad = None
            losses(leaf).sum().backward()
            return leaf.grad
        return step

    steps = {"orthogonal": runner_step(reference), "relu_kernel": runner_step(autograd_kernel),
             "closed": runner_step(closed_form), "stacked": runner_step(closed_form, True)}
    grads = {name: f().clone() for name, f in steps.items()}
    diff = max((g - grads["orthogonal"]).abs().max().item() for g in grads.values())
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, f in steps.items():
            start = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - start) / reps)

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(o / n for o, n in zip(times[slow], times[fast], strict=True))

    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return (f"| {k} | {ms['orthogonal']:.1f} | {ms['relu_kernel']:.1f} | {ms['closed']:.1f} | "
            f"{ms['stacked']:.1f} | {ratio('relu_kernel', 'closed'):.2f}x | "
            f"{ratio('closed', 'stacked'):.2f}x | {ratio('orthogonal', 'stacked'):.2f}x | "
            f"{diff:.1e} |")


if __name__ == "__main__":
    main()
