"""Teacher-student: the Gaussian ReLU kernel and the exact population loss.

References are brute force: Monte Carlo over Gaussian inputs (within a few standard errors),
the textbook arccos formula, and finite differences of gradients for the Hessian.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch.func import grad, stack_module_state, vmap

from synaprune.problems import Problem, get_problem, relu_kernel

F64 = torch.float64


def _arccos_kernel(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Textbook form |w||v| (sin t + (pi - t) cos t) / (2 pi), t = arccos(cos)."""
    nw, nv = w.norm(dim=1)[:, None], v.norm(dim=1)[None, :]
    cos = ((w @ v.T) / (nw * nv)).clamp(-1.0, 1.0)
    t = torch.arccos(cos)
    return nw * nv * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi)


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Student-like rows w and teacher-like rows v covering the special cases."""
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(6, 4, generator=gen, dtype=F64)
    v = torch.randn(6, 4, generator=gen, dtype=F64)
    v[0] = 2.5 * w[0]  # parallel
    v[1] = -0.7 * w[1]  # antiparallel
    v[2] = w[2] + 1e-4 * torch.randn(4, generator=gen, dtype=F64)  # nearly parallel
    v[3] = torch.tensor([w[3, 1], -w[3, 0], 0.0, 0.0], dtype=F64)  # orthogonal when w[3] is
    w[3, 2:] = 0.0
    return w, v


def test_kernel_matches_monte_carlo() -> None:
    w, v = _pairs()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200_000, 4, generator=gen, dtype=F64)
    products = torch.relu(x @ w.T)[:, :, None] * torch.relu(x @ v.T)[:, None, :]
    mean = products.mean(dim=0)
    stderr = products.std(dim=0) / math.sqrt(x.shape[0])
    error = (relu_kernel(w, v) - mean).abs()
    assert (error <= 5 * stderr + 1e-12).all(), error / stderr
    assert mean[1, 1] == 0  # antiparallel: never both positive


def test_kernel_special_values_and_textbook_form() -> None:
    w, v = _pairs()
    kernel = relu_kernel(w, v)
    torch.testing.assert_close(kernel, _arccos_kernel(w, v), rtol=1e-10, atol=1e-12)
    nw, nv = w.norm(dim=1), v.norm(dim=1)
    torch.testing.assert_close(kernel[0, 0], 2.5 * nw[0] ** 2 / 2, rtol=1e-14, atol=0)
    assert kernel[1, 1].abs() < 1e-15  # antiparallel: relu(w.x) relu(v.x) = 0
    torch.testing.assert_close(kernel[3, 3], nw[3] * nv[3] / (2 * math.pi), rtol=1e-14, atol=0)
    self_kernel = relu_kernel(w, w)
    torch.testing.assert_close(self_kernel.diagonal(), nw**2 / 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(self_kernel, self_kernel.T, rtol=1e-14, atol=1e-15)
    zero = torch.zeros(1, 4, dtype=F64)
    assert torch.equal(relu_kernel(zero, v), torch.zeros(1, 6, dtype=F64))
    with pytest.raises(ValueError, match="Expected w of size"):
        relu_kernel(w, v[:, :3])


def test_kernel_derivatives_are_finite_at_degenerate_pairs() -> None:
    w, v = _pairs()
    w = torch.cat([w, torch.zeros(1, 4, dtype=F64)])  # a zero row too
    z = w.reshape(-1).clone()

    def f(flat: torch.Tensor) -> torch.Tensor:
        wf = flat.reshape(w.shape)
        return relu_kernel(wf, v).sum() + relu_kernel(wf, wf).sum()

    g = torch.autograd.functional.jacobian(f, z)
    h = torch.autograd.functional.hessian(f, z)
    assert torch.isfinite(g).all()
    assert torch.isfinite(h).all()


def _loss_of_flat(
    problem: Problem, model: torch.nn.Module
) -> Callable[[torch.Tensor], torch.Tensor]:
    shape = model.hidden.weight.shape
    buffers = dict(model.named_buffers())

    def f(flat: torch.Tensor) -> torch.Tensor:
        return problem.exact_loss_fn({"hidden.weight": flat.reshape(shape), **buffers})

    return f


def _check_hessian_against_finite_differences(
    problem: Problem, model: torch.nn.Module, flat: torch.Tensor
) -> torch.Tensor:
    f = _loss_of_flat(problem, model)
    hessian = torch.autograd.functional.hessian(f, flat)
    step = 1e-6
    columns = []
    for e in torch.eye(flat.numel(), dtype=F64):
        plus = torch.autograd.functional.jacobian(f, flat + step * e)
        minus = torch.autograd.functional.jacobian(f, flat - step * e)
        columns.append((plus - minus) / (2 * step))
    reference = torch.stack(columns)
    torch.testing.assert_close(hessian, reference, rtol=1e-5, atol=1e-6)
    return hessian


@pytest.mark.parametrize("spec", ["teacher-student:k=5", "teacher-student:k=4,n=3,d=6"])
def test_exact_loss_matches_monte_carlo(spec: str) -> None:
    problem = get_problem(spec)
    model = problem.build_model(2)
    d, n = problem.options["d"], problem.options["n"]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(200_000, d, generator=gen, dtype=F64)
    teacher = torch.relu(x[:, :n]).sum(dim=1, keepdim=True)
    with torch.no_grad():
        per_example = 0.5 * (model(x) - teacher).square().squeeze(1)
        exact = problem.loss(model)
    stderr = per_example.std() / math.sqrt(x.shape[0])
    assert (exact - per_example.mean()).abs() < 4 * stderr


def test_exact_loss_is_zero_with_zero_gradient_at_the_teacher() -> None:
    problem = get_problem("teacher-student:k=5")
    model = problem.build_model(0)
    for weight in (torch.eye(5, dtype=F64), torch.eye(5, dtype=F64)[[3, 0, 4, 1, 2]]):
        with torch.no_grad():
            model.hidden.weight.copy_(weight)
        model.zero_grad()
        loss = problem.loss(model)
        loss.backward()
        assert loss.abs() < 1e-13
        assert model.hidden.weight.grad.abs().max() < 1e-13
    # Away from the teacher the loss is clearly positive.
    with torch.no_grad():
        model.hidden.weight.mul_(1.1)
    assert problem.loss(model) > 1e-3


def test_exact_hessian_matches_finite_differences() -> None:
    problem = get_problem("teacher-student:k=3,d=4")
    model = problem.build_model(4)
    _check_hessian_against_finite_differences(problem, model, model.hidden.weight.reshape(-1))
    # At the global minimum the loss is C^2 (not C^3): the Hessian must still be finite,
    # symmetric, positive semidefinite and consistent with the gradient.
    teacher = torch.eye(3, 4, dtype=F64).reshape(-1)
    hessian = _check_hessian_against_finite_differences(problem, model, teacher)
    torch.testing.assert_close(hessian, hessian.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(hessian).min() > -1e-10


@pytest.mark.parametrize("distance", [1e-10, 1e-12])
def test_exact_hessian_is_continuous_near_the_teacher(distance: float) -> None:
    # Nearly parallel neurons must not amplify rounding errors (by 1/angle) in the Hessian.
    problem = get_problem("teacher-student:k=4")
    f = _loss_of_flat(problem, problem.build_model(0))
    teacher = torch.eye(4, dtype=F64).reshape(-1)
    direction = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=F64)
    at_teacher = torch.autograd.functional.hessian(f, teacher)
    nearby = torch.autograd.functional.hessian(f, teacher + distance * direction)
    assert (nearby - at_teacher).abs().max() < 100 * distance


def test_vmap_gradient_at_the_teacher_is_finite() -> None:
    problem = get_problem("teacher-student:k=4")
    models = [problem.build_model(s) for s in range(3)]
    with torch.no_grad():
        models[1].hidden.weight.copy_(torch.eye(4, dtype=F64))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    grads = vmap(grad(lambda p, b: problem.functional_loss(base, p, b)))(params, buffers)
    assert torch.isfinite(grads["hidden.weight"]).all()
    assert grads["hidden.weight"][1].abs().max() < 1e-13


def test_model_structure_and_xavier_init() -> None:
    problem = get_problem("teacher-student:k=40")
    model = problem.build_model(0)
    assert [name for name, _ in model.named_parameters()] == ["hidden.weight"]
    assert model.hidden.bias is None
    assert torch.equal(model.output_weight, torch.ones(40, dtype=F64))
    weight = model.hidden.weight
    # Xavier normal on a 40 x 40 layer: N(0, 2 / (40 + 40)); 1600 draws.
    assert weight.mean().abs() < 5 * 0.158 / 40
    assert abs(weight.std().item() / math.sqrt(2 / 80) - 1) < 0.1


def test_sampled_variant_data_and_teacher() -> None:
    problem = get_problem("teacher-student:k=4,n=3,d=5,exact=false,N=100")
    x, y = problem.data()
    assert x.shape == (100, 5)
    assert y.shape == (100, 1)
    again = get_problem("teacher-student:k=4,n=3,d=5,exact=false,N=100").data()
    assert torch.equal(x, again[0])
    assert torch.equal(y, again[1])
    torch.testing.assert_close(y, torch.relu(x[:, :3]).sum(dim=1, keepdim=True))
    model = problem.build_model(0)
    with torch.no_grad():
        model.hidden.weight.copy_(torch.eye(4, 5, dtype=F64))
        model.output_weight[3] = 0.0  # a zero output weight makes the student the teacher
    # The student sums relu(x W^T) v, the teacher relu(x[:, :3]).sum(1): the same numbers added in
    # another order, so the two agree to rounding (a few ulps of |y|), not bit for bit; one x86
    # machine gives 2.96e-33 here. 64 ulps per example is far below any real mismatch (>= 1e-6).
    rounding = (64 * torch.finfo(F64).eps * float(y.abs().max())) ** 2
    with torch.no_grad():
        loss = float(problem.loss(model))
    assert 0 <= loss <= rounding
    # The sample mean estimates the exact loss of the same student.
    exact = get_problem("teacher-student:k=4,n=3,d=5")
    student = exact.build_model(1)
    sampled = get_problem("teacher-student:k=4,n=3,d=5,exact=false,N=20000")
    with torch.no_grad():
        a, b = exact.loss(student), sampled.loss(student)
    assert abs(a - b) < 0.1 * a


def test_published_k7_spurious_minimum_is_a_strict_local_minimum() -> None:
    # The k = n = 7 spurious minimum listed (10 digits) in the README of
    # github.com/ItaySafran/Overparameterization (Safran, Yehudai & Shamir 2021, the
    # follow-up of Safran & Shamir 2018): one neuron of one kind, six of another. Its
    # columns are the neurons, hence the transpose. An independent check of the exact
    # loss: the point must be critical up to its rounding, with a positive-definite Hessian.
    a, f, e, c, d = -0.6327039049, 0.2616910758, 0.1859910463, 0.9969227988, -0.0350801559
    point = torch.full((7, 7), d, dtype=F64)
    point[0, :], point[1:, 0] = f, e
    point[0, 0] = a
    point[range(1, 7), range(1, 7)] = c
    problem = get_problem("teacher-student:k=7")
    model = problem.build_model(0)
    with torch.no_grad():
        model.hidden.weight.copy_(point.T)
    loss = problem.loss(model)
    loss.backward()
    assert 1e-2 < loss.item() < 3e-2  # clearly above the success tolerance 1e-3
    assert model.hidden.weight.grad.norm() < 1e-8
    hessian = torch.autograd.functional.hessian(
        _loss_of_flat(problem, model), point.T.reshape(-1).contiguous()
    )
    assert torch.linalg.eigvalsh(hessian).min() > 1e-3


# ---- mild over-parameterisation: k student neurons > n teacher neurons, d = n -------------

def test_overparameterised_student_keeps_the_teachers_input_dimension() -> None:
    assert get_problem("teacher-student:k=10,n=8").options == {
        "k": 10, "n": 8, "d": 8, "exact": True, "N": 2000}
    assert get_problem("teacher-student:k=8").options["d"] == 8  # unchanged when k = n
    assert get_problem("teacher-student:k=4,n=3,d=6").options["d"] == 6
    model = get_problem("teacher-student:k=10,n=8").build_model(0)
    assert model.hidden.weight.shape == (10, 8)


def _brute_force(w: torch.Tensor, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses 0.5 (f(x) - y)^2 [B] and their gradients (f(x) - y) 1[w_i . x > 0] x
    [B, k, d], written out in float64 without the model."""
    residual = torch.relu(x @ w.T).sum(1) - torch.relu(x[:, :n]).sum(1)
    grads = residual[:, None, None] * (x @ w.T > 0).to(F64)[:, :, None] * x[:, None, :]
    return 0.5 * residual.square(), grads


@pytest.mark.parametrize("spec", ["teacher-student:k=10,n=8", "teacher-student:k=5,n=3"])
def test_overparameterised_exact_loss_and_gradient_match_monte_carlo(spec: str) -> None:
    # Tolerance: 5 standard errors of the sample means (each coordinate, from the sample).
    problem = get_problem(spec)
    d, n = problem.options["d"], problem.options["n"]
    model = problem.build_model(3)
    x = torch.randn(400_000, d, generator=torch.Generator().manual_seed(11), dtype=F64)
    per_loss, per_grad = _brute_force(model.hidden.weight.detach(), x, n)
    model.zero_grad()
    loss = problem.loss(model)
    loss.backward()
    root = math.sqrt(x.shape[0])
    assert abs(loss.item() - per_loss.mean().item()) < 5 * per_loss.std().item() / root
    se = per_grad.std(0) / root
    assert ((model.hidden.weight.grad - per_grad.mean(0)).abs() < 5 * se).all()


def test_overparameterised_sampled_loss_is_the_mean_over_its_samples() -> None:
    problem = get_problem("teacher-student:k=5,n=3,exact=false,N=3000")
    x, _ = problem.data()
    assert x.shape == (3000, 3)
    model = problem.build_model(3)
    per_loss, per_grad = _brute_force(model.hidden.weight.detach(), x, 3)
    model.zero_grad()
    loss = problem.loss(model)
    loss.backward()
    # The same sums in another order: agreement to rounding (1e-12 relative is ~1e4 ulps).
    assert loss.item() == pytest.approx(per_loss.mean().item(), rel=1e-12)
    torch.testing.assert_close(model.hidden.weight.grad, per_grad.mean(0), rtol=1e-10,
                               atol=1e-14)


@pytest.mark.parametrize("k", [9, 10])
def test_overparameterised_global_minima_have_zero_loss_and_gradient(k: int) -> None:
    # Extra neurons that are zero, or that split a teacher neuron into parallel parts, give
    # exactly the teacher's function: loss 0 and gradient 0, so "solved" still means global.
    n = 8
    problem = get_problem(f"teacher-student:k={k},n={n}")
    model = problem.build_model(0)
    zeros = torch.cat([torch.eye(n, dtype=F64), torch.zeros(k - n, n, dtype=F64)])
    split = zeros.clone()
    split[0, 0], split[n, 0] = 0.3, 0.7  # 0.3 e_1 + 0.7 e_1: relu is positively homogeneous
    for weight in (zeros, split):
        with torch.no_grad():
            model.hidden.weight.copy_(weight)
        model.zero_grad()
        loss = problem.loss(model)
        loss.backward()
        assert abs(loss.item()) < 1e-13 and problem.solved(loss.item())
        assert model.hidden.weight.grad.abs().max() < 1e-12


def test_basis_kernel_equals_the_general_kernel_against_the_identity() -> None:
    # Rows: random, nearly parallel to e_2 (angle 1e-9), exactly e_1, zero, nearly antiparallel.
    from synaprune.problems._teacher_student import relu_kernel, relu_kernel_basis

    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    w[1] = torch.tensor([1e-9, 2.0, 0.0, -1e-9], dtype=F64)
    w[2] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    w[3] = 0.0
    w[4] = torch.tensor([-3.0, 1e-10, 0.0, 0.0], dtype=F64)
    eye = torch.eye(3, 4, dtype=F64)
    torch.testing.assert_close(relu_kernel_basis(w, 3), relu_kernel(w, eye), rtol=1e-14,
                               atol=1e-15)

    def both(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def f(u, kernel):
            return (kernel(u.view(5, 4)) * torch.arange(1.0, 4.0, dtype=F64)).sum()
        return (torch.func.hessian(lambda u: f(u, lambda x: relu_kernel_basis(x, 3)))(v),
                torch.func.hessian(lambda u: f(u, lambda x: relu_kernel(x, eye)))(v))

    fast, general = both(w.reshape(-1))
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, general, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="d >= n=5"):
        relu_kernel_basis(w, 5)


def _kernel_through_the_orthogonal_component(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The kernel with autograd through the [k, n, d] orthogonal component: the reference."""
    dot = w @ v.T
    w_sq, v_sq = w.square().sum(1), v.square().sum(1)
    safe = torch.where(w_sq > 0, w_sq, torch.ones_like(w_sq))
    v_perp = v[None] - (dot / safe[:, None])[:, :, None] * w[:, None, :]
    s_sq = w_sq[:, None] * v_perp.square().sum(2)
    generic = s_sq > 1e-16 * w_sq[:, None] * v_sq[None, :]
    s = torch.where(generic, torch.sqrt(torch.where(generic, s_sq, torch.ones_like(s_sq))), 0.0)
    angle = torch.atan2(s, torch.where(~generic & (dot == 0), torch.ones_like(dot), dot))
    return (s + (math.pi - angle) * dot) / (2 * math.pi)


@pytest.mark.parametrize("angle", [1e-2, 1e-6, 1e-9, 0.0])
def test_student_kernel_derivatives_near_parallel_neurons(angle: float) -> None:
    # Two student neurons at a small angle (split neurons of an over-parameterised student do
    # this): value, gradient and Hessian of sum_ij K(w_i, w_j) against the reference whose
    # autograd goes through the orthogonal component. Tolerances: 1e-12 relative for values,
    # 1e-9 for derivatives (the reference itself is accurate to ~1e-10 near parallel).
    from synaprune.problems._teacher_student import relu_kernel

    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    w[1] = 1.7 * (w[0] + angle * torch.tensor([0.0, 1.0, -1.0, 0.5, 0.0], dtype=F64))

    def total(kernel, flat):
        x = flat.view(4, 5)
        return kernel(x, x).sum()

    flat = w.reshape(-1)
    for order in (lambda f: f, torch.func.grad, torch.func.hessian):
        got = order(lambda u: total(relu_kernel, u))(flat)
        ref = order(lambda u: total(_kernel_through_the_orthogonal_component, u))(flat)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- closed-form gradient
# The exact loss goes through _PopulationLoss: its value and first derivative from the angles,
# second derivatives through the closed-form gradient. References: autograd through
# relu_kernel (the old path), and finite differences of the loss in 50-digit arithmetic.


def _students() -> list[tuple[str, torch.Tensor, int]]:
    """(name, w [k, d], n): random, near-parallel students at several angles, zero and
    antiparallel rows, a row on a teacher direction, an over-parameterised one with d > n."""
    gen = torch.Generator().manual_seed(7)
    cases = [("random", torch.randn(5, 5, generator=gen, dtype=F64), 5)]
    for angle in (1e-4, 1e-7, 1e-8, 3e-9):
        w = torch.randn(5, 6, generator=gen, dtype=F64)
        w[1] = 1.7 * (w[0] + angle * torch.randn(6, generator=gen, dtype=F64))
        w[2] = -0.6 * w[3]  # antiparallel
        w[4] = 0.0
        w[4, 1] = 1.3 + angle  # parallel to e_2
        cases.append((f"angle {angle:g}", w, 4))
    split = torch.cat([torch.eye(4, 6, dtype=F64), 0.4 * torch.eye(2, 6, dtype=F64)])
    cases.append(("split teacher, k > n, d > n", split, 4))
    zero = torch.randn(4, 4, generator=gen, dtype=F64)
    zero[2] = 0.0
    cases.append(("zero row", zero, 4))
    return cases


def _loss_pair(w: torch.Tensor, n: int) -> tuple[Callable, Callable]:
    """The product's loss and the autograd reference, as functions of the flat w."""
    from synaprune.problems._teacher_student import _population_loss, population_loss

    k, d = w.shape
    a, b = torch.ones(k, dtype=F64), torch.ones(n, dtype=F64)
    c = b @ relu_kernel(torch.eye(n, dtype=F64), torch.eye(n, dtype=F64)) @ b
    return (lambda x: population_loss(x.view(k, d), a, n, b, c),
            lambda x: _population_loss(x.view(k, d), a, n, b, c))


@pytest.mark.parametrize("name,w,n", _students(), ids=[c[0] for c in _students()])
def test_closed_form_gradient_equals_autograd_through_the_kernel(name: str, w: torch.Tensor,
                                                                 n: int) -> None:
    fast, reference = _loss_pair(w, n)
    flat = w.reshape(-1).clone().requires_grad_(True)
    value, ref_value = fast(flat), reference(flat)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-13, abs=1e-15)
    got = torch.autograd.grad(value, flat)[0]
    ref = torch.autograd.grad(ref_value, flat)[0]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    # The same gradient when it is kept differentiable (the accurate S^2 path) and under vmap.
    kept = torch.autograd.grad(fast(flat), flat, create_graph=True)[0]
    torch.testing.assert_close(kept.detach(), ref, rtol=0, atol=1e-14)
    batched = vmap(grad(fast))(torch.stack([flat.detach(), 2.0 * flat.detach()]))
    torch.testing.assert_close(batched[0], ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(batched[1], torch.func.grad(reference)(2.0 * flat.detach()),
                               rtol=0, atol=1e-13)
    # Second derivatives: the reference's own error reaches ~5e-10 near parallel (below).
    h = torch.autograd.functional.hessian(fast, flat.detach())
    h_ref = torch.autograd.functional.hessian(reference, flat.detach())
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, h_ref, rtol=0, atol=2e-9)


def _mp_loss(w: list[list], n: int):
    """The population loss in mpmath: sum of textbook kernels, t = atan2(S, P)."""
    import mpmath as mp

    def kernel(u: list, v: list):
        dot = mp.fsum(x * y for x, y in zip(u, v, strict=True))
        s = mp.sqrt(max(mp.fsum(x * x for x in u) * mp.fsum(y * y for y in v) - dot**2, 0))
        return (s + (mp.pi - mp.atan2(s, dot)) * dot) / (2 * mp.pi)

    d = len(w[0])
    teacher = [[mp.mpf(int(a == j)) for a in range(d)] for j in range(n)]
    student = mp.fsum(kernel(u, v) for u in w for v in w)
    cross = mp.fsum(kernel(u, e) for u in w for e in teacher)
    return (student - 2 * cross + mp.fsum(kernel(e, f) for e in teacher for f in teacher)) / 2


@pytest.mark.parametrize("angle,hessian_atol", [(1e-5, 1e-13), (1e-7, 1e-13), (1e-8, 5e-9)])
def test_closed_form_derivatives_against_50_digit_finite_differences(
        angle: float, hessian_atol: float) -> None:
    # Two nearly parallel student neurons (split neurons of an over-parameterised student) and
    # one near a teacher direction: the gradient and Hessian must be accurate to rounding, not
    # to eps / angle (autograd through relu_kernel is off by ~5e-10 here). Central differences
    # of the loss with step 1e-15 in 50-digit arithmetic (truncation ~1e-30 times a fourth
    # derivative of order 1 / angle). At 1e-8 the third row's angle to e_2 is below the
    # parallel cut (sin t < 1e-8): the dropped non-smooth part is O(t) in the Hessian.
    import mpmath as mp

    mp.mp.dps = 50
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 4, generator=gen, dtype=F64)
    w[1] = 1.3 * (w[0] + angle * torch.randn(4, generator=gen, dtype=F64))
    w[2] = torch.tensor([0.2 * angle, 1.1, 0.0, -angle], dtype=F64)
    n = 3
    fast, _ = _loss_pair(w, n)
    x0 = [mp.mpf(float(v)) for v in w.reshape(-1).tolist()]
    step = mp.mpf("1e-15")

    def loss_at(shifts: dict[int, int]):
        x = list(x0)
        for p, sign in shifts.items():
            x[p] += sign * step
        return _mp_loss([x[i:i + 4] for i in range(0, 12, 4)], n)

    size = len(x0)
    grad_ref = torch.tensor([float((loss_at({p: 1}) - loss_at({p: -1})) / (2 * step))
                             for p in range(size)], dtype=F64)
    hess_ref = torch.zeros(size, size, dtype=F64)
    centre = loss_at({})
    for p in range(size):
        for q in range(p, size):
            if p == q:
                value = (loss_at({p: 1}) - 2 * centre + loss_at({p: -1})) / step**2
            else:
                value = (loss_at({p: 1, q: 1}) - loss_at({p: 1, q: -1})
                         - loss_at({p: -1, q: 1}) + loss_at({p: -1, q: -1})) / (4 * step**2)
            hess_ref[p, q] = hess_ref[q, p] = float(value)
    flat = w.reshape(-1).clone().requires_grad_(True)
    torch.testing.assert_close(torch.autograd.grad(fast(flat), flat)[0], grad_ref, rtol=0,
                               atol=1e-14)
    hess = torch.autograd.functional.hessian(fast, flat.detach())
    torch.testing.assert_close(hess, hess_ref, rtol=0, atol=hessian_atol)


def test_output_weights_that_require_grad_use_the_autograd_path() -> None:
    from synaprune.problems._teacher_student import population_loss

    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    a = torch.full((4,), 0.8, dtype=F64, requires_grad=True)
    b = torch.ones(4, dtype=F64)
    c = b @ relu_kernel(torch.eye(4, dtype=F64), torch.eye(4, dtype=F64)) @ b
    grad_a = torch.autograd.grad(population_loss(w, a, 4, b, c), a)[0]
    # dL/da = K(W, W) a - K(W, E) b, the kernel matrices of the brute-force textbook form.
    expected = _arccos_kernel(w, w) @ a.detach() - _arccos_kernel(w, torch.eye(4, dtype=F64)) @ b
    torch.testing.assert_close(grad_a, expected, rtol=1e-10, atol=1e-12)
    # Under torch.func.grad too (the Function returns no gradient for a: it must not be used).
    func_a = torch.func.grad(lambda u: population_loss(w, u, 4, b, c))(a.detach())
    torch.testing.assert_close(func_a, expected, rtol=1e-10, atol=1e-12)


def test_closed_form_loss_under_forward_mode_transforms() -> None:
    # torch.func.hessian (forward over reverse), jvp of grad (a Hessian-vector product), jacfwd
    # and reverse over forward against the reverse-over-reverse Hessian of the autograd
    # reference; forward over forward, which torch gets wrong for custom Functions (zeros), is
    # refused.
    from torch.func import hessian, jacfwd, jacrev, jvp

    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(11), dtype=F64)
    fast, reference = _loss_pair(w, 3)
    flat = w.reshape(-1)
    h_ref = torch.autograd.functional.hessian(reference, flat)
    torch.testing.assert_close(hessian(fast)(flat), h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(jacrev(jacfwd(fast))(flat), h_ref, rtol=0, atol=1e-12)
    v = torch.randn(20, generator=torch.Generator().manual_seed(12), dtype=F64)
    torch.testing.assert_close(jvp(grad(fast), (flat,), (v,))[1], h_ref @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(jacfwd(fast)(flat), torch.func.grad(reference)(flat), rtol=0,
                               atol=1e-14)
    # Refused, by the loss or by torch's vmap of the Function, rather than answered with 0.
    with pytest.raises((NotImplementedError, AssertionError)):
        jacfwd(jacfwd(fast))(flat)
    with pytest.raises(NotImplementedError, match=r"(?i)forward mode over forward mode"):
        jvp(lambda y: jvp(fast, (y,), (v,))[1], (flat,), (v,))


def test_stacked_students_equal_one_student_at_a_time() -> None:
    """The closed form over [S, k, d] (the runner's fast path) against each student alone,
    with the degenerate rows of _students (zero, parallel, antiparallel, on a teacher
    direction): values, gradients, and second derivatives of one student's slice."""
    from synaprune.problems._teacher_student import population_loss

    cases = [c for c in _students() if c[1].shape == (5, 6)]  # the near-parallel students
    w = torch.stack([c[1] for c in cases])  # [S, 5, 6]
    n = cases[0][2]
    a, b = torch.ones(w.shape[:2], dtype=F64), torch.ones(n, dtype=F64)
    c = b @ relu_kernel(torch.eye(n, dtype=F64), torch.eye(n, dtype=F64)) @ b
    stacked = w.clone().requires_grad_(True)
    losses = population_loss(stacked, a, n, b, c)
    assert losses.shape == (len(cases),)
    grads = torch.autograd.grad(losses.sum(), stacked, create_graph=True)[0]
    for s in range(len(cases)):
        one = w[s].clone().requires_grad_(True)
        loss = population_loss(one, a[s], n, b, c)
        assert losses[s].item() == pytest.approx(loss.item(), rel=1e-14, abs=1e-16)
        g = torch.autograd.grad(loss, one, create_graph=True)[0]
        torch.testing.assert_close(grads[s].detach(), g.detach(), rtol=0, atol=1e-15)
        # A Hessian-vector product of student s through the stacked graph is its own.
        v = torch.randn(w.shape[1:], generator=torch.Generator().manual_seed(s), dtype=F64)
        hv = torch.autograd.grad((grads[s] * v).sum(), stacked, retain_graph=True)[0]
        hv_one = torch.autograd.grad((g * v).sum(), one)[0]
        torch.testing.assert_close(hv[s], hv_one, rtol=0, atol=1e-13)
        assert hv[torch.arange(len(cases)) != s].abs().max() == 0.0  # no cross-student term
    with pytest.raises(ValueError, match="one student"):
        population_loss(stacked, a.clone().requires_grad_(True), n, b, c)
