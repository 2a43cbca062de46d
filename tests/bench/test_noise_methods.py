"""Mechanism B's options in the lab's method specs, and the escape preset's method (issue 9)."""

from __future__ import annotations

import pytest
import torch

from synaprune import SynaPrune
from synaprune.bench import get_method
from synaprune.bench.methods import describe_methods
from synaprune.cli import main
from synaprune.optim.presets import ESCAPE

NEW_B = {"noise_decay": "0.99", "noise_eps": "0.001", "noise_steps": "30",
         "noise_shape": "isotropic", "noise_guard": "0.5"}


def test_every_option_of_mechanism_b_is_reachable_from_a_spec() -> None:
    """Each option of SynaPrune's mechanism B (its constructor's noise/stall keywords) is a spec
    option of every preset with B, and reaches the optimizer with the value given."""
    import inspect

    b_options = {k for k in inspect.signature(SynaPrune).parameters
                 if k.startswith(("noise", "stall"))}
    fields = set(get_method("synaprune-b")._fields_of("b"))
    assert b_options <= fields, b_options - fields
    for spec, key, value in [
        ("synaprune-b:noise_schedule=exponential,noise_decay=0.99", "noise_decay", 0.99),
        ("synaprune-b:noise_eps=0.001", "noise_eps", 0.001),
        ("synaprune-ab:noise_schedule=cosine,noise_steps=30", "noise_steps", 30),
        ("synaprune-bc:noise_shape=isotropic", "noise_shape", "isotropic"),
    ]:
        opt = get_method(spec).make_optimizer(
            [torch.zeros(2, dtype=torch.float64, requires_grad=True)], torch.Generator())
        assert opt.param_groups[0][key] == value, spec
    opt = get_method("synaprune-b:noise_guard=0.5").make_optimizer(
        [torch.zeros(2, dtype=torch.float64, requires_grad=True)], torch.Generator())
    assert opt.noise_guard == 0.5 and get_method("synaprune-b:noise_guard=0.5").guard_loss


def test_added_options_enter_the_spec_only_when_set() -> None:
    """Old stored specs stay the key of the same runs; a new option that is set is in the key
    (two runs that differ by it are never confused)."""
    plain = get_method("synaprune-b")
    assert not any(k in plain.spec for k in NEW_B)
    set_ = get_method("synaprune-b:noise_schedule=linear,noise_steps=30,noise_guard=0.5")
    assert "noise_steps=30" in set_.spec and "noise_guard=0.5" in set_.spec
    assert get_method(set_.spec) == set_ and get_method(set_.spec).spec == set_.spec
    assert set_.label == "synaprune-b noise_guard=0.5 noise_schedule=linear noise_steps=30"


@pytest.mark.parametrize(("spec", "word"), [
    ("synaprune-b:noise_steps=30", "noise_steps with noise_schedule='constant'"),
    ("synaprune-b:noise_schedule=linear", "needs noise_steps"),
    ("synaprune-b:noise_decay=0.9", "noise_decay with noise_schedule='constant'"),
    ("synaprune-a:noise_guard=1", "mechanism B's: use synaprune-ab"),
])
def test_ineffective_or_missing_options_are_refused(spec: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        get_method(spec)


def test_escape_method_is_the_optimizer_preset_at_the_run_budget() -> None:
    method = get_method("synaprune-escape:lr=0.5")
    assert method.total_steps is None and method.spec == "synaprune-escape:lr=0.5,total_steps=none"
    with pytest.raises(ValueError, match="needs total_steps"):
        method.make_optimizer([torch.zeros(1, requires_grad=True)], torch.Generator())
    opt = method.for_budget(1000).make_optimizer(
        [torch.zeros(1, dtype=torch.float64, requires_grad=True)], torch.Generator())
    group = opt.param_groups[0]
    assert (group["noise"], group["noise_schedule"], group["noise_steps"]) == (
        ESCAPE["noise"], "linear", round(ESCAPE["fraction"] * 1000))
    assert opt.triggers[0].mode == "always" and opt.param_groups[0]["lr"] == 0.5
    fixed = get_method("synaprune-escape:lr=0.5,total_steps=200")
    assert fixed.for_budget(1000) is fixed  # a budget given in the spec is kept


def test_escape_preset_refuses_mechanism_b_options_and_needs_the_budget() -> None:
    p = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="noise was given too"):
        SynaPrune(p, lr=0.1, preset="escape", total_steps=100, noise=0.1)
    with pytest.raises(ValueError, match="needs the training budget"):
        SynaPrune(p, lr=0.1, preset="escape")
    with pytest.raises(ValueError, match="give preset= too"):
        SynaPrune(p, lr=0.1, total_steps=100)
    with pytest.raises(ValueError, match="Invalid preset"):
        SynaPrune(p, lr=0.1, preset="escapee", total_steps=100)


def test_escape_preset_equals_its_options_spelled_out() -> None:
    """The preset is exactly the documented options: same trajectory, bit for bit."""
    def run(**options) -> torch.Tensor:
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        opt = SynaPrune([p], lr=0.1, seed=4, **options)
        for _ in range(12):
            p.grad = p.detach().clone()
            opt.step()
        return p.detach()

    spelled = dict(noise=ESCAPE["noise"], noise_schedule="linear",
                   noise_steps=round(ESCAPE["fraction"] * 10), noise_clip=ESCAPE["noise_clip"])
    assert torch.equal(run(preset="escape", total_steps=10), run(**spelled))


def test_bench_list_shows_every_method_and_the_new_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--list"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.strip() == describe_methods()
    b = out.split("\nsynaprune-b\n")[1].split("\nsynaprune-bc\n")[0]
    for key in NEW_B:
        assert f"  {key}=" in b
    assert "synaprune-escape\n  lr=0.1" in out


def test_a_filter_on_an_added_option_matches_runs_stored_without_it() -> None:
    """Runs whose options lack an added option (stored before it existed, or at its default)
    have its default: `results --method synaprune-b:noise_guard=none` finds them."""
    from synaprune.bench._runs import method_matcher

    old = {"method_name": "synaprune-b", "method_options": get_method("synaprune-b").options}
    assert "noise_guard" not in old["method_options"]
    assert method_matcher(["synaprune-b:noise_guard=none"])(old)
    assert not method_matcher(["synaprune-b:noise_guard=0.5"])(old)
    guarded = {"method_name": "synaprune-b",
               "method_options": get_method("synaprune-b:noise_guard=0.5").options}
    assert method_matcher(["synaprune-b:noise_guard=0.5"])(guarded)
