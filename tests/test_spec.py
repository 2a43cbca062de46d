"""One spec parser for problems and methods: the same rules for case and for duplicate keys."""

from __future__ import annotations

import re

import pytest

from synaprune._spec import parse_spec, parse_value, split_top
from synaprune.bench import get_method, parse_method_list
from synaprune.problems import get_problem


def test_names_are_case_insensitive_for_problems_and_methods() -> None:
    assert get_problem(" Teacher_Student : k = 5 ").spec == get_problem("teacher-student:k=5").spec
    assert get_method("GD:lr=0.3") == get_method("gd:lr=0.3")
    assert get_method("SynaPrune_A").name == "synaprune-a"
    assert [m.name for m in parse_method_list("Adam:lr=0.1,SGD")] == ["adam", "sgd"]


def test_keys_are_case_sensitive_for_problems_and_methods() -> None:
    # teacher-student has both n (teacher neurons) and N (samples): they must not merge
    problem = get_problem("teacher-student:k=4,n=2,N=50,exact=false")
    assert (problem.options["n"], problem.options["N"]) == (2, 50)
    with pytest.raises(ValueError, match="Unknown option 'LR' for method 'gd'"):
        get_method("gd:LR=0.1")
    with pytest.raises(ValueError, match="Unknown option 'K' for problem 'teacher-student'"):
        get_problem("teacher-student:K=4")


@pytest.mark.parametrize("build", [get_problem, get_method], ids=["problem", "method"])
def test_a_key_given_twice_is_an_error_naming_it(build) -> None:
    spec = "xor:hidden=2,hidden=3" if build is get_problem else "gd:lr=0.1,lr=0.2"
    key = "hidden" if build is get_problem else "lr"
    with pytest.raises(ValueError, match=f"Option '{key}' given twice in spec '{spec}'"):
        build(spec)
    with pytest.raises(ValueError, match="Option 'lr' given twice"):
        parse_method_list("gd:lr=0.1,lr=0.2,adam")


def test_parse_spec_and_values() -> None:
    assert parse_spec("Adam: lr = 0.1 , betas=(0.9, 0.99)", "method") == (
        "adam", {"lr": "0.1", "betas": "(0.9, 0.99)"})
    assert parse_spec("xor", "problem") == ("xor", {})
    assert split_top("a=(1,2),b=[3,4],c=5") == ["a=(1,2)", "b=[3,4]", "c=5"]
    assert parse_value("None", "int?", key="k", owner="x") is None
    assert parse_value("YES", "bool", key="k", owner="x") is True
    for text, kind in (("2.0", "int"), ("inf", "float"), ("(1,nan)", "pair"), ("", "str"),
                       ("none", "int")):
        with pytest.raises(ValueError, match=re.escape(f"Bad value {text!r} for option 'k' of x")):
            parse_value(text, kind, key="k", owner="x")
