"""Per-example gradient statistics, gathered during one ordinary backward pass.

Convention used throughout: a batch holds B examples, ``l_i`` is the loss of example ``i`` and
``g_i`` is the gradient of ``l_i`` with respect to one parameter (a tensor shaped like the
parameter). The user's loss is either mean-reduced, ``L = (1/B) sum_i l_i`` (``reduction="mean"``),
or sum-reduced, ``L = sum_i l_i`` (``reduction="sum"``). Statistics are always reported in the
per-example-loss convention, so both reductions give the same numbers:

* ``p.grad_sumsq``: ``sum_i g_i**2``, shaped like ``p``;
* ``p.grad_batch_size``: the number of examples accumulated into ``p.grad_sumsq``;
* ``p.grad_reduction``: ``"mean"`` or ``"sum"``, the reduction of the loss behind ``p.grad``.

How ``sum_i g_i**2`` is obtained, per module that directly owns parameters:

* ``nn.Linear`` on a 2-D input ``a`` [B, in] with output gradient ``delta`` [B, out]: the closed
  form ``(delta**2)^T (a**2)`` (one extra matrix product) and ``sum_i delta_i**2`` for the bias.
* ``nn.Linear`` on an N-D input [B, ..., in]: the weight is shared across positions, so the
  per-example gradients [B, out, in] are formed with one batched product, squared and summed.
* ``nn.Conv1d`` / ``nn.Conv2d``: the unfolded (im2col) form, one batched product per group.
* Anything else (LayerNorm, Embedding, custom modules, or everything with
  ``force_fallback=True``): ``torch.func.vmap`` over examples of the vector-Jacobian product of
  ``torch.func.functional_call(module, params, (input_i,))`` with cotangent ``delta_i``.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Variable
from torch.func import functional_call, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

Reduction = Literal["mean", "sum"]

_LINEAR, _CONV, _FALLBACK = "linear", "conv", "fallback"

# Where per-example gradients are materialised, at most this many elements at once (chunks of
# examples); 2**24 elements is 64 MiB in float32.
_CHUNK_ELEMENTS = 2**24

# Depth of nested ``probes_paused()`` blocks. A plain module-level counter rather than a
# thread-local, because backward hooks may run on autograd's device threads.
_GLOBAL_PAUSE = [0]


@contextmanager
def probes_paused() -> Iterator[None]:
    """Pause every :class:`PerExampleGradStats` inside the block.

    Forward passes and backward passes run inside the block record nothing, and do not disturb
    what a probe recorded before. Use it for backward passes that are not the data loss, e.g.
    the double backward of an activation-gradient penalty.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> probe = PerExampleGradStats(model)
        >>> with probes_paused():
        ...     model(torch.randn(4, 3)).sum().backward()
        >>> model.weight.grad_sumsq is None
        True
    """
    _GLOBAL_PAUSE[0] += 1
    try:
        yield
    finally:
        _GLOBAL_PAUSE[0] -= 1


class _Record:
    """What one forward call of a hooked module saved for its backward."""

    __slots__ = ("__weakref__", "args", "batch_size", "kind", "kwargs", "module", "versions")

    def __init__(self, module: nn.Module, kind: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], batch_size: int) -> None:
        self.module = module
        self.kind = kind
        self.args = args
        self.kwargs = kwargs
        self.batch_size = batch_size
        self.versions = [t._version for t in _tensors(args, kwargs)]

    def check_unmodified(self) -> None:
        """Raise if an input was modified in place between forward and backward."""
        if any(t._version != v for t, v in zip(_tensors(self.args, self.kwargs), self.versions,
                                                strict=True)):
            raise RuntimeError(
                f"PerExampleGradStats: an input of {type(self.module).__name__} was modified in "
                "place after its forward pass; per-example statistics would be wrong. Avoid "
                "in-place operations on layer inputs between forward and backward.")


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


def _has_grad_tensor(x: Any) -> bool:
    if isinstance(x, Tensor):
        return x.requires_grad
    if isinstance(x, (tuple, list)):
        return any(_has_grad_tensor(v) for v in x)
    if isinstance(x, dict):
        return any(_has_grad_tensor(v) for v in x.values())
    return False


def _kind_of(module: nn.Module, force_fallback: bool) -> str:
    """Which computation serves ``module``: a closed form, the unfolded form, or vmap."""
    if force_fallback:
        return _FALLBACK
    cls = type(module)
    if isinstance(module, nn.Linear) and cls.forward is nn.Linear.forward:
        return _LINEAR
    for base in (nn.Conv1d, nn.Conv2d):
        if (isinstance(module, base) and cls.forward is base.forward
                and cls._conv_forward is base._conv_forward):
            return _CONV
    return _FALLBACK


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _accumulate(p: Tensor, sumsq: Tensor, alpha: float) -> None:
    """p.grad_sumsq += alpha * sumsq (created if missing). ``sumsq`` must be a fresh tensor."""
    buf = getattr(p, "grad_sumsq", None)
    if buf is None:
        p.grad_sumsq = sumsq.mul_(alpha) if alpha != 1.0 else sumsq  # type: ignore[attr-defined]
    else:
        buf.add_(sumsq, alpha=alpha)


class PerExampleGradStats:
    """Per-example gradient statistics from one ordinary backward pass.

    Attach it to a model, run forward and backward as usual; after every backward each tracked
    parameter ``p`` carries (attribute names are a contract with the optimizer):

    * ``p.grad_sumsq``: tensor shaped like ``p``, ``sum_i g_i**2`` where ``g_i`` is the gradient
      of the loss ``l_i`` of example ``i``. It accumulates across backward calls, like ``.grad``.
    * ``p.grad_batch_size``: int, the number of examples accumulated into ``p.grad_sumsq``.
    * ``p.grad_reduction``: ``"mean"`` or ``"sum"``, the ``reduction`` given here.

    Statistics follow the per-example-loss convention: whether the loss is
    ``L = (1/B) sum_i l_i`` (``reduction="mean"``, output gradients carry a 1/B that the probe
    multiplies out) or ``L = sum_i l_i`` (``reduction="sum"``), ``grad_sumsq`` is the same.
    The batch size B of a module call is the first dimension of its (first tensor) input, and the
    i-th row of every input is example i. All modules reached by one backward pass must see the
    same B.

    Hooks: a forward hook on every module that directly owns a parameter requiring grad saves
    its input and puts a tensor hook on its output to receive the output gradient ``delta``.
    For a Linear or Conv module with a single live call the statistics are added right in that
    hook; otherwise (vmap fallback, shared weights) when the backward pass ends. Bookkeeping
    (``grad_batch_size``, :attr:`batch_size`) happens once per backward pass, at its end.
    Forward passes whose outputs do not require grad (``torch.no_grad()``, inference) are
    ignored. Where per-example gradients are materialised (N-D Linear, Conv, vmap), it is done
    in chunks of examples so that at most about 2**24 elements exist at once.

    Weight sharing is handled exactly: when a module runs several times before one backward pass
    (or a parameter is registered in several modules), the per-example gradients of all calls
    are summed before squaring. This materialises [B, *p.shape] for those parameters (not
    chunked), and needs every call to see the same batch size (else RuntimeError).

    ``grad_sumsq`` is computed from the local batch only; under DistributedDataParallel sum it
    (and ``grad_batch_size``) over ranks, as :class:`synaprune.SynaPrune` does. Construction
    calls :meth:`zero`, clearing statistics left on the parameters by an earlier probe.

    Not supported: modules whose gradient couples examples (BatchNorm in training mode raises
    RuntimeError), modules owning parameters whose output is not a single tensor (e.g. RNNs,
    MultiheadAttention: skipped with a warning, their parameters get no statistics), parameters
    used outside their owning module's forward (e.g. ``F.linear(x, other.weight)``: that use is
    not seen; :meth:`sum_grad_sq` raises if a parameter has a gradient but no statistics).
    Inputs of hooked modules must not be modified in place between forward and backward
    (RuntimeError). The vmap fallback reruns the module forward per example, so it must be
    deterministic (vmap raises on random operations).

    Args:
        model: the network; every submodule that directly owns a parameter with
            ``requires_grad=True`` (at construction) is tracked.
        reduction: ``"mean"`` or ``"sum"``, how the loss that will be back-propagated reduces
            its per-example losses.
        force_fallback: use the ``torch.func.vmap`` path for every module, including Linear and
            Conv (slower; for benchmarks and cross-checks).

    Attributes:
        params: the tracked parameters, in ``model.parameters()`` order.
        batch_size: number of examples seen by backward passes since the last :meth:`zero`.
        reduction: the reduction given at construction.

    Raises:
        ValueError: unknown ``reduction``, or no parameter requires grad.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> x, y = torch.randn(16, 4), torch.randn(16, 2)
        >>> with PerExampleGradStats(model, reduction="mean") as probe:
        ...     nn.functional.mse_loss(model(x), y).backward()
        >>> w = model[0].weight
        >>> w.grad_sumsq.shape, w.grad_batch_size, w.grad_reduction
        (torch.Size([8, 4]), 16, 'mean')
        >>> r = (w.grad_sumsq / w.grad_batch_size).sqrt()  # per-coordinate RMS of the g_i
    """

    def __init__(self, model: nn.Module, *, reduction: Reduction = "mean",
                 force_fallback: bool = False) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.reduction: Reduction = reduction
        self.force_fallback = bool(force_fallback)
        self.batch_size = 0

        # Parameters each hooked module owns directly, by name.
        self._own: dict[nn.Module, dict[str, nn.Parameter]] = {}
        owners: dict[int, list[nn.Module]] = {}
        for module in model.modules():
            own = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
            if own:
                self._own[module] = own
                for p in own.values():
                    owners.setdefault(id(p), []).append(module)
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no parameters that require grad")
        # Modules sharing a parameter with another module: always go through per-example sums.
        self._tied = {m for ms in owners.values() if len(ms) > 1 for m in ms}
        self._kind = {m: _kind_of(m, self.force_fallback) for m in self._own}
        # id(p) -> [backward passes booked, their common batch size (None if they differ),
        #           the grad_batch_size we left on p (to notice resets made from outside)].
        self._passes: dict[int, list[Any]] = {}
        # Graph-task id -> (record, output gradient) pairs received during that backward pass;
        # the gradient is None when the record's statistics were already added in the hook.
        self._pending: dict[int, list[tuple[_Record, Tensor | None]]] = {}
        # Records whose graph is still alive, per module (a record lives as long as its hook).
        self._live: dict[nn.Module, weakref.WeakSet[_Record]] = {
            m: weakref.WeakSet() for m in self._own}
        self._ones_cache: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
        self._pause_depth = 0
        self._computing = False
        self._removed = False
        self._warned: set[nn.Module] = set()
        self._handles = [m.register_forward_hook(self._forward_hook, with_kwargs=True)
                         for m in self._own]
        self.zero()

    # -- public API ----------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove all hooks; later forward and backward passes record nothing. Idempotent.

        Statistics already on the parameters are left in place.
        """
        self._removed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def __enter__(self) -> PerExampleGradStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def zero(self) -> None:
        """Clear the statistics: ``p.grad_sumsq = None``, ``p.grad_batch_size = 0`` for every
        tracked parameter, and ``batch_size = 0``. ``p.grad`` is not touched."""
        for p in self.params:
            p.grad_sumsq = None  # type: ignore[attr-defined]
            p.grad_batch_size = 0  # type: ignore[attr-defined]
            p.grad_reduction = self.reduction  # type: ignore[attr-defined]
        self._passes.clear()
        self.batch_size = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: this probe's hooks do nothing inside the block.

        Forward and backward passes inside record nothing and leave earlier records intact (a
        forward run outside the block can still be recorded by a later backward outside it).
        Use it for backward passes that are not the data loss, such as the double backward of
        an activation-gradient penalty. See also :func:`probes_paused` for every probe at once.
        """
        self._pause_depth += 1
        try:
            yield
        finally:
            self._pause_depth -= 1

    def sum_grad(self, p: Tensor) -> Tensor:
        """``sum_i g_i`` for a tracked parameter, from ``p.grad``.

        For ``reduction="sum"`` this is ``p.grad`` itself (not a copy: do not modify it in
        place). For ``"mean"``, ``p.grad`` holds ``(1/B) sum_i g_i`` per backward pass, so the
        result is ``p.grad * B`` with B = ``p.grad_batch_size / k`` over the k backward passes
        accumulated; those passes must have had equal batch sizes.

        Args:
            p: a tracked parameter.

        Returns:
            Tensor shaped like ``p``; zeros if ``p`` has no gradient and no statistics.

        Raises:
            ValueError: ``p`` is not tracked.
            RuntimeError: the sum cannot be recovered (mixed batch sizes under ``"mean"``, or a
                gradient without recorded examples).
        """
        self._check_tracked(p)
        n = int(getattr(p, "grad_batch_size", 0) or 0)
        if p.grad is None:
            if n == 0:
                return torch.zeros_like(p)
            raise RuntimeError("p.grad is None but statistics were recorded: gradients were "
                               "cleared without PerExampleGradStats.zero()")
        if self.reduction == "sum":
            return p.grad
        if n == 0:
            if not p.grad.any():
                return torch.zeros_like(p)
            raise RuntimeError("p.grad is set but no examples were recorded for it since the "
                               "last zero(); cannot undo the 1/B of a mean-reduced loss")
        count, size, _ = self._passes.get(id(p), (0, None, 0))
        if count == 0 or size is None:
            raise RuntimeError("p.grad accumulates mean-reduced losses of different batch "
                               "sizes; sum_i g_i cannot be recovered from it")
        return p.grad * (n / count)

    def sum_grad_sq(self, p: Tensor) -> Tensor:
        """``sum_i g_i**2`` for a tracked parameter: ``p.grad_sumsq``.

        Args:
            p: a tracked parameter.

        Returns:
            Tensor shaped like ``p`` (``p.grad_sumsq`` itself, not a copy); zeros if ``p`` has
            neither a gradient nor statistics.

        Raises:
            ValueError: ``p`` is not tracked.
            RuntimeError: ``p`` has a gradient but no statistics (it was used outside its
                module's forward, or back-propagated while paused or before the probe existed).
        """
        self._check_tracked(p)
        sq = getattr(p, "grad_sumsq", None)
        if sq is not None:
            return sq
        if p.grad is None:
            return torch.zeros_like(p)
        raise RuntimeError(
            "parameter has a gradient but no per-example statistics: it was used outside the "
            "forward of the module that owns it (e.g. F.linear(x, other.weight)), or the "
            "backward ran while paused or before PerExampleGradStats was attached")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(reduction={self.reduction!r}, "
                f"params={len(self.params)}, batch_size={self.batch_size}, "
                f"force_fallback={self.force_fallback})")

    # -- hooks -----------------------------------------------------------------------------------

    def _active(self) -> bool:
        return not (self._removed or self._pause_depth or _GLOBAL_PAUSE[0] or self._computing)

    def _check_tracked(self, p: Tensor) -> None:
        if not any(p is q for q in self.params):
            raise ValueError("parameter is not tracked by this PerExampleGradStats")

    def _forward_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                      output: Any) -> None:
        if not self._active():
            return
        if not isinstance(output, Tensor):
            if _has_grad_tensor(output) and module not in self._warned:
                self._warned.add(module)
                warnings.warn(
                    f"PerExampleGradStats: {type(module).__name__} returns "
                    f"{type(output).__name__}, not a single tensor; its parameters get no "
                    "per-example statistics", stacklevel=2)
            return
        if not output.requires_grad:
            return
        kind = self._kind[module]
        if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
            raise RuntimeError(
                f"PerExampleGradStats: {type(module).__name__} normalising with batch statistics "
                "(training mode, or no running statistics) couples the examples of a batch, so "
                "per-example gradients are not defined; use eval mode, GroupNorm/LayerNorm, or "
                "remove the probe")
        if kind is _FALLBACK:
            args = tuple(_detach(a) for a in args)
            kwargs = {k: _detach(v) for k, v in kwargs.items()}
            first = next(iter(_tensors(args, kwargs)), None)
            ndim_needed = 1
        else:
            first = args[0] if args else kwargs.get("input")
            if isinstance(first, Tensor):
                first = first.detach()
                args, kwargs = (first,), {}
            # Linear: [B, ..., in]; Conv1d: [B, C, L]; Conv2d: [B, C, H, W].
            ndim_needed = 2 if kind is _LINEAR else module.weight.dim()
        if not isinstance(first, Tensor) or first.dim() < ndim_needed:
            shape = tuple(first.shape) if isinstance(first, Tensor) else None
            raise RuntimeError(
                f"PerExampleGradStats: {type(module).__name__} needs a batched input whose "
                f"first dimension indexes the examples; got input shape {shape}")
        record = _Record(module, kind, args, kwargs, first.shape[0])
        self._live[module].add(record)
        output.register_hook(functools.partial(self._on_grad, record))

    def _on_grad(self, record: _Record, grad: Tensor) -> None:
        if not self._active():
            return
        task = torch._C._current_graph_task_id()
        pending = self._pending.get(task)
        if pending is None:
            pending = self._pending[task] = []
            Variable._execution_engine.queue_callback(functools.partial(self._finalize, task))
        module = record.module
        if (record.kind is not _FALLBACK and module not in self._tied
                and len(self._live[module]) == 1):
            # The only call of this module whose graph is alive: no other gradient can reach
            # its parameters in this pass, so add the statistics now, while delta is fresh.
            record.check_unmodified()
            b = record.batch_size
            alpha = float(b) * float(b) if self.reduction == "mean" else 1.0
            if torch.is_grad_enabled():  # backward(create_graph=True)
                with torch.no_grad():
                    self._add_sumsq(record, grad.detach(), alpha)
            else:
                self._add_sumsq(record, grad, alpha)
            pending.append((record, None))
        else:
            pending.append((record, grad.detach()))

    def _finalize(self, task: int) -> None:
        """Runs once at the end of each backward pass that reached a hooked module."""
        fired = self._pending.pop(task, None)
        if not fired or self._removed:
            return
        self._computing = True
        try:
            with torch.no_grad():
                self._record(fired)
        finally:
            self._computing = False

    # -- computation -----------------------------------------------------------------------------

    def _record(self, fired: list[tuple[_Record, Tensor | None]]) -> None:
        b = fired[0][0].batch_size
        for rec, delta in fired:
            if rec.batch_size != b:
                sizes = sorted({(type(r.module).__name__, r.batch_size) for r, _ in fired})
                raise RuntimeError(
                    "PerExampleGradStats: modules reached by one backward pass saw different "
                    f"batch sizes (first input dimension): {sizes}. Every module input must "
                    "have the examples along dimension 0 (do not fold other dimensions into it)")
            if delta is not None:  # (records done in the hook were checked there)
                rec.check_unmodified()
        alpha = float(b) * float(b) if self.reduction == "mean" else 1.0

        # Modules called once and sharing no parameter: direct sums of squares.
        counts: dict[nn.Module, int] = {}
        for rec, _ in fired:
            counts[rec.module] = counts.get(rec.module, 0) + 1
        shared: dict[int, tuple[Tensor, Tensor]] = {}  # id(p) -> (p, sum over calls of g_i)
        for rec, delta in fired:
            module = rec.module
            if delta is None:  # done in the hook
                continue
            if counts[module] == 1 and module not in self._tied:
                self._add_sumsq(rec, delta, alpha)
                continue
            for p, g in self._per_example(rec, delta):
                prev = shared.get(id(p))
                shared[id(p)] = (p, g if prev is None else prev[1] + g)
        for p, g in shared.values():
            _accumulate(p, g.square().sum(0), alpha)

        booked: set[int] = set()
        for module in counts:
            for p in self._own[module].values():
                if p.requires_grad and id(p) not in booked:
                    booked.add(id(p))
                    self._count(p, b)
        self.batch_size += b

    def _count(self, p: Tensor, b: int) -> None:
        """Book one backward pass of ``b`` examples into ``p``'s counters (once per pass)."""
        n = int(getattr(p, "grad_batch_size", 0) or 0)
        passes = self._passes.get(id(p))
        if n == 0 or passes is None or passes[2] != n:  # fresh, or reset from outside
            passes = self._passes[id(p)] = [0, b, 0] if n == 0 else [0, None, n]
        passes[0] += 1
        if passes[1] != b:
            passes[1] = None
        passes[2] = n + b
        p.grad_batch_size = n + b  # type: ignore[attr-defined]
        p.grad_reduction = self.reduction  # type: ignore[attr-defined]

    def _add_sumsq(self, rec: _Record, delta: Tensor, alpha: float) -> None:
        """Add alpha * sum_i g_i**2 for a module called once in this backward pass."""
        own = self._own[rec.module]
        if rec.kind is _LINEAR and rec.args[0].dim() == 2:
            w, b = own.get("weight"), own.get("bias")
            a = rec.args[0]
            dtype = (w if w is not None else b).dtype  # type: ignore[union-attr]
            if delta.dtype != dtype:  # autocast
                delta = delta.to(dtype)
            d2 = delta.square()  # [B, out]
            if w is not None and w.requires_grad:
                a2 = a.square() if a.dtype == dtype else a.to(dtype).square()  # [B, in]
                buf = getattr(w, "grad_sumsq", None)
                if buf is None:  # beta=0: the uninitialised buffer is ignored, not read
                    w.grad_sumsq = torch.empty_like(w).addmm_(  # type: ignore[attr-defined]
                        d2.t(), a2, beta=0, alpha=alpha)
                else:
                    buf.addmm_(d2.t(), a2, alpha=alpha)
            if b is not None and b.requires_grad:  # alpha * sum_i d2_i as one gemv
                ones = self._ones(d2.shape[0], d2)
                buf = getattr(b, "grad_sumsq", None)
                if buf is None:
                    b.grad_sumsq = torch.empty_like(b).addmv_(  # type: ignore[attr-defined]
                        d2.t(), ones, beta=0, alpha=alpha)
                else:
                    buf.addmv_(d2.t(), ones, alpha=alpha)
            return
        # Materialised per-example gradients, in chunks of examples to bound memory.
        batch = rec.batch_size
        numel = sum(p.numel() for p in own.values())
        chunk = max(1, _CHUNK_ELEMENTS // max(1, numel))
        sums: dict[int, tuple[Tensor, Tensor]] = {}
        for start in range(0, batch, chunk):
            part = slice(start, min(start + chunk, batch)) if chunk < batch else None
            for p, g in self._per_example(rec, delta, part):
                sq = g.square() if _shares_memory(g, delta) else g.square_()
                s = sq.sum(0)
                prev = sums.get(id(p))
                sums[id(p)] = (p, s if prev is None else prev[1].add_(s))
        for p, s in sums.values():
            _accumulate(p, s, alpha)

    def _ones(self, n: int, like: Tensor) -> Tensor:
        """A cached vector of n ones with the dtype and device of ``like``."""
        key = (n, like.dtype, like.device)
        ones = self._ones_cache.get(key)
        if ones is None:
            ones = self._ones_cache[key] = torch.ones(n, dtype=like.dtype, device=like.device)
        return ones

    def _per_example(self, rec: _Record, delta: Tensor,
                     part: slice | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per-example gradients [B, *p.shape] of the module's own parameters (unscaled),
        for the examples in ``part`` (all if None). They may share memory with ``delta``."""
        own = self._own[rec.module]
        if rec.kind is _FALLBACK:
            return self._per_example_vmap(rec, delta, own, part)
        a = rec.args[0]
        if part is not None:
            a, delta = a[part], delta[part]
        if delta.dtype != a.dtype:
            delta = delta.to(a.dtype)
        batch = a.shape[0]
        w, b = own.get("weight"), own.get("bias")
        need_w = w is not None and w.requires_grad
        need_b = b is not None and b.requires_grad
        if rec.kind is _LINEAR:
            a3 = a.reshape(batch, -1, a.shape[-1])  # [B, T, in]
            d3 = delta.reshape(batch, -1, delta.shape[-1])  # [B, T, out]
            if d3.shape[1] == 1:  # 2-D input: outer products
                gw = d3.transpose(1, 2) * a3 if need_w else None
                gb = d3[:, 0] if need_b else None
            else:
                gw = torch.bmm(d3.transpose(1, 2), a3) if need_w else None
                gb = d3.sum(1) if need_b else None
        else:
            gw, gb = self._conv_per_example(rec.module, a, delta, need_w, need_b)
        out = []
        if need_w and gw is not None:
            out.append((w, gw.to(w.dtype)))  # type: ignore[union-attr]
        if need_b and gb is not None:
            out.append((b, gb.to(b.dtype)))  # type: ignore[union-attr]
        return out

    @staticmethod
    def _conv_per_example(module: nn.Module, x: Tensor, delta: Tensor, need_w: bool,
                          need_b: bool) -> tuple[Tensor | None, Tensor | None]:
        """Per-example conv gradients by the unfolded form: weight [B, *w.shape], bias [B, C]."""
        conv: nn.Conv1d | nn.Conv2d = module  # type: ignore[assignment]
        batch, c_out, groups = x.shape[0], conv.out_channels, conv.groups
        gb = delta.reshape(batch, c_out, -1).sum(-1) if need_b else None
        if not need_w:
            return None, gb
        one_d = isinstance(conv, nn.Conv1d)
        kernel, dilation, stride = conv.kernel_size, conv.dilation, conv.stride
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                pads = [(0, 0)] * len(kernel)
            else:  # "same": as torch does, the odd extra element goes at the end
                pads = []
                for k, d in zip(kernel, dilation, strict=True):
                    total = d * (k - 1)
                    pads.append((total // 2, total - total // 2))
        else:
            pads = [(p, p) for p in conv.padding]
        unfold_pad: tuple[int, ...] = (0, 0)
        if any(lo or hi for lo, hi in pads):
            symmetric = all(lo == hi for lo, hi in pads)
            if conv.padding_mode == "zeros" and symmetric and not one_d:
                unfold_pad = tuple(lo for lo, _ in pads)
            else:
                flat = [v for lo_hi in reversed(pads) for v in lo_hi]
                mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
                x = F.pad(x, flat, mode=mode)
        if one_d:
            x = x.unsqueeze(2)
            kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        cols = F.unfold(x, kernel, dilation=dilation, padding=unfold_pad, stride=stride)
        positions = cols.shape[-1]  # cols: [B, C_in * prod(kernel), L]
        cols = cols.reshape(batch, groups, -1, positions)
        d = delta.reshape(batch, groups, c_out // groups, positions)
        gw = torch.matmul(d, cols.transpose(-1, -2))  # [B, groups, C_out/g, C_in/g * prod(k)]
        return gw.reshape(batch, *conv.weight.shape), gb

    def _per_example_vmap(self, rec: _Record, delta: Tensor, own: dict[str, nn.Parameter],
                          part: slice | None) -> list[tuple[Tensor, Tensor]]:
        """vmap over examples of the VJP of functional_call(module, params, input_i)."""
        module = rec.module
        live = {n: p for n, p in own.items() if p.requires_grad}
        if not live:
            return []
        params = {n: p.detach() for n, p in live.items()}
        batch = rec.batch_size
        args, kwargs = rec.args, rec.kwargs

        def batched(v: Any) -> bool:
            return isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == batch

        arg_mask = [batched(a) for a in args]
        kw_mask = {k: batched(v) for k, v in kwargs.items()}
        values = tuple([a for a, m in zip(args, arg_mask, strict=True) if m]
                       + [v for k, v in kwargs.items() if kw_mask[k]])
        if part is not None:
            values, delta = tuple(v[part] for v in values), delta[part]

        def one(prm: dict[str, Tensor], vals: tuple[Tensor, ...], d: Tensor) -> dict[str, Tensor]:
            it = iter(vals)
            args_i = tuple(next(it).unsqueeze(0) if m else a
                           for a, m in zip(args, arg_mask, strict=True))
            kwargs_i = {k: next(it).unsqueeze(0) if kw_mask[k] else v for k, v in kwargs.items()}
            _, vjp_fn = vjp(lambda q: functional_call(module, q, args_i, kwargs_i), prm)
            return vjp_fn(d.unsqueeze(0))[0]

        grads = vmap(one, in_dims=(None, 0, 0))(params, values, delta)
        return [(p, grads[n]) for n, p in live.items()]
