"""The network that pretraining returns: layers of random-feature neurons and a linear output."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "PretrainedLayer", "PretrainedNet", "linear_from"]

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class PretrainedLayer(nn.Module):
    """One hidden layer: ``width`` neurons ``act(hidden(inp))`` and optional linear carry units.

    ``inp`` is the previous layer's output, with the network input appended when
    ``reads_input`` (seed 003's "connect every layer to the input"). The carry units
    ``carry(h)`` read the previous layer's output only; set to the previous output layer they
    pass the previous fit through unchanged (seed 003, "Extra Layers for Error Correction").
    The layer's output is ``cat([act(hidden(inp)), carry(h)])``, size [B, width + k].
    """

    def __init__(self, hidden: nn.Linear, carry: nn.Linear | None, reads_input: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.carry = carry
        self.reads_input = reads_input

    def forward(self, h: Tensor, x: Tensor, activation: str) -> Tensor:
        inp = torch.cat([h, x], dim=1) if self.reads_input else h
        out = ACTIVATIONS[activation](self.hidden(inp))
        if self.carry is None:
            return out
        return torch.cat([out, self.carry(h)], dim=1)


class PretrainedNet(nn.Module):
    """A float64 multilayer network built by :func:`synaprune.init.pretrain`.

    An ordinary ``nn.Module``: train it with any ``torch.optim`` optimizer. Input size
    [B, d], output size [B, k].

    Attributes:
        activation: ``"tanh"`` or ``"relu"`` (every non-carry hidden neuron).
        layers: The hidden layers (:class:`PretrainedLayer`), input side first.
        output: The linear output layer, fitted by least squares.
    """

    def __init__(self, layers: list[PretrainedLayer], output: nn.Linear, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation '{activation}'; choose from: {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.layers = nn.ModuleList(layers)
        self.output = output

    def hidden_output(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Output of hidden layer ``upto - 1`` (all layers by default; ``upto=0`` gives x)."""
        h = x
        for layer in list(self.layers)[:upto]:
            h = layer(h, x, self.activation)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden_output(x))

    @property
    def widths(self) -> list[int]:
        """Number of activation neurons of each hidden layer (carry units not counted)."""
        return [layer.hidden.out_features for layer in self.layers]


def linear_from(weight: Tensor, bias: Tensor) -> nn.Linear:
    """A float64 ``nn.Linear`` holding exactly these values (weight [out, in], bias [out])."""
    # skip_init: no default initialisation, so no draw from torch's global RNG and no warning
    # for a zero-size weight (a layer whose neurons were all rejected).
    layer = torch.nn.utils.skip_init(nn.Linear, 1, 1, dtype=torch.float64)
    layer.weight = nn.Parameter(weight.detach().clone().to(torch.float64).contiguous())
    layer.bias = nn.Parameter(bias.detach().clone().to(torch.float64).contiguous())
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    return layer
