"""Stacked mode: one optimizer trains S independent models at once (the lab's seed batching).

The one convention of every optimizer in :mod:`synaprune.optim` (``SynaPrune``,
``SaddleFreeNewton``, ``PerturbedGD``, ``GradientNoise``, ``SAM``):

* ``num_models=None`` (the default): ordinary parameters of one model.
* ``num_models=S`` (an int >= 1): every parameter is a stacked tensor of size [S, ...] whose slice
  ``p[s]`` belongs to model s (as ``torch.func.stack_module_state`` builds them). Whatever couples
  coordinates (gradient norms, a stall test, a noise ball, SAM's ascent, a Krylov subspace) is
  computed per model over that model's slices, so model s follows exactly the trajectory of a
  single-model optimizer on model s alone (bit for bit where the update is elementwise, to
  rounding otherwise).
* Optimizers that draw noise take ``generator``: a ``torch.Generator`` for one model; in stacked
  mode a sequence of exactly S of them, and model s draws from generator s exactly the numbers a
  single model given that generator would draw. ``None``: one seed per model drawn from torch's
  global generator, so ``torch.manual_seed`` makes runs repeatable.
* :func:`select_models` keeps some of the S models and drops the others (the lab frees the
  slots of runs that stopped): per-parameter state is the tensors of ``optimizer.state[p]``,
  [S, ...] or 0-d (shared by the models, as Adam's step count); per-model state of an optimizer's
  own (generators, counters) is selected by its ``_select_models(index)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_num_models(num_models: int | None) -> None:
    """Raise ValueError unless ``num_models`` is None or an int >= 1."""
    if num_models is not None and (isinstance(num_models, bool) or not isinstance(num_models, int)
                                   or num_models < 1):
        raise ValueError(f"Invalid num_models: {num_models!r}; must be an int >= 1 (stacked "
                         "mode) or None (one model)")


def check_stacked(params: Iterable[Tensor], num_models: int | None) -> None:
    """Raise ValueError if stacked mode is on and a parameter's dim 0 is not ``num_models``."""
    if num_models is None:
        return
    for i, p in enumerate(params):
        if p.dim() == 0 or p.shape[0] != num_models:
            raise ValueError(
                f"Invalid parameter {i}: num_models={num_models} means stacked models along "
                f"dim 0, but it has shape {tuple(p.shape)}")


def resolve_generators(generator: Generators, num_models: int | None,
                       seed: int | None = None) -> list[torch.Generator]:
    """The generators of the models: one per model (one in all for ``num_models=None``).

    Args:
        generator: A ``torch.Generator`` (one model), a sequence of ``num_models`` of them
            (stacked mode), or None.
        num_models: S, or None for one model.
        seed: Used when ``generator`` is None: model s's generator is seeded with ``seed + s``
            (``seed`` itself for one model). None: seeds drawn from torch's global generator.

    Raises:
        ValueError: A generator that does not fit the mode, or both ``generator`` and ``seed``.
    """
    check_num_models(num_models)
    n = num_models or 1
    if generator is None:
        if seed is None:
            return [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
                    for _ in range(n)]
        return [torch.Generator().manual_seed(int(seed) + s) for s in range(n)]
    if seed is not None:
        raise ValueError("Invalid seed: give either generator or seed, not both")
    if isinstance(generator, torch.Generator):
        if num_models is not None:
            raise ValueError(f"Invalid generator: num_models={num_models} needs a sequence of "
                             f"{num_models} generators (one per stacked model), got one")
        return [generator]
    gens = list(generator)
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError("Invalid generator: expected a torch.Generator or a non-empty sequence "
                         "of them (one per stacked model)")
    if num_models is None:
        raise ValueError(f"Invalid generator: a sequence of {len(gens)} generators is for stacked "
                         f"mode; pass num_models={len(gens)} as well")
    if len(gens) != num_models:
        raise ValueError(f"Invalid generator: num_models={num_models} needs {num_models} "
                         f"generators, got {len(gens)}")
    return gens


@torch.no_grad()
def select_models(optimizer: Optimizer, index: Sequence[int] | Tensor) -> list[Tensor]:
    """Keep only the stacked models ``index`` of a stacked-mode optimizer.

    Every parameter p is replaced, in the optimizer's parameter groups, by a new leaf tensor
    ``p[index]`` (with the rows ``index`` of its gradient), and its state moves to the new
    tensor: every tensor of ``optimizer.state[p]`` with dim 0 equal to S becomes its rows
    ``index``, and 0-d state (shared by the models, as Adam's step count) is kept. The
    optimizer's own per-model state (generators, stall triggers, counters) is selected by its
    ``_select_models(index)`` where it has one. Model ``index[j]`` then continues as model j
    exactly as it would have gone on among the S. Works for ``torch.optim`` optimizers whose
    state is elementwise (SGD, Adam) and for every optimizer of :mod:`synaprune.optim`.

    New tensors rather than ``p.data = p.data[index]``: autograd caches a leaf's gradient
    accumulator with the leaf's size, so a leaf that changes size in place breaks the next
    backward.

    Args:
        optimizer: An optimizer over stacked [S, ...] parameters (``num_models=S`` for the
            optimizers of this package).
        index: Positions of the models to keep, increasing, in [0, S), at least one.

    Returns:
        The new parameters, in the order of the optimizer's parameter groups; use them (not
        the old ones) from now on.

    Raises:
        ValueError: An empty, unsorted or out-of-range index, parameters with different S,
            a one-model optimizer, or state that is neither [S, ...] nor 0-d (it cannot be
            split by model).
    """
    if getattr(optimizer, "num_models", 0) is None:
        raise ValueError("Invalid optimizer: it trains one model (num_models=None); "
                         "select_models needs stacked mode (num_models=S)")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = {p.shape[0] if p.dim() else None for p in params}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"Invalid optimizer: select_models needs stacked parameters with one "
                         f"size of dim 0, got {sorted(map(str, sizes))}")
    (n,) = sizes
    keep = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if keep.numel() == 0 or keep.min() < 0 or keep.max() >= n or (keep.diff() <= 0).any():
        raise ValueError(f"Invalid index: {keep.tolist()}; need increasing positions in "
                         f"[0, {n}), at least one")
    for p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] != n:
                raise ValueError(f"Invalid optimizer state {key!r} of size "
                                 f"{list(value.shape)}: neither [{n}, ...] nor 0-d, so it "
                                 "cannot be split by model")
    new: list[Tensor] = []
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            q = p.detach()[keep].requires_grad_(p.requires_grad)
            if p.grad is not None:
                q.grad = p.grad[keep]
            state = optimizer.state.pop(p, None)
            if state is not None:
                optimizer.state[q] = {k: v[keep] if isinstance(v, Tensor) and v.dim() > 0
                                      else v for k, v in state.items()}
            group["params"][i] = q
            new.append(q)
    own = getattr(optimizer, "_select_models", None)
    if own is not None:
        own(keep.tolist())
    return new
