"""The lab's noisy and sharpness-aware baseline methods (``perturbed-gd``, ``gradient-noise``,
``sam``, ``synaprune-b``) in the runners: options, seed independence, the noise really used."""

from __future__ import annotations

import pytest
import torch

from synaprune.bench import get_method, run_seeds, run_single
from synaprune.bench.runner import noise_generator
from synaprune.problems import get_problem


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        ("perturbed-gd:radius=-1", "radius"),
        ("perturbed-gd:t_thres=-2", "t_thres"),
        ("gradient-noise:eta=-1", "eta"),
        ("sam:rho=-1", "rho"),
        ("sam:batch_size=0", "batch_size"),
        ("synaprune-b:noise=-1", "noise"),
        ("synaprune-b:noise_trigger=sometimes", "noise_trigger"),
        ("synaprune-ab:aggregation=mean", "aggregation"),
        ("synaprune-ab:stall_steps=0", "stall_steps"),
    ],
)
def test_invalid_method_options_raise_naming_them(spec: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        get_method(spec)


# -- the runner --------------------------------------------------------------------------------

NOISY = [
    ("xor:hidden=3", "perturbed-gd:lr=2,threshold=1,t_thres=5,radius=0.5", 40),
    ("xor", "gradient-noise:lr=1,eta=0.3", 40),
    ("teacher-student:k=4", "sam:lr=0.3", 40),
    ("xor", "synaprune-b:lr=2,noise=0.1,noise_trigger=always", 40),
]


@pytest.mark.parametrize(("problem_spec", "method_spec", "steps"), NOISY,
                         ids=[m.split(":")[0] for _, m, _ in NOISY])
def test_seed_alone_equals_seed_among_others(problem_spec: str, method_spec: str,
                                             steps: int) -> None:
    problem, method = get_problem(problem_spec), get_method(method_spec)
    many = run_seeds(problem, method, list(range(10)), steps)
    for seed in (0, 6):
        alone = run_seeds(problem, method, [seed], steps)[0]
        assert (alone.status, alone.steps) == (many[seed].status, many[seed].steps)
        for k, v in alone.params.items():
            assert (v - many[seed].params[k]).abs().max().item() <= 1e-12


@pytest.mark.parametrize(("problem_spec", "method_spec", "steps"), NOISY,
                         ids=[m.split(":")[0] for _, m, _ in NOISY])
def test_the_method_really_differs_from_plain_gd(problem_spec: str, method_spec: str,
                                                 steps: int) -> None:
    """The noise (or SAM's second gradient) reaches the runs: not gd with the same lr."""
    problem, method = get_problem(problem_spec), get_method(method_spec)
    gd = run_single(problem, get_method("gd", lr=method.lr), 3, steps)
    got = run_single(problem, method, 3, steps)
    assert max((got.params[k] - gd.params[k]).abs().max().item() for k in gd.params) > 1e-6


def test_noise_generators_are_per_seed_and_apart_from_the_minibatch_stream() -> None:
    draws = [torch.rand(4, generator=noise_generator(s)) for s in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(draws[1], torch.rand(4, generator=noise_generator(1)))
    assert not torch.equal(draws[1], torch.rand(4, generator=_gen(1)))
