"""Cost of a SynaPrune step, as a ratio to a plain ``torch.optim.SGD`` step, measured side by side.

MLP 784-512-512-10 with ReLU and cross-entropy, float32, 2 threads. Each round times one step of
every variant in turn (so drift of the shared machine hits all alike); the table reports each
variant's median step time after warm-up and the median over rounds of its ratio to plain SGD's
step in the same round (paired ratios cancel most of the machine's drift). A step is
zero_grad + forward + backward + optimizer step.

    .venv/bin/python benchmarks/step_cost.py                 # batch 128 and 512, 40 rounds
    .venv/bin/python benchmarks/step_cost.py --rounds 60 --batch 512

If BackPACK is importable (install it in a separate environment, never as a dependency of
SynaPrune: ``python3 -m venv /tmp/bp && /tmp/bp/bin/pip install -c constraints.txt torch==2.13.0
backpack-for-pytorch && /tmp/bp/bin/pip install --no-deps -e .``, then run this script with that
interpreter), its ``SumGradSquared`` forward-backward is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from synaprune import ActivationGradientPenalty, PerExampleGradStats, SynaPrune


def make_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def variants(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
    """Each entry: a closure that performs one full training step of its own model."""
    out: dict[str, Callable[[], None]] = {}
    loss_fn = nn.functional.cross_entropy

    def plain(opt_factory, *, probe=None, penalty_kw=None, force_fallback=False):
        model = make_model()
        if probe:
            PerExampleGradStats(model, reduction="mean", force_fallback=force_fallback)
        penalty = ActivationGradientPenalty(model, **penalty_kw) if penalty_kw else None
        opt = opt_factory(model.parameters())

        def step() -> None:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            (penalty(loss) if penalty else loss).backward()
            opt.step()
        return step

    out["torch.optim.SGD"] = plain(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    out["SynaPrune mean"] = plain(lambda p: SynaPrune(p, lr=0.01, momentum=0.9))
    out["SynaPrune rms (closed form)"] = plain(
        lambda p: SynaPrune(p, lr=0.01, momentum=0.9, aggregation="rms"), probe=True)
    out["SynaPrune rms (vmap fallback)"] = plain(
        lambda p: SynaPrune(p, lr=0.01, momentum=0.9, aggregation="rms"), probe=True,
        force_fallback=True)
    out["SynaPrune A+B+C (noise every step)"] = plain(
        lambda p: SynaPrune(p, lr=0.01, momentum=0.9, aggregation="blend", blend=0.5,
                            noise=1e-3, seed=0),
        probe=True, penalty_kw=dict(beta=1e-3, gamma=1.0))
    # The stall trigger checks the gradient norm each step and kicks only after a stall (none
    # happens here), so this is the per-step cost of the recommended setting.
    out["SynaPrune A+B+C (noise on stall)"] = plain(
        lambda p: SynaPrune(p, lr=0.01, momentum=0.9, aggregation="blend", blend=0.5,
                            noise=1e-3, noise_trigger="stall", seed=0),
        probe=True, penalty_kw=dict(beta=1e-3, gamma=1.0))
    try:
        from backpack import backpack, extend
        from backpack.extensions import SumGradSquared
    except ImportError:
        return out
    import warnings

    warnings.filterwarnings("ignore", message="Full backward hook")
    model = extend(make_model())
    bp_loss = extend(nn.CrossEntropyLoss())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def backpack_step() -> None:
        opt.zero_grad()
        loss = bp_loss(model(x), y)
        with backpack(SumGradSquared()):
            loss.backward()
        opt.step()
    out["BackPACK SumGradSquared + SGD"] = backpack_step
    return out


def measure(batch: int, rounds: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median step time and median paired ratio to ``torch.optim.SGD``, per variant."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    steps = variants(x, y)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    base = times["torch.optim.SGD"]
    return {k: (statistics.median(v), statistics.median(t / b for t, b in zip(v, base,
                                                                             strict=True)))
            for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, median of "
          f"{args.rounds} rounds after {args.warmup} warm-up rounds\n")
    print("| variant | batch | median step (ms) | ratio to torch.optim.SGD |")
    print("| --- | ---: | ---: | ---: |")
    for batch in args.batch:
        for name, (t, ratio) in measure(batch, args.rounds, args.warmup).items():
            print(f"| {name} | {batch} | {t * 1e3:.2f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
