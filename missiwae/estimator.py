"""A scikit-learn imputer around missIWAE: fit on a NaN-holed table, impute by SNIS or SIR.

    imputer = MissIWAEImputer(epochs=200, random_state=0)
    X_filled = imputer.fit_transform(X)          # (N, D), NaN -> E[x_m | x_o] (SNIS)
    copies = imputer.sample(X, n_imputations=5)  # (5, N, D), NaN -> draws (SIR)

Missing entries are NaN in a float array (the scikit-learn convention, as in SimpleImputer),
or NaN / pd.NA in a DataFrame; observed entries come back unchanged, bit for bit. DataFrames
follow scikit-learn's conventions: the column names seen in `fit` are `feature_names_in_` and
must come back in the same order, and with `set_output(transform="pandas")` `transform` returns
a DataFrame with the input's index, names and column dtypes (integers stay integers).

Continuous columns are standardised with their observed means and standard deviations before
training, because the decoder's Gaussian or Student-t scales start near 1 and a column in the
thousands would otherwise dominate the bound; imputations are mapped back to the original units.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted, validate_data

from missiwae.categorical import OneHot
from missiwae.columns import (
    OBSERVATIONS,
    Standardization,
    binary_columns,
    check_column_range,
    infer_column_types,
)
from missiwae.config import ModelConfig, TrainConfig
from missiwae.ensemble import BootstrapImputer, fit_bootstrap_ensemble
from missiwae.frames import (
    categorical_columns,
    check_float64_holds,
    column_as_float64,
    is_frame,
    restore_frame,
    with_column,
)
from missiwae.imputation import impute_multiple, impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.training import EpochStats, train
from missiwae.validation import check_params, reraised

_POSITIVE_INT = Interval(Integral, 1, None, closed="left")
CATEGORICAL = "categorical"  # a column of labels: one-hot blocks in the model (missiwae.categorical)
# How a bad value's message states the valid ones, where scikit-learn's description of the
# constraints reads poorly (the rest: "one of [...]", "an integer >= 1").
_WORDING = {
    "column_types": f"'auto', None or a list of {[*OBSERVATIONS, CATEGORICAL]}",
    "hidden": "a non-empty tuple of integers >= 1",
    "learning_rate": "a positive number",
    "standardize": "a bool",
    "random_state": "None, an integer in [0, 2**32 - 1] or a numpy RandomState",
    "device": "a torch device (a str such as 'cpu' or 'cuda', or a torch.device)",
    "verbose": "a bool or an integer >= 0",
    "categories": "'auto' or a list with the levels of each categorical column",
}

# Imputation runs over rows in batches of this size (and the library chunks the L importance
# samples), so memory stays flat in N and L.
_IMPUTE_ROWS = 256

# Offsets added to the fitted seed for the imputation generators: training uses seed, seed + 1
# and seed + 2 (shuffling, bound samples, validation), so imputation draws stay independent.
_TRANSFORM_SEED_OFFSET = 3
_SAMPLE_SEED_OFFSET = 4
# The bootstrap members of n_models > 1 get seeds seed + 5, seed + 6, ...
_ENSEMBLE_SEED_OFFSET = 5

# What to do about such an integer, for each method that would return it changed.
_TRANSFORM_REMEDY = "pass X as a DataFrame and call set_output(transform='pandas') to get it back exactly"
_SAMPLE_REMEDY = "sample returns float64 arrays: drop the column (an identifier?) or rescale it"


class MissIWAEImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Impute NaN entries with a missIWAE deep latent variable model (Mattei & Frellsen 2019).

    `fit` trains the model on the observed entries only (the missIWAE bound with K importance
    samples); `transform` fills each hole with the self-normalised importance sampling estimate
    of E[x_m | x_o] from `num_samples` samples (single imputation, Rao-Blackwellised through
    the decoder's mean); `sample` draws multiple imputations by sampling importance resampling.

    Parameters
    ----------
    observation : {"gaussian", "student_t", "bernoulli"}
        Observation model p_θ(x | z) of the columns `column_types` does not assign otherwise.
        "bernoulli" needs observed values in {0, 1} and imputes probabilities P(x_j = 1 | x_o)
        in [0, 1] (round them for hard labels).
    column_types : "auto", None or sequence of {"gaussian", "student_t", "bernoulli", "categorical"}
        Per-column observation models (p_θ(x | z) is then a product over column groups).
        "auto": columns of labels (a DataFrame's category columns, text that is not numbers)
        are "categorical", columns whose observed values are all 0 or 1 "bernoulli", the others
        use `observation`; None: every column uses `observation`; a sequence: one name per
        column. A categorical column is one-hot in the model (missiwae/categorical.py); its
        holes get the most probable level (`transform`) or drawn levels (`sample`).
    latent_dim : int
        Dimension d of the latent z.
    hidden : tuple of int
        MLP hidden widths of the encoder (the decoder uses them reversed); at least one
        (an empty tuple is refused by `fit`).
    activation : {"tanh", "relu", "elu"}
        MLP activation.
    imputation : {"zero", "learned"}
        ι, what the encoder sees in the holes: zeros or a learned per-feature constant.
        ("oracle" needs the true missing values, which an imputer never has: rejected.)
    K : int
        Importance samples in the training bound (K = 1 is the missVAE bound).
    epochs, batch_size, learning_rate :
        Adam training schedule.
    num_samples : int
        L, importance samples per row for SNIS (`transform`) and SIR (`sample`).
    standardize : bool
        Standardise each continuous column with its observed mean and standard deviation
        before training ("bernoulli" columns stay in {0, 1}).
    random_state : int, numpy RandomState or None
        Seeds weight initialisation, training and imputation; None gives a random seed.
    device : str
        Torch device for training and imputation, e.g. "cpu" or "cuda".
    verbose : bool
        Show per-epoch progress bars during training.
    n_models : int
        B. With B > 1, `fit` also trains B models on bootstrap resamples of the rows and
        `sample` splits its draws among them (missiwae/ensemble.py), so the imputations carry
        the uncertainty of the fitted parameters (proper multiple imputation; prefer
        B = n_imputations). 1: every draw from the one model. `transform` always uses the
        model fitted to all rows.
    categories : "auto" or list of sequences
        The levels of the categorical columns. "auto": a pandas categorical's own categories,
        else the distinct values seen in `fit`, sorted. A list: one sequence of levels per
        categorical column, in column order (as scikit-learn's OneHotEncoder takes them), e.g.
        to allow a level that the training rows lack; `transform` refuses any other level.

    Attributes
    ----------
    model_ : MissIWAE
        The trained model (on standardised data when `standardize`).
    n_features_in_ : int
        D, the number of columns seen in `fit`.
    feature_names_in_ : ndarray of shape (D,)
        The column names seen in `fit`, when X was a DataFrame with string column names;
        `transform` and `sample` refuse a DataFrame whose names or their order differ.
    column_types_ : list of str
        The observation model of each column, as resolved from `column_types` in `fit`.
    onehot_ : OneHot or None
        The levels of the categorical columns (`onehot_.levels`, None for the others), when
        X had any; the model then has D' = D - C + Σ k_c columns.
    mean_, scale_ : ndarray of shape (D',)
        The per-model-column shift and scale applied before training (0 and 1 when not
        standardising, and for bernoulli and categorical columns); std-0 columns get scale 1.
    history_ : list of EpochStats
        Per-epoch training bound and time.
    seed_ : int
        The seed drawn from `random_state` in `fit`; imputation generators derive from it.
    ensemble_ : BootstrapImputer or None
        The B bootstrap-fitted imputers that `sample` draws from when n_models > 1, else None.

    DataFrames and dtypes
    ---------------------
    By default `transform` returns a float64 array, as scikit-learn's imputers do. With
    ``set_output(transform="pandas")`` and a DataFrame X it returns a DataFrame with X's index,
    column names and dtypes: observed cells are X's own values (an int64 above 2**53 included),
    imputed cells of an integer column are rounded to the nearest integer (clipped to the
    dtype's range), of a bool column thresholded at 1/2, of a float32 column rounded to
    float32; numbers held as text come back as float64, and a categorical column keeps its
    dtype with its holes set to levels. A float64 array
    cannot hold every int64 exactly: where an observed integer would change, the array outputs
    (`transform` by default, `sample` always) raise ValueError naming the column.
    """

    # scikit-learn's declaration of the valid parameters (checked at the start of `fit`, see
    # _validate_params); the checks it cannot express follow in _check_param_values.
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "observation": [StrOptions(set(OBSERVATIONS))],
        "column_types": [StrOptions({"auto"}), None, list, tuple],
        "latent_dim": [_POSITIVE_INT],
        "hidden": [tuple, list],
        "activation": [StrOptions({"tanh", "relu", "elu"})],
        "imputation": [StrOptions({"zero", "learned"})],
        "K": [_POSITIVE_INT],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [_POSITIVE_INT],
        "learning_rate": [Interval(Real, 0, math.inf, closed="neither")],
        "num_samples": [_POSITIVE_INT],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
        "n_models": [_POSITIVE_INT],
        "categories": [StrOptions({"auto"}), list, tuple],
    }

    def __init__(
        self,
        observation: str = "gaussian",
        column_types: str | tuple[str, ...] | list[str] | None = "auto",
        latent_dim: int = 10,
        hidden: tuple[int, ...] = (128, 128),
        activation: str = "tanh",
        imputation: str = "zero",
        K: int = 20,
        epochs: int = 100,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        num_samples: int = 1000,
        standardize: bool = True,
        random_state: int | np.random.RandomState | None = None,
        device: str = "cpu",
        verbose: bool = False,
        n_models: int = 1,
        categories: str | list[Any] | tuple[Any, ...] = "auto",
    ) -> None:
        # scikit-learn convention: store the parameters untouched (clone and set_params rely on
        # it); all checking happens in `fit`.
        self.observation = observation
        self.column_types = column_types
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.imputation = imputation
        self.K = K
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.num_samples = num_samples
        self.standardize = standardize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.n_models = n_models
        self.categories = categories

    # ------------------------------------------------------------------ fitting

    def fit(self, X: ArrayLike, y: Any = None) -> MissIWAEImputer:
        """Train the model on X (N, D), NaN marking missing entries; `y` is ignored.

        Raises ValueError for a bad parameter, an X that is not 2-D, holds inf, has a column
        with no observed value, or (bernoulli) observed values outside {0, 1}.
        """
        self._validate_params()
        source = X
        X = self._read_table(X, reset=True)
        mask = ~np.isnan(X)
        empty = np.flatnonzero(~mask.any(axis=0))
        if empty.size:
            raise ValueError(
                f"column(s) {self._column_labels(empty)} of X have no observed value (all NaN); "
                "drop them before fitting: nothing can be learned about them"
            )
        model_types = self._resolve_column_types(X, mask)
        self.column_types_ = self._table_types(model_types)
        self._check_binary(X, mask)
        # The range check the table pipeline shares: no infinite scale, no ±inf imputations.
        check_column_range(X, mask, names=self._model_column_names())
        continuous = np.array([t not in ("bernoulli", CATEGORICAL) for t in model_types])
        scaling = (
            Standardization.fit(X, columns=continuous)
            if self.standardize
            else Standardization.identity(X.shape[1])
        )
        self.mean_, self.scale_ = scaling.mean, scaling.scale

        # One integer seed drives everything, so a fixed random_state gives a fixed model and
        # fixed imputations; None draws a fresh one (scikit-learn semantics).
        self.seed_ = int(check_random_state(self.random_state).randint(2**31 - 1))
        # One type for every column: the plain model (no Mixed wrapper); otherwise the
        # continuous default stays `observation` and column_types carries the mix.
        mixed = len(set(model_types)) > 1 or CATEGORICAL in model_types
        observation = self.observation if mixed else model_types[0]
        column_types = tuple(model_types) if mixed else ()
        onehot: OneHot | None = self.onehot_
        model_config = ModelConfig(
            num_features=X.shape[1],
            architecture="mlp",
            latent_dim=int(self.latent_dim),
            hidden=tuple(int(width) for width in self.hidden),
            activation=self.activation,  # type: ignore[arg-type]  # checked in _validate_params
            observation=observation,  # type: ignore[arg-type]
            column_types=column_types,  # type: ignore[arg-type]
            categorical_levels=onehot.categorical_levels if onehot is not None else (),
            imputation=self.imputation,  # type: ignore[arg-type]
        )
        train_config = TrainConfig(
            K=int(self.K),  # ints, not numpy integers: the library's checks want exact ints
            batch_size=int(self.batch_size),
            epochs=int(self.epochs),
            learning_rate=float(self.learning_rate),
            seed=self.seed_,
            device=self.device,
        )
        # Weight initialisation draws from torch's global RNG: seed a forked copy so the model is
        # reproducible without disturbing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            model = MissIWAE.from_config(model_config)
        x, mask_t = self._to_tensors(X, mask, torch.device("cpu"))
        self.history_: list[EpochStats] = train(model, x, mask_t, train_config, progress=bool(self.verbose))
        self.model_ = model.eval()  # n_features_in_ was set by validate_data
        self.ensemble_: BootstrapImputer | None = None
        if self.n_models > 1:
            # With labels, every member resamples the table itself and is given its levels:
            # a resample that misses a level still knows it.
            members = self if onehot is None else clone(self).set_params(categories=self._fitted_levels())
            table = X if onehot is None else source
            self.ensemble_ = fit_bootstrap_ensemble(
                members, table, int(self.n_models), self.seed_ + _ENSEMBLE_SEED_OFFSET
            )
        return self

    # ------------------------------------------------------------------ imputing

    def transform(self, X: ArrayLike) -> Any:
        """Single imputation: a float64 copy of X (N, D) with each NaN replaced by the SNIS
        estimate of E[x_m | x_o] (L = `num_samples`); observed entries are copied unchanged.
        A categorical column's hole gets its most probable level (see `level_probabilities`),
        and the copy is then an object array.

        With ``set_output(transform="pandas")`` and a DataFrame X: a DataFrame with X's index,
        names and column dtypes, imputed integers rounded (see "DataFrames and dtypes" in the
        class docstring). Deterministic: the same fitted imputer gives the same output for the
        same X.
        """
        source = X
        as_frame = is_frame(source) and _get_output_config("transform", self)["dense"] == "pandas"
        X, mask = self._check_transform_input(X)
        if not as_frame:  # before the imputation's cost: a float64 array must hold X exactly
            check_float64_holds(source, self._column_label, _TRANSFORM_REMEDY)
        filled = self._snis(X, mask)
        if getattr(self, "onehot_", None) is not None:  # absent from imputers pickled before
            return self._table_output(source, filled, mask, as_frame=as_frame)
        return restore_frame(source, filled, mask, self._column_label) if as_frame else filled

    def level_probabilities(self, X: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """For each categorical column of X (N, D), by name (or index, as a str): its (N, k)
        level probabilities P(x_c = l | x_o), the levels in `onehot_.levels[j]`'s order. A missing
        entry gets the SNIS estimate (the same one `transform` takes the most probable level
        of); an observed entry, the one-hot vector of its level."""
        X, mask = self._check_transform_input(X)
        onehot = getattr(self, "onehot_", None)
        if onehot is None:
            return {}
        filled = self._snis(X, mask)
        return {
            self._table_names()[j]: onehot.probabilities(filled, j)
            for j, found in enumerate(onehot.levels)
            if found is not None
        }

    def sample(self, X: ArrayLike, n_imputations: int = 5) -> NDArray[Any]:
        """Multiple imputation by SIR: (n_imputations, N, D) float64 copies of X (N, D).

        Each copy fills the NaN entries with a draw from the model's approximate
        p(x_m | x_o) (one resampled particle out of L = `num_samples`, then x_m ~ p_θ(x_m | z));
        observed entries are those of X in every copy. A categorical column's holes get drawn
        levels, and the copies are then an object array. Deterministic given the fitted seed.
        Always an array (the ensemble stacks them), whatever `set_output` says: an integer
        column that float64 would change is refused (ValueError naming it).
        """
        check_params({"n_imputations": [_POSITIVE_INT]}, {"n_imputations": n_imputations}, "sample")
        source = X
        X, mask = self._check_transform_input(X)
        check_float64_holds(source, self._column_label, _SAMPLE_REMEDY)
        ensemble = getattr(self, "ensemble_", None)  # absent from imputers pickled before n_models
        if ensemble is not None:  # n_models > 1: the bootstrap members draw
            with_labels = getattr(self, "onehot_", None) is not None  # members read the table itself
            return ensemble.sample(source if with_labels else X, int(n_imputations))
        x, mask_t = self._to_tensors(X, mask, self.model_.device)
        generator = make_generator(self.seed_ + _SAMPLE_SEED_OFFSET, self.model_.device)
        result = impute_multiple(
            self.model_,
            x,
            mask_t,
            int(n_imputations),
            int(self.num_samples),
            batch_size=_IMPUTE_ROWS,
            generator=generator,
        )
        draws = result.imputations.detach().cpu().numpy()  # (M, N, D), standardised
        filled = self._scaling().fill(X, draws, mask)
        if getattr(self, "onehot_", None) is not None:  # absent from imputers pickled before
            return np.stack([self._table_output(source, copy, mask, as_frame=False) for copy in filled])
        return filled

    def __sklearn_tags__(self) -> Any:
        # Tell scikit-learn (check_estimator, meta-estimators) that NaN input is expected.
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _more_tags(self) -> dict[str, Any]:
        # The same for scikit-learn < 1.6, which reads tags from this method instead.
        return {"allow_nan": True}

    # ------------------------------------------------------------------ helpers

    def _snis(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
        """(N, D') X in the model's columns with each hole set to its SNIS estimate of
        E[x_m | x_o], in X's units; observed entries are X's own."""
        x, mask_t = self._to_tensors(X, mask, self.model_.device)
        generator = make_generator(self.seed_ + _TRANSFORM_SEED_OFFSET, self.model_.device)
        result = impute_single(
            self.model_,
            x,
            mask_t,
            int(self.num_samples),
            batch_size=_IMPUTE_ROWS,
            generator=generator,
        )
        # Observed entries come from X itself, untouched by the float32 round trip.
        return self._scaling().fill(X, result.imputed.detach().cpu().numpy(), mask)

    def _table_output(
        self, source: Any, filled: NDArray[np.float64], mask: NDArray[np.bool_], *, as_frame: bool
    ) -> Any:
        """The table X (N, D) with its holes filled from `filled` (N, D') in the model's columns:
        numbers as `transform` gives them, each categorical hole its block's most probable level
        (level probabilities or a one-hot draw). A DataFrame (X's dtypes) when `as_frame`, else
        an object array."""
        onehot = self.onehot_
        assert onehot is not None
        columns = self._raw_columns(source)
        numbers = np.full((filled.shape[0], len(columns)), np.nan)
        numbers_mask = np.ones(numbers.shape, dtype=bool)  # a categorical column: "observed"
        labels: dict[int, NDArray[Any]] = {}
        for j, (found, span) in enumerate(zip(onehot.levels, onehot.spans(), strict=True)):
            holes = ~mask[:, span.start]
            if found is None:
                numbers[:, j], numbers_mask[:, j] = filled[:, span.start], ~holes
                continue
            values = np.array(np.asarray(columns[j], dtype=object))
            values[holes] = onehot.most_probable(filled[holes], j)
            labels[j] = values
        if as_frame:
            restored = restore_frame(source, numbers, numbers_mask, self._column_label)
            for j, values in labels.items():
                column = source.iloc[:, j]
                series = type(column)(values, index=column.index, name=column.name)
                restored.isetitem(j, series.astype(column.dtype))
            return restored
        table = np.empty(numbers.shape, dtype=object)
        for j in range(len(columns)):
            table[:, j] = labels[j] if j in labels else numbers[:, j]
        return table

    def _validate_params(self) -> None:
        """scikit-learn's parameter validation against `_parameter_constraints`, then the
        checks it cannot express. Raises ValueError naming the parameter."""
        if self.imputation == "oracle":  # a valid ι elsewhere in the library: say why not here
            raise ValueError(
                "imputation='oracle' feeds the encoder the true missing values, which an "
                "imputer never has; use imputation='zero' or 'learned'"
            )
        params = self.get_params(deep=False)
        check_params(self._parameter_constraints, params, type(self).__name__, _WORDING)
        # No scikit-learn constraint describes "a sequence of ints >= 1" or a torch device.
        # Empty is refused as model.hidden=[] is in a config file (see ModelConfig): one rule.
        hidden = self.hidden
        widths_ok = all(isinstance(w, Integral) and not isinstance(w, bool) and w >= 1 for w in hidden)
        if not hidden or not widths_ok:
            raise ValueError(f"hidden must be {_WORDING['hidden']}, got {hidden!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {self.device!r} is not a torch device: {error}") from error

    def _validate_table(self, X: ArrayLike, *, reset: bool) -> NDArray[np.float64]:
        """X as a fresh float64 (N, D) array with no inf (NaN allowed: missing), through
        scikit-learn's `validate_data` (which sets or checks n_features_in_, feature_names_in_)."""
        self._check_2d(X)
        try:
            # Sparse input is refused (accept_sparse=False): NaN marks the holes, and a sparse
            # matrix's implicit zeros are observed zeros, so densifying is the caller's call.
            # errstate: scikit-learn's finiteness check first sums X, which warns for inf + -inf
            # just before it raises about the inf.
            with np.errstate(invalid="ignore", over="ignore"):
                return validate_data(
                    self, X, reset=reset, dtype=np.float64, ensure_all_finite="allow-nan", copy=True
                )
        except (ValueError, TypeError) as error:
            raise reraised(with_column(X, error)) from error

    def _read_table(self, X: ArrayLike, *, reset: bool) -> NDArray[np.float64]:
        """X (N, D) as the model's float64 (N, D') table, NaN = missing: X itself (D' = D), or,
        when X has categorical columns, numbers as they are and each categorical column one-hot
        (`onehot_`, whose levels `fit` finds). Sets or checks n_features_in_ and
        feature_names_in_ as scikit-learn's `validate_data` does."""
        if reset:
            categorical = self._categorical_mask(X)
            self.onehot_: OneHot | None = None
            if any(categorical):
                self._check_2d(X)
                validate_data(self, X, reset=True, skip_check_array=True)
                given = None if isinstance(self.categories, str) else self.categories
                self.onehot_ = OneHot.fit(self._raw_columns(X), categorical, self._table_names(), given)
        onehot = getattr(self, "onehot_", None)
        if onehot is None:
            return self._validate_table(X, reset=reset)
        self._check_2d(X)
        validate_data(self, X, reset=False, skip_check_array=True)
        columns = [
            column if found is not None else column_as_float64(X, j, self._column_label(j))
            for j, (column, found) in enumerate(zip(self._raw_columns(X), onehot.levels, strict=True))
        ]
        return onehot.encode(columns, self._table_names())  # inf: refused by column_as_float64

    def _fitted_levels(self) -> list[list[Any]]:
        """The levels of each categorical column, as the `categories` parameter takes them."""
        assert self.onehot_ is not None
        return [list(found) for found in self.onehot_.levels if found is not None]

    def _categorical_mask(self, X: ArrayLike) -> list[bool]:
        """(D,) which columns of X `fit` models as categorical: those `column_types` names so,
        or, for "auto", the columns of labels (strings, a DataFrame's category columns)."""
        spec = self.column_types
        if spec is None:
            return []
        if isinstance(spec, str):  # "auto"
            return categorical_columns(X)
        return [name == CATEGORICAL for name in spec]

    @staticmethod
    def _raw_columns(X: Any) -> list[Any]:
        """X's columns as they are: a DataFrame's Series, else the (N,) columns of an array."""
        if is_frame(X):
            return [X.iloc[:, j] for j in range(X.shape[1])]
        values = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=object)
        return [values[:, j] for j in range(values.shape[1])]

    def _table_names(self) -> list[str]:
        """(D,) the table's column names: fitted names, else the indices as str."""
        names = getattr(self, "feature_names_in_", None)
        return [str(n) for n in names] if names is not None else [str(j) for j in range(self.n_features_in_)]

    def _model_column_names(self) -> list[str] | None:
        """(D',) names of the model's columns for messages: a categorical column's are
        "name=level"; None for an unnamed table without categorical columns (indices then)."""
        onehot = getattr(self, "onehot_", None)
        names = getattr(self, "feature_names_in_", None)
        if onehot is None:
            return None if names is None else [str(n) for n in names]
        return onehot.model_column_names(self._table_names())

    def _table_types(self, model_types: list[str]) -> list[str]:
        """(D,) each table column's type from the model columns' (D'): a block's first."""
        onehot = getattr(self, "onehot_", None)
        if onehot is None:
            return model_types
        return [model_types[span.start] for span in onehot.spans()]

    @staticmethod
    def _check_2d(X: ArrayLike) -> None:
        # Our own check first: scikit-learn says "Expected 2D array", this estimator has always
        # said "must be 2-D" and shown the shape (its callers and tests match on that).
        shape = getattr(X, "shape", None)
        if shape is None:  # a list: numpy's reading of it decides its shape
            shape = np.asarray(X).shape
        if len(shape) != 2:
            raise ValueError(
                f"X must be 2-D (n_samples, n_features), got an array of shape {shape}. "
                "Reshape your data with X.reshape(-1, 1) for a single feature"
            )

    def _column_label(self, j: int) -> str:
        """How messages name table column j: its fitted name (quoted) when X had names, else j."""
        names = getattr(self, "feature_names_in_", None)
        return repr(str(names[j])) if names is not None else str(j)

    def _model_label(self, j: int) -> str:
        """How messages name model column j (a table column, or one level of a categorical)."""
        names = self._model_column_names()
        return repr(names[j]) if names is not None else str(j)

    def _column_labels(self, columns: NDArray[np.intp]) -> list[str] | list[int]:
        """Model column indices (k,) as messages list them: names when there are names."""
        names = self._model_column_names()
        return [names[j] for j in columns] if names is not None else columns.tolist()

    def _resolve_column_types(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> list[str]:
        """(D',) one type per model column, from `column_types` and `observation`: a
        categorical column's block is "categorical" throughout."""
        onehot = getattr(self, "onehot_", None)
        num_features = self.n_features_in_
        spec = self.column_types
        if spec is None:
            return [self.observation] * num_features
        if isinstance(spec, str):  # "auto": the only string _parameter_constraints lets through
            types = infer_column_types(X, self.observation, mask)
            if onehot is not None:
                for found, span in zip(onehot.levels, onehot.spans(), strict=True):
                    if found is not None:
                        types[span] = [CATEGORICAL] * (span.stop - span.start)
            return types
        types = list(spec)
        if len(types) != num_features:
            raise ValueError(f"column_types names {len(types)} columns, but X has {num_features} features")
        for name in types:
            if name not in (*OBSERVATIONS, CATEGORICAL):  # scikit-learn constrains the list, not its entries
                raise ValueError(
                    f"column_types entry must be one of {[*OBSERVATIONS, CATEGORICAL]}, got {name!r}"
                )
        return list(onehot.model_column_types(types)) if onehot is not None else types

    def _check_binary(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> None:
        onehot = getattr(self, "onehot_", None)
        types = self.column_types_ if onehot is None else onehot.model_column_types(self.column_types_)
        bernoulli = np.array([name == "bernoulli" for name in types])
        wrong = np.flatnonzero(bernoulli & ~binary_columns(X, mask))
        if wrong.size:
            raise ValueError(
                f"column {self._model_label(int(wrong[0]))} is modelled as bernoulli "
                "(observation / column_types) and needs observed values in {0, 1}; "
                "use 'gaussian' or 'student_t' for continuous data"
            )

    def _check_transform_input(self, X: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        check_is_fitted(self, "model_")
        X = self._read_table(X, reset=False)
        mask = ~np.isnan(X)
        self._check_binary(X, mask)
        return X, mask

    def _scaling(self) -> Standardization:
        return Standardization(self.mean_, self.scale_)

    def _to_tensors(
        self, X: NDArray[np.float64], mask: NDArray[np.bool_], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised float32 x (holes set to 0, a finite placeholder) and bool mask (N, D)."""
        scaled = self._scaling().transform(X, mask)
        with np.errstate(over="ignore"):
            scaled32 = scaled.astype(np.float32)
        too_large = np.flatnonzero(~np.isfinite(scaled32).all(axis=0))
        if too_large.size:  # the model computes in float32 (|x| < 3.4e38)
            raise ValueError(
                f"column(s) {self._column_labels(too_large)} of X hold values too large for the "
                "model's float32 arithmetic"
                + (" after standardisation" if self.standardize else "")
                + "; rescale the columns"
            )
        x = torch.as_tensor(scaled32, device=device)
        return x, torch.as_tensor(mask, device=device)
