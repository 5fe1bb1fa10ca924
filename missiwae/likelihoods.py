"""Observation models p_θ(x | z), one class each.

The decoder f_θ(z) returns raw parameters of shape (..., P, D): P parameter maps over D features.
Each model turns them into a factorised distribution over the D entries and offers

- `log_prob(params, x)`              (..., D)  per-entry log p(x_j | z)
- `log_prob_observed(params, x, m)`  (...,)    log p_θ(x_o | z) = Σ_{j observed} log p(x_j | z)
- `mean(params)`                     (..., D)  E[x_j | z] (Rao-Blackwellised SNIS uses it)
- `sample(params, generator)`        (..., D)  x ~ p_θ(x | z)

Only observed entries enter p_θ(x_o | z): that is the whole trick of the missIWAE bound.
Missing entries of `x` must hold finite placeholders (the model zero-fills them) because a
NaN there would poison the gradient through the masked sum.

Each density is written once, plainly, in `log_prob`. `log_prob_observed` evaluates the same
masked sum through `missiwae.kernels` where a fused CPU kernel applies (tested equal to it,
values and gradients, in float64).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from missiwae import kernels
from missiwae.config import ColumnType, Observation

_LOG_2PI = math.log(2.0 * math.pi)


class ObservationModel(ABC):
    """A factorised p_θ(x | z) parameterised by the decoder's raw output."""

    num_params: int

    @abstractmethod
    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-entry log-density. params (..., P, D), x broadcastable to (..., D) -> (..., D)."""

    @abstractmethod
    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z]. params (..., P, D) -> (..., D)."""

    @abstractmethod
    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw x ~ p_θ(x | z). params (..., P, D) -> (..., D)."""

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p_θ(x_o | z) = Σ_{j observed} log p(x_j | z): params (..., P, D), x and mask
        (B, D) broadcast -> (...,). A row with nothing observed gets exactly 0 (the empty
        product), never NaN.

        The definition is the last line; `kernels.observed_log_prob_sum` computes the same sum
        on the observed entries only (and through this model's fused kernel, if it has one)
        whenever the tensors' layout and dtypes allow.
        """
        fast = kernels.observed_log_prob_sum(self.kernel(), self.log_prob, params, x, mask)
        if fast is not None:
            return fast
        return torch.where(mask, self.log_prob(params, x), 0.0).sum(-1)

    def kernel(self) -> kernels.Kernel | None:
        """The fused kernel that evaluates `log_prob_observed` faster; None: the generic one."""
        return None


class Bernoulli(ObservationModel):
    """Binary data: params[..., 0, :] are logits."""

    num_params = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = params[..., 0, :]
        # x·l − log(1 + e^l): exact for x ∈ {0, 1} and stable for any logit.
        return x * logits - F.softplus(logits)

    def kernel(self) -> kernels.Kernel:
        return kernels.BernoulliKernel()

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[..., 0, :])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.mean(params)
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (uniform < probs).to(probs.dtype)


class Gaussian(ObservationModel):
    """Continuous data: params (loc, raw scale); scale = softplus(raw) + min_scale."""

    num_params = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        self.min_scale = min_scale

    def scale(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 1, :]) + self.min_scale

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, scale = params[..., 0, :], self.scale(params)
        return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * _LOG_2PI

    def kernel(self) -> kernels.Kernel:
        return kernels.GaussianKernel(self.min_scale)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0, :]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, scale = params[..., 0, :], self.scale(params)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + scale * noise


class StudentT(ObservationModel):
    """Heavy-tailed continuous data: params (loc, raw scale, raw df).

    df = min_df + softplus(raw): with min_df = 3 the mean and variance always exist, so the
    SNIS mean imputation is well defined (as in the MIWAE paper's Student-t decoder).
    """

    num_params = 3

    def __init__(self, min_scale: float = 1e-3, min_df: float = 3.0) -> None:
        self.min_scale = min_scale
        self.min_df = min_df

    def scale(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 1, :]) + self.min_scale

    def df(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 2, :]) + self.min_df

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """With s the scale, ν the degrees of freedom and y = (x − μ)/s:
        log p = lgamma((ν+1)/2) − lgamma(ν/2) − ½ log(πν) − log s − (ν+1)/2 · log1p(y²/ν)
        """
        loc, scale, df = params[..., 0, :], self.scale(params), self.df(params)
        y = (x - loc) / scale
        return (
            torch.lgamma(0.5 * (df + 1.0))
            - torch.lgamma(0.5 * df)
            - 0.5 * torch.log(df * math.pi)
            - torch.log(scale)
            - 0.5 * (df + 1.0) * torch.log1p(y**2 / df)
        )

    def kernel(self) -> kernels.Kernel:
        return kernels.StudentTKernel(self.min_scale, self.min_df)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., 0, :]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        loc, scale, df = params[..., 0, :], self.scale(params), self.df(params)
        normal = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        # torch's gamma sampler takes no generator: seed a forked global RNG from ours so the
        # draw stays a deterministic function of `generator`.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=loc.device).item())
        devices = [loc.device] if loc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            chi2 = torch.distributions.Chi2(df).sample()
        return loc + scale * normal / torch.sqrt(chi2 / df)


class Categorical(ObservationModel):
    """Categorical columns, one-hot encoded: column c with k_c levels owns k_c consecutive
    entries (one-hot x_c, observed or missing as a whole), and params[..., 0, :] hold the logits
    of its levels. log p(x_c | z) = Σ_l x_{c,l} · log softmax(logits_c)_l: written per entry, so
    the masked sum over a column's entries is the column's log-probability, and `mean` is the
    vector of level probabilities (SNIS then imputes P(x_c = l | x_o) for every level l).

    `levels` (C,): k_c for each column, in order; they cover the D entries exactly.
    """

    num_params = 1

    def __init__(self, levels: Sequence[int]) -> None:
        if not levels or any(k < 1 for k in levels):
            raise ValueError(f"Categorical needs at least one column with >= 1 level, got {list(levels)}")
        self.levels = tuple(int(k) for k in levels)

    def _blocks(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if values.shape[-1] != sum(self.levels):
            raise ValueError(
                f"categorical levels {list(self.levels)} cover {sum(self.levels)} entries, "
                f"got {values.shape[-1]}"
            )
        return torch.split(values, list(self.levels), dim=-1)

    def log_softmax(self, params: torch.Tensor) -> torch.Tensor:
        """log P(x_c = l | z) per entry, each column's block normalised. (..., P, D) -> (..., D)."""
        return torch.cat([F.log_softmax(block, dim=-1) for block in self._blocks(params[..., 0, :])], dim=-1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_softmax(params)

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The definition itself: a fast path that scores observed entries one by one would
        # lose the normalisation over each column's block.
        return torch.where(mask, self.log_prob(params, x), 0.0).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.log_softmax(params).exp()

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A one-hot draw per column, by the Gumbel-max trick: argmax_l (logit_l + G_l)."""
        logits = self.log_softmax(params)
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        tiny = torch.finfo(logits.dtype).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny, max=1.0 - 1e-7)))
        blocks = self._blocks(logits + gumbel)
        return torch.cat([F.one_hot(b.argmax(-1), b.shape[-1]).to(logits.dtype) for b in blocks], dim=-1)


class Mixed(ObservationModel):
    """A product over column groups, each with its own model: p(x | z) = Π_g p_g(x_{G_g} | z).

    `column_types[j]` names the model of column j (e.g. bernoulli for 0/1 columns, gaussian for
    the rest). The decoder emits P = max_g P_g parameter maps over all D columns; group g reads
    the first P_g maps of its own columns (maps a group does not use get no gradient). Every
    method is per entry, so log_prob_observed is the sum of the groups' log p(x_o | z).
    """

    def __init__(self, column_types: Sequence[ColumnType], categorical_levels: Sequence[int] = ()) -> None:
        if not column_types:
            raise ValueError("Mixed needs at least one column type")
        self.column_types = tuple(column_types)
        names = sorted(set(self.column_types))
        self.groups: list[tuple[ObservationModel, list[int]]] = [
            (
                _single_model(name, categorical_levels),
                [j for j, t in enumerate(self.column_types) if t == name],
            )
            for name in names
        ]
        self.num_params = max(model.num_params for model, _ in self.groups)
        order = [j for _, columns in self.groups for j in columns]
        # Group outputs are concatenated in group order; this puts them back in column order.
        self._inverse = [0] * len(order)
        for position, column in enumerate(order):
            self._inverse[column] = position

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=-1)[..., self._inverse]

    def _params(self, params: torch.Tensor, model: ObservationModel, columns: list[int]) -> torch.Tensor:
        return params[..., : model.num_params, :][..., columns]

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._combine(
            [model.log_prob(self._params(params, model, cols), x[..., cols]) for model, cols in self.groups]
        )

    def log_prob_observed(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Σ_g log p_g(x_{o ∩ G_g} | z): each group's own (fast) observed-entry sum."""
        totals = [
            model.log_prob_observed(self._params(params, model, cols), x[..., cols], mask[..., cols])
            for model, cols in self.groups
        ]
        return torch.stack(totals).sum(0)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._combine([model.mean(self._params(params, model, cols)) for model, cols in self.groups])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._combine(
            [model.sample(self._params(params, model, cols), generator) for model, cols in self.groups]
        )


def observation_model(
    name: Observation, column_types: Sequence[ColumnType] = (), categorical_levels: Sequence[int] = ()
) -> ObservationModel:
    """The observation model a config names; `column_types` (one per model column) makes it
    Mixed, and `categorical_levels` gives the level counts of its "categorical" columns' blocks.

    A column_types list naming a single model is that model, not a one-group Mixed.
    """
    for each in (name, *column_types):
        if each not in _MODELS:
            raise ValueError(f"unknown observation model {each!r}; choose from {sorted(_MODELS)}")
    if len(set(column_types)) > 1:
        return Mixed(column_types, categorical_levels)
    return _single_model(column_types[0] if column_types else name, categorical_levels)


_MODELS: dict[str, type[ObservationModel]] = {
    "bernoulli": Bernoulli,
    "categorical": Categorical,
    "gaussian": Gaussian,
    "student_t": StudentT,
}


def _single_model(name: str, categorical_levels: Sequence[int]) -> ObservationModel:
    if name == "categorical":
        return Categorical(categorical_levels)
    return _MODELS[name]()
