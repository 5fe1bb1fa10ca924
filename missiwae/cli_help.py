"""The help texts of the `missiwae` command line: what each command does, writes and prints.

Kept apart from the parser so `cli.py` reads as the commands; `settings_listing` is generated
from `RunConfig`, so the listed defaults cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

from missiwae.config import RunConfig, to_dict
from missiwae.runs import IMPUTATION_FILE, IMPUTATIONS_FILE

DESCRIPTION = """\
missIWAE (Mattei & Frellsen, ICML 2019): a deep latent variable model p(z) p_θ(x | z) trained
on incomplete data by maximising the missIWAE bound L_K on the observed pixels only, then used
to estimate held-out log-likelihoods log p(x_o) and to impute the missing pixels (single
imputation by self-normalised importance sampling, multiple imputation by sampling importance
resampling).

The data are statically binarized MNIST (Larochelle & Murray) with pixels missing completely
at random (data.missing_rate). A run is three commands:

  train     fit the model on the incomplete training split; writes a checkpoint directory
  evaluate  test log-likelihood of the observed pixels, of complete images, and an
            independent-Bernoulli baseline
  impute    single and multiple imputation of the missing pixels, with their accuracy against
            zero and mean imputation
"""

_COMMON_EPILOG_TEMPLATE = """\
settings:
  A config file is YAML (or JSON when its name ends in .json) holding one mapping per section:
  data, model, train, evaluate, impute. Omitted keys keep their defaults; unknown keys and
  ill-typed values are errors. `--set section.key=value` overrides one setting (the value is
  read as YAML: 5, 1e-3, true, null, [200, 200]); several may follow one --set.
  {settings_pointer}

data:
  The data root holds binarized_mnist/ (binarized_mnist_{train,valid,test}.amat.gz and their
  *_mnist_index_labels.txt.gz) and/or mnist/ (the LeCun IDX files, binarized with data.seed
  when binarized_mnist/ is absent). It is --data-dir, else data.data_dir, else the environment
  variable MISSIWAE_DATA_DIR, else ~/.cache/missiwae/data.
"""

_COMMON_EPILOG = _COMMON_EPILOG_TEMPLATE.replace(
    "{settings_pointer}", "`missiwae train --help` lists every setting and its default."
)

MAIN_EPILOG = (
    """\
examples:
  export MISSIWAE_DATA_DIR=/path/to/data        # holds binarized_mnist/ and mnist/
  missiwae train --config configs/demo.yaml --out runs/demo
  missiwae evaluate --checkpoint runs/demo      # writes runs/demo/evaluation.json
  missiwae impute --checkpoint runs/demo        # writes runs/demo/imputations.npz
  missiwae train --config configs/demo.yaml --out runs/k1 --set train.K=1   # the missVAE bound

"""
    + _COMMON_EPILOG
    + """
exit status: 0 success, 2 user error (bad setting, missing data or checkpoint, an --out that
exists and is not a regular file: devices, FIFOs, directories and symbolic links are refused,
never replaced or followed), 130 interrupted.
Everything is deterministic given the seeds in the config (data.seed, train.seed,
evaluate.seed, impute.seed) on one device and torch version.
"""
)

_SECTION_NOTES = {
    "data": "num_*: rows used (a fixed random subset); null: the whole split (50000 / 10000 / 10000)",
    "model": "observation: bernoulli for binary pixels; imputation: ι, what the encoder sees in the holes",
    "train": "K: importance samples of the bound L_K (K = 1: missVAE); device: cpu or cuda",
    "evaluate": "num_samples: importance samples S of the log p(x_o) estimate",
    "impute": "num_samples: L particles; num_imputations: M copies; chunk_size null: from memory",
}


def settings_listing() -> str:
    """Every setting with its default, as a YAML config file (generated from RunConfig)."""
    defaults = RunConfig()
    lines = []
    for field in dataclasses.fields(RunConfig):
        section = getattr(defaults, field.name)
        lines.append(f"  # {(type(section).__doc__ or '').strip().splitlines()[0]}")
        if field.name in _SECTION_NOTES:
            lines.append(f"  # {_SECTION_NOTES[field.name]}")
        lines.append(f"  {field.name}:")
        # JSON scalars and lists are valid YAML: null, true, "cpu", [200, 200].
        lines.extend(f"    {key}: {json.dumps(value)}" for key, value in to_dict(section).items())
    return "\n".join(lines)


def train_epilog() -> str:
    return f"""\
examples:
  missiwae train --config configs/demo.yaml --out runs/demo
  missiwae train --config configs/demo.yaml --out runs/demo --set train.epochs=20   # resumes
  missiwae train --out runs/full --set train.K=5 data.missing_rate=0.8 --fresh

outputs in DIR:
  model.pt         weights, optimiser state, random streams and per-epoch history (every epoch)
  config.json      the model and train settings of the checkpoint
  run_config.json  the whole resolved config; evaluate and impute read it

resume:
  If DIR already holds a checkpoint, training continues after its last epoch up to train.epochs
  with the same optimiser state and random streams (same result as an uninterrupted run).
  --fresh discards it and starts over. Model settings must match the checkpoint's.

{_COMMON_EPILOG_TEMPLATE.replace("{settings_pointer}", "Every setting and its default are listed below.")}
every setting and its default (a valid config file):
{settings_listing()}
"""


EVALUATE_EPILOG = f"""\
metrics (means over the rows, in nats):
  log p(x_o)      importance-sampling estimate with S = evaluate.num_samples samples of the
                  observed pixels of each masked row (a stochastic lower bound that tightens
                  as S grows; 5000 is the paper's convention)
  log p(x)        the same estimate for the complete rows (mask all True)
  Bernoulli       independent per-pixel Bernoullis fitted to the observed training pixels
                  (data.num_train rows), scored on the same rows and masks

The test rows are a fixed random subset of data.num_test rows of the split (not a prefix: the
test split is sorted by label), masked with data.missing_rate and data.seed as in
run_config.json. --set may override the data and
evaluate sections (not the model).

examples:
  missiwae evaluate --checkpoint runs/demo
  missiwae evaluate --checkpoint runs/demo --set evaluate.num_samples=5000 data.num_test=null
  missiwae evaluate --checkpoint runs/demo --split valid --out runs/demo/valid.json

{_COMMON_EPILOG}"""


IMPUTE_EPILOG = f"""\
method:
  Single imputation: E[x_m | x_o] by self-normalised importance sampling with
  L = impute.num_samples particles (the probability P(x_j = 1 | x_o) for binary pixels), then
  thresholded at 1/2. Multiple imputation: M = impute.num_imputations copies drawn by sampling
  importance resampling over the same kind of L particles. Observed pixels are never changed.

printed metrics:
  accuracy on the missing pixels (threshold 1/2) of missIWAE single imputation, of the M
  multiple imputations (mean), of zero imputation and of per-pixel mean imputation (means of
  the observed training pixels), and the mean effective sample size of the L weights.

outputs:
  FILE.npz (default DIR/{IMPUTATIONS_FILE}), written atomically:
    imputed          (N, 784)     single imputation (0/1 for binary pixels)
    conditional_mean (N, 784)     E[x | x_o]: observed pixels, SNIS means in the holes
    imputations      (M, N, 784)  multiple imputations (uint8 for binary pixels)
    mask             (N, 784)     True = observed
    labels           (N,)         digit labels
    effective_sample_size, log_likelihood  (N,)  per row
  DIR/{IMPUTATION_FILE}: the metrics.

examples:
  missiwae impute --checkpoint runs/demo
  missiwae impute --checkpoint runs/demo --split valid --set impute.num_imputations=20
  missiwae impute --checkpoint runs/demo --out /tmp/demo_imputations.npz

{_COMMON_EPILOG}"""


def wrap(text: str) -> str:
    return textwrap.fill(text, width=95)
