"""A scikit-learn imputer around missIWAE: fit on a NaN-holed table, impute by SNIS or SIR.

    imputer = MissIWAEImputer(epochs=200, random_state=0)
    X_filled = imputer.fit_transform(X)          # (N, D), NaN -> E[x_m | x_o] (SNIS)
    copies = imputer.sample(X, n_imputations=5)  # (5, N, D), NaN -> draws (SIR)

Missing entries are NaN in a float array (the scikit-learn convention, as in SimpleImputer);
observed entries come back unchanged, bit for bit. Continuous columns are standardised with
their observed means and standard deviations before training, because the decoder's Gaussian
or Student-t scales start near 1 and a column in the thousands would otherwise dominate the
bound; imputations are mapped back to the original units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from missiwae.config import ModelConfig, TrainConfig
from missiwae.imputation import impute_multiple, impute_single
from missiwae.model import MissIWAE, make_generator
from missiwae.training import EpochStats, train

_OBSERVATIONS = ("bernoulli", "gaussian", "student_t")
_IMPUTATIONS = ("zero", "learned")
_ACTIVATIONS = ("tanh", "relu", "elu")

# Imputation runs over rows in batches of this size (and the library chunks the L importance
# samples), so memory stays flat in N and L.
_IMPUTE_ROWS = 256

# Offsets added to the fitted seed for the imputation generators: training uses seed, seed + 1
# and seed + 2 (shuffling, bound samples, validation), so imputation draws stay independent.
_TRANSFORM_SEED_OFFSET = 3
_SAMPLE_SEED_OFFSET = 4


class MissIWAEImputer(TransformerMixin, BaseEstimator):
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
        MLP hidden widths of the encoder (the decoder uses them reversed).
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

    Attributes
    ----------
    model_ : MissIWAE
        The trained model (on standardised data when `standardize`).
    n_features_in_ : int
        D, the number of columns seen in `fit`.
    column_types_ : list of str
        The observation model of each column, as resolved from `column_types` in `fit`.
    mean_, scale_ : ndarray of shape (D,)
        The per-column shift and scale applied before training (0 and 1 when not
        standardising, and for bernoulli columns); std-0 columns get scale 1.
    history_ : list of EpochStats
        Per-epoch training bound and time.
    seed_ : int
        The seed drawn from `random_state` in `fit`; imputation generators derive from it.
    """

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

    # ------------------------------------------------------------------ fitting

    def fit(self, X: ArrayLike, y: Any = None) -> MissIWAEImputer:
        """Train the model on X (N, D), NaN marking missing entries; `y` is ignored.

        Raises ValueError for a bad parameter, an X that is not 2-D, holds inf, has a column
        with no observed value, or (bernoulli) observed values outside {0, 1}.
        """
        self._check_params()
        X = self._check_array(X)
        mask = ~np.isnan(X)
        empty = np.flatnonzero(~mask.any(axis=0))
        if empty.size:
            raise ValueError(
                f"column(s) {empty.tolist()} of X have no observed value (all NaN); "
                "drop them before fitting: nothing can be learned about them"
            )
        self.column_types_ = self._resolve_column_types(X, mask)
        self._check_binary(X, mask)

        continuous = np.array([t != "bernoulli" for t in self.column_types_])
        if self.standardize and continuous.any():
            # nanmean/nanstd over observed entries only: the holes must not bias the scaling.
            mean = np.nanmean(X, axis=0)
            with np.errstate(over="ignore", invalid="ignore"):
                std = np.nanstd(X, axis=0)
            too_wide = np.flatnonzero(~np.isfinite(std))
            if too_wide.size:  # the variance overflowed float64: no scaling can represent it
                raise ValueError(
                    f"column(s) {too_wide.tolist()} of X span too wide a range to standardise "
                    "(their variance overflows float64); rescale them first"
                )
            # A constant column would divide by zero; scale 1 keeps it (and its imputations) as is.
            self.mean_ = np.where(continuous, mean, 0.0)
            self.scale_ = np.where(continuous & (std > 0), std, 1.0)
        else:
            self.mean_ = np.zeros(X.shape[1])
            self.scale_ = np.ones(X.shape[1])

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
            activation=self.activation,  # type: ignore[arg-type]  # checked in _check_params
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
        self.model_ = model.eval()
        self.n_features_in_ = X.shape[1]
        return self

    # ------------------------------------------------------------------ imputing

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """Single imputation: a float64 copy of X (N, D) with each NaN replaced by the SNIS
        estimate of E[x_m | x_o] (L = `num_samples`); observed entries are copied unchanged.

        Deterministic: the same fitted imputer gives the same output for the same X.
        """
        X, mask = self._check_transform_input(X)
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
        estimate = self._to_original_units(result.imputed)
        # Write into a copy of the input itself (not the de-standardised tensor) so observed
        # entries survive bit for bit, untouched by the float32 round trip.
        return np.where(mask, X, estimate)

    def sample(self, X: ArrayLike, n_imputations: int = 5) -> NDArray[np.float64]:
        """Multiple imputation by SIR: (n_imputations, N, D) float64 copies of X (N, D).

        Each copy fills the NaN entries with a draw from the model's approximate
        p(x_m | x_o) (one resampled particle out of L = `num_samples`, then x_m ~ p_θ(x_m | z));
        observed entries are those of X in every copy. Deterministic given the fitted seed.
        """
        _check_int("n_imputations", n_imputations, minimum=1)
        X, mask = self._check_transform_input(X)
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
        draws = self._to_original_units(result.imputations)  # (M, N, D)
        return np.where(mask[None], X[None], draws)

    def __sklearn_tags__(self) -> Any:
        # Tell scikit-learn (check_estimator, meta-estimators) that NaN input is expected.
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _more_tags(self) -> dict[str, Any]:
        # The same for scikit-learn < 1.6, which reads tags from this method instead.
        return {"allow_nan": True}

    # ------------------------------------------------------------------ helpers

    def _check_params(self) -> None:
        if self.imputation == "oracle":
            raise ValueError(
                "imputation='oracle' feeds the encoder the true missing values, which an "
                "imputer never has; use imputation='zero' or 'learned'"
            )
        _check_choice("observation", self.observation, _OBSERVATIONS)
        _check_choice("imputation", self.imputation, _IMPUTATIONS)
        _check_choice("activation", self.activation, _ACTIVATIONS)
        for name in ("K", "num_samples", "latent_dim", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("epochs", self.epochs, minimum=0)
        hidden = self.hidden
        if not isinstance(hidden, tuple | list) or not all(
            isinstance(w, int | np.integer) and not isinstance(w, bool) and w >= 1 for w in hidden
        ):
            raise ValueError(f"hidden must be a tuple of integers >= 1, got {hidden!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
            raise ValueError(f"learning_rate must be a positive number, got {rate!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {self.device!r} is not a torch device: {error}") from error

    @staticmethod
    def _check_array(X: ArrayLike) -> NDArray[np.float64]:
        """X as a fresh float64 (N, D) array with no inf (NaN allowed: missing).

        Messages follow scikit-learn's wording (check_array), so meta-estimators and
        `check_estimator` recognise them.
        """
        if sparse.issparse(X):
            # NaN is the missing marker, but a sparse matrix's implicit zeros are observed zeros:
            # densifying silently could blow up memory, so the caller decides.
            raise TypeError("sparse input is not supported: pass a dense array (X.toarray())")
        raw = np.asarray(X)
        if raw.dtype.kind == "c":  # casting would silently drop the imaginary part
            raise ValueError("Complex data not supported")
        array = np.array(raw, dtype=np.float64)  # always a copy: we never alias the input
        if array.ndim != 2:
            raise ValueError(
                f"X must be 2-D (n_samples, n_features), got an array of shape {array.shape}. "
                "Reshape your data with X.reshape(-1, 1) for a single feature"
            )
        for axis, what in ((0, "sample"), (1, "feature")):
            if array.shape[axis] < 1:
                raise ValueError(
                    f"Found array with 0 {what}(s) (shape={array.shape}) while a minimum of 1 is required."
                )
        if np.isinf(array).any():
            raise ValueError("X contains inf; only NaN may mark a missing entry")
        return array

    def _resolve_column_types(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> list[str]:
        """One observation model name per column, from `column_types` and `observation`."""
        num_features = X.shape[1]
        spec = self.column_types
        if spec is None:
            return [self.observation] * num_features
        if isinstance(spec, str):
            if spec != "auto":
                raise ValueError(
                    f"column_types must be 'auto', None or a list of {list(_OBSERVATIONS)}, got {spec!r}"
                )
            binary = [bool(np.isin(X[mask[:, j], j], (0.0, 1.0)).all()) for j in range(num_features)]
            return ["bernoulli" if is_binary else self.observation for is_binary in binary]
        types = list(spec)
        if len(types) != num_features:
            raise ValueError(f"column_types names {len(types)} columns, but X has {num_features} features")
        for name in types:
            _check_choice("column_types entry", name, _OBSERVATIONS)
        return types

    def _check_binary(self, X: NDArray[np.float64], mask: NDArray[np.bool_]) -> None:
        for j, name in enumerate(self.column_types_):
            if name == "bernoulli" and not np.isin(X[mask[:, j], j], (0.0, 1.0)).all():
                raise ValueError(
                    f"column {j} is modelled as bernoulli (observation / column_types) and needs "
                    "observed values in {0, 1}; use 'gaussian' or 'student_t' for continuous data"
                )

    def _check_transform_input(self, X: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        check_is_fitted(self)
        X = self._check_array(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but MissIWAEImputer is expecting "
                f"{self.n_features_in_} features as input"
            )
        mask = ~np.isnan(X)
        self._check_binary(X, mask)
        return X, mask

    def _to_tensors(
        self, X: NDArray[np.float64], mask: NDArray[np.bool_], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised float32 x (holes set to 0, a finite placeholder) and bool mask (N, D)."""
        scaled = np.where(mask, (X - self.mean_) / self.scale_, 0.0)
        with np.errstate(over="ignore"):
            scaled32 = scaled.astype(np.float32)
        if not np.isfinite(scaled32).all():  # the model computes in float32 (|x| < 3.4e38)
            raise ValueError(
                "X holds values too large for the model's float32 arithmetic"
                + (" after standardisation" if self.standardize else "")
                + "; rescale the columns"
            )
        x = torch.as_tensor(scaled32, device=device)
        return x, torch.as_tensor(mask, device=device)

    def _to_original_units(self, imputed: torch.Tensor) -> NDArray[np.float64]:
        """(..., D) standardised model output -> float64 numpy in the units of X."""
        values = imputed.detach().cpu().numpy().astype(np.float64)
        return values * self.scale_ + self.mean_


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
