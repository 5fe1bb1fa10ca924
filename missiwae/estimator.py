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
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import check_is_fitted, validate_data

from missiwae.columns import (
    OBSERVATIONS,
    Standardization,
    binary_columns,
    check_column_range,
    infer_column_types,
)
from missiwae.config import ModelConfig, TrainConfig
from missiwae.ensemble import BootstrapImputer, fit_bootstrap_ensemble
from missiwae.frames import check_float64_holds, is_frame, restore_frame, with_column
from missiwae.imputation import impute_multiple, impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.training import EpochStats, train
from missiwae.validation import check_params, reraised

_POSITIVE_INT = Interval(Integral, 1, None, closed="left")
# How a bad value's message states the valid ones, where scikit-learn's description of the
# constraints reads poorly (the rest: "one of [...]", "an integer >= 1").
_WORDING = {
    "column_types": f"'auto', None or a list of {list(OBSERVATIONS)}",
    "hidden": "a non-empty tuple of integers >= 1",
    "learning_rate": "a positive number",
    "standardize": "a bool",
    "random_state": "None, an integer in [0, 2**32 - 1] or a numpy RandomState",
    "device": "a torch device (a str such as 'cpu' or 'cuda', or a torch.device)",
    "verbose": "a bool or an integer >= 0",
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
    column_types : "auto", None or sequence of {"gaussian", "student_t", "bernoulli"}
        Per-column observation models (p_θ(x | z) is then a product over column groups).
        "auto": columns whose observed values are all 0 or 1 are "bernoulli", the others use
        `observation`; None: every column uses `observation`; a sequence: one name per column.
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
    mean_, scale_ : ndarray of shape (D,)
        The per-column shift and scale applied before training (0 and 1 when not
        standardising, and for bernoulli columns); std-0 columns get scale 1.
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
    float32; columns of other dtypes (object, category) come back as float64. A float64 array
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

    # ------------------------------------------------------------------ fitting

    def fit(self, X: ArrayLike, y: Any = None) -> MissIWAEImputer:
        """Train the model on X (N, D), NaN marking missing entries; `y` is ignored.

        Raises ValueError for a bad parameter, an X that is not 2-D, holds inf, has a column
        with no observed value, or (bernoulli) observed values outside {0, 1}.
        """
        self._validate_params()
        X = self._validate_table(X, reset=True)
        mask = ~np.isnan(X)
        empty = np.flatnonzero(~mask.any(axis=0))
        if empty.size:
            raise ValueError(
                f"column(s) {self._column_labels(empty)} of X have no observed value (all NaN); "
                "drop them before fitting: nothing can be learned about them"
            )
        self.column_types_ = self._resolve_column_types(X, mask)
        self._check_binary(X, mask)
        # The range check the table pipeline shares: no infinite scale, no ±inf imputations.
        check_column_range(X, mask, names=getattr(self, "feature_names_in_", None))
        continuous = np.array([t != "bernoulli" for t in self.column_types_])
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
        mixed = len(set(self.column_types_)) > 1
        observation = self.observation if mixed else self.column_types_[0]
        column_types = tuple(self.column_types_) if mixed else ()
        model_config = ModelConfig(
            num_features=X.shape[1],
            architecture="mlp",
            latent_dim=int(self.latent_dim),
            hidden=tuple(int(width) for width in self.hidden),
            activation=self.activation,  # type: ignore[arg-type]  # checked in _validate_params
            observation=observation,  # type: ignore[arg-type]
            column_types=column_types,  # type: ignore[arg-type]
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
        self.ensemble_: BootstrapImputer | None = (
            fit_bootstrap_ensemble(self, X, int(self.n_models), self.seed_ + _ENSEMBLE_SEED_OFFSET)
            if self.n_models > 1
            else None
        )
        return self

    # ------------------------------------------------------------------ imputing

    def transform(self, X: ArrayLike) -> Any:
        """Single imputation: a float64 copy of X (N, D) with each NaN replaced by the SNIS
        estimate of E[x_m | x_o] (L = `num_samples`); observed entries are copied unchanged.

        With ``set_output(transform="pandas")`` and a DataFrame X: a DataFrame with X's index,
        names and column dtypes, imputed integers rounded (see "DataFrames and dtypes" in the
        class docstring). Deterministic: the same fitted imputer gives the same output for the
        same X.
        """
        source = X
        X, mask = self._check_transform_input(X)
        as_frame = is_frame(source) and _get_output_config("transform", self)["dense"] == "pandas"
        if not as_frame:  # before the imputation's cost: a float64 array must hold X exactly
            check_float64_holds(source, self._column_label, _TRANSFORM_REMEDY)
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
        filled = self._scaling().fill(X, result.imputed.detach().cpu().numpy(), mask)
        return restore_frame(source, filled, mask, self._column_label) if as_frame else filled

    def sample(self, X: ArrayLike, n_imputations: int = 5) -> NDArray[np.float64]:
        """Multiple imputation by SIR: (n_imputations, N, D) float64 copies of X (N, D).

        Each copy fills the NaN entries with a draw from the model's approximate
        p(x_m | x_o) (one resampled particle out of L = `num_samples`, then x_m ~ p_θ(x_m | z));
        observed entries are those of X in every copy. Deterministic given the fitted seed.
        Always an array (the ensemble stacks them), whatever `set_output` says: an integer
        column that float64 would change is refused (ValueError naming it).
        """
        check_params({"n_imputations": [_POSITIVE_INT]}, {"n_imputations": n_imputations}, "sample")
        source = X
        X, mask = self._check_transform_input(X)
        check_float64_holds(source, self._column_label, _SAMPLE_REMEDY)
        ensemble = getattr(self, "ensemble_", None)  # absent from imputers pickled before n_models
        if ensemble is not None:  # n_models > 1: the bootstrap members draw
            return ensemble.sample(X, int(n_imputations))
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
        return self._scaling().fill(X, draws, mask)

    def __sklearn_tags__(self) -> Any:
        # Tell scikit-learn (check_estimator, meta-estimators) that NaN input is expected.
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _more_tags(self) -> dict[str, Any]:
        # The same for scikit-learn < 1.6, which reads tags from this method instead.
        return {"allow_nan": True}

    # ------------------------------------------------------------------ helpers

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

    def _column_label(self, j: int) -> str:
        """How messages name column j: its fitted name (quoted) when X had names, else j."""
        names = getattr(self, "feature_names_in_", None)
        return repr(str(names[j])) if names is not None else str(j)

    def _column_labels(self, columns: NDArray[np.intp]) -> list[str] | list[int]:
        """Column indices (k,) as messages list them: fitted names when X had names."""
        names = getattr(self, "feature_names_in_", None)
        return [str(names[j]) for j in columns] if names is not None else columns.tolist()

    def _resolve_column_types(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> list[str]:
        """One observation model name per column, from `column_types` and `observation`."""
        num_features = X.shape[1]
        spec = self.column_types
        if spec is None:
            return [self.observation] * num_features
        if isinstance(spec, str):  # "auto": the only string _parameter_constraints lets through
            return infer_column_types(X, self.observation, mask)
        types = list(spec)
        if len(types) != num_features:
            raise ValueError(f"column_types names {len(types)} columns, but X has {num_features} features")
        for name in types:
            if name not in OBSERVATIONS:  # scikit-learn constrains the list, not its entries
                raise ValueError(f"column_types entry must be one of {list(OBSERVATIONS)}, got {name!r}")
        return types

    def _check_binary(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> None:
        bernoulli = np.array([name == "bernoulli" for name in self.column_types_])
        wrong = np.flatnonzero(bernoulli & ~binary_columns(X, mask))
        if wrong.size:
            raise ValueError(
                f"column {self._column_label(int(wrong[0]))} is modelled as bernoulli "
                "(observation / column_types) and needs observed values in {0, 1}; "
                "use 'gaussian' or 'student_t' for continuous data"
            )

    def _check_transform_input(self, X: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        check_is_fitted(self, "model_")
        X = self._validate_table(X, reset=False)
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
