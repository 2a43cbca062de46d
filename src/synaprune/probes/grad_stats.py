"""Per-example gradient statistics, gathered during one ordinary backward pass.

Convention used throughout: a batch holds B examples, ``l_i`` is the loss of example ``i`` and
``g_i`` is the gradient of ``l_i`` with respect to one parameter (a tensor shaped like the
parameter). The user's loss is either mean-reduced, ``L = (1/B) sum_i l_i`` (``reduction="mean"``),
or sum-reduced, ``L = sum_i l_i`` (``reduction="sum"``). Statistics are always reported in the
per-example-loss convention, so both reductions give the same numbers:

* ``p.grad_sumsq`` (quantity ``"sumsq"``): ``sum_i g_i**2``, shaped like ``p``;
* ``p.grad_sqnorm_sum`` (quantity ``"sqnorm"``): ``sum_i ||g_i||**2``, a 0-d tensor (the sum of
  ``p.grad_sumsq`` over its coordinates, obtained without a pass over it);
* ``p.grad_batch_size``: the number of examples accumulated into those statistics;
* ``p.grad_reduction``: ``"mean"`` or ``"sum"``, the reduction of the loss behind ``p.grad``.

How they are obtained, per module that directly owns parameters (``delta`` is the gradient of
the loss with respect to the module's output, ``a`` its input):

* ``nn.Linear`` on a 2-D input ``a`` [B, in] with ``delta`` [B, out]: ``g_i = delta_i a_i^T``, so
  ``sum_i g_i**2 = (delta**2)^T (a**2)`` (one extra matrix product) and
  ``||g_i||**2 = ||delta_i||**2 ||a_i||**2`` (O(B (in + out)), no matrix product); the bias has
  ``g_i = delta_i``.
* ``nn.Linear`` on an N-D input [B, T, in] (T positions, flattened): the weight is shared across
  positions, ``g_i = sum_t delta_it a_it^T``. ``"sumsq"`` forms the per-example gradients
  [B, out, in] with one batched product and squares them. ``"sqnorm"`` alone uses
  ``||g_i||**2 = sum_{t,t'} (delta_it . delta_it') (a_it . a_it')``, the elementwise product of
  two [T, T] Gram matrices, or the materialised form when that is cheaper (T (in + out) >
  in * out).
* ``nn.Conv1d`` / ``nn.Conv2d``: the unfolded (im2col) form, which is a Linear layer per group
  with the output positions L as T: the same two choices, per group.
* Anything else (LayerNorm, Embedding, custom modules, or everything with
  ``force_fallback=True``): ``torch.func.vmap`` over examples of the vector-Jacobian product of
  ``torch.func.functional_call(module, params, (input_i,))`` with cotangent ``delta_i``.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Variable
from torch.func import functional_call, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from synaprune.probes import _fields as fields
from synaprune.probes._functional import linear_sumsq

Reduction = Literal["mean", "sum"]
Quantity = Literal["sumsq", "sqnorm"]
QUANTITIES: tuple[Quantity, ...] = ("sumsq", "sqnorm")

_LINEAR, _CONV, _FALLBACK = "linear", "conv", "fallback"

# Where per-example gradients are materialised, at most this many elements at once (chunks of
# examples); 2**24 elements is 64 MiB in float32.
_CHUNK_ELEMENTS = 2**24

# Depth of nested ``probes_paused()`` blocks. A plain module-level counter rather than a
# thread-local, because backward hooks may run on autograd's device threads.
_GLOBAL_PAUSE = [0]

# Probes that are attached (not removed), by id, in the order they were attached. Two probes
# writing the same parameter's statistics would count every example twice, so an ordinary probe
# refuses a parameter that another ordinary probe tracks, and a stand-in probe
# (:class:`_StandInProbe`) records nothing for a parameter that an ordinary probe or an earlier
# stand-in tracks. The version changes whenever the set does (attach, remove, garbage
# collection), so that stand-ins can cache their answer.
_LIVE: dict[int, weakref.ReferenceType[PerExampleGradStats]] = {}
_LIVE_VERSION = [0]


def _register(probe: PerExampleGradStats) -> None:
    key = id(probe)

    def collected(_: object, key: int = key) -> None:
        _LIVE.pop(key, None)
        _LIVE_VERSION[0] += 1

    _LIVE[key] = weakref.ref(probe, collected)
    _LIVE_VERSION[0] += 1


def _unregister(probe: PerExampleGradStats) -> None:
    if _LIVE.pop(id(probe), None) is not None:
        _LIVE_VERSION[0] += 1


def _attached() -> list[PerExampleGradStats]:
    """The attached probes, oldest first."""
    return [probe for ref in list(_LIVE.values())
            if (probe := ref()) is not None and not probe._removed]


def _owners(asker: PerExampleGradStats | None) -> list[PerExampleGradStats]:
    """The attached probes whose statistics ``asker`` must not write over: every ordinary probe
    but ``asker``, and, when ``asker`` is a stand-in, the stand-ins attached before it."""
    owners = []
    before_asker = True
    for probe in _attached():
        if probe is asker:
            before_asker = False
        elif not probe._stands_aside or (asker is not None and asker._stands_aside
                                         and before_asker):
            owners.append(probe)
    return owners


def _tracked_elsewhere(params: list[Tensor],
                       asker: PerExampleGradStats | None = None) -> list[bool]:
    """Per parameter: whether an attached probe that ``asker`` must leave alone tracks it (for
    ``asker=None``: whether an ordinary probe tracks it)."""
    owners = _owners(asker)
    return [any(id(p) in probe._ids for probe in owners) for p in params]


def remove_probes(model: nn.Module) -> int:
    """Remove every attached probe that tracks a parameter of ``model``, including those of a
    :class:`synaprune.diagnose.TrainingMonitor`; returns how many were removed.

    The way out when a probe is no longer reachable (a notebook cell run twice) and a new one
    is refused because the old one still tracks the parameters.
    """
    ids = {id(p) for p in model.parameters()}
    probes = [probe for probe in _attached() if probe._ids & ids]
    for probe in probes:
        probe.remove()
    return len(probes)


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


def _couples_examples(node: Any) -> bool:
    """Whether an autograd node is a batch normalisation over the batch's own statistics."""
    if "BatchNorm" not in type(node).__name__ or not getattr(node, "_saved_training", True):
        return False
    try:  # instance norm runs batch_norm on a [1, B * C, ...] view: no coupling across dim 0
        return node._saved_input.shape[0] > 1
    except (AttributeError, RuntimeError):
        return True


def _refuse_batch_statistics(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                             output: Tensor) -> None:
    """Walk the autograd graph of one module call, from its output back to its inputs, and
    refuse a batch normalisation in training mode inside it (e.g. ``F.batch_norm(x, None, None,
    training=True)`` in a custom module's forward)."""
    stop = {id(t.grad_fn) for t in _tensors(args, kwargs) if t.grad_fn is not None}
    todo, seen = [output.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen or id(node) in stop:
            continue
        seen.add(id(node))
        if _couples_examples(node):
            raise RuntimeError(
                f"PerExampleGradStats: {type(module).__name__} normalises with batch statistics "
                f"({type(node).__name__} in training mode) inside its forward, which couples the "
                "examples of a batch, so per-example gradients are not defined; normalise with "
                "running statistics (training=False), GroupNorm/LayerNorm, or remove the probe")
        todo.extend(nxt for nxt, _ in node.next_functions)


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


def _prefer_gram(positions: int, n_in: int, n_out: int) -> bool:
    """For g = D A^T with D [n_out, T] and A [n_in, T]: whether ||g||**2 is cheaper as
    sum((D^T D) * (A^T A)), T**2 (n_in + n_out) multiply-adds, than by forming g, T n_in n_out."""
    return positions * (n_in + n_out) < n_in * n_out


def _sqdot(a: Tensor, b: Tensor | None = None) -> Tensor:
    """sum(a * b) (sum(a**2) if b is None) as one dot product, a 0-d tensor."""
    a = a.reshape(-1)
    return torch.dot(a, a if b is None else b.reshape(-1))


class PerExampleGradStats:
    """Per-example gradient statistics from one ordinary backward pass.

    Attach it to a model, run forward and backward as usual; after every backward each tracked
    parameter ``p`` carries (attribute names are a contract with the optimizer and the monitor):

    * ``p.grad_sumsq`` (if ``"sumsq"`` is in ``quantities``): tensor shaped like ``p``,
      ``sum_i g_i**2`` where ``g_i`` is the gradient of the loss ``l_i`` of example ``i``.
    * ``p.grad_sqnorm_sum`` (if ``"sqnorm"`` is in ``quantities``): 0-d tensor,
      ``sum_i ||g_i||**2`` (equal to ``p.grad_sumsq.sum()``).
    * ``p.grad_batch_size``: int, the number of examples accumulated into the statistics.
    * ``p.grad_reduction``: ``"mean"`` or ``"sum"``, the ``reduction`` given here.
    * ``p.grad_extra`` (or None): gradient in ``p.grad`` that no recorded pass produced (a
      backward pass while probes were paused, before the probe existed, or the
      activation-gradient penalty's), kept apart so that aggregation acts on the data gradient.

    The statistics always describe ``p.grad`` (their life cycle is owned by
    ``synaprune.probes._fields``): they accumulate exactly when ``.grad`` does (micro-batches),
    start afresh when a backward pass finds ``.grad`` reset (``model.zero_grad()`` or any
    optimizer's ``zero_grad()``, with ``set_to_none`` True or False, or :meth:`zero`), and follow a
    rescaling of ``.grad`` (``clip_grad_norm_``, ``GradScaler.unscale_``, a manual multiplication)
    with the per-example gradients rescaled alike. A change they cannot follow (weight decay or
    another gradient added into ``.grad``, statistics of an ``autograd.grad`` pass that never
    reached ``.grad``) raises RuntimeError, saying so, when they are read (by
    :meth:`sum_grad_sq`, :meth:`sum_grad` or :class:`synaprune.SynaPrune`'s step).

    Statistics follow the per-example-loss convention: whether the loss is
    ``L = (1/B) sum_i l_i`` (``reduction="mean"``, output gradients carry a 1/B that the probe
    multiplies out) or ``L = sum_i l_i`` (``reduction="sum"``), ``grad_sumsq`` and
    ``grad_sqnorm_sum`` are the same. For a mean-reduced loss the mean squared norm of the
    per-example gradients of ``p`` is ``p.grad_sqnorm_sum / p.grad_batch_size``, and the
    gradient cancellation ``||gbar|| / sqrt(mean_i ||g_i||**2)`` of ``p`` is
    ``p.grad.norm() / (p.grad_sqnorm_sum / p.grad_batch_size).sqrt()``.

    Cost: ``"sqnorm"`` alone needs no product as large as a weight-gradient product for 2-D
    Linear inputs (two row norms and a dot product of length B per layer), and Gram matrices of
    the positions for N-D Linear and Conv; ``"sumsq"`` needs one extra matrix product per Linear
    layer and materialised per-example gradients for N-D Linear and Conv. With both, the scalar
    comes from the same intermediate results (row sums of the squares for 2-D Linear, else one
    sum over the parameter-sized result).

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
    calls :meth:`zero`, clearing statistics left on the parameters by an earlier probe. With
    ``"sumsq"`` the probe keeps a copy of each ``.grad`` at the end of every backward pass, to
    recognise a later rescaling (memory: one more gradient).

    Batch normalisation with the batch's own statistics couples the examples (l_i depends on
    every example), so per-example gradients are not defined; the probe raises RuntimeError for:
    every ``_BatchNorm`` module (BatchNorm1d/2d/3d, SyncBatchNorm, with or without parameters) in
    training mode or without running statistics; and a batch norm in training mode (an autograd
    ``*BatchNormBackward`` node with ``training=True`` over more than one row) inside the forward
    of a module served by the vmap fallback, e.g. ``F.batch_norm(x, None, None, training=True)``
    in a custom module. Not detected: such calls in the forward of a module that owns no
    parameter (other than a ``_BatchNorm``) or between modules (the parent's forward, the loss),
    and any other operation that mixes examples (``x - x.mean(0)``, attention across the batch):
    the statistics are then wrong without an error. Eval-mode batch norm, InstanceNorm, LayerNorm
    and GroupNorm normalise each example alone and are exact.

    Not supported: modules owning parameters whose output is not a single tensor (e.g. RNNs,
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
        quantities: which statistics to compute, a non-empty tuple of ``"sumsq"``
            (``p.grad_sumsq``, needed by :class:`synaprune.SynaPrune`'s ``rms`` and ``blend``)
            and ``"sqnorm"`` (``p.grad_sqnorm_sum``, enough for gradient cancellation). Default
            ``("sumsq",)``. ``("sqnorm",)`` is much cheaper than anything with ``"sumsq"``.
            Adding ``"sqnorm"`` to ``"sumsq"`` is not free: on benchmarks/monitor_cost.py's MLP
            it adds about 0.1 ms (1 %) to an ``rms`` step, as much as the one pass over
            ``grad_sumsq`` it saves a reader such as :class:`synaprune.diagnose.TrainingMonitor`.
        force_fallback: use the ``torch.func.vmap`` path for every module, including Linear and
            Conv (slower; for benchmarks and cross-checks).

    Attributes:
        params: the tracked parameters, in ``model.parameters()`` order.
        batch_size: number of examples seen by backward passes since the last :meth:`zero`.
        reduction: the reduction given at construction.
        quantities: the quantities computed, in the order of :data:`QUANTITIES`.

    Raises:
        ValueError: unknown ``reduction``, invalid ``quantities``, or no parameter requires grad.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> x, y = torch.randn(16, 4), torch.randn(16, 2)
        >>> with PerExampleGradStats(model, reduction="mean") as probe:
        ...     nn.functional.mse_loss(model(x), y).backward()
        >>> w = model[0].weight
        >>> w.grad_sumsq.shape, w.grad_batch_size, w.grad_reduction
        (torch.Size([8, 4]), 16, 'mean')
        >>> r = (w.grad_sumsq / w.grad_batch_size).sqrt()  # per-coordinate RMS of the g_i
        >>> model.zero_grad()
        >>> with PerExampleGradStats(model, quantities=("sqnorm",)):  # cancellation only
        ...     nn.functional.mse_loss(model(x), y).backward()
        >>> w.grad_sqnorm_sum.shape, w.grad_sumsq is None
        (torch.Size([]), True)
        >>> c = w.grad.norm() / (w.grad_sqnorm_sum / w.grad_batch_size).sqrt()
        >>> bool(0 < c <= 1)
        True
    """

    # A stand-in probe records nothing for parameters that another attached probe tracks
    # (see :class:`_StandInProbe`); an ordinary probe always records.
    _stands_aside = False

    def __init__(self, model: nn.Module, *, reduction: Reduction = "mean",
                 quantities: tuple[Quantity, ...] = ("sumsq",),
                 force_fallback: bool = False) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'")
        if (isinstance(quantities, str) or not isinstance(quantities, (tuple, list))
                or not quantities or any(q not in QUANTITIES for q in quantities)):
            raise ValueError(f"Invalid quantities: {quantities!r}; expected a non-empty tuple of "
                             f"names from {QUANTITIES}, e.g. ('sqnorm',)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.reduction: Reduction = reduction
        self.quantities: tuple[Quantity, ...] = tuple(q for q in QUANTITIES if q in quantities)
        self._sumsq = "sumsq" in self.quantities
        self._sqnorm = "sqnorm" in self.quantities
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
        self._ids = frozenset(id(p) for p in self.params)
        # Modules sharing a parameter with another module: always go through per-example sums.
        self._tied = {m for ms in owners.values() if len(ms) > 1 for m in ms}
        self._kind = {m: _kind_of(m, self.force_fallback) for m in self._own}
        # Graph-task id -> id(p) -> where this pass writes p's statistics (p itself, or a
        # penalty's staging slot), from synaprune.probes._fields.begin.
        self._dests: dict[int, dict[int, Any]] = {}
        self._now: dict[int, Any] = {}
        # Graph-task id -> (record, output gradient) pairs received during that backward pass;
        # the gradient is None when the record's statistics were already added in the hook.
        self._pending: dict[int, list[tuple[_Record, Tensor | None]]] = {}
        # Records whose graph is still alive, per module (a record lives as long as its hook).
        self._live: dict[nn.Module, weakref.WeakSet[_Record]] = {
            m: weakref.WeakSet() for m in self._own}
        self._pause_depth = 0
        self._computing = False
        self._removed = False
        self._warned: set[nn.Module] = set()
        self._handles = [m.register_forward_hook(self._forward_hook, with_kwargs=True)
                         for m in self._own]
        # Batch normalisation without parameters couples the examples all the same.
        self._handles += [m.register_forward_hook(self._check_batch_norm)
                          for m in model.modules()
                          if isinstance(m, _BatchNorm) and m not in self._own]
        self._aside: tuple[int, frozenset[nn.Module]] = (-1, frozenset())
        if not self._stands_aside:
            names = {id(p): n for n, p in model.named_parameters()}
            taken = [names[id(p)] for p, t in zip(self.params, _tracked_elsewhere(self.params),
                                                   strict=True) if t]
            if taken:
                for h in self._handles:
                    h.remove()
                raise ValueError(
                    f"parameter {taken[0]!r} is already tracked by another attached "
                    "PerExampleGradStats, and two probes would count every example twice: "
                    "call .remove() on the old probe, or synaprune.probes.remove_probes(model)")
        _register(self)
        self.zero()

    # -- public API ----------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove all hooks; later forward and backward passes record nothing. Idempotent.

        Statistics already on the parameters are left in place.
        """
        self._removed = True
        _unregister(self)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def __enter__(self) -> PerExampleGradStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def zero(self) -> None:
        """Clear the statistics: ``p.grad_sumsq``, ``p.grad_sqnorm_sum`` and ``p.grad_extra``
        to None (whatever the ``quantities``, so that no stale statistic is left behind),
        ``p.grad_batch_size = 0`` for every tracked parameter, and ``batch_size = 0``. ``p.grad``
        is not touched: gradient left in it is kept apart as ``p.grad_extra`` by the next
        backward pass (it is not described by any statistics)."""
        aside = (_tracked_elsewhere(self.params, self) if self._stands_aside
                 else [False] * len(self.params))
        for p, skip in zip(self.params, aside, strict=True):
            if skip:  # a stand-in probe never clears what another probe recorded
                continue
            fields.clear(p, self.reduction)
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
        if p.grad is None:
            return torch.zeros_like(p)
        stats = fields.read(p)
        if stats is not None and stats.extra is not None and stats.extra.any():
            raise RuntimeError("p.grad holds gradient that is not from the recorded data loss "
                               "(p.grad_extra): sum_i g_i cannot be recovered from it")
        if self.reduction == "sum":
            return p.grad
        if stats is None:
            if not p.grad.any():
                return torch.zeros_like(p)
            raise RuntimeError("p.grad is set but no examples were recorded for it; cannot undo "
                               f"the 1/B of a mean-reduced loss ({fields.missing_reason(p)})")
        if stats.pass_size is None:
            raise RuntimeError("p.grad accumulates mean-reduced losses of different batch "
                               "sizes; sum_i g_i cannot be recovered from it")
        return p.grad * (stats.batch_size / stats.passes)

    def sum_grad_sq(self, p: Tensor) -> Tensor:
        """``sum_i g_i**2`` for a tracked parameter: ``p.grad_sumsq``.

        Args:
            p: a tracked parameter.

        Returns:
            Tensor shaped like ``p`` (``p.grad_sumsq`` itself, not a copy); zeros if ``p`` has
            neither a gradient nor statistics.

        Raises:
            ValueError: ``p`` is not tracked, or this probe does not compute ``"sumsq"``.
            RuntimeError: ``p`` has a gradient but no statistics (it was used outside its
                module's forward, or back-propagated while paused or before the probe existed).
        """
        self._check_tracked(p)
        if not self._sumsq:
            raise ValueError(f"this PerExampleGradStats computes quantities={self.quantities}, "
                             "not 'sumsq'")
        if p.grad is None:
            return torch.zeros_like(p)
        stats = fields.read(p)
        if stats is not None and stats.sumsq is not None:
            return stats.sumsq
        raise RuntimeError("parameter has a gradient but no per-example statistics: "
                           + fields.missing_reason(p))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(reduction={self.reduction!r}, "
                f"quantities={self.quantities}, params={len(self.params)}, "
                f"batch_size={self.batch_size}, force_fallback={self.force_fallback})")

    # -- hooks -----------------------------------------------------------------------------------

    def _active(self) -> bool:
        return not (self._removed or self._pause_depth or _GLOBAL_PAUSE[0] or self._computing)

    def _modules_aside(self) -> frozenset[nn.Module]:
        """The hooked modules owning a parameter that another attached probe tracks (cached
        until the set of attached probes changes)."""
        version, modules = self._aside
        if version != _LIVE_VERSION[0]:
            version = _LIVE_VERSION[0]
            modules = frozenset(m for m, own in self._own.items()
                                if any(_tracked_elsewhere(list(own.values()), self)))
            self._aside = (version, modules)
        return modules

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
        if self._stands_aside and module in self._modules_aside():
            return
        kind = self._kind[module]
        if isinstance(module, _BatchNorm):
            self._check_batch_norm(module, args, output)
        if kind is _FALLBACK:
            _refuse_batch_statistics(module, args, kwargs, output)
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

    def _check_batch_norm(self, module: nn.Module, args: Any, output: Any) -> None:
        """Refuse batch normalisation that normalises with the batch's own statistics."""
        if not self._active() or not isinstance(output, Tensor) or not output.requires_grad:
            return
        bn: _BatchNorm = module  # type: ignore[assignment]
        if bn.training or bn.running_mean is None:
            raise RuntimeError(
                f"PerExampleGradStats: {type(module).__name__} normalising with batch statistics "
                "(training mode, or no running statistics) couples the examples of a batch, so "
                "per-example gradients are not defined; use eval mode, GroupNorm/LayerNorm, or "
                "remove the probe")

    def _on_grad(self, record: _Record, grad: Tensor) -> None:
        if not self._active():
            return
        task = torch._C._current_graph_task_id()
        pending = self._pending.get(task)
        if pending is None:
            pending = self._pending[task] = []
            Variable._execution_engine.queue_callback(functools.partial(self._finalize, task))
        module = record.module
        # Before p.grad accumulates in this pass: decide whether its statistics accumulate or
        # start afresh (synaprune.probes._fields owns that life cycle).
        dests = self._dests.setdefault(task, {})
        for p in self._own[module].values():
            if p.requires_grad and id(p) not in dests:
                dests[id(p)] = fields.begin(p, keep_ref=self._sumsq)
        self._now = dests
        if (record.kind is not _FALLBACK and module not in self._tied
                and len(self._live[module]) == 1):
            # The only call of this module whose graph is alive: no other gradient can reach
            # its parameters in this pass, so add the statistics now, while delta is fresh.
            record.check_unmodified()
            b = record.batch_size
            alpha = float(b) * float(b) if self.reduction == "mean" else 1.0
            if torch.is_grad_enabled():  # backward(create_graph=True)
                with torch.no_grad():
                    self._add_stats(record, grad.detach(), alpha)
            else:
                self._add_stats(record, grad, alpha)
            pending.append((record, None))
        else:
            pending.append((record, grad.detach()))

    def _finalize(self, task: int) -> None:
        """Runs once at the end of each backward pass that reached a hooked module."""
        fired = self._pending.pop(task, None)
        dests = self._dests.pop(task, {})
        if not fired or self._removed:
            return
        self._computing = True
        self._now = dests
        try:
            with torch.no_grad():
                self._record(fired)
        finally:
            self._computing = False
            self._now = {}

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
                self._add_stats(rec, delta, alpha)
                continue
            for p, g in self._per_example(rec, delta):
                prev = shared.get(id(p))
                shared[id(p)] = (p, g if prev is None else prev[1] + g)
        for p, g in shared.values():
            if self._sumsq:
                s = g.square().sum(0)
                if self._sqnorm:
                    self._put(p, "grad_sqnorm_sum", s.sum(), alpha)
                self._put(p, "grad_sumsq", s, alpha)
            else:
                self._put(p, "grad_sqnorm_sum", _sqdot(g), alpha)

        booked: set[int] = set()
        for module in counts:
            for p in self._own[module].values():
                if p.requires_grad and id(p) not in booked:
                    booked.add(id(p))
                    self._count(p, b)
        self.batch_size += b

    def _count(self, p: Tensor, b: int) -> None:
        """Book one backward pass of ``b`` examples into ``p``'s counters (once per pass)."""
        fields.book(self._now[id(p)], b, self.reduction)

    def _fresh(self, p: Tensor, name: str) -> bool:
        """Whether statistic ``name`` of ``p`` is absent in this pass's destination (the
        decision to start afresh was taken by ``fields.begin`` before ``.grad`` accumulated)."""
        return getattr(self._now[id(p)], name, None) is None

    def _put(self, p: Tensor, name: str, value: Tensor, alpha: float) -> None:
        """``p.<name> += alpha * value`` (or ``=`` when absent). ``value`` must be a new tensor."""
        if value.dtype != p.dtype:
            value = value.to(p.dtype)
        fields.put(self._now[id(p)], name, value, alpha)

    def _add_stats(self, rec: _Record, delta: Tensor, alpha: float) -> None:
        """Add alpha * the statistics of a module called once in this backward pass."""
        own = self._own[rec.module]
        if rec.kind is _LINEAR and rec.args[0].dim() == 2:
            self._add_linear_2d(own, rec.args[0], delta, alpha)
        elif self._sumsq:
            self._add_materialised(rec, own, delta, alpha)
        elif rec.kind is _FALLBACK:
            self._add_sqnorm_fallback(rec, own, delta, alpha)
        else:
            self._add_sqnorm_gram(rec, own, delta, alpha)

    def _add_linear_2d(self, own: dict[str, nn.Parameter], a: Tensor, delta: Tensor,
                       alpha: float) -> None:
        """Linear on a [B, in] input with delta [B, out]: g_i = delta_i a_i^T for the weight and
        delta_i for the bias, so sum_i g_i**2 = (delta**2)^T (a**2), sum_i delta_i**2 and
        sum_i ||g_i||**2 = sum_i ||delta_i||**2 ||a_i||**2, ||delta||_F**2."""
        w, b = own.get("weight"), own.get("bias")
        need_w = w is not None and w.requires_grad
        need_b = b is not None and b.requires_grad
        dtype = (w if w is not None else b).dtype  # type: ignore[union-attr]
        if delta.dtype != dtype:  # autocast
            delta = delta.to(dtype)
        if need_w and a.dtype != dtype:
            a = a.to(dtype)
        # Right after a backward pass every small op costs several microseconds, so alpha is
        # folded into the row norms once rather than applied to each statistic.
        if not self._sumsq:  # row norms only: O(B (in + out)), five or six small ops
            dn = torch.linalg.vector_norm(delta, dim=1)  # [B] ||delta_i||
            if alpha != 1.0:
                dn.mul_(math.sqrt(alpha))
            if need_w:
                gn = dn * torch.linalg.vector_norm(a, dim=1)  # [B] ||g_i|| = ||delta_i|| ||a_i||
                self._put(w, "grad_sqnorm_sum", torch.dot(gn, gn), 1.0)  # type: ignore[arg-type]
            if need_b:
                self._put(b, "grad_sqnorm_sum", torch.dot(dn, dn), 1.0)  # type: ignore[arg-type]
            return
        d2 = delta.square()  # [B, out]
        dn2 = d2.sum(1).mul_(alpha) if self._sqnorm else None  # [B] alpha ||delta_i||**2
        a2 = a.square() if need_w else None  # [B, in]
        if self._sqnorm and need_w:
            self._put(w, "grad_sqnorm_sum", torch.dot(dn2, a2.sum(1)),  # type: ignore[arg-type]
                      1.0)
        if need_b and self._sqnorm:
            self._put(b, "grad_sqnorm_sum", dn2.sum(), 1.0)  # type: ignore[arg-type, union-attr]
        dw = self._now[id(w)] if need_w else None
        db = self._now[id(b)] if need_b else None
        ws, bs = linear_sumsq(a2, d2, weight=need_w, bias=need_b, alpha=alpha,
                              out_weight=None if dw is None else dw.grad_sumsq,
                              out_bias=None if db is None else db.grad_sumsq)
        if dw is not None:
            dw.grad_sumsq = ws
        if db is not None:
            db.grad_sumsq = bs

    def _chunked_sums(self, rec: _Record, own: dict[str, nn.Parameter], delta: Tensor,
                      reduce: Callable[[Tensor], Tensor]) -> list[tuple[nn.Parameter, Tensor]]:
        """sum over the batch of ``reduce(g)`` for each parameter, where g holds the per-example
        gradients of a chunk of examples (chunks bound the memory of materialised gradients)."""
        batch = rec.batch_size
        numel = sum(p.numel() for p in own.values())
        chunk = max(1, _CHUNK_ELEMENTS // max(1, numel))
        sums: dict[int, tuple[nn.Parameter, Tensor]] = {}
        for start in range(0, batch, chunk):
            part = slice(start, min(start + chunk, batch)) if chunk < batch else None
            for p, g in self._per_example(rec, delta, part):
                v = reduce(g)
                prev = sums.get(id(p))
                sums[id(p)] = (p, v if prev is None else prev[1].add_(v))
        return list(sums.values())

    def _add_materialised(self, rec: _Record, own: dict[str, nn.Parameter], delta: Tensor,
                          alpha: float) -> None:
        """Per-example gradients materialised, in chunks of examples to bound memory; with
        ``"sqnorm"`` too, sum_i ||g_i||**2 is the sum of the parameter-sized sum_i g_i**2."""

        def sumsq(g: Tensor) -> Tensor:
            return (g.square() if _shares_memory(g, delta) else g.square_()).sum(0)

        for p, s in self._chunked_sums(rec, own, delta, sumsq):
            if self._sqnorm:
                self._put(p, "grad_sqnorm_sum", s.sum(), alpha)
            self._put(p, "grad_sumsq", s, alpha)

    def _add_sqnorm_fallback(self, rec: _Record, own: dict[str, nn.Parameter], delta: Tensor,
                             alpha: float) -> None:
        """sum_i ||g_i||**2 from per-example gradients by vmap, in chunks of examples."""
        for p, v in self._chunked_sums(rec, own, delta, _sqdot):
            self._put(p, "grad_sqnorm_sum", v, alpha)

    def _add_sqnorm_gram(self, rec: _Record, own: dict[str, nn.Parameter], delta: Tensor,
                         alpha: float) -> None:
        """sum_i ||g_i||**2 for an N-D Linear or a Conv, without the parameter-sized squares.

        Both are, per example and per group, a product g_i = D_i A_i^T with D_i [out, T] (output
        gradients at T positions) and A_i [in, T] (inputs, unfolded for a conv). Then
        ||g_i||**2 = sum((D_i^T D_i) * (A_i^T A_i)), two [T, T] Gram matrices, which costs
        T**2 (in + out) against T in out for forming g_i (used when that is cheaper).
        """
        a = rec.args[0]
        if delta.dtype != a.dtype:
            delta = delta.to(a.dtype)
        batch = rec.batch_size
        w, b = own.get("weight"), own.get("bias")
        if b is not None and b.requires_grad:  # g_i = sum over positions of delta_i
            if rec.kind is _LINEAR:
                gb = delta.reshape(batch, -1, delta.shape[-1]).sum(1)
            else:
                gb = delta.reshape(batch, delta.shape[1], -1).sum(-1)
            self._put(b, "grad_sqnorm_sum", _sqdot(gb), alpha)
        if w is None or not w.requires_grad:
            return
        # Per example: elements of the unfolded input, and of the Gram or product form.
        if rec.kind is _LINEAR:
            n_in, n_out = a.shape[-1], delta.shape[-1]
            positions, groups, unfolded = a[0].numel() // n_in, 1, 0
        else:
            conv: nn.Conv1d | nn.Conv2d = rec.module  # type: ignore[assignment]
            groups = conv.groups
            n_out = conv.out_channels // groups
            n_in = w[0].numel()  # C_in / groups * prod(kernel)
            positions = delta[0, 0].numel()
            unfolded = groups * n_in * positions
        use_gram = _prefer_gram(positions, n_in, n_out)
        per_example = unfolded + groups * (2 * positions**2 if use_gram else n_in * n_out)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, per_example))
        total: Tensor | None = None
        for start in range(0, batch, chunk):
            part = slice(start, min(start + chunk, batch))
            if rec.kind is _LINEAR:  # [b, 1, in, T] and [b, 1, out, T]
                aa = a[part].reshape(-1, positions, n_in).transpose(1, 2).unsqueeze(1)
                dd = delta[part].reshape(-1, positions, n_out).transpose(1, 2).unsqueeze(1)
            else:  # [b, groups, C_in/g * prod(k), L] and [b, groups, C_out/g, L]
                aa, dd = self._conv_unfold(rec.module, a[part], delta[part])
            if use_gram:
                v = _sqdot(aa.transpose(-1, -2) @ aa, dd.transpose(-1, -2) @ dd)
            else:
                v = _sqdot(dd @ aa.transpose(-1, -2))
            total = v if total is None else total.add_(v)
        self._put(w, "grad_sqnorm_sum", total, alpha)  # type: ignore[arg-type]

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
        batch, c_out = x.shape[0], module.out_channels  # type: ignore[union-attr]
        gb = delta.reshape(batch, c_out, -1).sum(-1) if need_b else None
        if not need_w:
            return None, gb
        cols, d = PerExampleGradStats._conv_unfold(module, x, delta)
        gw = torch.matmul(d, cols.transpose(-1, -2))  # [B, groups, C_out/g, C_in/g * prod(k)]
        return gw.reshape(batch, *module.weight.shape), gb  # type: ignore[union-attr]

    @staticmethod
    def _conv_unfold(module: nn.Module, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """The conv as a per-example, per-group product: the unfolded input
        [B, groups, C_in/g * prod(kernel), L] and the output gradient [B, groups, C_out/g, L],
        L output positions, so that the weight gradient of example i, group j is
        ``d[i, j] @ cols[i, j].T``."""
        conv: nn.Conv1d | nn.Conv2d = module  # type: ignore[assignment]
        batch, c_out, groups = x.shape[0], conv.out_channels, conv.groups
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
        return cols, d

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


class _StandInProbe(PerExampleGradStats):
    """A probe that fills a gap: for tools (the training monitor) that need per-example
    statistics on every step but must not disturb a probe the user attached for the optimizer.

    It differs from :class:`PerExampleGradStats` in one way: it stands aside for any module
    whose parameters an ordinary attached probe tracks, whenever that probe was attached (before
    or after this one), or a stand-in attached before this one (two monitors on one model): it
    records nothing there, so those parameters' statistics, batch size and reduction are the
    other probe's alone, and :meth:`zero` does not clear them. When that probe is removed, this
    one records again from the next forward pass. (Like every
    probe's, its statistics follow ``.grad``, so a ``torch.optim`` ``zero_grad`` resets them.)
    """

    _stands_aside = True
