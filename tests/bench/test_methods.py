"""The method registry: spec strings, errors, and the optimizers it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import synaprune.bench as bench
import synaprune.bench.methods as methods_module
from synaprune import SynaPrune
from synaprune.bench import get_method, list_methods, method_label, parse_method_list
from synaprune.bench.methods import PLANNED_METHODS
from synaprune.optim import SAM, GradientNoise, PerturbedGD


def test_public_names_import() -> None:
    for name in bench.__all__:
        assert getattr(bench, name) is not None
    # what a user of the lab needs; the method classes, the baselines' optimizers, the CLI
    # plumbing and the runner's helpers stay in their submodules
    assert sorted(bench.__all__) == sorted([
        "Method", "ResultStore", "RunResult", "StoredRun", "Summary", "SweepReport",
        "format_summaries", "get_method", "list_methods", "method_label", "parse_method_list",
        "run_seeds", "run_single", "summarize", "sweep", "tuned_options", "wilson_interval"])


def test_list_methods() -> None:
    assert list_methods() == ["adam", "gd", "gd-restarts", "gradient-noise", "momentum",
                              "perturbed-gd",
                              "saddle-free-newton", "sam",
                              "sgd", "synaprune", "synaprune-a", "synaprune-ab", "synaprune-ac",
                              "synaprune-b", "synaprune-bc", "synaprune-c",
                              "synaprune-escape"]


@pytest.mark.parametrize("name", list_methods())
def test_spec_round_trip(name: str) -> None:
    method = get_method(name)
    assert method.name == name
    assert get_method(method.spec) == method
    assert method.spec.startswith(name + ":")


def test_overrides_and_tuple_option() -> None:
    method = get_method("adam:lr=0.01,betas=(0.8,0.99)")
    assert (method.lr, method.betas, method.eps) == (0.01, (0.8, 0.99), 1e-8)
    assert method.spec == "adam:batch_size=none,betas=(0.8,0.99),eps=1e-08,lr=0.01"
    assert get_method("sgd:batch_size=4").batch_size == 4
    assert get_method("gd").batch_size is None
    assert get_method("momentum:nesterov=true").nesterov is True
    assert get_method("adam", lr=0.5).lr == 0.5


def test_method_list_keeps_options_with_their_method() -> None:
    methods = parse_method_list("gd,adam:lr=0.01,betas=(0.9,0.99),eps=1e-6,sgd:batch_size=2")
    assert [m.name for m in methods] == ["gd", "adam", "sgd"]
    assert methods[1].eps == 1e-6 and methods[1].betas == (0.9, 0.99)
    assert methods[2].batch_size == 2
    assert len(parse_method_list("gd,gd:lr=0.1")) == 1  # same canonical spec


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nope", ["Unknown method 'nope'", "adam, gd, gd-restarts, gradient-noise, momentum"]),
        ("adam:foo=1", ["Unknown option 'foo'", "batch_size, betas, eps, lr"]),
        ("adam:lr=fast", ["Bad value 'fast'", "'lr'"]),
        ("adam:lr", ["Malformed option 'lr'"]),
        ("adam:betas=(0.9)", ["Bad value", "'betas'"]),
        ("sgd:batch_size=2.5", ["Bad value", "integer"]),
        ("sgd:batch_size=0", ["Invalid batch_size"]),
        ("gd:lr=-1", ["Invalid learning rate"]),
        ("synaprune-a:aggregation=mean", ["Invalid aggregation"]),
        ("synaprune-a:blend=2", ["Invalid blend"]),
    ],
)
def test_bad_specs_give_one_line_errors(spec: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        get_method(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_planned_methods_are_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PLANNED_METHODS == ()  # every method of issue 3 is available
    monkeypatch.setattr(methods_module, "PLANNED_METHODS", ("future",))
    with pytest.raises(ValueError, match="not yet available"):
        get_method("future")


def test_make_optimizer_builds_the_ordinary_optimizers() -> None:
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    gd = get_method("gd:lr=0.3").make_optimizer([p])
    assert type(gd) is torch.optim.SGD and gd.param_groups[0]["lr"] == 0.3
    mom = get_method("momentum:momentum=0.8,nesterov=true").make_optimizer([p])
    assert mom.param_groups[0]["momentum"] == 0.8 and mom.param_groups[0]["nesterov"]
    adam = get_method("adam:betas=(0.5,0.6)").make_optimizer([p])
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.5, 0.6)
    sp = get_method("synaprune-a:aggregation=rms").make_optimizer([p])
    assert type(sp) is SynaPrune
    assert sp.param_groups[0]["aggregation"] == "rms" and sp.param_groups[0]["noise"] == 0.0


def test_make_optimizer_builds_the_noisy_optimizers() -> None:
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    pgd = get_method("perturbed-gd:radius=0.2,t_thres=7").make_optimizer([p], gen)
    assert type(pgd) is PerturbedGD and pgd.generators == [gen]
    assert (pgd.param_groups[0]["radius"], pgd.param_groups[0]["t_thres"]) == (0.2, 7)
    gn = get_method("gradient-noise:eta=0.3").make_optimizer([p], gen)
    assert type(gn) is GradientNoise and gn.param_groups[0]["eta"] == 0.3
    sam = get_method("sam:rho=0.1")
    assert sam.needs_closure and type(sam.make_optimizer([p])) is SAM
    sb = get_method("synaprune-b:noise=0.2,noise_trigger=always").make_optimizer([p], gen)
    assert type(sb) is SynaPrune and sb.generators == [gen]
    assert sb.param_groups[0]["noise"] == 0.2 and sb.param_groups[0]["aggregation"] == "mean"
    sab = get_method("synaprune-ab:aggregation=rms")
    assert sab.per_example_stats and sab.stochastic
    stacked = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    gens = [torch.Generator(), torch.Generator()]
    assert sab.make_optimizer([stacked], gens).num_models == 2
    assert get_method("perturbed-gd").make_optimizer([stacked], gens).num_models == 2


def test_tuned_defaults_apply_per_problem_and_yield_to_explicit_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from synaprune.bench import _tuned

    monkeypatch.setattr(_tuned, "TUNED", {"xor": {"gd": {"lr": 3.0},
                                                  "adam": {"lr": 0.03, "eps": 1e-6}}})
    assert get_method("gd").lr == 0.1  # no problem: the class's own default
    assert get_method("gd", problem="xor").lr == 3.0
    assert get_method("gd", problem="xor:hidden=3").lr == 3.0  # the name counts, not the spec
    assert get_method("gd", problem="spirals").lr == 0.1  # not tuned there
    assert get_method("gd:lr=0.5", problem="xor").lr == 0.5  # the spec wins
    assert get_method("adam", problem="xor", lr=0.2).spec == get_method(
        "adam:lr=0.2,eps=1e-6").spec  # overrides win, other tuned options stay
    methods = parse_method_list("gd,adam:eps=1e-3", problem="xor")
    assert [m.spec for m in methods] == [get_method("gd:lr=3").spec,
                                         get_method("adam:lr=0.03,eps=1e-3").spec]


def test_every_shipped_tuned_option_builds_a_valid_method() -> None:
    from synaprune.bench._tuned import TUNED
    from synaprune.problems import list_problems

    for problem, methods in TUNED.items():
        assert problem in list_problems()
        for name, options in methods.items():
            assert name in list_methods()
            method = get_method(name, problem=problem)
            for key, value in options.items():  # every tuned value really applied
                got = getattr(method, key)
                assert (list(got) if isinstance(got, tuple) else got) == value, (problem, name)


# Every method, at its own defaults and at the options tuned on each problem, as the code
# before the SynaPrune presets became one class built it (tests/bench/data/; generated then
# by dumping get_method(name, problem=p) for every name and problem).
# Group options of SynaPrune added after the dump, with their neutral values.
_ADDED_GROUP_OPTIONS = {"noise_steps": "None", "noise_shape": "'magnitude'"}
_BEFORE = json.loads((Path(__file__).parent / "data" / "methods_before_presets.json").read_text())


@pytest.mark.parametrize("record", _BEFORE, ids=[r["spec"] for r in _BEFORE])
def test_specs_stored_by_older_code_name_the_same_method(record: dict) -> None:
    """A stored spec parses to the method that wrote it: same spec (the store's key), options,
    mechanisms and optimizer settings."""
    method = get_method(record["spec"])
    assert method.spec == record["spec"]
    assert method.options == record["options"]
    assert method.name == record["name"]
    assert (method.per_example_stats, method.stochastic, method.needs_closure,
            method.loss_closure) == (record["per_example_stats"], record["stochastic"],
                                     record["needs_closure"], record["loss_closure"])
    assert method.penalty == (tuple(record["penalty"]) if record["penalty"] else None)
    assert method.batch_size == record["batch_size"]
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = method.make_optimizer([p], torch.Generator())
    assert type(opt).__name__ == record["optimizer"]
    group = {k: repr(list(v) if isinstance(v, tuple) else v)
             for k, v in opt.param_groups[0].items()
             if k != "params" and not isinstance(v, torch.Generator)}
    # Options added since (issue 9) are in the group at the value that changes nothing.
    added = {k: group.pop(k) for k in _ADDED_GROUP_OPTIONS if k in group}
    assert all(added[k] == _ADDED_GROUP_OPTIONS[k] for k in added), added
    assert group == record["group"]


def test_synaprune_presets_are_one_method_with_mechanisms_on() -> None:
    """Each preset has the common options and exactly those of its mechanisms."""
    common = {"lr", "base", "momentum", "batch_size"}
    a = {"aggregation", "blend", "blend_schedule", "blend_steps"}
    b = {"noise", "noise_schedule", "noise_gamma", "noise_clip", "noise_trigger",
         "stall_threshold", "stall_steps", "noise_cooldown"}
    c = {"beta", "gamma"}
    for name, mechanisms in (("synaprune-a", a), ("synaprune-b", b), ("synaprune-ab", a | b),
                             ("synaprune-c", c), ("synaprune-ac", a | c),
                             ("synaprune-bc", b | c), ("synaprune", a | b | c)):
        method = get_method(name)
        assert type(method) is methods_module.SynaPruneMethod
        assert set(method.options) == common | mechanisms, name
        assert method.penalty == ((0.3, 1.0) if c <= mechanisms else None)
    # one field per option: a preset's default is the one class's default
    assert get_method("synaprune-b").noise == get_method("synaprune").noise == 0.01


@pytest.mark.parametrize(("spec", "words"), [
    ("synaprune-a:noise=0.1", ["Unknown option 'noise' for method 'synaprune-a'",
                               "mechanism B's: use synaprune-ab"]),
    ("synaprune-bc:blend=0.1", ["mechanism A's: use synaprune"]),
    ("synaprune-b:beta=1", ["mechanism C's: use synaprune-bc"]),
])
def test_an_option_of_a_mechanism_the_preset_lacks_is_refused(spec: str,
                                                             words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        get_method(spec)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ValueError, match="is mechanism B's, which synaprune-a does not use"):
        methods_module.SynaPruneMethod(mechanisms="a", noise=0.5)
    with pytest.raises(ValueError, match="Invalid mechanisms: 'ba'"):
        methods_module.SynaPruneMethod(mechanisms="ba")


def test_label_shows_the_name_and_the_options_other_than_the_defaults() -> None:
    assert get_method("synaprune-a:lr=0.5").label == "synaprune-a lr=0.5"
    assert get_method("gd").label == "gd"
    assert get_method("adam:betas=(0.9,0.99),lr=0.01").label == "adam betas=(0.9,0.99)"
    assert method_label(get_method("synaprune-ab:lr=3,blend=0.25").spec) == \
        "synaprune-ab blend=0.25 lr=3.0"
    # a spec that no longer parses is shown whole rather than hidden
    assert method_label("rmsprop:lr=0.1") == "rmsprop:lr=0.1"
    # distinct methods, distinct labels: over every stored form above
    labels = {get_method(r["spec"]).label: r["spec"] for r in _BEFORE}
    assert len(labels) == len(_BEFORE)


@pytest.mark.parametrize("spec", ["synaprune-a:aggregation=rms,blend=0.3",
                                  "synaprune-b:noise_trigger=always,stall_steps=3",
                                  "synaprune-ab:noise_schedule=constant,noise_gamma=0.7"])
def test_contradictory_options_are_refused_not_dropped(spec: str) -> None:
    """An option the user set that the other settings make meaningless is refused (as
    SynaPrune itself refuses it), never silently dropped; left at its default it is fine."""
    with pytest.raises(ValueError, match="Contradictory"):
        get_method(spec)
    get_method(spec.rsplit(",", 1)[0])  # the same without the contradicting option
