"""Greedy random-feature pretraining of one layer (seed 003, "Shallow Networks").

The layer's neurons are fixed random features; the output layer is then a linear least-squares
problem, solved exactly. A random neuron is kept only if the objective as computed drops, so the
objective never rises, bit for bit: a rejected neuron leaves the network untouched.

The objective is the mean squared error of the network over the training set,
``||f(X) - Y||_F^2 / (N k)`` (mean over the N examples and the k outputs, the project's MSE);
seed 003's objective ``||f(X) - Y||_2^2`` is ``N k`` times it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._lstsq import least_squares
from ._network import ACTIVATIONS, PretrainedLayer, PretrainedNet, linear_from

__all__ = ["PretrainResult", "check_data", "grow_layer", "pretrain"]

# A neuron is kept only if the objective drops AND the numerical rank of the design matrix
# grows (a perturbation: drops and the rank does not shrink). Without the rank test, neurons
# numerically inside the span already fitted (an all-zero ReLU, a fourth ReLU active on every
# point, i.e. linear) were seen to be "kept" for a last-digit drop of the objective (1e-12
# relative, rounding of a different solve), taking a slot without adding a direction: 13 of 80
# ReLU runs with as many neurons as points then ended at up to 4e-4 of var(y) instead of 0.


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` and :func:`add_layers` return; histories cover every call so far.

    Attributes:
        module: The network, a :class:`PretrainedNet` (an ordinary ``nn.Module``), float64.
        objective: Its training MSE (mean over examples and outputs), equal bit for bit to
            ``((module(x) - y) ** 2).mean()``: an upper bound on the loss of the local minimum
            that gradient descent (small enough steps) reaches from this initialisation.
        objectives: The objective after every accepted change, starting with the network before
            the first neuron (the bias-only fit, the variance of y); non-increasing, exactly.
        neurons: Number of activation neurons in the network at each entry of ``objectives``.
        layers: Number of hidden layers at each entry of ``objectives``.
        accepted: Random neurons kept.
        rejected: Random neurons drawn and dropped because the objective did not drop.
        theorem1: For each rejected neuron, seed 003's Theorem 1 quantity
            ``g'^T (G s - Y)`` (a sum over the N training points; ``G s`` the fit before the
            neuron, bias included): zero exactly when the neuron cannot lower the objective.
            With k > 1 outputs, the Euclidean norm of the k-vector.
        theorem1_relative: The same divided by ``||g'|| ||G s - Y||_F``, the cosine of the
            angle between the neuron and the residual, in [0, 1]; 0 for an all-zero neuron.
            A rejected neuron with a clearly nonzero value could have helped in exact
            arithmetic: its column is numerically in the span already fitted (the design's
            numerical rank did not grow, see :func:`least_squares`), so its gain is rounding.
        rejected_neurons: For each rejected neuron, the number of neurons the network had.
        unfilled: Neuron slots left empty because ``max_tries`` neurons in a row were rejected.
        perturbations_tried: Random changes of a neuron's weights tried.
        perturbations_accepted: Those kept (they lowered the objective).
    """

    module: PretrainedNet
    objective: float
    objectives: tuple[float, ...]
    neurons: tuple[int, ...]
    layers: tuple[int, ...]
    accepted: int
    rejected: int
    theorem1: tuple[float, ...]
    theorem1_relative: tuple[float, ...]
    rejected_neurons: tuple[int, ...]
    unfilled: int
    perturbations_tried: int
    perturbations_accepted: int


def _positive_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= {low}")
    return value


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number > 0")
    return float(value)


def check_data(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate training data: float64 ``x`` [N, d] and ``y`` [N, k] ([N] becomes [N, 1])."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("x and y must be tensors")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have size [N, d] with N, d >= 1, got {list(x.shape)}")
    if y.dim() == 1:
        y = y[:, None]
    if y.dim() != 2 or y.shape[0] != x.shape[0] or y.shape[1] == 0:
        raise ValueError(
            f"y must have size [N] or [N, k] with N = {x.shape[0]} as x, got {list(y.shape)}"
        )
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError("x and y must be floating point (they are converted to float64)")
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf; remove or impute those entries")
    return x, y


class _Fit:
    """A candidate last layer with its least-squares output layer and objective."""

    def __init__(self, features: Tensor, weight: Tensor, bias: Tensor, y: Tensor,
                 rank: int) -> None:
        self.features = features  # [N, p]: the layer's output, as the module computes it
        self.weight, self.bias = weight, bias  # output layer, [k, p] and [k]
        self.prediction = torch.nn.functional.linear(features, weight, bias)  # as nn.Linear
        self.residual = self.prediction - y
        self.objective = self.residual.square().mean().item()
        self.rank = rank  # numerical rank of [features, 1]

    @staticmethod
    def design(features: Tensor) -> Tensor:
        return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)

    @classmethod
    def solve(cls, features: Tensor, y: Tensor, rcond: float | None) -> _Fit:
        coef, rank = least_squares(cls.design(features), y, rcond=rcond)
        return cls(features, coef[:-1].T.contiguous(), coef[-1].contiguous(), y, rank)


@dataclass
class _Layer:
    """The layer being grown: fixed input, neuron weights, carry values and the current fit."""

    inp: Tensor  # [N, m]: what the neurons read (previous output, maybe with x appended)
    carry: Tensor | None  # [N, k]: the carry units' values, or None
    weight: Tensor  # [n, m]
    bias: Tensor  # [n]
    fit: _Fit

    def features(self, weight: Tensor, bias: Tensor, activation: str) -> Tensor:
        # Exactly the module's computation: nn.Linear is F.linear, then the activation, then cat.
        out = ACTIVATIONS[activation](torch.nn.functional.linear(self.inp, weight, bias))
        return out if self.carry is None else torch.cat([out, self.carry], dim=1)


def _draw(generator: torch.Generator, m: int, scale: float) -> tuple[Tensor, Tensor]:
    w = torch.randn(m + 1, generator=generator, dtype=torch.float64) * scale
    return w[:m], w[m:]


def grow_layer(
    layer: _Layer, y: Tensor, *, neurons: int, activation: str, weight_scale: float,
    perturbations: int, perturbation_scale: float, max_tries: int, rcond: float | None,
    generator: torch.Generator, history: dict[str, list], neurons_before: int, layer_count: int,
) -> _Layer:
    """Add up to ``neurons`` random neurons to ``layer`` greedily (see :func:`pretrain`)."""
    m = layer.inp.shape[1]
    for _ in range(neurons):
        for _ in range(max_tries):
            w, b = _draw(generator, m, weight_scale)
            weight, bias = torch.cat([layer.weight, w[None]]), torch.cat([layer.bias, b])
            fit = _Fit.solve(layer.features(weight, bias, activation), y, rcond)
            if fit.objective < layer.fit.objective and fit.rank > layer.fit.rank:
                layer = _Layer(layer.inp, layer.carry, weight, bias, fit)
                history["accepted"] += 1
                history["objectives"].append(fit.objective)
                history["neurons"].append(neurons_before + weight.shape[0])
                history["layers"].append(layer_count)
                break
            # Theorem 1: the neuron's column g' against the current residual G s - Y.
            g = fit.features[:, weight.shape[0] - 1]
            q = g @ layer.fit.residual  # [k], a sum over the N points
            history["rejected"] += 1
            history["rejected_neurons"].append(neurons_before + layer.weight.shape[0])
            history["theorem1"].append(q.item() if q.numel() == 1 else q.norm().item())
            denom = (g.norm() * layer.fit.residual.norm()).item()
            history["theorem1_relative"].append(q.norm().item() / denom if denom > 0 else 0.0)
        else:
            history["unfilled"] += 1
            continue
        layer = _perturb(layer, y, tries=perturbations, scale=perturbation_scale,
                         activation=activation, rcond=rcond, generator=generator,
                         history=history, neurons_before=neurons_before, layer_count=layer_count)
    return layer


def _perturb(layer: _Layer, y: Tensor, *, tries: int, scale: float, activation: str,
             rcond: float | None, generator: torch.Generator, history: dict[str, list],
             neurons_before: int, layer_count: int) -> _Layer:
    """Seed 003's random search: change one neuron's weights, keep it if the objective drops."""
    n, m = layer.weight.shape
    for _ in range(tries):
        j = int(torch.randint(n, (1,), generator=generator).item())
        dw, db = _draw(generator, m, scale)
        weight, bias = layer.weight.clone(), layer.bias.clone()
        weight[j] += dw
        bias[j] += db[0]
        fit = _Fit.solve(layer.features(weight, bias, activation), y, rcond)
        history["perturbations_tried"] += 1
        if fit.objective < layer.fit.objective and fit.rank >= layer.fit.rank:
            layer = _Layer(layer.inp, layer.carry, weight, bias, fit)
            history["perturbations_accepted"] += 1
            history["objectives"].append(fit.objective)
            history["neurons"].append(neurons_before + n)
            history["layers"].append(layer_count)
    return layer


def new_history(result: PretrainResult | None) -> dict[str, list]:
    if result is None:
        return {"objectives": [], "neurons": [], "layers": [], "accepted": 0, "rejected": 0,
                "theorem1": [], "theorem1_relative": [], "rejected_neurons": [], "unfilled": 0,
                "perturbations_tried": 0, "perturbations_accepted": 0}
    return {
        "objectives": list(result.objectives), "neurons": list(result.neurons),
        "layers": list(result.layers), "accepted": result.accepted,
        "rejected": result.rejected, "theorem1": list(result.theorem1),
        "theorem1_relative": list(result.theorem1_relative),
        "rejected_neurons": list(result.rejected_neurons), "unfilled": result.unfilled,
        "perturbations_tried": result.perturbations_tried,
        "perturbations_accepted": result.perturbations_accepted,
    }


def finish(module: PretrainedNet, history: dict[str, list]) -> PretrainResult:
    return PretrainResult(
        module=module, objective=history["objectives"][-1],
        objectives=tuple(history["objectives"]), neurons=tuple(history["neurons"]),
        layers=tuple(history["layers"]), accepted=history["accepted"],
        rejected=history["rejected"], theorem1=tuple(history["theorem1"]),
        theorem1_relative=tuple(history["theorem1_relative"]),
        rejected_neurons=tuple(history["rejected_neurons"]), unfilled=history["unfilled"],
        perturbations_tried=history["perturbations_tried"],
        perturbations_accepted=history["perturbations_accepted"],
    )


def check_options(*, activation: str, weight_scale: float, perturbations: int,
                  perturbation_scale: float | None, max_tries: int,
                  rcond: float | None) -> tuple[float, float]:
    """Validate the options shared by :func:`pretrain` and :func:`add_layers`."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; choose from: {', '.join(ACTIVATIONS)}"
        )
    weight_scale = _positive_float("weight_scale", weight_scale)
    _positive_int("perturbations", perturbations, 0)
    _positive_int("max_tries", max_tries, 1)
    scale = weight_scale if perturbation_scale is None else _positive_float(
        "perturbation_scale", perturbation_scale)
    if rcond is not None and not (isinstance(rcond, float) and 0 < rcond < 1):
        raise ValueError(f"Invalid rcond: {rcond!r}; expected a float in (0, 1) or None")
    return weight_scale, scale


def pretrain(
    x: Tensor, y: Tensor, *, neurons: int, activation: str = "tanh", weight_scale: float = 1.0,
    perturbations: int = 0, perturbation_scale: float | None = None, max_tries: int = 100,
    rcond: float | None = None, seed: int = 0,
) -> PretrainResult:
    """Greedy random-feature pretraining of a one-hidden-layer network (seed 003).

    Starting from the bias-only fit, draw a random neuron ``act(w . x + b)`` with
    ``(w, b) ~ N(0, weight_scale^2 I)``, refit the output layer (weights and bias) by least
    squares (:func:`least_squares`: an SVD solve, never the normal equations), and keep the
    neuron only if the objective as computed drops and the neuron adds a direction (the
    numerical rank of the design matrix grows; a neuron inside the span already fitted can only
    change rounding); else record its Theorem 1 quantity and draw again, at most ``max_tries``
    times per neuron. After each kept neuron, optionally try ``perturbations`` random changes
    ``(w_j, b_j) += N(0, perturbation_scale^2 I)`` of a random neuron j, keeping those that
    lower the objective without lowering the rank.

    Args:
        x: Inputs, float tensor of size [N, d].
        y: Targets, size [N] or [N, k]; the module's output has size [B, k] (k = 1 for [N]).
        neurons: Neurons to add, >= 1.
        activation: ``"tanh"`` or ``"relu"``.
        weight_scale: Standard deviation of the random weights and biases. For ReLU it changes
            nothing in exact arithmetic (relu(c z) = c relu(z), c > 0, and the least-squares fit
            rescales the output weight), so rejection counts agree up to rounding.
        perturbations: Random changes tried after each added neuron (0: none).
        perturbation_scale: Their standard deviation (default ``weight_scale``).
        max_tries: Random neurons drawn per slot before leaving it empty (``unfilled``).
        rcond: Rank threshold of the least-squares solve (see :func:`least_squares`).
        seed: Seed of the ``torch.Generator`` behind every draw (torch's global RNG untouched).

    Returns:
        A :class:`PretrainResult`; ``result.objective`` is the training MSE of
        ``result.module``, bit for bit.

    Raises:
        ValueError: Bad shapes, NaN or inf in the data, or an option out of range.

    Example:
        >>> import torch
        >>> x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
        >>> result = pretrain(x, torch.sin(3 * x), neurons=19, activation="tanh")
        >>> result.objective < 1e-20  # as many columns (19 neurons + bias) as points
        True
    """
    x, y = check_data(x, y)
    _positive_int("neurons", neurons, 1)
    weight_scale, pscale = check_options(
        activation=activation, weight_scale=weight_scale, perturbations=perturbations,
        perturbation_scale=perturbation_scale, max_tries=max_tries, rcond=rcond)
    generator = torch.Generator().manual_seed(int(seed))
    d = x.shape[1]
    empty_w, empty_b = x.new_zeros(0, d), x.new_zeros(0)
    start = _Fit.solve(x.new_zeros(x.shape[0], 0), y, rcond)
    layer = _Layer(x, None, empty_w, empty_b, start)
    history = new_history(None)
    history["objectives"].append(start.objective)
    history["neurons"].append(0)
    history["layers"].append(1)
    layer = grow_layer(layer, y, neurons=neurons, activation=activation,
                       weight_scale=weight_scale, perturbations=perturbations,
                       perturbation_scale=pscale, max_tries=max_tries, rcond=rcond,
                       generator=generator, history=history, neurons_before=0, layer_count=1)
    module = PretrainedNet(
        [PretrainedLayer(linear_from(layer.weight, layer.bias), None, reads_input=False)],
        linear_from(layer.fit.weight, layer.fit.bias), activation)
    return finish(module, history)
