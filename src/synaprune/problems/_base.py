"""The :class:`Problem` contract shared by every registered problem.

A problem is a model family, its training data (or an exact loss), the known global loss and
a success tolerance. Everything is float64 and deterministic: data come from code or from an
installed package with fixed seeds, and models are initialised from a ``torch.Generator``
seeded with the model seed only, so building a model never touches torch's global RNG.

The loss is offered in three shapes so that the same problem serves an ordinary training loop
and a vmap over many stacked seeds:

* stateful: ``problem.loss(model)`` (full batch) or ``problem.loss(model, x, y)`` (minibatch);
* functional: ``problem.functional_loss(model, params, buffers)``, a pure function of the
  parameter and buffer dicts, made for ``torch.func.stack_module_state`` + ``vmap``;
* stacked: ``problem.stacked_loss(model, params, buffers)``, the S full-batch losses of S
  stacked models at once (the exact teacher-student loss natively, ``vmap`` otherwise).

For per-example problems the loss is ``loss_fn(model(x), y)``, the mean over the batch of
``per_example_loss_fn(model(x), y)`` (a tensor of size [B]). The exact teacher-student problem
has no data: its loss is a closed-form function of the parameters (``exact_loss_fn``).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

__all__ = ["Problem"]

DTYPE = torch.float64

PerExampleLoss = Callable[[Tensor, Tensor], Tensor]
ExactLoss = Callable[[Mapping[str, Tensor]], Tensor]
ModelFactory = Callable[[torch.Generator], nn.Module]


@dataclass(frozen=True, eq=False)
class Problem:
    """A training problem with a known global loss, as built by :func:`get_problem`.

    Attributes:
        name: Registry name, e.g. ``"teacher-student"``.
        options: Fully resolved options, e.g. ``{"k": 8, "n": 8, "d": 8, "exact": True,
            "N": 2000}``. ``get_problem(problem.spec)`` rebuilds the same problem.
        global_loss: Known global minimum of the training loss (for ``autoencoder`` a
            reference value, see that problem's description).
        tolerance: A run succeeds when its final training loss is
            ``<= global_loss + tolerance`` (see :meth:`solved`).
        per_example: True when the loss is the mean of per-example losses over
            :meth:`data`; False for the exact (population) teacher-student loss.
        description: One paragraph: what the problem is, where its numbers come from.
        classification: True when :meth:`accuracy` is available.
        splits: Names of the data splits, ``("train",)`` or ``("train", "test")``;
            empty for an exact loss.
        hidden_modules: Names (as in ``named_modules``) of the modules whose outputs are the
            hidden activations that mechanism C penalises, or None for every activation
            module (ReLU, Tanh, ...) of the model.

    Example:
        >>> import torch
        >>> from synaprune.problems import get_problem
        >>> problem = get_problem("xor:hidden=3")
        >>> model = problem.build_model(seed=0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     loss = problem.loss(model)
        ...     loss.backward()
        ...     opt.step()
        >>> problem.solved(problem.loss(model).item())
        False
    """

    name: str
    options: dict[str, Any]
    global_loss: float
    tolerance: float
    per_example: bool
    description: str
    _make_model: ModelFactory = field(repr=False)
    _splits: Mapping[str, tuple[Tensor, Tensor]] = field(repr=False, default_factory=dict)
    _per_example_loss: PerExampleLoss | None = field(repr=False, default=None)
    _exact_loss: ExactLoss | None = field(repr=False, default=None)
    _predict: Callable[[Tensor], Tensor] | None = field(repr=False, default=None)
    hidden_modules: tuple[str, ...] | None = None
    # The exact loss also takes S stacked states (every tensor [S, ...], as
    # torch.func.stack_module_state builds them) and returns the S losses [S] (stacked_loss).
    _stacked_exact: bool = field(repr=False, default=False)

    def __post_init__(self) -> None:
        if (self._per_example_loss is None) == (self._exact_loss is None):
            raise ValueError("A problem needs exactly one of a per-example loss or an exact loss")
        if self.per_example != (self._per_example_loss is not None):
            raise ValueError("per_example must be True exactly when a per-example loss is given")
        if self._stacked_exact and self._exact_loss is None:
            raise ValueError("_stacked_exact needs an exact loss")
        if self.per_example and "train" not in self._splits:
            raise ValueError("A per-example problem needs a 'train' split")
        if not (math.isfinite(self.global_loss) and self.tolerance > 0):
            raise ValueError(f"Invalid global_loss/tolerance: {self.global_loss}/{self.tolerance}")

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> str:
        """Canonical spec string, ``name:key=value,...`` with options sorted by key."""
        opts = ",".join(f"{k}={self.options[k]}" for k in sorted(self.options))
        return f"{self.name}:{opts}" if opts else self.name

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the available data splits (empty for an exact loss)."""
        return tuple(self._splits)

    @property
    def classification(self) -> bool:
        """True when the problem is a classification task and :meth:`accuracy` works."""
        return self._predict is not None

    def solved(self, final_loss: float) -> bool:
        """Whether a final training loss counts as success.

        Args:
            final_loss: Training loss at the end of a run (full batch / exact).

        Returns:
            ``final_loss <= global_loss + tolerance``; False for NaN or infinite losses
            (a diverged run is a failure).
        """
        return math.isfinite(final_loss) and final_loss <= self.global_loss + self.tolerance

    # ------------------------------------------------------------------ model and data
    def build_model(self, seed: int) -> nn.Module:
        """Build a fresh float64 model initialised from ``seed`` only.

        Deterministic (same seed, same parameters), independent of and without side effects
        on torch's global random state.

        Args:
            seed: Model seed (any integer accepted by ``torch.Generator.manual_seed``).

        Returns:
            A new ``nn.Module`` in float64 on the CPU.
        """
        seed = operator.index(seed)
        generator = torch.Generator().manual_seed(seed)
        return self._make_model(generator)

    def data(self, split: str = "train") -> tuple[Tensor, Tensor] | None:
        """Inputs and targets of one split, or None when the loss is exact.

        Inputs are float64 of size [N, ...]. Targets have the model output's shape and are
        float64, except class labels (``digits``), which are int64 of size [N]. The tensors
        are copies: modifying them does not change the problem.

        Args:
            split: One of :attr:`splits`.

        Returns:
            ``(x, y)``, or None for a problem without data (``per_example`` is False).

        Raises:
            ValueError: If the problem has data but no such split.
        """
        if not self.per_example:
            return None
        pair = self._split(split)
        return pair[0].clone(), pair[1].clone()

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self._splits:
            choices = ", ".join(self._splits) or "none"
            raise ValueError(
                f"Problem '{self.name}' has no split '{split}'; choose from: {choices}"
            )
        return self._splits[split]

    # ------------------------------------------------------------------ losses
    def per_example_loss_fn(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-example losses of a batch.

        Args:
            output: Model output for a batch, size [B, ...].
            target: Targets for the same batch (as returned by :meth:`data`).

        Returns:
            Tensor of size [B]; :meth:`loss_fn` is its mean.

        Raises:
            ValueError: If the problem's loss is exact (no per-example losses) or shapes
                do not match.
        """
        if self._per_example_loss is None:
            raise ValueError(
                f"Problem '{self.spec}' has an exact loss without per-example terms; "
                "use loss(model) or exact_loss_fn(params)"
            )
        return self._per_example_loss(output, target)

    def loss_fn(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean-reduced loss of a batch, the training objective of per-example problems.

        Args:
            output: Model output for a batch, size [B, ...].
            target: Targets for the same batch.

        Returns:
            Scalar tensor, ``per_example_loss_fn(output, target).mean()``.

        Raises:
            ValueError: If the problem's loss is exact.
        """
        return self.per_example_loss_fn(output, target).mean()

    def exact_loss_fn(self, params_and_buffers: Mapping[str, Tensor]) -> Tensor:
        """Exact loss as a pure function of the model's named parameters and buffers.

        Uses only vmap-compatible operations, so ``torch.func.vmap(problem.exact_loss_fn)``
        works on stacked states; twice differentiable (Hessian-vector products work).

        Args:
            params_and_buffers: Mapping from ``named_parameters``/``named_buffers`` names to
                tensors (e.g. ``{**params, **buffers}``).

        Returns:
            Scalar tensor.

        Raises:
            ValueError: If the problem's loss is not exact.
        """
        if self._exact_loss is None:
            raise ValueError(f"Problem '{self.spec}' has no exact loss; use loss_fn(model(x), y)")
        return self._exact_loss(params_and_buffers)

    def loss(self, model: nn.Module, x: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Training loss of a model: full batch by default, or on a given minibatch.

        Args:
            model: A model built by :meth:`build_model` (possibly trained).
            x: Minibatch inputs; None for the full training set.
            y: Minibatch targets; must be given exactly when ``x`` is.

        Returns:
            Scalar tensor with the autograd graph attached.

        Raises:
            ValueError: If only one of ``x`` and ``y`` is given, or data are given for an
                exact loss.
        """
        if not self.per_example:
            if x is not None or y is not None:
                raise ValueError(f"Problem '{self.spec}' has an exact loss; it takes no data")
            params = dict(model.named_parameters())
            params.update(model.named_buffers())
            return self.exact_loss_fn(params)
        x, y = self._batch(x, y)
        return self.loss_fn(model(x), y)

    def functional_loss(
        self,
        model: nn.Module,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor] | None = None,
        x: Tensor | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Loss as a pure function of ``(params, buffers)``, for ``torch.func`` transforms.

        ``model`` only supplies the architecture (it may live on the ``meta`` device); its own
        parameters are not used.

        Args:
            model: A model of this problem's architecture.
            params: Parameter tensors by name (one seed's slice under vmap).
            buffers: Buffer tensors by name; None means none.
            x: Minibatch inputs; None for the full training set.
            y: Minibatch targets; must be given exactly when ``x`` is.

        Returns:
            Scalar tensor.

        Raises:
            ValueError: As for :meth:`loss`.

        Example:
            >>> import copy
            >>> import torch
            >>> from torch.func import stack_module_state, vmap
            >>> from synaprune.problems import get_problem
            >>> problem = get_problem("teacher-student:k=6")
            >>> models = [problem.build_model(s) for s in range(4)]
            >>> params, buffers = stack_module_state(models)
            >>> base = copy.deepcopy(models[0]).to("meta")
            >>> losses = vmap(lambda p, b: problem.functional_loss(base, p, b))(params, buffers)
            >>> tuple(losses.shape)
            (4,)
        """
        buffers = {} if buffers is None else buffers
        if not self.per_example:
            if x is not None or y is not None:
                raise ValueError(f"Problem '{self.spec}' has an exact loss; it takes no data")
            return self.exact_loss_fn({**buffers, **params})
        x, y = self._batch(x, y)
        output = functional_call(model, (dict(params), dict(buffers)), (x,))
        return self.loss_fn(output, y)

    def stacked_loss(self, model: nn.Module, params: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor] | None = None) -> Tensor:
        """Full-batch (or exact) training losses of S stacked models.

        The exact loss's own stacked form where the problem has one (teacher-student: the
        closed form over [S, k, d], about twice as fast as vmap at k = 16), otherwise ``vmap``
        of :meth:`functional_loss`. Either way model s's loss, and its gradient, depend on
        its own slices only.

        Args:
            model: A model of this problem's architecture (it may live on ``meta``).
            params: Stacked parameters by name, each [S, ...]
                (``torch.func.stack_module_state``).
            buffers: Stacked buffers by name, each [S, ...]; None means none.

        Returns:
            Tensor of size [S].
        """
        buffers = {} if buffers is None else buffers
        if self._stacked_exact:
            return self.exact_loss_fn({**buffers, **params})
        return vmap(lambda p, b: self.functional_loss(model, p, b))(params, buffers)

    def _batch(self, x: Tensor | None, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if x is None and y is None:
            return self._split("train")
        if x is None or y is None:
            raise ValueError("Give both x and y (a minibatch) or neither (the full batch)")
        return x, y

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str = "train") -> float:
        """Classification accuracy of a model on one split.

        Args:
            model: A model of this problem.
            split: One of :attr:`splits`, e.g. ``"test"`` for ``digits``.

        Returns:
            Fraction of correctly classified examples, in [0, 1].

        Raises:
            ValueError: If the problem is not a classification task or has no such split.
        """
        if self._predict is None:
            raise ValueError(f"Problem '{self.name}' is not a classification problem")
        x, y = self._split(split)
        predicted = self._predict(model(x))
        return (predicted == y.reshape(predicted.shape)).to(DTYPE).mean().item()


# ---------------------------------------------------------------------- shared building blocks


def check_same_shape(output: Tensor, target: Tensor) -> None:
    """Raise ValueError unless output and target have the same shape (no silent broadcast)."""
    if output.shape != target.shape:
        raise ValueError(
            f"Output of size {list(output.shape)} does not match target of size "
            f"{list(target.shape)}"
        )


def per_example_mse(output: Tensor, target: Tensor) -> Tensor:
    """Per-example mean squared error over the non-batch dimensions, size [B]."""
    check_same_shape(output, target)
    return (output - target).square().reshape(output.shape[0], -1).mean(dim=1)


def linear(
    in_features: int,
    out_features: int,
    generator: torch.Generator,
    *,
    bias: bool = True,
) -> nn.Linear:
    """A float64 ``nn.Linear`` with PyTorch's default initialisation drawn from ``generator``.

    Weights and biases are uniform on ``[-1/sqrt(in_features), 1/sqrt(in_features)]``, the
    distribution ``nn.Linear.reset_parameters`` produces, but without consuming torch's
    global random state.

    Args:
        in_features: Input size.
        out_features: Output size.
        generator: Source of randomness.
        bias: Whether the layer has a bias.

    Returns:
        The initialised layer.
    """
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias, dtype=DTYPE)
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        if layer.bias is not None:
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def mlp(
    sizes: list[int],
    activation: type[nn.Module],
    generator: torch.Generator,
    *,
    final_activation: bool = False,
) -> nn.Sequential:
    """A float64 multilayer perceptron ``Linear, act, Linear, act, ..., Linear``.

    Args:
        sizes: Layer widths including input and output, e.g. ``[64, 32, 10]``.
        activation: Activation class, e.g. ``nn.ReLU``.
        generator: Source of randomness for the initialisation (see :func:`linear`).
        final_activation: Whether the output layer is followed by the activation too.

    Returns:
        An ``nn.Sequential``; parameter names are ``"0.weight"``, ``"0.bias"``, ``"2.weight"``...
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(linear(n_in, n_out, generator))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation())
    return nn.Sequential(*layers)
