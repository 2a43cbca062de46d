"""gd-restarts: R separate gd runs with the documented seeds and budgets, the best one kept."""

from __future__ import annotations

import math

import pytest
import torch

from synaprune.bench import ResultStore, RunResult, get_method, run_seeds, run_single, sweep
from synaprune.bench._restarts import MAX_RESTARTS, combine_restarts, restart_seed
from synaprune.problems import Problem, get_problem

PROBLEM = "teacher-student:k=4"
LR = 0.5


def _by_hand(seed: int, restarts: list[RunResult]) -> tuple[int, list[RunResult]]:
    """The documented choice, written out: tried = up to the first success; kept = that
    success, else the lowest final loss of a restart that did not diverge (earliest on a
    tie)."""
    tried: list[RunResult] = []
    for r in restarts:
        tried.append(r)
        if r.success:
            return len(tried) - 1, tried
    losses = [math.inf if r.status == "diverged" else r.final_loss for r in tried]
    return losses.index(min(losses)), tried


def _same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("steps", "restarts"), [(180, 3), (301, 3), (100, 1)])
def test_batched_restarts_equal_separate_gd_runs(steps: int, restarts: int) -> None:
    # teacher-student k=4, lr 0.5: with 60 steps a restart sometimes succeeds (seed 5, its
    # third), with 100 steps restart 0 of seed 0 succeeds (the rest are not tried); 301 leaves
    # a remainder of 1 step unused.
    problem = get_problem(PROBLEM)
    seeds = list(range(6))
    got = run_seeds(problem, get_method(f"gd-restarts:lr={LR},restarts={restarts}"), seeds,
                    steps)
    budget = steps // restarts
    inner = [restart_seed(s, r) for s in seeds for r in range(restarts)]
    # The same computation as one gd run over the restart seeds: bit-equality is the claim.
    gd = run_seeds(problem, get_method(f"gd:lr={LR}"), inner, budget)
    statuses = set()
    for i, (s, result) in enumerate(zip(seeds, got, strict=True)):
        own = gd[i * restarts:(i + 1) * restarts]
        assert [r.seed for r in own] == [s + r * 2**24 for r in range(restarts)]
        kept, tried = _by_hand(s, own)
        assert result.seed == s
        assert result.status == own[kept].status and result.success == own[kept].success
        assert result.final_loss == own[kept].final_loss
        assert result.final_grad_norm == own[kept].final_grad_norm
        assert _same_params(result.params, own[kept].params)
        assert result.steps == sum(r.steps for r in tried) <= steps
        assert result.steps_to_success == (result.steps if result.success else None)
        assert result.best_loss == min(r.best_loss for r in tried)
        statuses.add((result.status, kept, len(tried)))
    if restarts == 3 and steps == 180:  # the case it was chosen for really occurs
        assert ("ok", 2, 3) in statuses and any(st == "budget" for st, _, _ in statuses)
    if steps == 301:
        assert ("ok", 0, 1) in statuses


def test_single_loop_restarts_equal_the_batched_ones() -> None:
    problem = get_problem(PROBLEM)
    method = get_method(f"gd-restarts:lr={LR},restarts=3")
    batched = run_seeds(problem, method, range(6), 180)
    for s in range(6):
        single = run_single(problem, method, s, 180)
        ref = batched[s]
        assert (single.status, single.steps) == (ref.status, ref.steps)
        # run_seeds equals run_single to rounding (its docstring: ~1e-12 in float64)
        assert single.final_loss == pytest.approx(ref.final_loss, rel=1e-10, abs=1e-14)
        for k in ref.params:
            torch.testing.assert_close(single.params[k], ref.params[k], rtol=1e-10, atol=1e-12)
        assert [p[0] for p in single.curve] == [p[0] for p in ref.curve]


def test_one_restart_is_gd_bit_for_bit() -> None:
    problem = get_problem(PROBLEM)
    a = run_seeds(problem, get_method(f"gd-restarts:lr={LR},restarts=1"), range(4), 120)
    b = run_seeds(problem, get_method(f"gd:lr={LR}"), range(4), 120)
    for x, y in zip(a, b, strict=True):
        assert (x.status, x.steps, x.final_loss, x.curve) == (y.status, y.steps, y.final_loss,
                                                              y.curve)
        assert _same_params(x.params, y.params)


def test_curve_is_best_so_far_against_total_steps() -> None:
    problem = get_problem(PROBLEM)
    restarts = 3
    got = run_seeds(problem, get_method(f"gd-restarts:lr={LR},restarts={restarts}"), range(6),
                    180, curve_points=30)
    gd = run_seeds(problem, get_method(f"gd:lr={LR}"),
                   [restart_seed(s, r) for s in range(6) for r in range(restarts)], 60,
                   curve_points=10)
    for i, result in enumerate(got):
        own = gd[i * restarts:(i + 1) * restarts]
        _, tried = _by_hand(i, own)
        expected, offset, best = [], 0, math.inf
        for r in tried:
            expected += [[offset + p[0], min(best, p[1]), p[2]] for p in r.curve]
            offset += r.steps
            best = min(best, r.final_loss)
        expected[-1] = [result.steps, result.final_loss, result.final_grad_norm]
        assert result.curve == expected
        steps = [p[0] for p in result.curve]
        assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == result.steps


def test_restarts_have_distinct_initialisations() -> None:
    # torch's generator ignores the bits of a seed above 32: restart seeds must stay below.
    problem = get_problem(PROBLEM)
    seeds = [restart_seed(s, r) for s in (0, 1, 2**24 - 1) for r in (0, 1, MAX_RESTARTS - 1)]
    assert max(seeds) < 2**32 and len(set(seeds)) == len(seeds)
    weights = [problem.build_model(s).hidden.weight for s in seeds]
    for i in range(len(weights)):
        for j in range(i):
            assert not torch.equal(weights[i], weights[j]), (seeds[i], seeds[j])
    with pytest.raises(ValueError, match=r"Invalid seed for gd-restarts: 16777216; must be in"):
        restart_seed(2**24, 0)
    with pytest.raises(ValueError, match="Invalid restart index"):
        restart_seed(0, MAX_RESTARTS)
    with pytest.raises(ValueError, match="Invalid seed for gd-restarts: -1"):
        run_seeds(problem, get_method("gd-restarts"), [-1], 4)


def test_diverged_restarts_are_never_kept(quartic: Problem) -> None:
    # quartic under lr 1: |w| > sqrt(2) blows up (diverged), smaller |w| creep towards 0.
    method = get_method("gd-restarts:lr=1,restarts=4")
    got = run_seeds(quartic, method, range(12), 40)
    gd = run_seeds(quartic, get_method("gd:lr=1"),
                   [restart_seed(s, r) for s in range(12) for r in range(4)], 10)
    seen = set()
    for i, result in enumerate(got):
        own = gd[i * 4:(i + 1) * 4]
        statuses = [r.status for r in own]
        seen.update(statuses)
        if all(st == "diverged" for st in statuses):
            assert result.status == "diverged" and result.steps == sum(r.steps for r in own)
            assert _same_params(result.params, own[0].params)
        else:  # a finite restart is kept, the one the documented choice names
            kept, _ = _by_hand(i, own)
            assert math.isfinite(result.final_loss)
            assert result.final_loss == own[kept].final_loss
            assert _same_params(result.params, own[kept].params)
    assert "diverged" in seen  # the case occurs
    assert any(r.status == "diverged" for r in gd[:4 * 12]) and any(r.success for r in got)


def _restart(status: str, final_loss: float) -> RunResult:
    return RunResult(seed=0, status=status, success=False, final_loss=final_loss,
                     best_loss=final_loss, steps=10, steps_to_success=None, wall_time=0.0,
                     curve=[[0, final_loss, None], [10, final_loss, None]],
                     params={"w": torch.tensor([final_loss])})


def test_a_finite_diverged_restart_is_not_kept_over_a_higher_loss() -> None:
    """A restart that diverged stops at a finite loss above its own bound (2e6 from a start of
    about 1); another that started at 1e4 may sit higher (5e6) without diverging. The kept
    restart is the one that did not diverge, whatever the losses say."""
    blown, high = _restart("diverged", 2e6), _restart("budget", 5e6)
    for order in ([blown, high], [high, blown]):
        kept = combine_restarts(0, order)
        assert kept.status == "budget" and kept.final_loss == 5e6
        assert torch.equal(kept.params["w"], high.params["w"])
    both = combine_restarts(0, [_restart("diverged", 3e6), blown])
    assert both.status == "diverged" and both.final_loss == 3e6  # all diverged: the first


def test_sweep_stores_restart_runs(tmp_path) -> None:
    problem = get_problem(PROBLEM)
    method = get_method(f"gd-restarts:lr={LR},restarts=3")
    store = ResultStore(tmp_path / "r.db")
    report = sweep(problem, method, range(6), 180, store, batch_seeds=4)
    assert report.ran == 6
    rows = {r["seed"]: r for r in store.rows([problem.spec])}
    direct = run_seeds(problem, method, range(6), 180)
    for r in direct:
        assert rows[r.seed]["method"] == method.spec
        assert (rows[r.seed]["status"], rows[r.seed]["steps"]) == (r.status, r.steps)
        assert rows[r.seed]["final_loss"] == r.final_loss
    store.close()


def test_spec_options_and_refusals() -> None:
    method = get_method("gd-restarts:lr=0.3,restarts=5")
    assert method.spec == "gd-restarts:lr=0.3,restarts=5"
    assert method.base == get_method("gd:lr=0.3")
    assert get_method("gd-restarts").restarts == 4
    with pytest.raises(ValueError, match=r"Invalid restarts: 0; must be in \[1, 256\]"):
        get_method("gd-restarts:restarts=0")
    with pytest.raises(ValueError, match="Invalid learning rate"):
        get_method("gd-restarts:lr=-1")
    # Stepping it as one optimizer would silently be plain gd.
    with pytest.raises(TypeError, match="not an optimizer"):
        method.make_optimizer([torch.zeros(1, requires_grad=True)])


def test_on_a_problem_restarts_take_gds_tuned_step() -> None:
    from synaprune.bench import tuned_options

    gd = get_method("gd", problem="xor")
    assert gd.lr != get_method("gd-restarts").lr  # the case matters: xor's gd step is tuned
    assert get_method("gd-restarts", problem="xor").lr == gd.lr
    assert tuned_options("xor", "gd-restarts") == {"lr": gd.lr}
    assert get_method("gd-restarts:lr=0.2", problem="xor").lr == 0.2  # given options win
