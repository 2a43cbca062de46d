"""PerExampleGradStats against a brute-force per-example loop, in float64.

The reference runs every example on its own (forward, loss l_i, autograd.grad) and sums g_i,
g_i**2 and ||g_i||**2. It is computed before the probe is attached, so it cannot be influenced by
the hooks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import synaprune.probes as probes
import synaprune.probes.grad_stats as grad_stats
from synaprune.probes import PerExampleGradStats, probes_paused

B = 6
RTOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add latency (and jitter on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- models --------------------------------------------------------------------------------------


class ScaleShift(nn.Module):
    """Elementwise x * scale + shift with its own parameters: takes the vmap fallback."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim))
        self.shift = nn.Parameter(torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class SharedTwice(nn.Module):
    """One Linear applied twice before backward (weight shared across calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.shared = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


class Tied(nn.Module):
    """One Parameter registered in two modules (an Embedding and a Linear decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)
        self.decode = nn.Linear(4, 7, bias=False)
        self.decode.weight = self.embed.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.decode(torch.tanh(self.mix(self.embed(idx)))).mean(1)


def mlp(bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.Tanh(), nn.Linear(7, 6, bias=bias),
                         nn.ReLU(), nn.Linear(6, 3, bias=bias))


@dataclasses.dataclass
class Case:
    make_model: Callable[[], nn.Module]
    make_input: Callable[[torch.Generator], Tensor]
    force_fallback: bool = False


def _randn(*shape: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(*shape, generator=g, dtype=torch.float64)


CASES = {
    "mlp_bias": Case(mlp, _randn(B, 5)),
    "mlp_nobias": Case(lambda: mlp(bias=False), _randn(B, 5)),
    "linear_nd_input": Case(
        lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), _randn(B, 3, 5)),
    "conv1d": Case(
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.Tanh(),
            nn.Conv1d(4, 6, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"),
            nn.Tanh(), nn.Conv1d(6, 3, 4, padding="same", bias=False, padding_mode="circular")),
        _randn(B, 2, 11)),
    "conv2d_stride_pad_groups_dilation": Case(
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(),
            nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
            nn.Tanh(), nn.Conv2d(6, 2, 2, padding="valid", bias=False, padding_mode="zeros"),
            nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate")),
        _randn(B, 2, 9, 8)),
    "convnet_then_linear": Case(
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 2, groups=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5)),
        _randn(B, 1, 9, 9)),
    "custom_module_fallback": Case(
        lambda: nn.Sequential(nn.Linear(5, 4), ScaleShift(4), nn.Tanh(), nn.Linear(4, 3)),
        _randn(B, 5)),
    "layernorm_fallback": Case(
        lambda: nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)),
        _randn(B, 2, 5)),
    "conv3d_fallback": Case(
        lambda: nn.Sequential(nn.Conv3d(2, 3, 2, padding=1), nn.Tanh(), nn.Flatten(),
                              nn.Linear(3 * 4 * 4 * 3, 3)),
        _randn(B, 2, 3, 3, 2)),
    "convtranspose2d_fallback": Case(
        lambda: nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2), nn.Tanh(), nn.Flatten(),
                              nn.Linear(3 * 7 * 5, 3)),
        _randn(B, 2, 3, 2)),
    "mlp_force_fallback": Case(mlp, _randn(B, 5), force_fallback=True),
    "conv2d_force_fallback": Case(
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.Tanh(),
                              nn.Flatten(), nn.Linear(4 * 3 * 3, 3)),
        _randn(B, 2, 5, 5), force_fallback=True),
    "shared_module_called_twice": Case(SharedTwice, _randn(B, 5)),
    "tied_parameter_two_modules": Case(
        Tied, lambda g: torch.randint(0, 7, (B, 3), generator=g)),
}


# -- losses and the brute-force reference ---------------------------------------------------------


def per_example_loss(out: Tensor, target: Tensor, loss: str) -> Tensor:
    """l_i for every example, shape [B]: MSE averaged over the example's outputs, or
    cross-entropy with the flattened output as logits."""
    flat = out.flatten(1)
    if loss == "mse":
        return (flat - target).pow(2).mean(1)
    return F.cross_entropy(flat, target, reduction="none")


def batch_loss(out: Tensor, target: Tensor, loss: str, reduction: str) -> Tensor:
    if loss == "ce" and out.dim() == 2:  # the library loss itself, not a reimplementation
        return F.cross_entropy(out, target, reduction=reduction)
    if loss == "mse" and reduction == "mean":
        return F.mse_loss(out.flatten(1), target)
    per = per_example_loss(out, target, loss)
    return per.mean() if reduction == "mean" else per.sum()


def make_target(out: Tensor, loss: str, g: torch.Generator) -> Tensor:
    flat = out.flatten(1)
    if loss == "mse":
        return torch.randn(flat.shape, generator=g, dtype=flat.dtype)
    return torch.randint(0, flat.shape[1], (flat.shape[0],), generator=g)


def brute_force(model: nn.Module, x: Tensor, target: Tensor, loss: str
                ) -> tuple[list[Tensor], list[Tensor]]:
    """sum_i g_i and sum_i g_i**2 for every parameter, one example at a time."""
    sums, sqs, _ = brute_force_norms(model, x, target, loss)
    return sums, sqs


def brute_force_norms(model: nn.Module, x: Tensor, target: Tensor, loss: str
                      ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """sum_i g_i, sum_i g_i**2 and sum_i ||g_i||**2 (0-d, from the norm of each g_i, not from
    the sum of squares) for every parameter, one example at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    sqs = [torch.zeros_like(p) for p in params]
    norms = [torch.zeros((), dtype=p.dtype) for p in params]
    for i in range(x.shape[0]):
        li = per_example_loss(model(x[i:i + 1]), target[i:i + 1], loss).sum()
        grads = torch.autograd.grad(li, params, allow_unused=True)
        for s, q, n, gi in zip(sums, sqs, norms, grads, strict=True):
            if gi is not None:
                s.add_(gi)
                q.add_(gi * gi)
                n.add_(torch.linalg.vector_norm(gi) ** 2)
    return sums, sqs, norms


def setup(case: Case, loss: str, seed: int = 0):
    torch.manual_seed(seed)
    model = case.make_model().double()
    g = torch.Generator().manual_seed(seed + 1)
    x = case.make_input(g)
    with torch.no_grad():
        target = make_target(model(x), loss, g)
    return model, x, target


def assert_close(actual: Tensor, expected: Tensor) -> None:
    scale = expected.abs().max()
    assert scale > 0, "reference is zero: the comparison would prove nothing"
    err = (actual - expected).abs().max() / scale
    assert err < RTOL, f"relative error {err:.3e}"


def fresh_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


# -- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_brute_force(case: Case, loss: str, reduction: str):
    model, x, target = setup(case, loss)
    ref_sum, ref_sq = brute_force(model, x, target, loss)
    probe = PerExampleGradStats(model, reduction=reduction, quantities=("sumsq",),
                                force_fallback=case.force_fallback)
    batch_loss(model(x), target, loss, reduction).backward()
    probe.remove()
    assert probe.batch_size == B
    for p, s, q in zip(model.parameters(), ref_sum, ref_sq, strict=True):
        assert p.grad_batch_size == B
        assert p.grad_reduction == reduction
        assert p.grad_sumsq.shape == p.shape
        assert not p.grad_sumsq.requires_grad
        assert p.grad_sqnorm_sum is None  # not asked for
        assert_close(p.grad_sumsq, q)
        assert_close(probe.sum_grad_sq(p), q)
        assert_close(probe.sum_grad(p), s)


@pytest.mark.parametrize("quantities", [("sqnorm",), ("sumsq", "sqnorm")],
                         ids=["sqnorm", "both"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_sqnorm_matches_brute_force(case: Case, loss: str, reduction: str, quantities):
    model, x, target = setup(case, loss)
    ref_sum, ref_sq, ref_norm = brute_force_norms(model, x, target, loss)
    probe = PerExampleGradStats(model, reduction=reduction, quantities=quantities,
                                force_fallback=case.force_fallback)
    batch_loss(model(x), target, loss, reduction).backward()
    probe.remove()
    for p, s, q, n in zip(model.parameters(), ref_sum, ref_sq, ref_norm, strict=True):
        assert p.grad_batch_size == B
        assert p.grad_reduction == reduction
        assert p.grad_sqnorm_sum.shape == ()
        assert p.grad_sqnorm_sum.dtype == p.dtype
        assert not p.grad_sqnorm_sum.requires_grad
        assert_close(p.grad_sqnorm_sum, n)
        assert_close(probe.sum_grad(p), s)
        if "sumsq" in quantities:
            assert_close(p.grad_sumsq, q)
        else:
            assert p.grad_sumsq is None


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "product"])
@pytest.mark.parametrize("case", ["linear_nd_input", "conv1d",
                                  "conv2d_stride_pad_groups_dilation", "convnet_then_linear"])
def test_sqnorm_gram_and_product_forms_both_match(case, gram, monkeypatch):
    """The cost rule picks one form per layer; force each in turn (and chunks of examples)."""
    monkeypatch.setattr(grad_stats, "_prefer_gram", lambda *args: gram)
    monkeypatch.setattr(grad_stats, "_CHUNK_ELEMENTS", 200)
    model, x, target = setup(CASES[case], "mse")
    _, _, ref_norm = brute_force_norms(model, x, target, "mse")
    with PerExampleGradStats(model, quantities=("sqnorm",)):
        batch_loss(model(x), target, "mse", "mean").backward()
    for p, n in zip(model.parameters(), ref_norm, strict=True):
        assert_close(p.grad_sqnorm_sum, n)


def test_prefer_gram_follows_the_multiply_add_count():
    assert grad_stats._prefer_gram(positions=4, n_in=512, n_out=512)  # 4096 < 262144
    assert not grad_stats._prefer_gram(positions=1024, n_in=27, n_out=16)  # a first conv layer


def test_table_covers_every_path():
    kinds = {}
    for name, case in CASES.items():
        probe = PerExampleGradStats(case.make_model(), force_fallback=case.force_fallback)
        kinds[name] = set(probe._kind.values())
        probe.remove()
    assert kinds["mlp_bias"] == {"linear"}
    assert kinds["conv1d"] == {"conv"}
    assert kinds["custom_module_fallback"] == {"linear", "fallback"}
    assert kinds["mlp_force_fallback"] == {"fallback"}


# -- conventions and accumulation ----------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp_bias", "conv1d", "custom_module_fallback"])
def test_mean_and_sum_give_the_same_numbers(case):
    stats = {}
    for reduction in ("mean", "sum"):
        model, x, target = setup(CASES[case], "ce")
        with PerExampleGradStats(model, reduction=reduction) as probe:
            batch_loss(model(x), target, "ce", reduction).backward()
            stats[reduction] = [(probe.sum_grad(p), p.grad_sumsq) for p in model.parameters()]
    for (s_mean, q_mean), (s_sum, q_sum) in zip(stats["mean"], stats["sum"], strict=True):
        assert_close(q_mean, q_sum)
        assert_close(s_mean, s_sum)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", ["mlp_bias", "conv2d_stride_pad_groups_dilation",
                                  "custom_module_fallback", "shared_module_called_twice"])
def test_two_backward_calls_accumulate(case, reduction):
    model, x, target = setup(CASES[case], "mse")
    x2 = CASES[case].make_input(torch.Generator().manual_seed(7))
    target2 = torch.randn(target.shape, generator=torch.Generator().manual_seed(8),
                          dtype=target.dtype)
    s1, q1 = brute_force(model, x, target, "mse")
    s2, q2 = brute_force(model, x2, target2, "mse")
    fresh_grads(model)
    probe = PerExampleGradStats(model, reduction=reduction, quantities=("sumsq", "sqnorm"))
    batch_loss(model(x), target, "mse", reduction).backward()
    batch_loss(model(x2), target2, "mse", reduction).backward()
    assert probe.batch_size == 2 * B
    for p, a, b, c, d in zip(model.parameters(), s1, s2, q1, q2, strict=True):
        assert p.grad_batch_size == 2 * B
        assert_close(p.grad_sumsq, c + d)
        assert_close(p.grad_sqnorm_sum, (c + d).sum())
        assert_close(probe.sum_grad(p), a + b)


def test_retained_graph_backward_twice_accumulates_like_grad():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    _, q = brute_force(model, x, target, "mse")
    probe = PerExampleGradStats(model)
    loss = batch_loss(model(x), target, "mse", "mean")
    loss.backward(retain_graph=True)
    loss.backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, 2 * qq)
        assert p.grad_batch_size == 2 * B
    probe.remove()


def test_zero_clears():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    _, q = brute_force(model, x, target, "mse")
    probe = PerExampleGradStats(model)
    batch_loss(model(x), target, "mse", "mean").backward()
    probe.zero()
    assert probe.batch_size == 0
    for p in probe.params:
        assert p.grad_sumsq is None
        assert p.grad_batch_size == 0
    # After zero() only the new backward counts (not twice the reference).
    batch_loss(model(x), target, "mse", "mean").backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)
        assert p.grad_batch_size == B
    probe.remove()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_backward_gives_the_same_numbers():
    model, x, target = setup(CASES["custom_module_fallback"], "mse")
    _, q = brute_force(model, x, target, "mse")
    with PerExampleGradStats(model):
        batch_loss(model(x), target, "mse", "mean").backward(create_graph=True)
    for p, qq in zip(model.parameters(), q, strict=True):
        assert not p.grad_sumsq.requires_grad
        assert_close(p.grad_sumsq, qq)


# -- pausing, removing, inference ----------------------------------------------------------------


@pytest.mark.parametrize("pause", ["method", "module_function"])
def test_paused_records_nothing_and_keeps_earlier_records(pause):
    model, x, target = setup(CASES["custom_module_fallback"], "mse")
    _, q = brute_force(model, x, target, "mse")
    probe = PerExampleGradStats(model)
    paused = probe.paused if pause == "method" else probes_paused
    with paused():  # forward and backward inside: nothing recorded
        batch_loss(model(x), target, "mse", "mean").backward()
    for p in probe.params:
        assert p.grad_sumsq is None
        assert p.grad_batch_size == 0
    assert probe.batch_size == 0

    # Double-backward penalty inside the block, data backward outside: only the data loss.
    fresh_grads(model)
    out = model(x)
    loss = batch_loss(out, target, "mse", "mean")
    with paused():
        (g_out,) = torch.autograd.grad(loss, out, create_graph=True)
        penalty = g_out.pow(2).sum()
        penalty.backward(retain_graph=True)
    loss.backward()
    probe.remove()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)
        assert p.grad_batch_size == B


def test_remove_stops_recording_and_is_idempotent():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    probe = PerExampleGradStats(model)
    out = model(x)  # forward before remove, backward after: nothing recorded either
    probe.remove()
    probe.remove()
    batch_loss(out, target, "mse", "mean").backward()
    batch_loss(model(x), target, "mse", "mean").backward()
    assert all(not m._forward_hooks for m in model.modules())
    for p in probe.params:
        assert p.grad is not None
        assert p.grad_sumsq is None
    assert probe.batch_size == 0


def test_context_manager_removes_hooks():
    model, x, _ = setup(CASES["conv1d"], "mse")
    with PerExampleGradStats(model) as probe:
        assert any(m._forward_hooks for m in model.modules())
        model(x).sum().backward()
    assert all(not m._forward_hooks for m in model.modules())
    assert probe.batch_size == B


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_inference_forward_is_untouched(context):
    model, x, _ = setup(CASES["custom_module_fallback"], "mse")
    expected = model(x).detach()
    probe = PerExampleGradStats(model)
    with context():
        out = model(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert probe._pending == {}
    for p in probe.params:
        assert p.grad_sumsq is None
    probe.remove()


def test_frozen_parameters_are_not_tracked_and_input_grad_is_not_needed():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    model[0].weight.requires_grad_(False)
    _, q = brute_force(model, x, target, "mse")
    probe = PerExampleGradStats(model, reduction="sum")
    assert all(p is not model[0].weight for p in probe.params)
    batch_loss(model(x), target, "mse", "sum").backward()
    assert getattr(model[0].weight, "grad_sumsq", None) is None
    for p, qq in zip(probe.params, q, strict=True):
        assert_close(p.grad_sumsq, qq)
    probe.remove()


# -- the fast path and shared weights ------------------------------------------------------------


@pytest.mark.parametrize("quantities", [("sumsq",), ("sqnorm",), ("sumsq", "sqnorm")])
def test_two_dimensional_linear_never_materialises_per_example_gradients(monkeypatch,
                                                                        quantities):
    model, x, target = setup(CASES["mlp_bias"], "ce")

    def forbidden(*args, **kwargs):
        raise AssertionError("per-example gradients materialised on the closed-form path")

    monkeypatch.setattr(PerExampleGradStats, "_per_example", forbidden)
    with PerExampleGradStats(model, quantities=quantities):
        batch_loss(model(x), target, "ce", "mean").backward()
    for p in model.parameters():
        assert (p.grad_sumsq is not None) == ("sumsq" in quantities)
        assert (p.grad_sqnorm_sum is not None) == ("sqnorm" in quantities)


def test_sqnorm_only_on_two_dimensional_linear_adds_no_matrix_product():
    """The norm-only closed form is O(B (in + out)) per layer: the backward pass runs exactly the
    matrix products it runs without a probe (with "sumsq" it runs one more per parameter)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class CountProducts(TorchDispatchMode):
        names = ("mm", "addmm", "addmm_", "addmv", "addmv_", "bmm", "baddbmm", "dot")

        def __init__(self) -> None:
            super().__init__()
            self.counts: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in self.names and name != "dot":
                self.counts["product"] += 1
            self.counts[name] += 1
            return func(*args, **(kwargs or {}))

    model, x, target = setup(CASES["mlp_bias"], "ce")
    counts = {}
    for quantities in [None, ("sumsq",), ("sqnorm",)]:
        fresh_grads(model)
        probe = PerExampleGradStats(model, quantities=quantities) if quantities else None
        loss = batch_loss(model(x), target, "ce", "mean")
        with CountProducts() as spy:
            loss.backward()
        if probe is not None:
            probe.remove()
        counts[quantities] = spy.counts
    plain = counts[None]["product"]
    assert counts[("sumsq",)]["product"] == plain + 6  # the spy sees the probe's own calls
    assert counts[("sqnorm",)]["product"] == plain
    assert counts[("sqnorm",)]["dot"] == 6  # one dot product of length B per parameter


@pytest.mark.parametrize("case", ["linear_nd_input", "conv2d_stride_pad_groups_dilation",
                                  "custom_module_fallback", "mlp_force_fallback"])
def test_chunked_materialisation_matches(case, monkeypatch):
    monkeypatch.setattr(grad_stats, "_CHUNK_ELEMENTS", 40)  # chunks of one or a few examples
    model, x, target = setup(CASES[case], "mse")
    _, q = brute_force(model, x, target, "mse")
    with PerExampleGradStats(model, force_fallback=CASES[case].force_fallback):
        batch_loss(model(x), target, "mse", "mean").backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)


def test_second_live_forward_does_not_leak_into_the_first_backward():
    """Two forward passes alive, backward of only one: the statistics are that one's."""
    model, x, target = setup(CASES["mlp_bias"], "mse")
    x2 = x.flip(0) * 2.0
    _, q = brute_force(model, x, target, "mse")
    with PerExampleGradStats(model):
        loss = batch_loss(model(x), target, "mse", "mean")
        other = model(x2)  # keeps a second record alive for every Linear
        loss.backward()
        assert other.requires_grad
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)
        assert p.grad_batch_size == B


def test_shared_module_differs_from_per_call_sums():
    """The documented behaviour for shared weights is the exact answer, which is not what
    squaring each call's contribution separately would give."""
    model, x, target = setup(CASES["shared_module_called_twice"], "mse")
    _, q = brute_force(model, x, target, "mse")
    with PerExampleGradStats(model):
        batch_loss(model(x), target, "mse", "mean").backward()
    assert_close(model.shared.weight.grad_sumsq, q[2])
    assert model.shared.weight.grad_batch_size == B  # one pass of B examples, not two


def test_input_passed_by_keyword():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    _, q = brute_force(model, x, target, "mse")
    with PerExampleGradStats(model):
        h = model[1](model[0](input=x))
        out = model[4](input=model[3](model[2](h)))
        batch_loss(out, target, "mse", "mean").backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)


def test_shared_module_with_different_batch_sizes_raises():
    lin = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with PerExampleGradStats(lin):
        y = torch.cat([lin(x), lin(x[:2])])  # 4 + 2 rows: examples cannot be aligned
        with pytest.raises(RuntimeError, match="different batch sizes"):
            y.sum().backward()


def test_batch_dimension_folded_into_positions_raises():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double()
    head = nn.Linear(4, 2).double()
    both = nn.ModuleList([model, head])
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    with PerExampleGradStats(both):
        h = model(x).reshape(30, 4)  # folds the 6 positions into the batch dimension
        with pytest.raises(RuntimeError, match="different batch sizes"):
            head(h).sum().backward()


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "Mean", None])
def test_invalid_reduction_raises(reduction):
    expected = f"Invalid reduction: {reduction!r}; expected 'mean' or 'sum'"
    with pytest.raises(ValueError) as info:
        PerExampleGradStats(nn.Linear(2, 2), reduction=reduction)
    assert str(info.value) == expected


def test_model_without_trainable_parameters_raises():
    with pytest.raises(ValueError, match="no parameters"):
        PerExampleGradStats(nn.ReLU())


class FunctionalBatchNorm(nn.Module):
    """A custom module (vmap fallback) normalising with F.batch_norm: in training mode with the
    batch's statistics, otherwise with fixed running statistics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim))
        self.register_buffer("mean", torch.randn(dim))
        self.register_buffer("var", torch.rand(dim) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.batch_norm(x * self.scale, self.mean, self.var, training=self.training,
                         momentum=0.0)
        return torch.tanh(h)


NORMALISED = {
    "batchnorm_affine": lambda: nn.BatchNorm1d(4),
    "batchnorm_no_parameters": lambda: nn.BatchNorm1d(4, affine=False),
    "functional_batch_norm_fallback": lambda: FunctionalBatchNorm(4),
}


@pytest.mark.parametrize("norm", NORMALISED)
def test_batch_normalisation_in_training_mode_raises_but_eval_mode_matches(norm):
    """Normalising with the batch's own statistics couples the examples (a bias before a
    BatchNorm1d(affine=False) has sum_i g_i**2 = 0 exactly, and used to get 21.8): refused, with
    or without parameters, also inside a custom module; eval mode does not couple and matches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), NORMALISED[norm](), nn.Tanh(), nn.Linear(4, 2))
    model = model.double()
    x = torch.randn(B, 3, dtype=torch.float64)
    with PerExampleGradStats(model), pytest.raises(RuntimeError, match="batch statistics"):
        model(x)
    model.eval()
    target = torch.randn(B, 2, dtype=torch.float64)
    _, q = brute_force(model, x, target, "mse")
    fresh_grads(model)
    with PerExampleGradStats(model):
        batch_loss(model(x), target, "mse", "mean").backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)


def test_instance_norm_does_not_couple_examples_and_matches():
    """InstanceNorm runs batch_norm in training mode on a [1, B * C, L] view: per example, so
    it is not refused, and its statistics are exact."""
    torch.manual_seed(0)
    # (no conv bias: instance norm removes it, its per-example gradients are zero)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, bias=False), nn.InstanceNorm1d(3, affine=True),
                          nn.Tanh(),
                          nn.Flatten(), nn.Linear(3 * 5, 2)).double()
    x = torch.randn(B, 2, 7, dtype=torch.float64)
    target = torch.randn(B, 2, dtype=torch.float64)
    _, q = brute_force(model, x, target, "mse")
    fresh_grads(model)
    with PerExampleGradStats(model):
        batch_loss(model(x), target, "mse", "mean").backward()
    for p, qq in zip(model.parameters(), q, strict=True):
        assert_close(p.grad_sumsq, qq)


def test_parameter_used_outside_its_module_is_reported():
    class Sneaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return F.linear(self.a(x), self.b.weight)  # b's forward never runs

    model = Sneaky()
    probe = PerExampleGradStats(model)
    model(torch.randn(4, 3)).sum().backward()
    assert probe.sum_grad_sq(model.a.weight).shape == (3, 3)
    with pytest.raises(RuntimeError, match="outside the forward"):
        probe.sum_grad_sq(model.b.weight)
    assert torch.equal(probe.sum_grad_sq(model.b.bias), torch.zeros(3))  # truly unused
    probe.remove()


def test_sum_grad_with_mixed_batch_sizes_under_mean_raises():
    lin = nn.Linear(3, 2).double()
    probe = PerExampleGradStats(lin, reduction="mean")
    lin(torch.randn(4, 3, dtype=torch.float64)).mean().backward()
    lin(torch.randn(5, 3, dtype=torch.float64)).mean().backward()
    assert lin.weight.grad_batch_size == 9
    with pytest.raises(RuntimeError, match="different batch"):
        probe.sum_grad(lin.weight)
    with pytest.raises(ValueError, match="not tracked"):
        probe.sum_grad(nn.Parameter(torch.zeros(2)))
    probe.remove()


def test_unbatched_input_raises():
    lin = nn.Linear(3, 2)
    with PerExampleGradStats(lin), pytest.raises(RuntimeError, match="batched input"):
        lin(torch.randn(3))


class SignScale(nn.Module):
    """sign(x) * scale: autograd keeps sign(x), not x, so only the probe needs x itself."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x) * self.scale


def test_in_place_change_of_a_saved_input_raises():
    module = SignScale(3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with PerExampleGradStats(module):
        out = module(x)
        x.add_(1.0)
        with pytest.raises(RuntimeError, match="modified in place"):
            out.sum().backward()


def test_tuple_output_warns_and_leaves_no_statistics():
    rnn = nn.RNN(3, 2, batch_first=True)
    with PerExampleGradStats(rnn) as probe, pytest.warns(UserWarning, match="not a single"):
        out, _ = rnn(torch.randn(4, 5, 3))
        out.sum().backward()
    with pytest.raises(RuntimeError, match="no per-example statistics"):
        probe.sum_grad_sq(rnn.weight_hh_l0)


def test_public_names():
    assert set(probes.__all__) == {"PerExampleGradStats", "per_example_sums", "probes_paused",
                                   "remove_probes"}
    for name in probes.__all__:
        assert getattr(probes, name) is not None


# -- quantities, freshness, and the stand-in probe -------------------------------------------------


@pytest.mark.parametrize("quantities", ["sqnorm", (), ("sumsq", "norm"), None, ("SUMSQ",)])
def test_invalid_quantities_raise(quantities):
    with pytest.raises(ValueError, match="Invalid quantities"):
        PerExampleGradStats(nn.Linear(2, 2), quantities=quantities)


def test_quantities_are_normalised_and_reported():
    probe = PerExampleGradStats(nn.Linear(2, 2), quantities=["sqnorm", "sumsq", "sqnorm"])
    assert probe.quantities == ("sumsq", "sqnorm")
    assert "quantities=('sumsq', 'sqnorm')" in repr(probe)
    probe.remove()
    with PerExampleGradStats(nn.Linear(2, 2)) as default:  # what SynaPrune needs, no more
        assert default.quantities == ("sumsq",)


def test_sum_grad_sq_without_sumsq_raises():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    with PerExampleGradStats(model, quantities=("sqnorm",)) as probe:
        batch_loss(model(x), target, "mse", "mean").backward()
        with pytest.raises(ValueError, match="not 'sumsq'"):
            probe.sum_grad_sq(model[0].weight)


@pytest.mark.parametrize("quantities", [("sqnorm",), ("sumsq", "sqnorm")], ids=["sqnorm", "both"])
def test_sqnorm_starts_afresh_after_synaprune_zero_grad(quantities):
    """SynaPrune.zero_grad resets grad_batch_size (and grad_sumsq) but not grad_sqnorm_sum: the
    next backward pass must replace it, not add to the previous step's."""
    from synaprune import SynaPrune

    model, x, target = setup(CASES["mlp_bias"], "mse")
    x2 = x.flip(0) * 0.5
    _, _, n1 = brute_force_norms(model, x, target, "mse")
    _, _, n2 = brute_force_norms(model, x2, target, "mse")
    fresh_grads(model)
    probe = PerExampleGradStats(model, quantities=quantities)
    opt = SynaPrune(model.parameters(), lr=0.0)  # lr 0: the reference stays valid
    batch_loss(model(x), target, "mse", "mean").backward()
    for p, n in zip(model.parameters(), n1, strict=True):
        assert_close(p.grad_sqnorm_sum, n)
    opt.zero_grad()
    assert all(p.grad_batch_size == 0 for p in model.parameters())
    batch_loss(model(x2), target, "mse", "mean").backward()
    for p, n in zip(model.parameters(), n2, strict=True):
        assert_close(p.grad_sqnorm_sum, n)
        assert p.grad_batch_size == B
    probe.remove()


def test_zero_clears_every_statistic_whatever_the_quantities():
    model, x, target = setup(CASES["mlp_bias"], "mse")
    with PerExampleGradStats(model):
        batch_loss(model(x), target, "mse", "mean").backward()
    probe = PerExampleGradStats(model, quantities=("sqnorm",))  # construction calls zero()
    for p in model.parameters():
        assert p.grad_sumsq is None and p.grad_sqnorm_sum is None and p.grad_batch_size == 0
    probe.remove()


def _stand_in(model: nn.Module, reduction: str = "mean") -> PerExampleGradStats:
    return grad_stats._StandInProbe(model, reduction=reduction, quantities=("sqnorm",))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_stand_in_alone_matches_and_follows_grad(reduction):
    """Without another probe it records like a norm-only probe, and its statistics follow
    .grad: afresh after model.zero_grad() (no zero() needed between steps), accumulated when
    .grad accumulates."""
    model, x, target = setup(CASES["conv2d_stride_pad_groups_dilation"], "mse")
    x2 = x.flip(0) * 0.5
    _, _, n1 = brute_force_norms(model, x, target, "mse")
    _, _, n2 = brute_force_norms(model, x2, target, "mse")
    fresh_grads(model)
    probe = _stand_in(model, reduction)
    for xx, ref in ((x, n1), (x2, n2)):
        model.zero_grad()
        batch_loss(model(xx), target, "mse", reduction).backward()
        for p, n in zip(model.parameters(), ref, strict=True):
            assert_close(p.grad_sqnorm_sum, n)
            assert p.grad_batch_size == B
            assert p.grad_reduction == reduction
    batch_loss(model(x), target, "mse", reduction).backward()  # accumulates onto x2's
    for p, a, b in zip(model.parameters(), n1, n2, strict=True):
        assert_close(p.grad_sqnorm_sum, a + b)
        assert p.grad_batch_size == 2 * B
    probe.remove()


@pytest.mark.parametrize("order", ["other_first", "stand_in_first"])
def test_stand_in_stands_aside_for_another_probe(order):
    """Whichever is attached first, the other probe's statistics are exact and not counted twice,
    and the stand-in fills in only the modules the other probe does not track."""
    model, x, target = setup(CASES["mlp_bias"], "mse")
    _, q, n = brute_force_norms(model, x, target, "mse")
    fresh_grads(model)
    if order == "other_first":
        other = PerExampleGradStats(model[2], reduction="sum", quantities=("sumsq",))
        stand_in = _stand_in(model, "sum")
    else:
        stand_in = _stand_in(model, "sum")
        other = PerExampleGradStats(model[2], reduction="sum", quantities=("sumsq",))
    for step in range(2):  # the second step: the other probe accumulates, like .grad
        batch_loss(model(x), target, "mse", "sum").backward()
        for i, p in enumerate(model.parameters()):
            if i in (2, 3):  # model[2]: the other probe's (sumsq only)
                assert p.grad_batch_size == B * (step + 1)
                assert p.grad_sqnorm_sum is None
                assert_close(p.grad_sumsq, (step + 1) * q[i])
            else:  # the stand-in's (sqnorm only), cleared by stand_in.zero() below
                assert p.grad_batch_size == B
                assert p.grad_sumsq is None
                assert_close(p.grad_sqnorm_sum, n[i])
        stand_in.zero()  # never clears what the other probe recorded
        assert model[2].weight.grad_sumsq is not None
        assert model[2].weight.grad_batch_size == B * (step + 1)
    other.remove()  # the stand-in takes over
    fresh_grads(model)
    batch_loss(model(x), target, "mse", "sum").backward()
    for p, nn_ in zip(model.parameters(), n, strict=True):
        assert_close(p.grad_sqnorm_sum, nn_)
        assert p.grad_batch_size == B
    stand_in.remove()


def test_doctests():
    import doctest

    result = doctest.testmod(grad_stats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_a_second_probe_on_the_same_parameters_is_refused():
    """Two probes on one parameter would both add every example's statistics (grad_batch_size
    16 for a batch of 8): the second is refused, and the first keeps recording right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    first = PerExampleGradStats(model)
    with pytest.raises(ValueError, match=r"'0.weight' is already tracked .*remove_probes"):
        PerExampleGradStats(model)
    with pytest.raises(ValueError, match="'weight' is already tracked"):
        PerExampleGradStats(model[2])  # a sub-module shares the parameters
    model(x).sum().backward()
    assert [p.grad_batch_size for p in model.parameters()] == [8] * 4
    first.remove()
    again = PerExampleGradStats(model)  # allowed once the old one is removed
    assert probes.remove_probes(model) == 1 and again._removed
    assert probes.remove_probes(model) == 0
    PerExampleGradStats(model).remove()
