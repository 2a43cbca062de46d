"""Cost of the TrainingMonitor's cheap set per training step, measured side by side.

MLP 784-512-512-10 with ReLU and cross-entropy, batch 128, float32, 2 threads. Each round times
``--reps`` steps of every variant in turn, in one process (so drift of the shared machine hits
all alike); the table reports each variant's median time per step and the median over rounds of
the paired ratio to its baseline in the same round. A step is zero_grad + forward + backward
(+ monitor record) + optimizer step; the monitor writes one JSONL line per step (flushed).

Variants and what they answer (rows marked (1)-(3) are the issue's targets):

* (1) ``SGD + monitor (no cancellation)`` / ``SGD``: the cheap set without cancellation
  (target <= 1.05x);
* (2) ``SGD + monitor (cancellation=True)`` / ``SGD``: the cheap set with cancellation, from the
  norm-only probe the monitor attaches itself (target <= 1.4x);
* ``SGD + PerExampleGradStats + monitor`` / ``SGD``: cancellation from a full
  :class:`synaprune.PerExampleGradStats` (``grad_sumsq``), the way before the norm-only probe;
* ``SynaPrune rms`` / ``SGD``: the optimizer with its default probe (``quantities=("sumsq",)``);
* (3) ``SynaPrune rms + monitor`` / ``SynaPrune rms``: the extra cost when the optimizer already
  has the per-example statistics (target: nothing extra beyond the cheap set itself, row (1));
  the monitor sums ``grad_sumsq`` (one pass); ``cancelled_share`` is taken on scheduled steps
  only (none here);
* ``SynaPrune rms + monitor (cancellation=False)`` / ``SynaPrune rms``: the same monitor without
  ``cancellation``; the gap to (3) is what cancellation costs;
* ``SynaPrune rms, probe sumsq + sqnorm`` / ``SynaPrune rms``: the cost of having the probe
  produce ``grad_sqnorm_sum`` inside its closed form;
* ``SynaPrune rms, probe sumsq + sqnorm, + monitor`` / the row before: (3) when the monitor can
  reuse ``grad_sqnorm_sum`` instead of summing ``grad_sumsq``.

    .venv/bin/python benchmarks/monitor_cost.py                  # 30 rounds of 5 steps
    .venv/bin/python benchmarks/monitor_cost.py --rounds 60 --reps 10
    .venv/bin/python benchmarks/monitor_cost.py --threads 1 --phases   # where the time goes

``--phases`` times each phase of every step instead (zero_grad, forward, backward, record,
optimizer step; median over rounds x reps steps, in ms), to show where a variant's extra goes.
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


PHASES = ("zero_grad", "forward", "backward", "record", "step")
Step = Callable[[int, "list[float] | None"], None]


def variants(x: torch.Tensor, y: torch.Tensor, tmp: Path) -> dict[str, Step]:
    """Each entry: a closure performing one full training step of its own model; given a list,
    it appends the time before each phase and after the last (len(PHASES) + 1 marks)."""
    loss_fn = nn.functional.cross_entropy
    out: dict[str, Step] = {}

    def build(name: str, *, synaprune: bool, probe: tuple[str, ...] | None, monitor: bool,
              cancellation: bool | None = None) -> None:
        model = make_model()
        stats = (PerExampleGradStats(model, reduction="mean", quantities=probe)  # type: ignore[arg-type]
                 if probe else None)
        if synaprune:
            opt: torch.optim.Optimizer = SynaPrune(model.parameters(), lr=0.01, momentum=0.9,
                                                   aggregation="rms")
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        mon = (TrainingMonitor(model, tmp / f"{len(out)}.jsonl", cancellation=cancellation)
               if monitor else None)

        def step(t: int, marks: list[float] | None = None) -> None:
            clock = time.perf_counter if marks is not None else None
            if clock:
                marks.append(clock())  # type: ignore[union-attr]
            opt.zero_grad()
            if stats is not None and not synaprune:
                stats.zero()  # torch.optim.SGD.zero_grad does not clear grad_sumsq
            if clock:
                marks.append(clock())  # type: ignore[union-attr]
            loss = loss_fn(model(x), y)
            if clock:
                marks.append(clock())  # type: ignore[union-attr]
            loss.backward()
            if clock:
                marks.append(clock())  # type: ignore[union-attr]
            if mon is not None:
                mon.record(t, loss)
            if clock:
                marks.append(clock())  # type: ignore[union-attr]
            opt.step()
            if clock:
                marks.append(clock())  # type: ignore[union-attr]

        out[name] = step

    both, sumsq = ("sumsq", "sqnorm"), ("sumsq",)
    build("SGD", synaprune=False, probe=None, monitor=False)
    build(NO_CANCEL, synaprune=False, probe=None, monitor=True)
    build(OWN_PROBE, synaprune=False, probe=None, monitor=True, cancellation=True)
    build(FULL_PROBE, synaprune=False, probe=sumsq, monitor=True)
    build(RMS, synaprune=True, probe=sumsq, monitor=False)
    build(RMS_MON, synaprune=True, probe=sumsq, monitor=True, cancellation=True)
    build(RMS_MON_OFF, synaprune=True, probe=sumsq, monitor=True, cancellation=False)
    build(RMS_SQ, synaprune=True, probe=both, monitor=False)
    build(RMS_SQ_MON, synaprune=True, probe=both, monitor=True, cancellation=True)
    return out


NO_CANCEL = "(1) SGD + monitor (no cancellation)"
OWN_PROBE = "(2) SGD + monitor (cancellation=True)"
FULL_PROBE = "SGD + PerExampleGradStats + monitor"
RMS = "SynaPrune rms"
RMS_MON = "(3) SynaPrune rms + monitor"
RMS_MON_OFF = "SynaPrune rms + monitor (cancellation=False)"
RMS_SQ = "SynaPrune rms, probe sumsq + sqnorm"
RMS_SQ_MON = "SynaPrune rms, probe sumsq + sqnorm, + monitor"
BASELINE = {
    "SGD": "SGD",
    NO_CANCEL: "SGD",
    OWN_PROBE: "SGD",
    FULL_PROBE: "SGD",
    RMS: "SGD",
    RMS_MON: RMS,
    RMS_MON_OFF: RMS,
    RMS_SQ: RMS,
    RMS_SQ_MON: RMS_SQ,
}


def _data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)


def measure(batch: int, rounds: int, reps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Per variant: (median time per step in s, median paired ratio to its baseline)."""
    x, y = _data(batch)
    with tempfile.TemporaryDirectory() as tmp:
        steps = variants(x, y, Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in steps}
        t = 0
        for r in range(warmup + rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                for i in range(reps):
                    step(t + i, None)
                dt = (time.perf_counter() - t0) / reps
                if r >= warmup:
                    times[name].append(dt)
            t += reps
    return {k: (statistics.median(v),
                statistics.median(a / b for a, b in zip(v, times[BASELINE[k]], strict=True)))
            for k, v in times.items()}


def measure_phases(batch: int, rounds: int, reps: int, warmup: int
                   ) -> dict[str, list[float]]:
    """Per variant: the median time of each of PHASES in s, over rounds x reps steps."""
    x, y = _data(batch)
    with tempfile.TemporaryDirectory() as tmp:
        steps = variants(x, y, Path(tmp))
        times: dict[str, list[list[float]]] = {k: [[] for _ in PHASES] for k in steps}
        t = 0
        for r in range(warmup + rounds):
            for name, step in steps.items():
                for i in range(reps):
                    marks: list[float] = []
                    step(t + i, marks)
                    if r >= warmup:
                        for j in range(len(PHASES)):
                            times[name][j].append(marks[j + 1] - marks[j])
            t += reps
    return {k: [statistics.median(v) for v in per_phase] for k, per_phase in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--phases", action="store_true", help="time each phase of a step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, batch {args.batch}, "
          f"{args.rounds} rounds of {args.reps} steps after {args.warmup} warm-up rounds\n")
    if args.phases:
        print("| variant | " + " | ".join(f"{p} (ms)" for p in PHASES) + " |")
        print("| --- |" + " ---: |" * len(PHASES))
        for name, meds in measure_phases(args.batch, args.rounds, args.reps,
                                         args.warmup).items():
            print(f"| {name} | " + " | ".join(f"{m * 1e3:.3f}" for m in meds) + " |",
                  flush=True)
        return
    print("| variant | median step (ms) | baseline | median paired ratio |")
    print("| --- | ---: | --- | ---: |")
    for name, (sec, ratio) in measure(args.batch, args.rounds, args.reps, args.warmup).items():
        print(f"| {name} | {sec * 1e3:.2f} | {BASELINE[name]} | {ratio:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
