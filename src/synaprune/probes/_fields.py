"""The one owner of what SynaPrune leaves on parameters, and of its life cycle.

Public attributes (a contract with the optimizer, the monitor and users), per parameter ``p``:

* ``p.grad_sumsq``: ``sum_i g_i**2``, shaped like ``p`` (or None);
* ``p.grad_sqnorm_sum``: ``sum_i ||g_i||**2``, a 0-d tensor (or None);
* ``p.grad_batch_size``: int, examples accumulated into those statistics (0: none);
* ``p.grad_reduction``: ``"mean"`` or ``"sum"``, the reduction of the loss behind ``p.grad``;
* ``p.grad_extra``: the part of ``p.grad`` that is not data-loss gradient (the activation-gradient
  penalty's, or gradient accumulated before any recorded pass), shaped like ``p`` (or None).

Nothing else writes, clears or checks them: probes, the penalty, the optimizer, the monitor, the
diagnosis and the lab's runner all go through the functions here.

Statistics are valid only for the ``.grad`` they were accumulated with. After every backward pass
that recorded statistics (a *recorded pass*) this module binds them to that ``.grad``: the tensor
object, its ``_version`` counter (every in-place change bumps it: ``zero_()``, the ``mul_`` of
``clip_grad_norm_`` and ``GradScaler.unscale_``), and, when ``grad_sumsq`` is present, a copy of
it (the reference). Then:

* at the start of a recorded pass (before ``.grad`` accumulates): if ``p.grad`` is None, or all
  zero (``zero_grad()`` of a module or any optimizer, either ``set_to_none``), the statistics start
  afresh; if it is the bound ``.grad``, unchanged, they accumulate (micro-batches); if it is the
  bound gradient times a scalar k (clipping, unscaling, a manual rescale), they are rescaled (sums
  of squares by k**2, ``grad_extra`` by k) and accumulate; gradient that no recorded pass produced
  (a backward pass while probes were paused, or before the probe existed) becomes ``grad_extra``;
  any other change is recorded as a mismatch;
* when the statistics are read (:func:`read`, e.g. by ``SynaPrune.step``): the same
  reconciliation against the current ``.grad``; a change that is not a rescaling (weight decay or
  another gradient added into ``.grad``, a new tensor assigned) raises RuntimeError saying so.

A rescaling is recognised to rounding: ``grad == k * reference`` up to 8 units in the last place
of the largest coordinate. Reading compares the content of ``.grad`` with the reference too (one
pass), since not every in-place change bumps ``_version`` (``GradScaler.unscale_`` on the CPU, in
torch 2.13, does not). Without ``grad_sumsq`` (norm-only probes) there is no reference, only the
norm of ``.grad`` at binding: a changed ``.grad`` cannot be reconciled (RuntimeError), and a
change that keeps both ``_version`` and the norm cannot be seen.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Variable

SUMSQ = "grad_sumsq"
SQNORM = "grad_sqnorm_sum"
BATCH_SIZE = "grad_batch_size"
REDUCTION = "grad_reduction"
EXTRA = "grad_extra"
FIELDS = (SUMSQ, SQNORM, BATCH_SIZE, REDUCTION, EXTRA)
_SUMS = (SUMSQ, SQNORM)  # sums of squares of per-example gradients: scale by k**2
_STATE = "_synaprune_fields"  # private bookkeeping on the parameter

# How close grad must be to k * reference to count as a rescaling, in units of the dtype's eps
# times the largest |coordinate|: one rounded multiplication is within 1.5 eps, two (clip then
# unscale) within 3.
_RESCALE_ULPS = 8.0


class _Slot:
    """Statistics of one parameter and their bookkeeping: the staging area of a penalty's first
    pass, and (as :class:`_State`) the private part of a parameter's record."""

    __slots__ = ("grad_batch_size", "grad_extra", "grad_reduction", "grad_sqnorm_sum",
                 "grad_sumsq", "pass_size", "passes")

    def __init__(self) -> None:
        self.grad_sumsq: Tensor | None = None
        self.grad_sqnorm_sum: Tensor | None = None
        self.grad_batch_size = 0
        self.grad_reduction: str | None = None
        self.grad_extra: Tensor | None = None
        self.passes = 0  # recorded passes since the statistics started afresh
        self.pass_size: int | None = 0  # their common batch size; None if they differ


class _State:
    """What the statistics on a parameter are bound to."""

    __slots__ = ("fingerprint", "grad", "keep_ref", "pass_size", "passes", "pre", "problem",
                 "recorded", "ref", "task", "version")

    def __init__(self) -> None:
        self.grad: weakref.ReferenceType[Tensor] | None = None  # the bound .grad
        self.version = -1
        self.ref: Tensor | None = None  # copy of the bound .grad (with grad_sumsq only)
        self.fingerprint: Tensor | None = None  # its norm, 0-d (without grad_sumsq)
        self.keep_ref = False
        self.passes = 0
        self.pass_size: int | None = 0
        self.problem: str | None = None  # why the statistics no longer describe .grad
        self.recorded = False  # a recorded pass since the last clear
        self.task = -2  # graph task of the pass being recorded
        self.pre: tuple[Tensor | None, int] = (None, -1)  # .grad at the start of that pass


def _state(p: Tensor) -> _State:
    st = getattr(p, _STATE, None)
    if st is None:
        st = _State()
        setattr(p, _STATE, st)
    return st


# -- clearing, snapshots ---------------------------------------------------------------------


def _clear_public(dest: Any) -> None:
    dest.grad_sumsq = None
    dest.grad_sqnorm_sum = None
    dest.grad_batch_size = 0
    dest.grad_extra = None


def clear(p: Tensor, reduction: str | None = None) -> None:
    """Remove every statistic of ``p`` (``grad_batch_size`` 0, the others None) and its binding.

    ``grad_reduction`` is set to ``reduction`` when given, else left as it is. ``p.grad`` is not
    touched.
    """
    _clear_public(p)
    if reduction is not None:
        p.grad_reduction = reduction  # type: ignore[attr-defined]
    st = getattr(p, _STATE, None)
    if st is not None:
        keep = st.keep_ref
        st.__init__()  # type: ignore[misc]
        st.keep_ref = keep


@dataclass
class Snapshot:
    """``p.grad``, the statistics and their binding, for :func:`restore`."""

    entries: list[tuple[Tensor | None, dict[str, Any], dict[str, Any] | None]]


def snapshot(params: Iterable[Tensor]) -> Snapshot:
    """Save ``p.grad`` and everything this module keeps on each parameter."""
    entries = []
    for p in params:
        attrs = {a: getattr(p, a) for a in FIELDS if hasattr(p, a)}
        st = getattr(p, _STATE, None)
        state = None if st is None else {k: getattr(st, k) for k in _State.__slots__}
        entries.append((p.grad, attrs, state))
    return Snapshot(entries)


def restore(params: Iterable[Tensor], saved: Snapshot) -> None:
    """Put back what :func:`snapshot` saved (the same parameters, in the same order)."""
    for p, (grad, attrs, state) in zip(params, saved.entries, strict=True):
        p.grad = grad
        for a in FIELDS:
            if a in attrs:
                setattr(p, a, attrs[a])
            elif hasattr(p, a):
                delattr(p, a)
        if state is None:
            if hasattr(p, _STATE):
                delattr(p, _STATE)
        else:
            st = _state(p)
            for k, v in state.items():
                setattr(st, k, v)


# -- reconciling a changed .grad -------------------------------------------------------------


def _rescaling(g: Tensor, ref: Tensor | None) -> float | None:
    """k such that ``g == k * ref`` to rounding, or None."""
    if ref is None or g.shape != ref.shape or g.is_sparse:
        return None
    flat_ref, flat_g = ref.reshape(-1), g.reshape(-1)
    at = int(flat_ref.abs().argmax()) if flat_ref.numel() else 0
    top = float(flat_ref[at].abs()) if flat_ref.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return None
    k = float(flat_g[at]) / float(flat_ref[at])
    if not math.isfinite(k):
        return None
    worst = float((flat_g - flat_ref * k).abs_().max())
    scale = max(abs(k) * top, float(flat_g.abs().max()))
    eps = torch.finfo(g.dtype).eps if g.is_floating_point() else 0.0
    return k if worst <= _RESCALE_ULPS * eps * scale else None


def _scale(p: Tensor, k: float) -> None:
    """Rescale the statistics of ``p`` to a gradient multiplied by ``k``."""
    for name in _SUMS:
        v = getattr(p, name, None)
        if v is not None:
            v.mul_(k * k)
    e = getattr(p, EXTRA, None)
    if e is not None:
        e.mul_(k)


def _is_bound(st: _State, g: Tensor | None) -> bool:
    return g is not None and st.grad is not None and st.grad() is g and g._version == st.version


def _bind(p: Tensor, st: _State) -> None:
    """Bind the statistics of ``p`` to the current ``p.grad``."""
    g = p.grad
    st.task = -2
    if g is None:
        st.grad, st.version, st.ref, st.fingerprint = None, -1, None, None
        return
    pre, version = st.pre
    st.pre = (None, -1)
    if pre is g and g._version == version and getattr(p, BATCH_SIZE, 0):
        st.problem = ("a backward pass recorded per-example statistics but did not accumulate "
                      "into p.grad (torch.autograd.grad with a probe attached?): the statistics "
                      "and p.grad describe different passes")
    st.grad, st.version = weakref.ref(g), g._version
    if st.keep_ref and getattr(p, SUMSQ, None) is not None:
        if st.ref is not None and st.ref.shape == g.shape and st.ref.dtype == g.dtype \
                and st.ref.device == g.device:
            st.ref.copy_(g)
        else:
            st.ref = g.detach().clone()
        st.fingerprint = None
    else:
        st.ref = None
        st.fingerprint = (torch.linalg.vector_norm(g.detach()) if getattr(p, BATCH_SIZE, 0)
                          else None)


def _changed_message(what: str) -> str:
    return (f"p.grad changed after the backward pass that recorded its per-example statistics, "
            f"and not by a rescaling (such as clip_grad_norm_ or GradScaler.unscale_): {what}. "
            "The statistics cannot describe it. Add weight decay through the optimizer "
            "(SynaPrune(weight_decay=...)), other losses before backward, and change .grad only "
            "by multiplying it")


def _reconcile(p: Tensor, st: _State) -> None:
    """Make the statistics of ``p`` describe the current ``p.grad`` (which is not None and has
    recorded statistics), or raise."""
    g = p.grad
    if st.problem is not None:
        raise RuntimeError(f"PerExampleGradStats: {st.problem}")
    assert g is not None
    if _is_bound(st, g):
        # Not every in-place change bumps _version (GradScaler.unscale_'s CPU kernel does not,
        # in torch 2.13): compare the content too, one pass.
        if st.ref is not None:
            if torch.equal(g, st.ref):
                return
        elif st.fingerprint is None or torch.equal(torch.linalg.vector_norm(g), st.fingerprint):
            return
    if st.ref is None:
        what = ("these statistics keep no reference to reconcile with (a probe without "
                "'sumsq'); read them before changing .grad"
                if getattr(p, SUMSQ, None) is None else "e.g. another gradient added into it")
        raise RuntimeError(_changed_message(what))
    k = _rescaling(g, st.ref)
    if k is None:
        raise RuntimeError(_changed_message(
            "e.g. weight decay or another gradient added into it, or a new tensor assigned"))
    _scale(p, k)
    _bind(p, st)


# -- recording ----------------------------------------------------------------------------------

# Penalty first passes being staged (see :func:`staged`); a module-level stack rather than a
# thread-local, because backward hooks may run on autograd's device threads.
_STAGES: list[dict[int, tuple[Tensor, _Slot]]] = []
# Graph task -> parameters whose statistics a pass touched, bound when the pass ends.
_TOUCHED: dict[int, list[Tensor]] = {}


@contextmanager
def staged() -> Iterator[dict[int, tuple[Tensor, _Slot]]]:
    """Inside the block, probes record into a staging area instead of the parameters.

    For a pass that computes gradients without accumulating them (the penalty's first-order
    ``autograd.grad``): its statistics belong to the later backward pass that hands those
    gradients to ``.grad``, which calls :func:`commit`.
    """
    stage: dict[int, tuple[Tensor, _Slot]] = {}
    _STAGES.append(stage)
    try:
        yield stage
    finally:
        _STAGES.remove(stage)


def begin(p: Tensor, *, keep_ref: bool = False) -> Any:
    """Open ``p``'s statistics for a recorded pass; returns where to write them.

    Call it when a backward pass first reaches ``p``, before ``p.grad`` accumulates (probes do
    in their output-gradient hook); idempotent within a pass. Outside a backward pass (a runner
    writing its own statistics), it starts afresh. ``keep_ref``: keep a copy of ``p.grad`` at the
    end of the pass, to reconcile later rescalings (needed with ``grad_sumsq``).

    Returns:
        ``p`` itself, or a staging slot inside :func:`staged`: an object with the public
        attributes (``grad_sumsq``, ...) to read and write.
    """
    if _STAGES:
        stage = _STAGES[-1]
        entry = stage.get(id(p))
        if entry is None:
            entry = stage[id(p)] = (p, _Slot())
        return entry[1]
    st = _state(p)
    st.keep_ref = st.keep_ref or keep_ref
    task = torch._C._current_graph_task_id()
    if task == st.task and task != -1:
        return p
    g = p.grad
    if task != -1:
        touched = _TOUCHED.get(task)
        if touched is None:
            touched = _TOUCHED[task] = []
            Variable._execution_engine.queue_callback(lambda t=task: _end(t))
        touched.append(p)
        st.task = task
        st.pre = (g, g._version if g is not None else -1)
    if g is None or not st.recorded:
        _fresh_start(p, st, g)
    elif _is_bound(st, g):
        pass  # accumulate: micro-batches
    elif not bool(g.any()):
        _fresh_start(p, st, None)
    else:
        k = _rescaling(g, st.ref) if st.problem is None else None
        if k is not None:
            _scale(p, k)
        elif st.grad is not None and st.grad() is None:  # .grad replaced: old ones are gone
            _fresh_start(p, st, g)
        elif st.problem is None:
            st.problem = ("p.grad was changed between two recorded backward passes, not by a "
                          "rescaling (e.g. weight decay or another gradient added into it); "
                          "the statistics of the first pass no longer describe it")
    st.recorded = True
    return p


def _fresh_start(p: Tensor, st: _State, unseen: Tensor | None) -> None:
    """Start the statistics afresh; gradient already in ``.grad`` (``unseen``, if any and non-zero)
    was produced by no recorded pass, so it is kept apart as ``grad_extra``."""
    _clear_public(p)
    st.passes, st.pass_size, st.problem = 0, 0, None
    if unseen is not None and bool(unseen.any()):
        p.grad_extra = unseen.detach().clone()  # type: ignore[attr-defined]


def _end(task: int, again: bool = True) -> None:
    if again:
        # Run once more, after the callbacks queued during the pass: DistributedDataParallel's
        # reducer writes the averaged gradients into .grad in one of those.
        Variable._execution_engine.queue_callback(lambda: _end(task, False))
        return
    for p in _TOUCHED.pop(task, ()):
        _bind(p, _state(p))


def book(dest: Any, batch_size: int, reduction: str) -> None:
    """Book one recorded pass of ``batch_size`` examples into ``dest`` (from :func:`begin`)."""
    dest.grad_batch_size = int(getattr(dest, BATCH_SIZE, 0) or 0) + batch_size
    dest.grad_reduction = reduction
    counts = dest if isinstance(dest, _Slot) else _state(dest)
    counts.pass_size = batch_size if counts.passes == 0 else (
        counts.pass_size if counts.pass_size == batch_size else None)
    counts.passes += 1


def put(dest: Any, name: str, value: Tensor, alpha: float = 1.0) -> None:
    """``dest.<name> += alpha * value``, or ``=`` if absent. ``value`` must be a new tensor."""
    prev = getattr(dest, name, None)
    if prev is None:
        setattr(dest, name, value.mul_(alpha) if alpha != 1.0 else value)
    else:
        prev.add_(value, alpha=alpha)


def commit(p: Tensor, stage: dict[int, tuple[Tensor, _Slot]] | None, *,
           extra: Tensor | None = None, scale: Tensor | float = 1.0) -> None:
    """In a backward pass that accumulates into ``p.grad``: add the staged statistics of ``p``
    (scaled to a gradient multiplied by ``scale``) and ``extra`` to ``grad_extra``."""
    entry = None if stage is None else stage.get(id(p))
    if entry is None and extra is None:
        return
    slot = entry[1] if entry is not None else None
    dest = begin(p, keep_ref=slot is not None and slot.grad_sumsq is not None)
    if extra is not None:
        put(dest, EXTRA, extra.clone())
    if slot is None or not slot.passes:
        return
    sq = scale * scale
    for name in _SUMS:
        v = getattr(slot, name)
        if v is not None:
            put(dest, name, v * sq)
    dest.grad_batch_size = int(getattr(dest, BATCH_SIZE, 0) or 0) + slot.grad_batch_size
    dest.grad_reduction = slot.grad_reduction
    counts = dest if isinstance(dest, _Slot) else _state(dest)
    counts.pass_size = slot.pass_size if counts.passes == 0 else (
        counts.pass_size if counts.pass_size == slot.pass_size else None)
    counts.passes += slot.passes


def write(p: Tensor, *, sumsq: Tensor | None = None, sqnorm: Tensor | None = None,
          batch_size: int = 0, reduction: str = "mean", extra: Tensor | None = None) -> None:
    """Replace the statistics of ``p`` by these, bound to the current ``p.grad`` (for code that
    computes them itself, such as the lab's seed-batched runner)."""
    clear(p)
    st = _state(p)
    st.keep_ref = sumsq is not None
    p.grad_sumsq, p.grad_sqnorm_sum, p.grad_extra = sumsq, sqnorm, extra  # type: ignore[attr-defined]
    p.grad_batch_size, p.grad_reduction = batch_size, reduction  # type: ignore[attr-defined]
    st.passes, st.pass_size, st.recorded = (1, batch_size, True) if batch_size else (0, 0, True)
    _bind(p, st)


# -- reading -------------------------------------------------------------------------------------


@dataclass
class Stats:
    """The statistics of one parameter, valid for its current ``.grad``."""

    sumsq: Tensor | None  # sum_i g_i**2, [*p.shape]
    sqnorm: Tensor | None  # sum_i ||g_i||**2, 0-d
    batch_size: int  # B
    reduction: str  # "mean" or "sum"
    extra: Tensor | None  # non-data part of p.grad, [*p.shape]
    passes: int  # recorded passes accumulated
    pass_size: int | None  # their common batch size (None if they differ)


def read(p: Tensor) -> Stats | None:
    """The statistics of ``p`` for its current ``.grad``, or None if it has none (or no grad).

    A ``.grad`` rescaled since they were recorded rescales them (in place, so the attributes
    agree with ``.grad`` afterwards).

    Raises:
        RuntimeError: ``.grad`` changed in a way the statistics cannot follow; the message says
            how.
    """
    n = int(getattr(p, BATCH_SIZE, 0) or 0)
    if p.grad is None or n == 0:
        return None
    st = _state(p)
    _reconcile(p, st)
    return Stats(getattr(p, SUMSQ, None), getattr(p, SQNORM, None), n,
                 getattr(p, REDUCTION, None) or "mean", getattr(p, EXTRA, None), st.passes,
                 st.pass_size)


def set_batch_size(p: Tensor, batch_size: int) -> None:
    """Replace ``grad_batch_size`` (after summing statistics over distributed ranks)."""
    p.grad_batch_size = batch_size  # type: ignore[attr-defined]


def missing_reason(p: Tensor) -> str:
    """Why ``p`` has a gradient but no per-example statistics, as precisely as is known."""
    from synaprune.probes.grad_stats import _tracked_elsewhere

    if not _tracked_elsewhere([p])[0]:
        return ("no attached PerExampleGradStats tracks this parameter: attach synaprune."
                "PerExampleGradStats(model) before the forward pass")
    st = getattr(p, _STATE, None)
    if st is None or not st.recorded:
        return ("a PerExampleGradStats tracks this parameter, but no backward pass recorded "
                "statistics for it since they were last cleared: the statistics were cleared "
                "after backward (SynaPrune.zero_grad or PerExampleGradStats.zero between "
                "backward and step), or the backward ran while probes were paused, or the "
                "parameter was used outside the forward of the module that owns it (e.g. "
                "F.linear(x, other.weight))")
    return ("a PerExampleGradStats tracks this parameter, but its statistics hold no sum of "
            "squares (a probe with quantities=('sqnorm',) only?)")
