"""Fused CPU kernels: the same numbers as the reference math, computed in fewer passes.

Nothing here defines the model. `missiwae.likelihoods` holds the observation densities and
`missiwae.networks` the encoders and decoders as the paper writes them; they call in here for
the same function evaluated faster:

- `observed_log_prob_sum`: Σ_{j observed} log p(x_j | z) for a model's kernel (or None when
  no kernel applies, and the caller evaluates its definition);
- `masked_bernoulli_log_prob`: the Bernoulli masked sum without a log1p per entry;
- `GaussianKernel`, `StudentTKernel`: their densities and closed-form gradients on the observed
  entries, with `softplus`, `log1p_` and `half_step_gamma_differences` instead of torch's
  scalar-loop special functions;
- `ELU`, `Tanh`: nn.ELU / nn.Tanh, through vectorised exp and sigmoid on CPU;
- `OutputConvTranspose2d`: nn.ConvTranspose2d, through the GEMM kernel for few output maps.

Each one is tested for equality with the reference it replaces, values and gradients, in
float64 (`tests/library/test_kernels_log_prob.py`, `tests/library/test_kernels_layers.py`).
Why each looks the way it does, with the timings that decided it, is in benchmarks/README.md
("Why the kernels look like this").
"""

from missiwae.kernels.densities import (
    GaussianKernel,
    StudentTKernel,
    half_step_gamma_differences,
    log1p_,
    softplus,
    softplus_grad,
)
from missiwae.kernels.layers import ELU, OutputConvTranspose2d, Tanh
from missiwae.kernels.observed import (
    BernoulliKernel,
    FusedDensity,
    Kernel,
    masked_bernoulli_log_prob,
    observed_log_prob_sum,
)

__all__ = [
    "ELU",
    "BernoulliKernel",
    "FusedDensity",
    "GaussianKernel",
    "Kernel",
    "OutputConvTranspose2d",
    "StudentTKernel",
    "Tanh",
    "half_step_gamma_differences",
    "log1p_",
    "masked_bernoulli_log_prob",
    "observed_log_prob_sum",
    "softplus",
    "softplus_grad",
]
