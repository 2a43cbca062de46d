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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

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
