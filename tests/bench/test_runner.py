"""The vectorised runner against the plain single-model loop, and batch-size invariance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.bench import get_method, run_seeds, run_single
from synaprune.bench.kinds import divergence_bound
from synaprune.bench.methods import GradientDescent
from synaprune.bench.runner import MinibatchSampler, check_compatible, curve_steps
from synaprune.problems import Problem, get_problem, list_problems

# (problem, method, steps): every method, on exact and per-example problems, full batch and
# minibatch, with and without per-example statistics.
CASES = [
    ("teacher-student:k=4", "gd:lr=0.5", 60),
    ("teacher-student:k=4", "momentum:lr=0.05", 60),
    ("teacher-student:k=4", "adam:lr=0.05", 110),  # some seeds succeed, some do not
    ("xor:hidden=3", "gd:lr=5", 300),  # some seeds succeed
    ("xor", "adam:lr=0.05,batch_size=2", 60),
    ("spirals:N=40", "sgd:batch_size=8,lr=0.5", 60),
    ("xor", "synaprune-a:lr=0.5,aggregation=rms", 60),
    ("spirals:N=40", "synaprune-a:batch_size=8,blend=0.5,momentum=0.9", 40),
    ("xor:hidden=3", "synaprune-a:lr=2,blend=1,blend_schedule=linear,blend_steps=30", 50),
    # noisy methods: seed s's noise from noise_generator(s) in both runners
    ("xor:hidden=3", "perturbed-gd:lr=2,threshold=1,t_thres=10,radius=0.5", 80),
    ("teacher-student:k=4", "perturbed-gd:lr=0.5,threshold=0.05,t_thres=5,radius=0.3", 60),
    ("spirals:N=40", "gradient-noise:batch_size=8,lr=0.5,eta=0.3", 40),
    ("xor", "gradient-noise:lr=1,eta=0.3,momentum=0.5", 60),
    ("teacher-student:k=4", "sam:lr=0.3", 60),  # closure: two gradients a step
    ("xor", "sam:lr=1,batch_size=2,momentum=0.5", 60),  # closure on the same minibatch
    ("xor", "synaprune-b:lr=2,noise=0.1,noise_trigger=always", 60),
    ("xor:hidden=3", "synaprune-b:lr=2,noise=0.1,stall_threshold=0.5,stall_steps=3,"
     "noise_cooldown=5", 60),
    ("xor:hidden=3", "synaprune-ab:lr=1,noise=0.05,stall_threshold=0.05,stall_steps=3,"
     "noise_cooldown=5", 60),
    ("spirals:N=40", "synaprune-ab:batch_size=8,noise=0.05,noise_trigger=always", 30),
    # mechanism C: ActivationGradientPenalty in run_single, StackedPenalty in run_seeds
    ("xor:hidden=3", "synaprune-c:lr=0.5,beta=0.01", 60),
    ("spirals:N=40", "synaprune-c:lr=0.5,beta=0.01,gamma=10,batch_size=8", 40),
    ("xor", "synaprune-ac:lr=1,beta=0.01,aggregation=rms", 60),
    ("xor:hidden=3", "synaprune-bc:lr=1,beta=0.01,noise=0.1,noise_trigger=always", 60),
    ("spirals:N=40", "synaprune:lr=0.5,beta=0.01,noise=0.05,noise_trigger=always,batch_size=8,"
     "momentum=0.9", 40),
    # saddle-free Newton: a closure that returns the loss with its graph (loss_closure)
    ("xor", "saddle-free-newton", 40),  # k = 20 capped at 9: the full-space step
    ("xor:hidden=3", "saddle-free-newton:krylov_dim=4,lr=0.5", 40),  # a true subspace
    ("teacher-student:exact=true,k=4", "saddle-free-newton:lr=0.5", 60),  # seeds stop apart
    # mechanism C on models that are not nn.Sequential (hidden modules found or named)
    ("teacher-student:exact=false,k=4,N=60", "synaprune-c:lr=0.3,beta=0.1", 40),
    ("gaussians:N=40", "synaprune-bc:lr=0.3,beta=0.1,noise=0.1,noise_trigger=always", 40),
]
# Mechanism B relative to the budget, the isotropic ablation and the loss guard (issue 9).
CASES += [
    ("teacher-student:k=4", "synaprune-b:lr=0.5,noise=0.3,noise_schedule=linear,noise_steps=40,"
     "noise_trigger=always,noise_guard=0.05", 60),  # guard: [S] losses, kicks undone per seed
    ("spirals:N=40", "synaprune-ab:batch_size=8,noise=0.2,noise_schedule=cosine,noise_steps=20,"
     "noise_trigger=always,noise_guard=0.1", 30),  # guard on the step's own minibatch
    ("xor:hidden=3", "synaprune-b:lr=2,noise=0.2,noise_schedule=linear,noise_steps=30,"
     "noise_trigger=always,noise_shape=isotropic", 50),
    ("teacher-student:k=4", "synaprune-escape:lr=0.5", 60),  # total_steps = the budget
]
IDS = [f"{p}|{m}" for p, m, _ in CASES]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(("problem_spec", "method_spec", "steps"), CASES, ids=IDS)
def test_batched_equals_plain_loop(problem_spec: str, method_spec: str, steps: int) -> None:
    problem, method = get_problem(problem_spec), get_method(method_spec)
    seeds = [0, 1, 2, 3, 4, 5]
    batched = run_seeds(problem, method, seeds, steps)
    for seed in (1, 4):
        ref = run_single(problem, method, seed, steps)
        got = batched[seeds.index(seed)]
        assert got.seed == seed
        assert (got.status, got.steps, got.steps_to_success) == (
            ref.status, ref.steps, ref.steps_to_success)
        assert _max_diff(got.params, ref.params) <= 1e-10
        assert got.final_loss == pytest.approx(ref.final_loss, abs=1e-10)
        assert got.best_loss == pytest.approx(ref.best_loss, abs=1e-10)
        assert [p[0] for p in got.curve] == [p[0] for p in ref.curve]
        assert (got.final_grad_norm is None) == (ref.final_grad_norm is None)
        if got.final_grad_norm is not None:
            assert got.final_grad_norm == pytest.approx(ref.final_grad_norm, rel=1e-9, abs=1e-12)
        for (_, la, ga), (_, lb, gb) in zip(got.curve, ref.curve, strict=True):
            assert la == pytest.approx(lb, abs=1e-10)
            assert (ga is None) == (gb is None)
            if ga is not None:
                assert ga == pytest.approx(gb, abs=1e-10)
    # The trajectory really moved: a runner that did nothing would fail the comparison.
    start = problem.build_model(1)
    assert _max_diff(batched[1].params, dict(start.named_parameters())) > 1e-6


HAND = [
    ("teacher-student:k=4", "gd:lr=0.3", lambda ps: torch.optim.SGD(ps, lr=0.3)),
    ("teacher-student:k=4", "momentum:lr=0.05,momentum=0.8",
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8)),
    ("teacher-student:k=4", "adam:lr=0.02", lambda ps: torch.optim.Adam(ps, lr=0.02)),
    ("xor", "sgd:batch_size=2,lr=0.5", lambda ps: torch.optim.SGD(ps, lr=0.5)),
    ("xor", "synaprune-a:aggregation=rms,lr=0.5",
     lambda ps: SynaPrune(ps, lr=0.5, aggregation="rms", seed=0)),
]


@pytest.mark.parametrize(("problem_spec", "method_spec", "make"), HAND,
                         ids=[m for _, m, _ in HAND])
def test_batched_equals_hand_written_torch_loop(problem_spec: str, method_spec: str,
                                                make) -> None:
    """Each method equals its ordinary optimizer, built by hand, on build_model(seed) alone."""
    problem, method = get_problem(problem_spec), get_method(method_spec)
    steps, seeds = 30, [2, 5, 9]
    batched = run_seeds(problem, method, seeds, steps)
    for seed, got in zip(seeds, batched, strict=True):
        assert got.status == "budget" and got.steps == steps
        model = problem.build_model(seed)
        opt = make(list(model.parameters()))
        probe = PerExampleGradStats(model) if method.per_example_stats else None
        sampler = (MinibatchSampler(4, method.batch_size, seed)
                   if method.batch_size is not None else None)
        x, y = problem.data() if problem.per_example else (None, None)
        for _ in range(steps):
            opt.zero_grad()
            if sampler is None:
                loss = problem.loss(model)
            else:
                idx = sampler.next()
                loss = problem.loss(model, x[idx], y[idx])
            loss.backward()
            opt.step()
        if probe is not None:
            probe.remove()
        assert _max_diff(got.params, dict(model.named_parameters())) <= 1e-10
        assert got.final_loss == pytest.approx(problem.loss(model).item(), abs=1e-10)


@pytest.mark.parametrize(
    ("problem_spec", "method_spec", "steps"),
    [("teacher-student:k=4", "adam:lr=0.05", 110), ("xor", "sgd:batch_size=2,lr=2", 80),
     ("xor", "synaprune-b:lr=2,noise=0.1,noise_trigger=always", 60)],
)
def test_seed_result_does_not_depend_on_the_batch(problem_spec: str, method_spec: str,
                                                  steps: int) -> None:
    """Seed s alone equals seed s among 1,000 (minibatch order and noise included)."""
    problem, method = get_problem(problem_spec), get_method(method_spec)
    many = run_seeds(problem, method, list(range(1000)), steps)
    for seed in (0, 7, 999):
        alone = run_seeds(problem, method, [seed], steps)[0]
        assert (alone.status, alone.steps) == (many[seed].status, many[seed].steps)
        assert _max_diff(alone.params, many[seed].params) <= 1e-12
    # seeds are genuinely different runs
    assert _max_diff(many[0].params, many[7].params) > 1e-3


def test_success_stops_and_freezes_the_seed() -> None:
    problem, method = get_problem("teacher-student:k=4"), get_method("adam:lr=0.05")
    results = run_seeds(problem, method, list(range(16)), 110)
    statuses = {r.status for r in results}
    assert statuses == {"ok", "budget"}
    for r in results:
        if r.status == "ok":
            assert r.success and r.steps_to_success == r.steps < 110
            assert problem.solved(r.final_loss)
            model = problem.build_model(r.seed)
            model.load_state_dict(r.params, strict=False)
            assert problem.loss(model).item() == pytest.approx(r.final_loss, abs=1e-12)
        else:
            assert not r.success and r.steps == 110 and r.steps_to_success is None
            assert not problem.solved(r.final_loss)
        assert r.best_loss <= r.final_loss
        assert r.wall_time > 0


def test_divergence_is_isolated(quartic: Problem) -> None:
    method = get_method("gd:lr=1.0")
    seeds = list(range(24))
    results = run_seeds(quartic, method, seeds, 200)
    statuses = [r.status for r in results]
    assert "diverged" in statuses and "ok" in statuses
    for r in results:
        w0 = quartic.build_model(r.seed).w.detach()
        if r.status == "diverged":  # NaN, inf, or stopped above the divergence bound
            bound = divergence_bound(quartic, quartic.loss(quartic.build_model(r.seed)).item())
            assert not (r.final_loss <= bound) and not r.success
            assert w0.abs().max() > math.sqrt(2) - 1e-9
        else:
            assert math.isfinite(r.final_loss)
            assert torch.isfinite(r.params["w"]).all()
            ref = run_single(quartic, method, r.seed, 200)
            assert (ref.status, ref.steps) == (r.status, r.steps)
            assert _max_diff(ref.params, r.params) <= 1e-12


def test_curve_is_downsampled_with_first_and_last_step() -> None:
    problem = get_problem("teacher-student:k=4")
    r = run_seeds(problem, get_method("gd:lr=0.01"), [0], 500, curve_points=20)[0]
    steps = [p[0] for p in r.curve]
    assert steps[0] == 0 and steps[-1] == 500 and len(steps) == 20
    assert steps == sorted(curve_steps(500, 20))
    assert all(p[2] > 0 for p in r.curve) and r.curve[-1][2] == r.final_grad_norm
    assert r.curve[-1][1] == r.final_loss
    assert r.curve[0][1] == pytest.approx(problem.loss(problem.build_model(0)).item())


def test_minibatch_sampler_epochs_are_permutations() -> None:
    sampler = MinibatchSampler(10, 3, seed=5)
    epoch = torch.cat([sampler.next() for _ in range(3)])
    assert epoch.unique().numel() == 9  # 3 batches of 3, last partial batch dropped
    again = MinibatchSampler(10, 3, seed=5)
    assert torch.equal(torch.cat([again.next() for _ in range(3)]), epoch)
    assert not torch.equal(MinibatchSampler(10, 3, seed=6).next(), epoch[:3])
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchSampler(10, 11, seed=0)


def test_incompatible_combinations_are_refused() -> None:
    exact = get_problem("teacher-student:k=4")
    with pytest.raises(ValueError, match="minibatches"):
        check_compatible(exact, get_method("sgd"))
    with pytest.raises(ValueError, match="per-example"):
        run_seeds(exact, get_method("synaprune-a"), [0], 3)
    with pytest.raises(ValueError, match="only 4 training examples"):
        check_compatible(get_problem("xor"), get_method("sgd:batch_size=5"))
    with pytest.raises(ValueError, match=r"no duplicates allowed, got \[1\]"):
        run_seeds(exact, get_method("gd"), [1, 2, 1], 3)
    with pytest.raises(ValueError, match="at least one"):
        run_seeds(exact, get_method("gd"), [], 3)
    with pytest.raises(ValueError, match="steps"):
        run_seeds(exact, get_method("gd"), [0], -1)


@pytest.mark.parametrize("name", list_problems())
def test_every_registered_problem_runs_batched(name: str) -> None:
    """vmap compatibility of every problem, with and without per-example statistics."""
    problem = get_problem(name)
    specs = ["gd:lr=0.01"]
    if problem.per_example:
        specs.append("synaprune-a:lr=0.01,batch_size=4")
    for spec in specs:
        method = get_method(spec)
        got = run_seeds(problem, method, [0, 1], 3)[1]
        ref = run_single(problem, method, 1, 3)
        assert got.steps == ref.steps == 3
        assert _max_diff(got.params, ref.params) <= 1e-10
        assert _max_diff(got.params, dict(problem.build_model(1).named_parameters())) > 0


@pytest.mark.parametrize(("problem_spec", "batch_size"), [
    ("xor:hidden=3", None), ("spirals:N=40", None), ("spirals:N=40", 8),  # MLPs: closed form
    ("autoencoder:hidden=6", 8), ("digits:hidden=5", 8),
    ("gaussians:N=40", None), ("teacher-student:exact=false,k=4,N=30", 6),  # not MLPs: vmap
])
def test_rms_aggregation_equals_a_per_example_loop(problem_spec: str,
                                                   batch_size: int | None) -> None:
    """synaprune-a with aggregation=rms in the seed-batched runner takes the steps
    theta <- theta - lr * sign(gbar) * sqrt(mean_i g_i**2), with each g_i the gradient of
    example i's own loss computed one example at a time: the runner's per-example statistics
    (its MLP closed form, or vmap for other models, on the full batch and on per-seed
    minibatches) against the definition."""
    problem = get_problem(problem_spec)
    spec = "synaprune-a:aggregation=rms,lr=0.3" + (f",batch_size={batch_size}"
                                                    if batch_size else "")
    seeds, steps = [3, 7], 2
    batched = run_seeds(problem, get_method(spec), seeds, steps)
    x_all, y_all = problem.data()
    for seed, got in zip(seeds, batched, strict=True):
        model = problem.build_model(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        sampler = MinibatchSampler(x_all.shape[0], batch_size, seed) if batch_size else None
        for _ in range(steps):
            idx = sampler.next() if sampler else torch.arange(x_all.shape[0])
            per_example = []
            for i in idx.tolist():
                loss_i = problem.per_example_loss_fn(model(x_all[i:i + 1]), y_all[i:i + 1])
                per_example.append(torch.autograd.grad(loss_i.sum(), params))
            with torch.no_grad():
                for k, p in enumerate(params):
                    g = torch.stack([gs[k] for gs in per_example])  # [B, *p.shape]
                    p -= 0.3 * torch.sign(g.mean(0)) * g.square().mean(0).sqrt()
        want = dict(model.named_parameters())
        # float64 throughout; the sums run in a different order: 1e-10 of slack, no more
        for name, value in got.params.items():
            torch.testing.assert_close(value, want[name].detach(), rtol=1e-10, atol=1e-12)
        start = dict(problem.build_model(seed).named_parameters())
        assert _max_diff(got.params, start) > 1e-6  # the steps moved the parameters


def test_final_gradient_norm_is_the_full_batch_gradient() -> None:
    """final_grad_norm is ||grad L|| at the final parameters (no penalty, full batch)."""
    problem = get_problem("spirals:N=40")
    method = get_method("synaprune-c:lr=0.5,beta=0.1,batch_size=8")
    (result,) = run_seeds(problem, method, [2], 20)
    model = problem.build_model(2)
    model.load_state_dict(result.params)
    grads = torch.autograd.grad(problem.loss(model), list(model.parameters()))
    expected = math.sqrt(sum(float(g.square().sum()) for g in grads))
    assert result.final_grad_norm == pytest.approx(expected, rel=1e-10)
    assert result.curve[-1][2] == result.final_grad_norm


# ------------------------------------------------------------------ until converged
def test_until_converged_runs_are_bit_identical_to_budgeted_runs_up_to_their_stop() -> None:
    """Each run stopped by the rule at step T has exactly the parameters, loss and cost of the
    same seed run in the same batch with the budget T and no rule; runs that succeeded first
    are the budgeted runs themselves."""
    problem, method = get_problem("teacher-student:k=8"), get_method("gd:lr=0.3")
    seeds = list(range(8))
    conv = run_seeds(problem, method, seeds, 1500, until_converged=True, grad_tol=1e-3,
                     classify=False)
    stopped = [r for r in conv if r.status == "budget" and r.steps < 1500]
    assert len(stopped) >= 2, "the test needs runs stopped by the rule"
    refs = {t: {x.seed: x for x in run_seeds(problem, method, seeds, t, classify=False)}
            for t in sorted({r.steps for r in stopped})[:2]}
    for t, ref in refs.items():
        for r in conv:
            if r.steps == t and r.status == "budget":
                assert r.final_grad_norm is not None and r.final_grad_norm <= 1e-3
                x = ref[r.seed]
                assert x.steps == r.steps and x.status == "budget"
                assert all(torch.equal(x.params[k], r.params[k]) for k in x.params)
                assert x.final_loss == r.final_loss and x.cost == r.cost
                assert x.final_grad_norm == pytest.approx(r.final_grad_norm, rel=1e-12)
            if r.status == "ok" and r.steps <= t:
                x = ref[r.seed]
                assert (x.status, x.steps) == ("ok", r.steps)
                assert all(torch.equal(x.params[k], r.params[k]) for k in x.params)


def test_until_converged_single_loop_matches_the_stacked_runner() -> None:
    problem, method = get_problem("teacher-student:k=8"), get_method("gd:lr=0.3")
    (r,) = run_seeds(problem, method, [6], 1500, until_converged=True, grad_tol=1e-3)
    single = run_single(problem, method, 6, 1500, until_converged=True, grad_tol=1e-3)
    assert r.steps < 1500 and r.status == "budget"
    assert (single.steps, single.status, single.kind) == (r.steps, r.status, r.kind)
    assert single.final_loss == pytest.approx(r.final_loss, rel=1e-12)


def test_until_converged_with_minibatches_uses_the_full_batch_gradient() -> None:
    """sgd's step gradient is a minibatch's; the rule tests the full-batch one, so a run is
    not stopped because one minibatch's gradient happened to be small."""
    problem, method = get_problem("spirals"), get_method("sgd:batch_size=8,lr=0.1")
    runs = run_seeds(problem, method, [0, 1], 40, until_converged=True, grad_tol=1e3,
                     classify=False)
    for r in runs:  # every full-batch gradient is below 1e3: each stops at once
        assert r.steps == 0 and r.final_grad_norm is not None and r.final_grad_norm < 1e3


# ------------------------------------------------------------------ freed slots
class _CountingSGD(torch.optim.SGD):
    """torch's SGD that records how many stacked models each step updates."""

    sizes: ClassVar[list[int]] = []

    def step(self, closure: Any = None) -> Any:
        self.sizes.append(self.param_groups[0]["params"][0].shape[0])
        return super().step(closure)


@dataclass(frozen=True)
class _CountingGD(GradientDescent):
    def make_optimizer(self, params: Any, generator: Any = None) -> torch.optim.Optimizer:
        return _CountingSGD(params, lr=self.lr)


def test_a_run_that_stops_frees_its_slot(quartic: Problem) -> None:
    """Diverged, solved and converged runs leave the stacked tensors: step t updates exactly
    the runs still going, and each result equals the ordinary loop's."""
    _CountingSGD.sizes.clear()
    seeds = list(range(24))
    results = run_seeds(quartic, _CountingGD(lr=1.0), seeds, 60, until_converged=True,
                        grad_tol=0.05, classify=False)
    ends = {r.status if r.steps == 60 else f"{r.status} early" for r in results}
    # Every way out before the budget: divergence, success, the convergence rule.
    assert {"diverged early", "ok early", "budget early"} <= ends
    assert _CountingSGD.sizes == [sum(r.steps > t for r in results)
                                  for t in range(len(_CountingSGD.sizes))]
    assert _CountingSGD.sizes[-1] < len(seeds)
    for r in results:
        ref = run_single(quartic, get_method("gd:lr=1.0"), r.seed, 60, until_converged=True,
                         grad_tol=0.05, classify=False)
        assert (ref.status, ref.steps) == (r.status, r.steps)
        assert r.status == "diverged" or _max_diff(ref.params, r.params) <= 1e-12
