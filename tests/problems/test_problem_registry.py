"""The registry and the spec parser: good specs, and one-line ValueErrors for bad ones."""

from __future__ import annotations

import pytest

from synaprune.problems import get_problem, list_problems

ALL = ["autoencoder", "digits", "gaussians", "spirals", "teacher-student", "xor"]


def test_list_problems() -> None:
    assert list_problems() == ALL


@pytest.mark.parametrize("name", ALL)
def test_defaults_and_spec_round_trip(name: str) -> None:
    problem = get_problem(name)
    assert problem.name == name
    again = get_problem(problem.spec)
    assert again.options == problem.options
    assert again.spec == problem.spec
    assert again.global_loss == problem.global_loss
    assert again.tolerance == problem.tolerance


@pytest.mark.parametrize(
    ("spec", "kwargs", "expected"),
    [
        ("teacher-student:k=8,n=8", {}, {"k": 8, "n": 8, "d": 8, "exact": True, "N": 2000}),
        ("teacher-student", {"k": 8}, {"k": 8, "n": 8, "d": 8, "exact": True, "N": 2000}),
        ("teacher-student:k=6,exact=false", {"N": 500}, {"k": 6, "exact": False, "N": 500}),
        ("teacher-student:k=6,n=4,d=9", {}, {"k": 6, "n": 4, "d": 9}),
        ("teacher-student:exact=TRUE", {"n": None}, {"exact": True, "n": 8}),
        (" Teacher_Student : k = 5 ", {}, {"k": 5, "n": 5}),
        ("xor:", {}, {"hidden": 2}),
        ("xor", {"hidden": 3}, {"hidden": 3}),
        ("spirals:turns=2,noise=1e-2", {}, {"turns": 2.0, "noise": 0.01}),
        ("spirals", {"turns": 3}, {"turns": 3.0}),
        ("autoencoder:bottleneck=4", {"hidden": 16}, {"bottleneck": 4, "hidden": 16}),
        ("gaussians:components=6,N=50", {}, {"components": 6, "N": 50}),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_good_specs(spec: str, kwargs: dict, expected: dict) -> None:
    options = get_problem(spec, **kwargs).options
    for key, value in expected.items():
        assert options[key] == value
        assert type(options[key]) is type(value)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        (
            "xr",
            {},
            "Unknown problem 'xr'; choose from: autoencoder, digits, gaussians, spirals, "
            "teacher-student, xor",
        ),
        ("", {}, "Unknown problem ''; choose from: autoencoder"),
        ("xor:q=1", {}, "Unknown option 'q' for problem 'xor'; choose from: hidden"),
        ("xor", {"width": 2}, "Unknown option 'width' for problem 'xor'; choose from: hidden"),
        ("xor:hidden", {}, "Malformed option 'hidden' in spec 'xor:hidden'; expected key=value"),
        ("xor:hidden=", {}, "Malformed option 'hidden='"),
        ("xor:=2", {}, "Malformed option '=2'"),
        ("xor:hidden=2,", {}, "Malformed option ''"),
        ("xor:hidden=2;q=3", {}, "Bad value '2;q=3' for option 'hidden'"),
        ("xor:hidden=2,hidden=3", {}, "Option 'hidden' given twice"),
        ("xor:hidden=2", {"hidden": 2}, "given both in the spec and as a keyword"),
        ("xor:hidden=two", {}, "Bad value 'two' for option 'hidden' of problem 'xor': expected an"),
        ("xor:hidden=2.0", {}, "Bad value '2.0' for option 'hidden'"),
        ("xor:hidden=4", {}, "Option 'hidden' of problem 'xor' must be 2 or 3; got 4"),
        ("xor", {"hidden": True}, "Bad value True for option 'hidden'"),
        ("xor", {"hidden": 2.0}, "Bad value 2.0 for option 'hidden'"),
        ("teacher-student:exact=maybe", {}, "Bad value 'maybe' for option 'exact'"),
        ("teacher-student", {"exact": 1}, "Bad value 1 for option 'exact'"),
        ("teacher-student:k=0", {}, "Option 'k' of problem 'teacher-student' must be >= 1"),
        ("teacher-student:k=6,n=7,d=8", {}, "Option 'n'=7 of problem 'teacher-student' must be <="),
        ("teacher-student:k=8,d=6", {}, "must be <= d=6"),
        ("spirals:noise=nan", {}, "Bad value 'nan' for option 'noise'"),
        ("spirals:noise=-0.1", {}, "Option 'noise' of problem 'spirals' must be >= 0.0"),
        ("spirals:turns=0", {}, "Option 'turns' of problem 'spirals' must be > 0"),
        ("gaussians:components=3", {}, "Option 'components' of problem 'gaussians' must be >= 4"),
        ("autoencoder:bottleneck=65", {}, "must be between 1 and 64; got 65"),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_bad_specs_raise_one_line_value_errors(spec: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        get_problem(spec, **kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_spec_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        get_problem(8)  # type: ignore[arg-type]
