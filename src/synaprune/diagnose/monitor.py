"""A training monitor: cheap quantities every step, expensive ones on a schedule.

Computing is separate from saving (Cockpit's design): :meth:`TrainingMonitor.record` computes one
record of plain floats, keeps it in memory keyed by step, and appends it as one JSON object per
line to a JSONL file, flushed at once, so a crash loses at most the line being written. Given a
``writer`` (``torch.utils.tensorboard.SummaryWriter``, or anything with its ``add_scalar``), every
quantity of the record is also written as a TensorBoard scalar at its step, under its own name
(the expensive ones only at their scheduled steps). TensorBoard keeps scalars in float32: the
JSONL file (float64) is the exact record, the event file the one to plot. The writer belongs to
the caller: :meth:`TrainingMonitor.close` flushes it and leaves it open.

Call it after ``loss.backward()`` and *before* ``optimizer.zero_grad()`` (the cheap set reads
``p.grad`` and the per-example statistics that :class:`synaprune.PerExampleGradStats` leaves on
the parameters). The statistics follow ``.grad`` whatever resets it (any ``zero_grad``) and
accumulate exactly when it does: micro-batches of equal size accumulated into ``.grad``, with
their losses divided by their number or not, give the whole batch's cancellation
(mean-reduced micro-batches of different sizes give none, as their gbar is not known).

Cheap set (every step): ``loss``, ``grad_norm`` (||g|| over all tracked parameters),
``grad_norm/<name>`` per parameter, and, when every parameter with a gradient carries
per-example statistics, ``cancellation`` = ||gbar|| / sqrt(mean_i ||g_i||^2) (exact). On the
scheduled steps (``schedule(step)`` true), when the statistics include ``p.grad_sumsq``, also
``cancelled_share``, the share of coordinates with c = |gbar| / r < 0.1 (exact for parameters of
at most ``CANCEL_SAMPLE`` elements, estimated on a fixed systematic sample of coordinates
beyond): it costs about 0.25 ms a step on benchmarks/monitor_cost.py's MLP, as much as the rest
of the cheap set, so it is not taken every step (:meth:`TrainingMonitor.cheap` takes it on
request).

Where sum_i ||g_i||^2 comes from: ``p.grad_sqnorm_sum`` (a 0-d tensor, left by a probe with
quantity ``"sqnorm"``) where present, else ``p.grad_sumsq.sum()`` (one pass over a
parameter-sized tensor, about 0.1 ms a step on benchmarks/monitor_cost.py's MLP, the same as
computing ``grad_sqnorm_sum`` in the probe). With ``cancellation=True`` and no probe attached,
the monitor attaches a norm-only probe (``quantities=("sqnorm",)``) that costs two row norms and
a dot product of length B per 2-D Linear layer; it stands aside for every parameter that an
attached probe (e.g. the one :class:`synaprune.SynaPrune` ``rms`` needs) tracks, whichever was
attached first, so statistics are never counted twice.

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
from synaprune.probes import _fields as fields
from synaprune.probes import probes_paused
from synaprune.probes.grad_stats import _StandInProbe, _tracked_elsewhere

Schedule = Callable[[int], bool]

# ``cancelled_share`` reads at most this many coordinates of each parameter: exact for parameters
# this small, otherwise an estimate with standard error at most 0.5 / sqrt(4096) = 0.008 per
# parameter. The sample is systematic: every s-th coordinate of the flattened parameter from a
# fixed random start, with s coprime to the row length (numel / shape[0]), so that it visits every
# column (and every position of a conv kernel) evenly; it is a strided view, gathered by one cat.
# Cost inside a training step of benchmarks/monitor_cost.py's MLP (one thread): about 0.3 ms, a
# dozen small ops that are slow right after the backward pass has flushed the caches (0.03 ms
# for ``cancellation`` itself); reading every coordinate would cost a fifth of the step.
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
        cancellation: ``None`` (default): record ``cancellation`` when every parameter with a
            gradient carries per-example statistics from an attached
            :class:`synaprune.PerExampleGradStats`. ``True``: always record it; parameters that
            no probe tracks when the monitor is made get a norm-only probe of the monitor's own
            (attach it before the first forward pass you want recorded). ``False``: never
            compute it, nor ``cancelled_share``.
        reduction: ``"mean"`` or ``"sum"``, how the training loss reduces its per-example
            losses; used by the monitor's own probe only (``cancellation=True``).
        lanczos_maxiter: Hessian-vector products at most per Lanczos call.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with
            ``add_scalar(tag, value, global_step)``) to write every record to as scalars;
            None for none. Flushed by :meth:`close`, not closed.

    Attributes:
        records: dict step -> {name: float}, every record kept in memory.
        probe: the monitor's own norm-only probe, or None (none was needed or asked for).

    Raises:
        ValueError: invalid ``schedule``, ``k``, ``cancellation`` or ``reduction``.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> mon = TrainingMonitor(model, None)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> loss = nn.functional.mse_loss(model(x), y)
        >>> loss.backward()
        >>> rec = mon.record(0, loss)
        >>> sorted(rec)[:3]
        ['grad_norm', 'grad_norm/bias', 'grad_norm/weight']
        >>> mon = TrainingMonitor(model, None, cancellation=True)  # attaches a norm-only probe
        >>> model.zero_grad()
        >>> loss = nn.functional.mse_loss(model(x), y)
        >>> loss.backward()
        >>> 0.0 < mon.record(0, loss)["cancellation"] <= 1.0
        True
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
        cancellation: bool | None = None,
        reduction: str = "mean",
        lanczos_maxiter: int | None = None,
        writer: Any = None,
    ) -> None:
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise ValueError(f"Invalid writer: {type(writer).__name__} has no add_scalar; "
                             "expected a torch.utils.tensorboard.SummaryWriter")
        if not callable(schedule):
            raise ValueError("schedule must be a callable step -> bool, e.g. every(100)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Invalid k: {k!r}; expected a positive int")
        if cancellation not in (None, True, False):
            raise ValueError(f"Invalid cancellation: {cancellation!r}; expected None, True or "
                             "False")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'")
        self.model = model
        self.loss_fn = loss_fn
        self.schedule = schedule
        self.k = k
        self.lanczos_maxiter = lanczos_maxiter
        self.writer = writer
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.per_parameter = per_parameter
        self.cancellation = cancellation
        self.records: dict[int, dict[str, float]] = {}
        self.probe: _StandInProbe | None = None
        if cancellation and self.params and not all(_tracked_elsewhere(self.params)):
            self.probe = _StandInProbe(model, reduction=reduction,  # type: ignore[arg-type]
                                       quantities=("sqnorm",))
        self._sample_at: list[tuple[int, int] | None] = []
        self._sample_sizes: list[int] = []
        self._sample_weight: Tensor | None = None
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
        """Close the JSONL file, flush the writer (left open: it is the caller's) and remove the
        monitor's own probe (records stay in memory)."""
        flush = getattr(self.writer, "flush", None)
        if callable(flush):
            flush()
        if self.probe is not None:
            self.probe.remove()
        if self._file is not None:
            self._file.close()
            self._file = None

    def cheap(self, loss: float | Tensor, *, share: bool = True) -> dict[str, float]:
        """The cheap set from the current ``.grad`` and per-example statistics.

        ``share``: also compute ``cancelled_share`` (when ``p.grad_sumsq`` is present);
        :meth:`record` asks for it on scheduled steps only.

        One host synchronisation: every per-parameter reduction is stacked and read at once.
        The per-parameter gradient norms are one ``torch._foreach_norm`` call; sum_i ||g_i||^2
        is read from ``p.grad_sqnorm_sum`` where present (no pass over parameter-sized tensors).
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
        stats = self._stats([p for _, p in with_grad]) if self.cancellation is not False else None
        if stats is not None:
            sizes, scales, sqnorms, sqs = stats
            parts += sqnorms
            if sqs is not None and share:
                # c < t  <=>  gbar^2 < t^2 * sumsq / B  <=>  sumsq - gbar^2 * B / t^2 > 0, with
                # gbar = g / s (s: see _stats); 0/0 (c = 1) is not
                # counted. sign(max(sumsq - f g^2, 0)) is 1 exactly where c < t: its sum counts
                # them. Large parameters are read at a fixed systematic sample of coordinates.
                # The samples of all parameters are concatenated (a few thousand numbers each),
                # each count weighted by numel / sample size: one dot product gives the total.
                factors = [b / (sc * sc * CANCELLED_C**2)
                           for b, sc in zip(sizes, scales, strict=True)]
                at, weight = self._sample(grads)
                g_c = torch.cat([_strided(g, a) for g, a in zip(grads, at, strict=True)])
                sq_c = torch.cat([_strided(sq, a) for sq, a in zip(sqs, at, strict=True)])
                if len(set(factors)) == 1:
                    diff = torch.addcmul(sq_c, g_c, g_c, value=-factors[0])
                else:  # parameters with different batch sizes or reductions
                    f_c = torch.cat([torch.full((w,), -f, dtype=g_c.dtype, device=g_c.device)
                                     for w, f in zip(self._sample_sizes, factors, strict=True)])
                    diff = torch.addcmul(sq_c, g_c * f_c, g_c)
                parts.append(torch.dot(diff.clamp_min_(0.0).sign_(), weight))
        values = torch.stack(parts).tolist()
        norms = values[:m]
        rec["grad_norm"] = math.sqrt(sum(v * v for v in norms))
        if self.per_parameter:
            for (name, _), v in zip(with_grad, norms, strict=True):
                rec[f"grad_norm/{name}"] = v
        if stats is not None:
            sumsq = sum(values[m:2 * m])
            gbar_sq = sum((v / sc) ** 2 for v, sc in zip(norms, scales, strict=True))
            rms = math.sqrt(sumsq / sizes[0])
            rec["cancellation"] = math.sqrt(gbar_sq) / rms if rms > 0 else 1.0
            if sqs is not None and share:
                rec["cancelled_share"] = values[2 * m] / sum(g.numel() for g in grads)
        return rec

    @staticmethod
    def _stats(params: list[Tensor]
               ) -> tuple[list[int], list[float], list[Tensor], list[Tensor] | None] | None:
        """The per-example statistics on ``params``, or None unless every one has some.

        Returns:
            (batch sizes B, scales s with ``.grad = s * gbar`` (the number of accumulated
            passes for a mean-reduced loss, B for a sum-reduced one; the convention of
            :func:`synaprune.optim.aggregate`), sum_i ||g_i||^2 per parameter as 0-d tensors,
            and the ``grad_sumsq`` tensors if every parameter has one, else None). None also
            when mean-reduced micro-batches of different sizes were accumulated: their gbar is
            not known from the statistics.
        """
        read = [fields.read(p) for p in params]  # reconciled with .grad, or raises
        if any(s is None for s in read):
            return None
        stats: list[fields.Stats] = read  # type: ignore[assignment]
        sizes = [s.batch_size for s in stats]
        sqs = [s.sumsq for s in stats]
        sqnorms: list[Tensor] = []
        for s in stats:
            sn = s.sqnorm
            if sn is None:
                if s.sumsq is None:
                    return None
                sn = s.sumsq.sum()  # a pass over the parameter: only without grad_sqnorm_sum
            sqnorms.append(sn)
        if any(s.reduction == "mean" and s.passes > 1 and s.pass_size is None for s in stats):
            return None
        scales = [float(max(s.passes, 1)) if s.reduction == "mean" else float(s.batch_size)
                  for s in stats]
        have_sq = all(sq is not None for sq in sqs)
        return sizes, scales, sqnorms, sqs if have_sq else None  # type: ignore[return-value]

    def _sample(self, grads: list[Tensor]) -> tuple[list[tuple[int, int] | None], Tensor]:
        """The coordinates ``cancelled_share`` reads, drawn once per list of parameter shapes.

        Returns:
            Per parameter None (every coordinate) or (start, stride) of CANCEL_SAMPLE flat
            coordinates; and the weight of each sampled coordinate, numel / sample size, as one
            vector over all parameters in order (size: the total sample).
        """
        key = tuple((tuple(g.shape), g.dtype, g.device) for g in grads)
        if self._sample_key != key:
            gen = torch.Generator().manual_seed(0)
            at: list[tuple[int, int] | None] = []
            weights = []
            for g in grads:
                n = g.numel()
                if n <= CANCEL_SAMPLE:
                    at.append(None)
                    weights.append(torch.ones(n, dtype=g.dtype, device=g.device))
                    continue
                row = n // g.shape[0] if g.dim() > 1 else 1
                stride = n // CANCEL_SAMPLE
                while math.gcd(stride, row) != 1:
                    stride -= 1
                span = (CANCEL_SAMPLE - 1) * stride + 1
                start = int(torch.randint(0, n - span + 1, (), generator=gen))
                at.append((start, stride))
                weights.append(torch.full((CANCEL_SAMPLE,), n / CANCEL_SAMPLE, dtype=g.dtype,
                                          device=g.device))
            self._sample_at, self._sample_weight = at, torch.cat(weights)
            self._sample_sizes = [w.numel() for w in weights]
            self._sample_key = key
        return self._sample_at, self._sample_weight  # type: ignore[return-value]

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
        scheduled = bool(self.schedule(step))
        rec = self.cheap(loss, share=scheduled)
        if batch is not None and scheduled:
            rec.update(self.expensive(batch))
        self.records[int(step)] = rec
        if self._file is not None:
            self._file.write(json.dumps({"step": int(step), **_finite(rec)}) + "\n")
            self._file.flush()
        if self.writer is not None:
            for name, value in rec.items():
                self.writer.add_scalar(name, value, int(step))
        return rec

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one quantity over the steps where it was recorded."""
        steps = [s for s in sorted(self.records) if name in self.records[s]]
        return steps, [self.records[s][name] for s in steps]

    def history(self) -> dict[str, list[float]]:
        """``{"loss": [...], "grad_norm": [...]}`` in step order, for ``diagnose(history=...)``."""
        return {name: self.series(name)[1] for name in ("loss", "grad_norm")}


def _strided(t: Tensor, at: tuple[int, int] | None) -> Tensor:
    """The flattened tensor, or CANCEL_SAMPLE of its coordinates from ``start`` every ``stride``
    (a view when ``t`` is contiguous)."""
    if at is None:
        return t.reshape(-1)
    start, stride = at
    if t.is_contiguous():
        return t.as_strided((CANCEL_SAMPLE,), (stride,), t.storage_offset() + start)
    return t.reshape(-1)[start:start + (CANCEL_SAMPLE - 1) * stride + 1:stride]


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
