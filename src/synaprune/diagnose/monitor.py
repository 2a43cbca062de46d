"""A training monitor: cheap quantities every step, expensive ones on a schedule.

Computing is separate from saving (Cockpit's design): :meth:`TrainingMonitor.record` computes one
record of plain floats, keeps it in memory keyed by step, and appends it as one JSON object per
line to a JSONL file, flushed at once, so a crash loses at most the line being written.

Call it after ``loss.backward()`` and *before* ``optimizer.zero_grad()`` (the cheap set reads
``p.grad`` and, when :class:`synaprune.PerExampleGradStats` is attached, ``p.grad_sumsq``).
One backward pass per step is assumed (no gradient accumulation). ``p.grad_sumsq`` accumulates
like ``.grad``: :class:`synaprune.SynaPrune`'s ``zero_grad`` clears it, ``torch.optim``'s does
not, so with a torch optimizer call ``probe.zero()`` together with ``optimizer.zero_grad()``.

Cheap set (every step): ``loss``, ``grad_norm`` (||g|| over all tracked parameters),
``grad_norm/<name>`` per parameter, and, when every parameter with a gradient carries
per-example statistics, ``cancellation`` = ||gbar|| / sqrt(mean_i ||g_i||^2) (exact) and
``cancelled_share``, the share of coordinates with c = |gbar| / r < 0.1 (exact for parameters of
at most ``CANCEL_SAMPLE`` elements, estimated on a fixed random sample of coordinates beyond).

Expensive set (when ``schedule(step)`` is true; needs ``loss_fn`` and a batch): ``ghg``,
``gg``, ``curvature`` (g^T H g / g^T g), ``eig_min_<i>`` and ``eig_max_<i>`` (the k smallest and
largest Hessian eigenvalues by Lanczos, ascending), ``lanczos_converged`` (1.0 or 0.0).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from synaprune.curvature import ConvergenceWarning, HessianOperator, gradient_curvature, lanczos
from synaprune.diagnose._diagnose import CANCELLED_C
from synaprune.probes import probes_paused

Schedule = Callable[[int], bool]

# ``cancelled_share`` reads at most this many coordinates of each parameter (a fixed random
# sample, drawn once): exact for parameters this small, otherwise an estimate with standard error
# at most 0.5 / sqrt(4096) = 0.008 per parameter. Reading every coordinate of a large layer costs
# several passes over its gradient and statistics, a fifth of a training step (measured in
# benchmarks/monitor_cost.py); the sample makes it a few microseconds.
CANCEL_SAMPLE = 4096


def every(n: int, *, start: int = 0) -> Schedule:
    """A schedule that is true at steps start, start + n, start + 2n, ...

    Args:
        n: the period, >= 1.
        start: the first step at which it is true.

    Returns:
        A callable step -> bool.

    Raises:
        ValueError: n < 1.

    Example:
        >>> s = every(100)
        >>> [t for t in range(350) if s(t)]
        [0, 100, 200, 300]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Invalid period: {n!r}; expected an int >= 1")

    def schedule(step: int) -> bool:
        return step >= start and (step - start) % n == 0

    return schedule


def never(step: int) -> bool:
    """A schedule that is never true."""
    return False


class TrainingMonitor:
    """Records cheap statistics every step and expensive ones on a schedule.

    Args:
        model: the network being trained.
        path: the JSONL file to append records to (created with its directory if missing);
            None to keep records in memory only.
        loss_fn: ``loss_fn(model(x), y)`` -> mean loss; needed for the expensive set.
        schedule: when to compute the expensive set, a callable step -> bool (e.g.
            ``every(100)``); default never.
        k: eigenvalues from each end for the expensive set.
        per_parameter: also record ``grad_norm/<name>`` for every parameter.
        lanczos_maxiter: Hessian-vector products at most per Lanczos call.

    Attributes:
        records: dict step -> {name: float}, every record kept in memory.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> mon = TrainingMonitor(model, None)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> loss = nn.functional.mse_loss(model(x), y)
        >>> loss.backward()
        >>> rec = mon.record(0, loss)
        >>> sorted(rec)[:3]
        ['grad_norm', 'grad_norm/bias', 'grad_norm/weight']
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike[str] | None = None,
        *,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        schedule: Schedule = never,
        k: int = 1,
        per_parameter: bool = True,
        lanczos_maxiter: int | None = None,
    ) -> None:
        if not callable(schedule):
            raise ValueError("schedule must be a callable step -> bool, e.g. every(100)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Invalid k: {k!r}; expected a positive int")
        self.model = model
        self.loss_fn = loss_fn
        self.schedule = schedule
        self.k = k
        self.lanczos_maxiter = lanczos_maxiter
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.per_parameter = per_parameter
        self.records: dict[int, dict[str, float]] = {}
        self._sample_idx: list[Tensor | None] = []
        self._sample_key: tuple[Any, ...] = ()
        self._file = None
        if path is not None:
            directory = os.path.dirname(os.fspath(path))
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the JSONL file (records stay in memory)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def cheap(self, loss: float | Tensor) -> dict[str, float]:
        """The cheap set from the current ``.grad`` (and ``.grad_sumsq`` if present).

        One host synchronisation: every per-parameter reduction is stacked and read at once.
        """
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        rec: dict[str, float] = {"loss": value}
        with_grad = [(n, p) for n, p in self.named if p.grad is not None]
        if not with_grad:
            rec["grad_norm"] = 0.0
            return rec
        grads = [p.grad for _, p in with_grad]
        parts = list(torch._foreach_norm(grads))
        m = len(parts)
        sqs = [getattr(p, "grad_sumsq", None) for _, p in with_grad]
        sizes = [getattr(p, "grad_batch_size", 0) or 0 for _, p in with_grad]
        with_stats = all(sq is not None for sq in sqs) and all(sizes)
        if with_stats:
            reductions = [getattr(p, "grad_reduction", "mean") for _, p in with_grad]
            # c < t  <=>  gbar^2 < t^2 * sumsq / B  <=>  sumsq - gbar^2 * B / t^2 > 0, with
            # gbar = g (mean-reduced loss) or g / B (sum-reduced); 0/0 (c = 1) is not counted.
            # sign(max(sumsq - f g^2, 0)) is 1 exactly where c < t: its sum counts them.
            # Large parameters are read at a fixed random sample of coordinates only.
            factors = [b / CANCELLED_C**2 if r == "mean" else 1.0 / (b * CANCELLED_C**2)
                       for b, r in zip(sizes, reductions, strict=True)]
            idx = self._sample(grads)
            g_s = [g.reshape(-1) if i is None else torch.take(g, i)
                   for g, i in zip(grads, idx, strict=True)]
            sq_s = [sq.reshape(-1) if i is None else torch.take(sq, i)  # type: ignore[union-attr]
                    for sq, i in zip(sqs, idx, strict=True)]
            diff = torch._foreach_addcmul(sq_s, g_s, g_s, [-f for f in factors])
            torch._foreach_clamp_min_(diff, 0.0)
            torch._foreach_sign_(diff)
            parts += [d.sum() for d in diff]
            parts += [sq.sum() for sq in sqs]  # type: ignore[union-attr]  (exact; a foreach
            # L1 norm would be 7x slower than plain sums in torch 2.13 on the CPU)
        values = torch.stack(parts).tolist()
        norms = values[:m]
        rec["grad_norm"] = math.sqrt(sum(v * v for v in norms))
        if self.per_parameter:
            for (name, _), v in zip(with_grad, norms, strict=True):
                rec[f"grad_norm/{name}"] = v
        if with_stats:
            below = sum(v * g.numel() / s.numel()
                        for v, g, s in zip(values[m:2 * m], grads, g_s, strict=True))
            sumsq = sum(values[2 * m:])
            gbar_sq = sum((v if r == "mean" else v / b) ** 2
                          for v, r, b in zip(norms, reductions, sizes, strict=True))
            rms = math.sqrt(sumsq / sizes[0])
            rec["cancellation"] = math.sqrt(gbar_sq) / rms if rms > 0 else 1.0
            rec["cancelled_share"] = below / sum(g.numel() for g in grads)
        return rec

    def _sample(self, grads: list[Tensor]) -> list[Tensor | None]:
        """Per parameter: None (use every coordinate) or a fixed sorted random sample of
        CANCEL_SAMPLE flat indices, drawn once per parameter shape from seed 0."""
        key = tuple((tuple(g.shape), g.device) for g in grads)
        if self._sample_key != key:
            gen = torch.Generator().manual_seed(0)
            self._sample_idx = [
                None if g.numel() <= CANCEL_SAMPLE
                else torch.randperm(g.numel(), generator=gen)[:CANCEL_SAMPLE].sort().values
                .to(g.device)
                for g in grads]
            self._sample_key = key
        return self._sample_idx

    def expensive(self, batch: tuple[Any, Any]) -> dict[str, float]:
        """The expensive set on one ``(x, y)`` batch: curvature along g, extreme eigenvalues."""
        if self.loss_fn is None:
            raise ValueError("the expensive set needs loss_fn (TrainingMonitor(loss_fn=...))")
        # Paused: these extra passes must not add to per-example statistics on the params.
        with probes_paused():
            op = HessianOperator(self.model, self.loss_fn, batch, params=self.params)
            gc = gradient_curvature(op)
            k = max(1, min(self.k, op.dim // 2))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = lanczos(op, k, which="both", maxiter=self.lanczos_maxiter,
                              generator=torch.Generator().manual_seed(0))
        rec = {"ghg": gc.ghg, "gg": gc.gg, "curvature": gc.curvature}
        eig = res.eigenvalues.tolist()
        for i in range(k):
            rec[f"eig_min_{i}"] = eig[i]
            rec[f"eig_max_{i}"] = eig[k + i]
        rec["lanczos_converged"] = 1.0 if res.converged else 0.0
        return rec

    def record(self, step: int, loss: float | Tensor,
               batch: tuple[Any, Any] | None = None) -> dict[str, float]:
        """Compute, keep and write the record of one step.

        Args:
            step: the training step (an int; the key of the record).
            loss: the step's loss (a float or a scalar tensor).
            batch: the ``(x, y)`` batch for the expensive set; needed only on scheduled steps
                (a scheduled step without a batch records the cheap set only).

        Returns:
            The record: {name: float}, without the step.
        """
        rec = self.cheap(loss)
        if batch is not None and self.schedule(step):
            rec.update(self.expensive(batch))
        self.records[int(step)] = rec
        if self._file is not None:
            self._file.write(json.dumps({"step": int(step), **_finite(rec)}) + "\n")
            self._file.flush()
        return rec

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one quantity over the steps where it was recorded."""
        steps = [s for s in sorted(self.records) if name in self.records[s]]
        return steps, [self.records[s][name] for s in steps]

    def history(self) -> dict[str, list[float]]:
        """``{"loss": [...], "grad_norm": [...]}`` in step order, for ``diagnose(history=...)``."""
        return {name: self.series(name)[1] for name in ("loss", "grad_norm")}


def _finite(rec: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in rec.items()}


def read_jsonl(path: str | os.PathLike[str]) -> dict[int, dict[str, float | None]]:
    """Read a monitor's JSONL file back: step -> record. A truncated last line is skipped."""
    out: dict[int, dict[str, float | None]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = int(obj.pop("step"))
            out[step] = obj
    return out
