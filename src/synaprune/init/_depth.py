"""Depth by error correction (seed 003, "Extra Layers for Error Correction").

Each added layer holds ``width`` random neurons and k linear carry units whose weights are the
previous output layer, so the carry reproduces the previous fit exactly; the new output layer
starts as the identity on the carry (weights 1, bias 0: bit-identical predictions), and neurons
are then added greedily as in :func:`synaprune.init.pretrain`, each kept only if the objective
drops. So no added layer can raise the objective.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._greedy import (
    PretrainResult,
    _Fit,
    _Layer,
    _positive_int,
    check_data,
    check_options,
    finish,
    grow_layer,
    new_history,
)
from ._lstsq import least_squares
from ._network import PretrainedLayer, PretrainedNet, linear_from

__all__ = ["add_layers", "deep_from_shallow"]


def add_layers(
    result: PretrainResult, x: Tensor, y: Tensor, *, layers: int, width: int,
    connect_input: bool = False, weight_scale: float = 1.0, perturbations: int = 0,
    perturbation_scale: float | None = None, max_tries: int = 100, rcond: float | None = None,
    seed: int = 0,
) -> PretrainResult:
    """Deepen a pretrained network by ``layers`` layers of ``width`` neurons plus a carry.

    Args:
        result: From :func:`pretrain` or :func:`add_layers`, trained on the same ``x, y``.
        x: Inputs, size [N, d] (the same as for ``result``).
        y: Targets, size [N] or [N, k].
        layers: Layers to add, >= 1.
        width: Random neurons per added layer, >= 1 (the activation is ``result``'s).
        connect_input: Whether the new layers' neurons also read the network input ``x``.
        weight_scale, perturbations, perturbation_scale, max_tries, rcond, seed: As in
            :func:`synaprune.init.pretrain`; perturbations change neurons of the newest layer.

    Returns:
        A new :class:`PretrainResult` whose histories continue ``result``'s; ``result`` and its
        module are left unchanged.

    Raises:
        ValueError: Bad data, an option out of range, or data that do not match ``result``.
    """
    x, y = check_data(x, y)
    _positive_int("layers", layers, 1)
    _positive_int("width", width, 1)
    net = result.module
    weight_scale, pscale = check_options(
        activation=net.activation, weight_scale=weight_scale, perturbations=perturbations,
        perturbation_scale=perturbation_scale, max_tries=max_tries, rcond=rcond)
    if x.shape[1] != net.layers[0].hidden.in_features or y.shape[1] != net.output.out_features:
        raise ValueError(
            f"x, y of sizes {list(x.shape)}, {list(y.shape)} do not match the network "
            f"(inputs {net.layers[0].hidden.in_features}, outputs {net.output.out_features})"
        )
    generator = torch.Generator().manual_seed(int(seed))
    built = [_copy_layer(layer) for layer in net.layers]
    output = linear_from(net.output.weight, net.output.bias)
    history = new_history(result)
    k = y.shape[1]
    with torch.no_grad():
        for _ in range(layers):
            module = PretrainedNet(built, output, net.activation)
            h = module.hidden_output(x)
            carry = linear_from(output.weight, output.bias)
            carry_values = carry(h)
            inp = torch.cat([h, x], dim=1) if connect_input else h
            m = inp.shape[1]
            identity = torch.eye(k, dtype=torch.float64)
            _, rank = least_squares(_Fit.design(carry_values), y, rcond=rcond)
            start = _Fit(carry_values, identity, x.new_zeros(k), y, rank)
            if start.objective > history["objectives"][-1]:  # 1 * v + 0 is exact in IEEE
                raise RuntimeError("internal error: the carry did not reproduce the previous fit")
            layer = _Layer(inp, carry_values, x.new_zeros(0, m), x.new_zeros(0), start)
            layer_count = len(built) + 1
            history["objectives"].append(start.objective)
            history["neurons"].append(history["neurons"][-1])
            history["layers"].append(layer_count)
            layer = grow_layer(
                layer, y, neurons=width, activation=net.activation, weight_scale=weight_scale,
                perturbations=perturbations, perturbation_scale=pscale, max_tries=max_tries,
                rcond=rcond, generator=generator, history=history,
                neurons_before=history["neurons"][-1], layer_count=layer_count)
            built.append(PretrainedLayer(linear_from(layer.weight, layer.bias), carry,
                                         reads_input=connect_input))
            output = linear_from(layer.fit.weight, layer.fit.bias)
    return finish(PretrainedNet(built, output, net.activation), history)


def _copy_layer(layer: PretrainedLayer) -> PretrainedLayer:
    carry = None if layer.carry is None else linear_from(layer.carry.weight, layer.carry.bias)
    return PretrainedLayer(linear_from(layer.hidden.weight, layer.hidden.bias), carry,
                           layer.reads_input)


def deep_from_shallow(module: PretrainedNet, *, width: int) -> PretrainedNet:
    """Rebuild a one-hidden-layer network as a deep one computing the same function.

    Seed 003's construction: the shallow network's u neurons are dealt out ``width`` per layer
    (the last layer takes the remainder); every layer after the first also reads the input
    (its neurons keep their shallow weights on x and get weight 0 on the previous layer) and
    has k linear carry units summing the previous layer's share of the output, ``s^T h``, plus
    the previous carry with weight 1. The output layer weights the last neurons by their shallow
    output weights, the carry by 1, and keeps the shallow output bias. Equal to the shallow
    network in exact arithmetic; in floating point the output sum is added in a different order
    (agreement to rounding, about ``u * eps * sum |s_i g_i|``).

    Args:
        module: A :class:`PretrainedNet` with one hidden layer (from :func:`pretrain`).
        width: Neurons per layer, >= 1.

    Returns:
        A new :class:`PretrainedNet` with ``ceil(u / width)`` hidden layers.

    Raises:
        ValueError: If ``module`` is not a one-layer :class:`PretrainedNet` or ``width`` < 1.
    """
    _positive_int("width", width, 1)
    if not isinstance(module, PretrainedNet) or len(module.layers) != 1:
        raise ValueError("deep_from_shallow needs a one-hidden-layer PretrainedNet (pretrain)")
    hidden, out = module.layers[0].hidden, module.output
    w, b = hidden.weight.detach(), hidden.bias.detach()
    s, c = out.weight.detach(), out.bias.detach()  # [k, u], [k]
    u = w.shape[0]
    k = s.shape[0]
    if u == 0:
        raise ValueError("deep_from_shallow needs a network with at least one neuron")
    chunks = [slice(i, min(i + width, u)) for i in range(0, u, width)]
    built: list[PretrainedLayer] = []
    zeros_k = torch.zeros(k, dtype=torch.float64)
    for index, part in enumerate(chunks):
        if index == 0:
            built.append(PretrainedLayer(linear_from(w[part], b[part]), None, False))
            continue
        prev = chunks[index - 1]
        prev_n = prev.stop - prev.start
        prev_has_carry = index > 1
        h_width = prev_n + (k if prev_has_carry else 0)
        # Neurons read cat([h, x]): zero weight on h, the shallow weights on x.
        n = part.stop - part.start
        hidden_w = torch.cat([torch.zeros(n, h_width, dtype=torch.float64), w[part]], dim=1)
        carry_w = s[:, prev]
        if prev_has_carry:
            carry_w = torch.cat([carry_w, torch.eye(k, dtype=torch.float64)], dim=1)
        built.append(PretrainedLayer(linear_from(hidden_w, b[part]),
                                     linear_from(carry_w, zeros_k), reads_input=True))
    last = chunks[-1]
    out_w = s[:, last]
    if len(chunks) > 1:
        out_w = torch.cat([out_w, torch.eye(k, dtype=torch.float64)], dim=1)
    return PretrainedNet(built, linear_from(out_w, c), module.activation)
