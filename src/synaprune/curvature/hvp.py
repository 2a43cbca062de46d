"""Hessian-vector products of a model's loss, matrix-free.

The Hessian is that of the *dataset's mean loss* with respect to a list of parameters:

    L(theta) = (1 / N) * sum_b n_b * L_b(theta),    N = sum_b n_b,

where batch b holds n_b examples and ``L_b = loss_fn(model(x_b), y_b)`` is that batch's
mean-reduced loss. With a single batch this is just the Hessian of ``loss_fn(model(x), y)``,
whatever its reduction.

Vectors come in two forms and every product returns the form it was given:

* a flat tensor of size [n], n = sum of the parameters' numels, laid out parameter after parameter
  in the order of ``params``, each parameter flattened in row-major order (``torch.cat`` of
  ``p.reshape(-1)``);
* a list of tensors shaped like the parameters, one per parameter, in the order of ``params``.

Three ways to compute a product H v (all give the same numbers up to rounding):

* ``"reuse-graph"`` (default): the gradient g is computed once with ``create_graph=True`` and kept;
  each product is one backward pass of g . v, ``autograd.grad(g, params, grad_outputs=v,
  retain_graph=True)``. On a 5.6k-parameter MLP it costs about 1.6x a plain gradient
  (forward + backward), within 0.1x of a bare double backward (docs/benchmarks-curvature.md),
  but it keeps the first-order graph of every batch in memory for as long as the operator lives.
* ``"rebuild"``: every product runs forward, backward with ``create_graph=True`` and a second
  backward over each batch again (about 2.3-2.8x a plain gradient); memory is one batch's.
* ``"forward-over-reverse"``: ``torch.func.jvp`` of a reverse-mode gradient (about 5-6x), with no
  graph kept between products. In torch 2.13 ``jvp(grad(f))`` fails on ``F.mse_loss``
  ("ZeroTensors are immutable"), while ``jvp(jacrev(f))`` of the same scalar function works and
  costs the same, so the gradient is taken with ``torch.func.jacrev``. Should torch.func still
  fail with that error, it is caught and re-raised as a ``RuntimeError`` that names the way out.
  (``torch.func.linearize`` of the same function crashes the process, so it is not offered.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

HVP_METHODS = ("reuse-graph", "rebuild", "forward-over-reverse")

LossFn = Callable[[Any, Any], Tensor]
Vector = Tensor | Sequence[Tensor]


def _is_pair(data: Any) -> bool:
    """True when ``data`` is one ``(x, y)`` batch rather than an iterable of batches."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor)


def _as_batches(data: Any) -> list[tuple[Any, Any]]:
    """Normalise ``data`` to a list of ``(x, y)`` pairs, reading an iterable exactly once."""
    if _is_pair(data):
        return [(data[0], data[1])]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise ValueError(
            "data must be an (x, y) pair of tensors or an iterable of (x, y) batches, "
            f"got {type(data).__name__}"
        )
    batches = []
    for i, batch in enumerate(data):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"batch {i} is not an (x, y) pair: got {type(batch).__name__}")
        batches.append((batch[0], batch[1]))
    if not batches:
        raise ValueError("data holds no batches")
    return batches


def _batch_size(x: Any, y: Any, index: int) -> int:
    """Number of examples in a batch: the leading dimension of x (or of y if x is no tensor)."""
    sizes = [t.shape[0] for t in (x, y) if isinstance(t, Tensor) and t.dim() > 0]
    if not sizes:
        raise ValueError(f"batch {index}: neither x nor y is a tensor with a batch dimension")
    if len(set(sizes)) > 1:
        raise ValueError(
            f"batch {index}: x has {sizes[0]} examples but y has {sizes[1]} "
            "(leading dimensions differ)"
        )
    if sizes[0] == 0:
        raise ValueError(f"batch {index} is empty")
    return int(sizes[0])


def _resolve_params(model: nn.Module, params: Iterable[Tensor] | None) -> list[Tensor]:
    if params is None:
        resolved = [p for p in model.parameters() if p.requires_grad]
    else:
        if isinstance(params, Tensor):
            raise ValueError("params must be an iterable of tensors, not a single tensor")
        resolved = list(params)
    if not resolved:
        raise ValueError("no parameters to differentiate: the list of params is empty")
    seen: set[int] = set()
    for i, p in enumerate(resolved):
        if not isinstance(p, Tensor):
            raise ValueError(f"params[{i}] is not a tensor: {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
        if id(p) in seen:
            raise ValueError(f"params[{i}] appears twice in params")
        seen.add(id(p))
        if p.dtype != resolved[0].dtype or p.device != resolved[0].device:
            raise ValueError(
                f"params[{i}] is {p.dtype} on {p.device} but params[0] is "
                f"{resolved[0].dtype} on {resolved[0].device}: all must agree"
            )
        if not p.dtype.is_floating_point:
            raise ValueError(f"params[{i}] has non-floating dtype {p.dtype}")
    return resolved


class HessianOperator:
    """The Hessian of a model's mean loss as a matrix-free, symmetric linear operator.

    Built once from ``model, loss_fn, data``; then ``op.matvec(v)`` (or ``op @ v``) returns H v.
    ``op.num_products`` counts the products computed so far (one product is one H v over the whole
    dataset, whatever the number of batches). The operator is fixed at construction: an iterable
    of batches is read once and kept, so a shuffling ``DataLoader`` still gives one Hessian. The
    model is evaluated in whatever mode it is in: call ``model.eval()`` first if it has dropout
    or batch norm.

    Args:
        model: the network; called as ``model(x)``.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar tensor, the batch's *mean* loss (this is what
            makes the batch weighting n_b / N give the dataset mean; with one batch any reduction
            works).
        data: one ``(x, y)`` pair of tensors, or an iterable of ``(x, y)`` batches (a list, a
            ``DataLoader``, a generator). The number of examples in a batch is the leading
            dimension of ``x`` (of ``y`` when ``x`` is not a tensor).
        params: the parameters to differentiate, in the order that defines the flat layout;
            default all parameters of ``model`` that require grad. All must share one floating
            dtype and device; the operator's ``dtype`` and ``device`` are theirs.
        method: ``"reuse-graph"`` (default, fastest, keeps the first-order graphs in memory),
            ``"rebuild"`` (recomputes them per product) or ``"forward-over-reverse"``
            (``torch.func``; params must then be parameters of ``model``).

    Attributes:
        params: list of the parameter tensors.
        shapes: list of their shapes.
        dim: n, the number of scalar parameters (the operator is n x n).
        dtype, device: those of the parameters.
        loss: the dataset's mean loss at the current parameters (float).
        num_products: number of Hessian-vector products computed so far.
        num_examples: N, the total number of examples.

    Raises:
        ValueError: unknown method, empty or inconsistent params, malformed or empty data,
            batches whose x and y disagree in length, or a loss that is not a scalar or does
            not depend on the parameters.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from synaprune.curvature import HessianOperator
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> op = HessianOperator(model, nn.functional.mse_loss, (x, y))
        >>> op.dim
        21
        >>> hv = op.matvec(torch.ones(op.dim, dtype=torch.float64))  # flat in, flat out: [21]
        >>> hv.shape, op.num_products
        (torch.Size([21]), 1)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        params: Iterable[Tensor] | None = None,
        method: str = "reuse-graph",
    ) -> None:
        if method not in HVP_METHODS:
            raise ValueError(f"Invalid method: {method!r}; expected one of {HVP_METHODS}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model(x), y)")
        self.model = model
        self.loss_fn = loss_fn
        self.method = method
        self.params = _resolve_params(model, params)
        self.shapes = [p.shape for p in self.params]
        self._numels = [p.numel() for p in self.params]
        self.dim = int(sum(self._numels))
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self._batches = _as_batches(data)
        sizes = [_batch_size(x, y, i) for i, (x, y) in enumerate(self._batches)]
        self.num_examples = int(sum(sizes))
        self._weights = [n_b / self.num_examples for n_b in sizes]
        self.num_products = 0
        self._names: list[str] | None = None
        if method == "forward-over-reverse":
            names = {id(p): name for name, p in model.named_parameters()}
            missing = [i for i, p in enumerate(self.params) if id(p) not in names]
            if missing:
                raise ValueError(
                    f"forward-over-reverse needs params that belong to model; params{missing} "
                    "do not"
                )
            self._names = [names[id(p)] for p in self.params]
        # One pass over the data: checks the loss, and gives the loss and the gradient; the
        # reuse-graph method keeps this pass's graph for every later product.
        keep = method == "reuse-graph"
        total_loss = 0.0
        grads: list[Tensor] | None = None
        for i, ((x, y), w) in enumerate(zip(self._batches, self._weights, strict=True)):
            loss = self._batch_loss(x, y, i)
            if not loss.requires_grad:
                raise ValueError(f"the loss of batch {i} does not depend on the parameters")
            total_loss += w * float(loss.detach())
            g_b = torch.autograd.grad(loss * w, self.params, create_graph=keep, allow_unused=True)
            g_b = [
                torch.zeros_like(p) if g is None else g
                for g, p in zip(g_b, self.params, strict=True)
            ]
            grads = g_b if grads is None else [a + b for a, b in zip(grads, g_b, strict=True)]
        assert grads is not None
        self.loss = total_loss
        self._grads = grads if keep else None
        # The pieces of the kept gradient that depend on the parameters (a piece that does not
        # has zero second derivatives), fixed once so that a product is one bare backward.
        self._linked = [i for i, g in enumerate(grads) if keep and g.requires_grad]
        self._linked_grads = [grads[i] for i in self._linked]
        self._gradient = torch.cat([g.detach().reshape(-1) for g in grads])

    # ----------------------------------------------------------------------------- vectors
    def flatten(self, vectors: Sequence[Tensor]) -> Tensor:
        """Concatenate parameter-shaped tensors into one flat vector.

        Args:
            vectors: list of tensors, one per parameter, shaped like it.

        Returns:
            Tensor of size [n] in the operator's dtype and device.

        Raises:
            ValueError: wrong number of tensors or a wrong shape.
        """
        return torch.cat([v.reshape(-1) for v in self._check_list(vectors)])

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a flat vector of size [n] into tensors shaped like the parameters (views).

        Raises:
            ValueError: ``flat`` is not a tensor of size [n].
        """
        flat = self._check_flat(flat)
        return [c.view(s) for c, s in zip(flat.split(self._numels), self.shapes, strict=True)]

    def _check_flat(self, v: Tensor) -> Tensor:
        if v.dim() != 1 or v.shape[0] != self.dim:
            raise ValueError(
                f"a flat vector must have shape [{self.dim}] (the number of parameters), "
                f"got {list(v.shape)}"
            )
        return v.to(dtype=self.dtype, device=self.device)

    def _check_list(self, vs: Sequence[Tensor]) -> list[Tensor]:
        if len(vs) != len(self.params):
            raise ValueError(
                f"expected {len(self.params)} tensors (one per parameter), got {len(vs)}"
            )
        out = []
        for i, (v, s) in enumerate(zip(vs, self.shapes, strict=True)):
            if not isinstance(v, Tensor):
                raise ValueError(f"vector[{i}] is not a tensor: {type(v).__name__}")
            if v.shape != s:
                raise ValueError(
                    f"vector[{i}] has shape {list(v.shape)}, parameter {i} has {list(s)}"
                )
            out.append(v.to(dtype=self.dtype, device=self.device))
        return out

    # ----------------------------------------------------------------------------- products
    def matvec(self, v: Vector) -> Tensor | list[Tensor]:
        """The Hessian-vector product H v.

        Args:
            v: a flat tensor of size [n], or a list of tensors shaped like the parameters.
                Cast to the operator's dtype and device.

        Returns:
            H v in the form of ``v``: a tensor of size [n], or a list of parameter-shaped
            tensors. Detached from any graph.

        Raises:
            ValueError: wrong size, wrong number of tensors, or a wrong shape.
            RuntimeError: ``method="forward-over-reverse"`` on a loss that ``torch.func`` cannot
                differentiate forward-over-reverse ("ZeroTensors are immutable").
        """
        if isinstance(v, Tensor):
            if self.method == "reuse-graph":
                return self._reuse_graph_flat(self._check_flat(v))
            return self.flatten(self._product(self.unflatten(v)))
        if isinstance(v, (list, tuple)):
            return self._product(self._check_list(v))
        raise ValueError(f"v must be a tensor of size [{self.dim}] or a list of tensors")

    __call__ = matvec

    def __matmul__(self, v: Vector) -> Tensor | list[Tensor]:
        return self.matvec(v)

    def gradient(self) -> Tensor:
        """The gradient of the dataset's mean loss, a flat tensor of size [n] (detached)."""
        return self._gradient.clone()

    def to_scipy(self) -> Any:
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` on float64 numpy vectors.

        Each scipy ``matvec`` is one Hessian-vector product (counted in ``num_products``).
        Needs scipy, which is not a dependency of synaprune.
        """
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def mv(x: Any) -> Any:
            flat = torch.as_tensor(np.asarray(x).reshape(-1))
            return self.matvec(flat).detach().cpu().double().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np.float64)

    def _batch_loss(self, x: Any, y: Any, index: int) -> Tensor:
        loss = self.loss_fn(self.model(x), y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar tensor (use a mean reduction); batch {index} "
                f"gave {shape}"
            )
        return loss.reshape(())

    def _product(self, vs: list[Tensor]) -> list[Tensor]:
        self.num_products += 1
        if self.method == "reuse-graph":
            assert self._grads is not None
            return self._backward_of_gradient(self._grads, vs, retain_graph=True)
        out = [torch.zeros_like(p) for p in self.params]
        for i, ((x, y), w) in enumerate(zip(self._batches, self._weights, strict=True)):
            if self.method == "rebuild":
                loss = self._batch_loss(x, y, i) * w
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                hv = self._backward_of_gradient(grads, vs, retain_graph=False)
            else:
                hv = [h * w for h in self._forward_over_reverse(x, y, vs)]
            out = [a + b for a, b in zip(out, hv, strict=True)]
        return out

    def _reuse_graph_flat(self, v: Tensor) -> Tensor:
        """H v for flat v by one backward over the kept gradient graph, without the list
        checks and copies of the general path (the common case of the eigen-solvers)."""
        self.num_products += 1
        if not self._linked:  # the gradient does not depend on the parameters: H = 0
            return torch.zeros_like(v)
        parts = v.split(self._numels)
        hv = torch.autograd.grad(
            self._linked_grads,
            self.params,
            grad_outputs=[parts[i].view(self.shapes[i]) for i in self._linked],
            retain_graph=True,
            allow_unused=True,
        )
        return torch.cat([
            torch.zeros(n, dtype=self.dtype, device=self.device) if h is None else h.reshape(-1)
            for h, n in zip(hv, self._numels, strict=True)
        ])

    def _backward_of_gradient(
        self, grads: Sequence[Tensor | None], vs: list[Tensor], *, retain_graph: bool
    ) -> list[Tensor]:
        """H v as one backward pass of g . v: the vector-Jacobian product of g with v."""
        pairs = [
            (g, v) for g, v in zip(grads, vs, strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:  # the gradient does not depend on the parameters: H = 0
            return [torch.zeros_like(p) for p in self.params]
        outputs, vectors = zip(*pairs, strict=True)
        hv = torch.autograd.grad(
            outputs,
            self.params,
            grad_outputs=vectors,
            retain_graph=retain_graph,
            allow_unused=True,
        )
        return [
            torch.zeros_like(p) if h is None else h.detach()
            for h, p in zip(hv, self.params, strict=True)
        ]

    def _forward_over_reverse(self, x: Any, y: Any, vs: list[Tensor]) -> list[Tensor]:
        from torch.func import functional_call, jacrev, jvp

        assert self._names is not None
        names = self._names

        def loss_of(flat_params: tuple[Tensor, ...]) -> Tensor:
            out = functional_call(self.model, dict(zip(names, flat_params, strict=True)), (x,))
            return self.loss_fn(out, y).reshape(())

        primals = tuple(p.detach() for p in self.params)
        tangents = tuple(vs)
        try:
            # jacrev, not grad: jvp(grad(F.mse_loss ...)) hits "ZeroTensors are immutable"
            # in torch 2.13; for a scalar function jacrev returns the same gradient.
            _, hv = jvp(jacrev(loss_of), (primals,), (tangents,))
        except RuntimeError as err:
            if "ZeroTensors are immutable" in str(err):
                raise RuntimeError(
                    "method='forward-over-reverse' failed inside torch.func (known torch "
                    "failure 'ZeroTensors are immutable', seen with jvp(grad(F.mse_loss)) in "
                    "torch 2.13): use method='reuse-graph' (the default) or 'rebuild', or "
                    "write the loss without the failing op (for MSE: ((out - y) ** 2).mean())"
                ) from err
            raise
        return [h.detach() for h in hv]

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, method={self.method!r}, "
            f"batches={len(self._batches)}, examples={self.num_examples}, "
            f"dtype={self.dtype}, num_products={self.num_products})"
        )


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    v: Vector,
    *,
    params: Iterable[Tensor] | None = None,
    method: str = "reuse-graph",
) -> Tensor | list[Tensor]:
    """One Hessian-vector product H v of the dataset's mean loss (see :class:`HessianOperator`).

    For several products build a :class:`HessianOperator` once: with the default method it
    reuses the first-order graph, so each further product costs one backward pass.

    Args:
        model: the network, called as ``model(x)``.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar mean loss of a batch.
        data: an ``(x, y)`` pair or an iterable of ``(x, y)`` batches.
        v: a flat tensor of size [n] or a list of tensors shaped like ``params``.
        params: parameters to differentiate (default: all of ``model``'s that require grad).
        method: ``"reuse-graph"``, ``"rebuild"`` or ``"forward-over-reverse"``.

    Returns:
        H v in the form of ``v``.

    Raises:
        ValueError: as :class:`HessianOperator` and :meth:`HessianOperator.matvec`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from synaprune.curvature import hvp
        >>> model = nn.Linear(2, 1).double()
        >>> x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
        >>> v = [torch.ones_like(p) for p in model.parameters()]  # list in, list out
        >>> [t.shape for t in hvp(model, nn.functional.mse_loss, (x, y), v)]
        [torch.Size([1, 2]), torch.Size([1])]
    """
    op = HessianOperator(model, loss_fn, data, params=params, method=method)
    return op.matvec(v)
