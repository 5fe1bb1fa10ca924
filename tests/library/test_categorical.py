"""Categorical columns: the one-hot observation model, the table encoding, and the estimator
on a DataFrame of numbers, flags and labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from missiwae.categorical import MAX_LEVELS, OneHot
from missiwae.config import ColumnType, ConfigError, ModelConfig
from missiwae.ensemble import bootstrap_rows
from missiwae.estimator import MissIWAEImputer
from missiwae.likelihoods import Categorical, Gaussian, observation_model
from missiwae.model import MissIWAE

# ------------------------------------------------------------------ the observation model


def test_a_column_scores_the_log_softmax_of_its_observed_level_and_nothing_when_missing() -> None:
    model = Categorical([3, 2])
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.3, 0.1]], dtype=torch.float64)
    params = logits[:, None, :]  # (B=1, P=1, D=5)
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # level 2, then level 0
    both = torch.ones(1, 5, dtype=torch.bool)
    expected = torch.log_softmax(logits[0, :3], 0)[2] + torch.log_softmax(logits[0, 3:], 0)[0]
    torch.testing.assert_close(model.log_prob_observed(params, x, both)[0], expected)
    first_only = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(
        model.log_prob_observed(params, x, first_only)[0], torch.log_softmax(logits[0, :3], 0)[2]
    )
    assert model.log_prob_observed(params, x, torch.zeros(1, 5, dtype=torch.bool))[0] == 0.0


def test_the_mean_is_each_columns_level_probabilities() -> None:
    model = Categorical([3, 2])
    params = torch.randn(4, 6, 1, 5, generator=torch.Generator().manual_seed(0))
    mean = model.mean(params)
    torch.testing.assert_close(mean[..., :3], torch.softmax(params[..., 0, :3], -1))
    torch.testing.assert_close(mean[..., 3:].sum(-1), torch.ones(4, 6))


def test_draws_are_one_hot_with_the_level_probabilities_as_frequencies() -> None:
    model = Categorical([3])
    logits = torch.tensor([1.0, 2.0, 0.0])
    draws = model.sample(logits.expand(20_000, 1, 3), torch.Generator().manual_seed(0))
    assert torch.equal(draws.sum(-1), torch.ones(20_000))
    frequencies = draws.mean(0)
    probabilities = torch.softmax(logits, 0)
    # 4 binomial standard errors at n = 20 000: fails by chance about once in 15 000 runs
    standard_error = (probabilities * (1 - probabilities) / 20_000).sqrt()
    assert ((frequencies - probabilities).abs() < 4 * standard_error).all(), frequencies


def test_a_mixed_table_normalises_each_categorical_block_on_its_own() -> None:
    types: list[ColumnType] = [
        "gaussian",
        "categorical",
        "categorical",
        "categorical",
        "categorical",
        "categorical",
    ]
    mixed = observation_model("gaussian", types, categorical_levels=[3, 2])
    params = torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.tensor([[0.4, 0.0, 1.0, 0.0, 0.0, 1.0]] * 5, dtype=torch.float64)
    mask = torch.ones(5, 6, dtype=torch.bool)
    gaussian = Gaussian().log_prob(params[..., :, 0:1], x[:, 0:1])[..., 0]
    blocks = Categorical([3, 2]).log_prob_observed(params[..., :1, 1:], x[:, 1:], mask[:, 1:])
    torch.testing.assert_close(mixed.log_prob_observed(params, x, mask), gaussian + blocks)


def test_the_level_counts_must_cover_the_categorical_model_columns() -> None:
    with pytest.raises(ConfigError, match="categorical_levels"):
        ModelConfig(
            num_features=3, column_types=("gaussian", "categorical", "categorical"), categorical_levels=(3,)
        )
    config = ModelConfig(
        num_features=3,
        hidden=(8,),
        latent_dim=2,
        column_types=("gaussian", "categorical", "categorical"),
        categorical_levels=(2,),
    )
    assert isinstance(MissIWAE.from_config(config).likelihood.groups[0][0], Categorical)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the table encoding


def test_encoding_is_one_hot_with_a_whole_block_missing_and_levels_in_order() -> None:
    colour = np.array(["red", None, "blue", "red"], dtype=object)
    size = np.array([1.0, np.nan, 3.0, 4.0])
    onehot = OneHot.fit([size, colour], categorical=[False, True])
    assert onehot.levels == (None, ("blue", "red")) and onehot.categorical_levels == (2,)
    encoded = onehot.encode([size, colour])
    expected = np.array([[1.0, 0, 1], [np.nan, np.nan, np.nan], [3.0, 1, 0], [4.0, 0, 1]])
    np.testing.assert_array_equal(encoded, expected)
    assert onehot.most_probable(np.array([[0.0, 0.7, 0.3]]), 1).tolist() == ["blue"]


def test_a_pandas_categorical_keeps_its_declared_levels_unobserved_ones_included() -> None:
    column = pd.Series(pd.Categorical(["lo", "hi"], categories=["lo", "mid", "hi"]))
    assert OneHot.fit([column], [True]).levels == (("lo", "mid", "hi"),)


@pytest.mark.parametrize(
    ("fit", "then", "message"),
    [
        (["a", "b"], ["a", "c"], "column 'kind' holds the level 'c', which the imputer did not see in fit"),
        ([str(i) + "x" for i in range(MAX_LEVELS + 1)], None, f"more than the {MAX_LEVELS} levels"),
        (["a", 1.0], None, "column 'kind' of X mixes strings and other values"),
        ([None, np.nan], None, "column 'kind' of X has no observed value"),
    ],
    ids=["unseen-level", "too-many-levels", "mixed-types", "all-missing"],
)
def test_bad_categorical_columns_are_refused_naming_the_column(
    fit: list[Any], then: list[Any] | None, message: str
) -> None:
    column = np.array(fit, dtype=object)
    with pytest.raises(ValueError, match=message):
        OneHot.fit([column], [True], names=["kind"]).encode([np.array(then, dtype=object)], names=["kind"])


# ------------------------------------------------------------------ the estimator


def _shop(seed: int = 0, num_rows: int = 600) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(complete, with holes, holes (N, 4)): a colour (category) that sets a price (number), a
    flag that the price decides, and a size (strings) that depends on the colour; 30% MCAR."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], num_rows)
    price = np.select([colour == "red", colour == "green"], [2.0, -2.0], 0.0) + 0.3 * rng.standard_normal(
        num_rows
    )
    size = np.where(colour == "blue", "S", np.where(rng.random(num_rows) < 0.8, "L", "S"))
    complete = pd.DataFrame(
        {"price": price, "colour": pd.Categorical(colour), "sale": (price > 0).astype(float), "size": size},
        index=np.arange(100, 100 + num_rows),
    )
    holes = rng.random((num_rows, 4)) < 0.3
    holed = complete.copy()
    for j, name in enumerate(holed.columns):
        holed.loc[holes[:, j], name] = np.nan
    return complete, holed, holes


IMPUTER: dict[str, Any] = {"epochs": 60, "num_samples": 200, "random_state": 0}


@pytest.fixture(scope="module")
def shop_fit() -> tuple[MissIWAEImputer, pd.DataFrame, pd.DataFrame, np.ndarray]:
    complete, holed, holes = _shop()
    imputer = MissIWAEImputer(**IMPUTER).set_output(transform="pandas").fit(holed)
    return imputer, complete, holed, holes


def test_types_are_inferred_labels_categorical_flags_bernoulli_numbers_gaussian(shop_fit: Any) -> None:
    imputer, *_ = shop_fit
    assert imputer.column_types_ == ["gaussian", "categorical", "bernoulli", "categorical"]
    assert imputer.onehot_.levels[1] == ("blue", "green", "red") and imputer.onehot_.levels[3] == ("L", "S")


def test_a_dataframe_comes_back_with_its_dtypes_its_observed_cells_and_known_levels(shop_fit: Any) -> None:
    imputer, _, holed, holes = shop_fit
    out = imputer.transform(holed)
    assert out.dtypes.equals(holed.dtypes) and out.index.equals(holed.index)
    assert not out.isna().any().any()
    for j, name in enumerate(holed.columns):
        assert out[name][~holes[:, j]].equals(holed[name][~holes[:, j]])
    assert set(out["size"]) <= {"L", "S"}


def test_the_imputed_levels_use_the_other_columns_far_better_than_the_mode(shop_fit: Any) -> None:
    """The colour is all but given by the price: the model must read it off, not guess the mode."""
    imputer, complete, holed, holes = shop_fit
    out = imputer.transform(holed)
    missing = holes[:, 1] & ~holes[:, 0]  # colour missing, price observed
    accuracy = (out["colour"][missing] == complete["colour"][missing]).mean()
    mode = (complete["colour"][missing] == holed["colour"].mode()[0]).mean()
    assert accuracy > 0.8 and mode < 0.45, (accuracy, mode)


def test_level_probabilities_are_distributions_one_hot_where_observed(shop_fit: Any) -> None:
    imputer, _, holed, holes = shop_fit
    probabilities = imputer.level_probabilities(holed)
    assert list(probabilities) == ["colour", "size"]
    colour = probabilities["colour"]
    assert colour.shape == (len(holed), 3)
    np.testing.assert_allclose(colour.sum(1), 1.0, rtol=1e-5)
    observed = ~holes[:, 1]
    levels = np.array(["blue", "green", "red"])
    assert (levels[colour[observed].argmax(1)] == holed["colour"][observed].to_numpy()).all()
    assert (colour[observed].max(1) == 1.0).all()
    out = imputer.transform(holed)  # transform's level is the most probable one
    assert (levels[colour[~observed].argmax(1)] == out["colour"][~observed].to_numpy()).all()


def test_multiple_imputations_are_object_copies_with_drawn_levels(shop_fit: Any) -> None:
    imputer, _, holed, holes = shop_fit
    copies = imputer.sample(holed, 4)
    assert copies.shape == (4, *holed.shape) and copies.dtype == object
    assert set(copies[:, :, 1].ravel()) <= {"blue", "green", "red"}
    observed = ~holes[:, 3]
    assert (copies[:, observed, 3] == holed["size"][observed].to_numpy()).all()
    # Draws, not the most probable level each time: a small level shows up in some hole.
    assert (copies[:, holes[:, 3], 3] == "S").any() and (copies[:, holes[:, 3], 3] == "L").any()


def test_an_object_array_and_integer_codes_named_categorical_work_too() -> None:
    _, holed, _ = _shop(num_rows=200)
    table = holed.astype(object).to_numpy()
    out = MissIWAEImputer(epochs=2, num_samples=10, random_state=0).fit(table).transform(table)
    assert out.dtype == object and set(out[:, 1]) <= {"blue", "green", "red"}
    codes = holed.assign(
        colour=holed["colour"].cat.codes.replace(-1, np.nan), size=(holed["size"] == "S") * 1.0
    )
    imputer = MissIWAEImputer(
        epochs=2,
        num_samples=10,
        random_state=0,
        column_types=["gaussian", "categorical", "bernoulli", "bernoulli"],
    ).fit(codes)
    assert imputer.onehot_ is not None and imputer.onehot_.levels[1] == (0.0, 1.0, 2.0)
    assert set(imputer.transform(codes)[:, 1]) <= {0.0, 1.0, 2.0}


def test_a_level_unseen_in_fit_is_refused_in_one_clear_line(shop_fit: Any) -> None:
    imputer, _, holed, _ = shop_fit
    later = holed.assign(size=holed["size"].replace("L", "XL"))
    with pytest.raises(ValueError, match="column 'size' holds the level 'XL', which the imputer did not see"):
        imputer.transform(later)


def test_given_categories_allow_a_level_the_training_rows_lack() -> None:
    _, holed, _ = _shop(num_rows=200)
    levels = [["blue", "green", "purple", "red"], ["L", "S"]]
    imputer = MissIWAEImputer(epochs=2, num_samples=10, random_state=0, categories=levels)
    imputer.fit(holed.assign(colour=holed["colour"].astype(object)))
    later = holed.assign(colour=holed["colour"].astype(object).where(holed.index != 100, "purple"))
    assert imputer.level_probabilities(later)["colour"].shape == (200, 4)
    with pytest.raises(ValueError, match="categories lists 1 columns' levels, but X has 2 categorical"):
        MissIWAEImputer(categories=[["L", "S"]]).fit(holed)


def test_an_ensemble_gives_every_member_all_levels_even_when_its_resample_lacks_one() -> None:
    _, holed, _ = _shop(num_rows=120)
    seed = MissIWAEImputer(epochs=0, random_state=0).fit(holed).seed_  # what random_state=0 draws
    missed = np.setdiff1d(np.arange(len(holed)), bootstrap_rows(len(holed), 3, seed + 5)[1])[0]
    # A level on one row only, a row that member 1's resample does not draw:
    holed = holed.assign(size=holed["size"].astype(object).where(np.arange(len(holed)) != missed, "XS"))
    imputer = MissIWAEImputer(epochs=2, num_samples=10, random_state=0, n_models=3).fit(holed)
    assert imputer.ensemble_ is not None and imputer.onehot_ is not None and imputer.seed_ == seed
    for member in imputer.ensemble_.members:
        assert member.onehot_.levels == imputer.onehot_.levels  # type: ignore[attr-defined]
    copies = imputer.sample(holed, 6)
    assert copies.shape == (6, *holed.shape) and set(copies[:, :, 3].ravel()) <= {"L", "S", "XS"}
