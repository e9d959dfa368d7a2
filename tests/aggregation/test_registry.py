"""`make`, `available` and the errors a user sees for a bad name or option."""

import pytest
import torch

import mtrl.aggregation as agg

DESIGN_CARD = ["ls", "rlw", "pcgrad", "cagrad", "nashmtl", "excessmtl", "pivrg"]
BEYOND = ["rgw", "fairgrad", "mgda", "imtlg", "famo", "uw", "dwa", "pi_ls", "pi_rlw", "pi_nashmtl"]


@pytest.mark.parametrize("name", DESIGN_CARD + BEYOND)
def test_every_method_of_the_issue_is_available(name: str) -> None:
    assert name in agg.available()
    method = agg.make(name)
    assert isinstance(method, agg.Aggregator)
    assert method.name == name


def test_available_is_sorted() -> None:
    assert agg.available() == sorted(agg.available())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Unknown aggregator `nope`.*ls.*pivrg"):
        agg.make("nope")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['temperature'\].*distribution, seed"):
        agg.make("rlw", temperature=1.0)


def test_bad_option_value_names_the_value() -> None:
    with pytest.raises(ValueError, match="`distribution = 'gauss'`"):
        agg.make("rlw", distribution="gauss")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        agg.register("ls")(type("Other", (agg.LS,), {}))


def test_ls_is_the_mean() -> None:
    weights = agg.make("ls")(None, agg.TaskStats(torch.ones(4)))
    torch.testing.assert_close(weights, torch.full((4,), 0.25))


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet", "bernoulli", "c-bernoulli"])
def test_rlw_weights_are_on_the_simplex_with_mean_one_over_k(distribution: str) -> None:
    """RW paper App. B: E[λ] = (1/k, ..., 1/k) for every sampling distribution of Sec. 5.4."""
    method = agg.make("rlw", distribution=distribution, seed=0)
    stats = agg.TaskStats(torch.ones(5, dtype=torch.float64))
    draws = torch.stack([method(None, stats) for _ in range(4000)])
    assert (draws >= 0).all()
    torch.testing.assert_close(draws.sum(dim=1), torch.ones(4000, dtype=torch.float64))
    # Standard error of each mean is below 0.2/sqrt(4000) ≈ 0.003 for these distributions.
    torch.testing.assert_close(draws.mean(dim=0), torch.full((5,), 0.2, dtype=torch.float64), atol=0.02, rtol=0)


def test_rlw_is_reproducible_under_a_seed_and_varies_between_steps() -> None:
    stats = agg.TaskStats(torch.ones(3))
    a, b = agg.make("rlw", seed=3), agg.make("rlw", seed=3)
    first = [a(None, stats) for _ in range(5)]
    second = [b(None, stats) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], agg.make("rlw", seed=4)(None, stats))


def test_only_famo_learns_from_the_step() -> None:
    learners = [name for name in agg.available() if agg.make(name).learns_from_steps]
    assert learners == ["famo"]
