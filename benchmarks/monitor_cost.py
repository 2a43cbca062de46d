"""Cost of the TrainingMonitor's cheap set per training step, measured side by side.

MLP 784-512-512-10 with ReLU and cross-entropy, batch 128, float32, 2 threads. Each round times
``--reps`` steps of every variant in turn, in one process (so drift of the shared machine hits
all alike); the table reports each variant's median time per step and the median over rounds of
the paired ratio to its baseline in the same round. A step is zero_grad + forward + backward
(+ monitor record) + optimizer step; the monitor writes one JSONL line per step (flushed).

Variants and what they answer:

* ``SGD + monitor`` / ``SGD``: the cheap set without cancellation (target <= 1.05x);
* ``SGD + probe + monitor`` / ``SGD``: the cheap set with cancellation, which needs
  :class:`synaprune.PerExampleGradStats` (target <= 1.4x);
* ``SynaPrune rms + monitor`` / ``SynaPrune rms``: the extra cost when the optimizer already has
  the per-example statistics (target: nothing extra, 1.00x).

    .venv/bin/python benchmarks/monitor_cost.py                  # 30 rounds of 5 steps
    .venv/bin/python benchmarks/monitor_cost.py --rounds 60 --reps 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.diagnose import TrainingMonitor


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def variants(x: torch.Tensor, y: torch.Tensor, tmp: Path) -> dict[str, Callable[[int], None]]:
    """Each entry: a closure performing one full training step of its own model."""
    loss_fn = nn.functional.cross_entropy
    out: dict[str, Callable[[int], None]] = {}

    def build(name: str, *, synaprune: bool, probe: bool, monitor: bool) -> None:
        model = make_model()
        stats = PerExampleGradStats(model, reduction="mean") if probe else None
        if synaprune:
            opt: torch.optim.Optimizer = SynaPrune(model.parameters(), lr=0.01, momentum=0.9,
                                                   aggregation="rms")
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        mon = TrainingMonitor(model, tmp / f"{len(out)}.jsonl") if monitor else None

        def step(t: int) -> None:
            opt.zero_grad()
            if stats is not None and not synaprune:
                stats.zero()  # torch.optim.SGD.zero_grad does not clear grad_sumsq
            loss = loss_fn(model(x), y)
            loss.backward()
            if mon is not None:
                mon.record(t, loss)
            opt.step()

        out[name] = step

    build("SGD", synaprune=False, probe=False, monitor=False)
    build("SGD + monitor (no cancellation)", synaprune=False, probe=False, monitor=True)
    build("SGD + probe + monitor (cancellation)", synaprune=False, probe=True, monitor=True)
    build("SynaPrune rms", synaprune=True, probe=True, monitor=False)
    build("SynaPrune rms + monitor (cancellation)", synaprune=True, probe=True, monitor=True)
    return out


BASELINE = {
    "SGD": "SGD",
    "SGD + monitor (no cancellation)": "SGD",
    "SGD + probe + monitor (cancellation)": "SGD",
    "SynaPrune rms": "SGD",
    "SynaPrune rms + monitor (cancellation)": "SynaPrune rms",
}


def measure(batch: int, rounds: int, reps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Per variant: (median time per step in s, median paired ratio to its baseline)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        steps = variants(x, y, Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in steps}
        t = 0
        for r in range(warmup + rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                for i in range(reps):
                    step(t + i)
                dt = (time.perf_counter() - t0) / reps
                if r >= warmup:
                    times[name].append(dt)
            t += reps
    return {k: (statistics.median(v),
                statistics.median(a / b for a, b in zip(v, times[BASELINE[k]], strict=True)))
            for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, batch {args.batch}, "
          f"{args.rounds} rounds of {args.reps} steps after {args.warmup} warm-up rounds\n")
    print("| variant | median step (ms) | baseline | median paired ratio |")
    print("| --- | ---: | --- | ---: |")
    for name, (sec, ratio) in measure(args.batch, args.rounds, args.reps, args.warmup).items():
        print(f"| {name} | {sec * 1e3:.2f} | {BASELINE[name]} | {ratio:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
