"""Benchmark: where the time of one ``diagnose`` goes, on a ~60k-parameter CNN on sklearn digits.

Run from the repository root:

    .venv/bin/python benchmarks/diagnose_cost.py --threads 1

Problem: a CNN Conv2d(1, 32, 3) - ReLU - Conv2d(32, 32, 3) - ReLU - Linear(2048, 24) - ReLU -
Linear(24, 10) (padding 1, 59,002 parameters) at its random initialisation (seed 0), on all
1,797 scikit-learn digits (8 x 8, scaled to [0, 1]), cross-entropy, float64: the case of the
issue ("45 s, silent"). Each phase of :func:`synaprune.diagnose.diagnose` is timed by wrapping
the function that does it (wall clock, ``time.perf_counter``), in this one process; the
Hessian-vector products are counted on the operator. Options: ``--threads N`` (default 1),
``--k K`` eigenvalues from each end (default 5, the diagnose default).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import synaprune.diagnose._diagnose as dg


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 24), nn.ReLU(), nn.Linear(24, 10)).double()


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float64).unsqueeze(1)
    return x, torch.tensor(data.target, dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, (x, y) = cnn(), digits()
    n = sum(p.numel() for p in model.parameters())
    spent: dict[str, float] = defaultdict(float)
    products: list[Any] = []

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                out = fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - start
            if name == "HessianOperator (loss, gradient)":
                products.append(out)
            return out
        return wrapper

    patches = {
        "_cancellation": "per-example gradients (cancellation)",
        "_first_order": "forward + backward with hooks (incl. per-example gradients)",
        "HessianOperator": "HessianOperator (loss, gradient)",
        "gradient_curvature": "g^T H g (1 product)",
        "lanczos": "Lanczos, both ends",
    }
    for attr, name in patches.items():
        setattr(dg, attr, timed(name, getattr(dg, attr)))
    start = time.perf_counter()
    d = dg.diagnose(model, nn.functional.cross_entropy, (x, y), k=args.k, progress=False)
    total = time.perf_counter() - start
    op = products[0]
    print(f"CNN, {n} parameters, {x.shape[0]} examples, float64, {args.threads} thread(s); "
          f"verdict {d.kind!r}")
    print("| phase | seconds | share |\n| --- | ---: | ---: |")
    first = spent.pop("forward + backward with hooks (incl. per-example gradients)")
    canc = spent["per-example gradients (cancellation)"]
    rows = [("forward + backward with hooks", first - canc), *spent.items()]
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {100 * sec / total:.0f}% |")
    rest = total - first - sum(v for k, v in spent.items() if k != "per-example gradients "
                                                                "(cancellation)")
    print(f"| everything else | {rest:.2f} | {100 * rest / total:.0f}% |")
    print(f"| total | {total:.2f} | 100% |")
    lanczos_s = spent["Lanczos, both ends"]
    count = op.num_products - 1  # one for g^T H g
    print(f"Hessian-vector products: {op.num_products} ({count} in Lanczos, "
          f"{lanczos_s / max(count, 1):.3f} s each)")


if __name__ == "__main__":
    main()
