"""Property-based bad input (hypothesis): the library API, the estimator, the config loader, the
command line, the data parsers (IDX, .amat, label files, Parquet) and checkpoints.

Every generated input either gets a clear error (the documented type, a message, raised from
this project's code rather than deep inside torch/numpy/pyarrow) or a documented result: finite
numbers and observed entries unchanged. Each example is counted (`count_example`); the totals
are printed at the end of the pytest run under "generated bad inputs".
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from missiwae import estimate_log_likelihood, impute_multiple, impute_single
from missiwae.cli import main as cli_main
from missiwae.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config_file,
    to_dict,
)
from missiwae.estimator import MissIWAEImputer
from missiwae.mnist_files import DataError, read_amat, read_binarized_label_file, read_idx
from missiwae.model import MissIWAE
from missiwae.training import load_model, save_checkpoint, train
from tests.conftest import count_example

D = 5  # features of the small model the library API is probed with
FOREIGN = ("/torch/", "/numpy/", "/pyarrow/", "/sklearn/", "/yaml/", "/json/", "/argparse")
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def assert_clear_error(error: BaseException, allowed: tuple[type[BaseException], ...]) -> None:
    """`error` is of an allowed type, has a message, and was raised by this project's code."""
    assert isinstance(error, allowed), f"{type(error).__name__}: {error}"
    assert str(error).strip(), f"{type(error).__name__} without a message"
    innermost = traceback.extract_tb(error.__traceback__)[-1].filename
    assert not any(part in innermost for part in FOREIGN), (
        f"{type(error).__name__}: {error} escaped from {innermost}"
    )


def outcome(call: Callable[[], Any], allowed: tuple[type[BaseException], ...]) -> Any | None:
    """call(): its result, or None after checking the error it raised is a clear one."""
    try:
        return call()
    except allowed as error:
        assert_clear_error(error, allowed)
        return None


# ------------------------------------------------------------------------- library tensors API

torch.manual_seed(0)
MODEL = MissIWAE.from_config(ModelConfig(num_features=D, latent_dim=2, hidden=(8,))).eval()

_SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0, 1e30, -1e30])
_FLOATS = st.one_of(st.floats(-10, 10, width=32), _SPECIALS)


@st.composite
def tensor_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """(x, mask): usually well-shaped (B, D) with a random dtype, values with NaN/inf anywhere;
    sometimes another shape, a mismatched mask shape, a non-boolean mask, or not a tensor."""
    rows = draw(st.integers(0, 4))
    shape = draw(
        st.one_of(
            st.just((rows, D)),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        )
    )
    x_dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16", "int64", "bool"]))
    x = draw(hnp.arrays(np.float32, shape, elements=_FLOATS))
    if x_dtype == "int64":
        x = np.asarray(np.nan_to_num(x, posinf=1, neginf=-1)).astype(np.int64)
    elif x_dtype == "bool":
        x = np.asarray(np.nan_to_num(x) > 0)
    else:
        x = np.asarray(x.astype(x_dtype))
    mask_shape = draw(st.one_of(st.just(shape), hnp.array_shapes(min_dims=1, max_dims=2, max_side=6)))
    mask = draw(hnp.arrays(np.bool_, mask_shape))
    mask_dtype = draw(st.sampled_from(["bool", "bool", "bool", "uint8", "int64", "float32"]))
    mask = np.asarray(mask.astype(mask_dtype))
    if draw(st.integers(0, 9)) == 0:  # numpy arrays, not tensors
        return x, mask
    return torch.from_numpy(x), torch.from_numpy(mask)


@settings(max_examples=200)
@given(
    pair=tensor_pairs(),
    operation=st.sampled_from(["bound", "single", "multiple", "loglik"]),
    n=st.integers(-2, 4),
)
def test_library_api_gives_finite_results_or_a_clear_error(
    pair: tuple[Any, Any], operation: str, n: int
) -> None:
    count_example("library API: shapes, dtypes, masks, NaN/inf, K/L")
    x, mask = pair
    calls: dict[str, Callable[[], Any]] = {
        "bound": lambda: MODEL.bound(x, mask, n),
        "single": lambda: impute_single(MODEL, x, mask, n),
        "multiple": lambda: impute_multiple(MODEL, x, mask, 2, n),
        "loglik": lambda: estimate_log_likelihood(MODEL, x, mask, n),
    }
    with torch.no_grad():
        result = outcome(calls[operation], (ValueError, TypeError))
    if result is None:
        return
    # Accepted: a float32 (B, D) tensor pair, a bool mask, observed entries finite, n >= 1.
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and mask.dtype == torch.bool
    assert n >= 1 and x.shape[0] >= 1 and torch.isfinite(x[mask]).all()
    if operation == "single":
        assert torch.isfinite(result.imputed).all() and torch.isfinite(result.effective_sample_size).all()
        assert torch.equal(result.imputed[mask], x[mask])  # observed entries unchanged
    elif operation == "multiple":
        assert torch.isfinite(result.imputations).all()
        assert torch.equal(result.imputations[:, mask], x[mask].expand(2, -1))
    else:
        assert torch.isfinite(result).all() and result.shape == (x.shape[0],)


@settings(max_examples=100)
@given(
    mask=hnp.arrays(np.bool_, st.tuples(st.integers(1, 6), st.just(D))),
    holes=st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30]),
    data=st.data(),
)
def test_rows_with_nothing_observed_and_all_missing_columns_give_finite_results(
    mask: np.ndarray, holes: float, data: st.DataObject
) -> None:
    """Documented behaviour: any pattern of holes is allowed (all-missing rows impute from the
    prior, all-missing columns from the decoder); whatever the holes hold is never read."""
    count_example("library API: all-missing rows/columns, junk in the holes")
    if data.draw(st.booleans()):
        mask[data.draw(st.integers(0, mask.shape[0] - 1))] = False  # a row with nothing observed
    mask[:, data.draw(st.integers(0, D - 1))] = False  # an all-missing column
    values = data.draw(hnp.arrays(np.float32, mask.shape, elements=st.floats(-3, 3, width=32)))
    x = torch.from_numpy(np.where(mask, values, np.float32(holes)))
    m = torch.from_numpy(mask)
    with torch.no_grad():
        bound = MODEL.bound(x, m, 3)
        single = impute_single(MODEL, x, m, 4)
        multiple = impute_multiple(MODEL, x, m, 2, 4)
        loglik = estimate_log_likelihood(MODEL, x, m, 4)
    assert torch.isfinite(bound).all() and torch.isfinite(loglik).all()
    assert torch.isfinite(single.imputed).all() and torch.isfinite(multiple.imputations).all()
    assert torch.equal(single.imputed[m], x[m])


# ---------------------------------------------------------------------------------- estimator

TINY_IMPUTER: dict[str, Any] = {
    "latent_dim": 2,
    "hidden": (4,),
    "K": 2,
    "epochs": 1,
    "num_samples": 3,
    "batch_size": 8,
}


@st.composite
def tables(draw: st.DrawFn) -> Any:
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 6), st.integers(1, 4)),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        )
    )
    kind = draw(st.sampled_from(["float", "float", "float", "int", "bool", "complex", "object", "list"]))
    floats = st.one_of(
        st.floats(-1e6, 1e6), st.sampled_from([np.nan, np.nan, np.inf, -np.inf, 1e300, 0.0, 1.0])
    )
    X = draw(hnp.arrays(np.float64, shape, elements=floats))
    if kind == "int":
        return np.nan_to_num(X, posinf=7, neginf=-7).clip(-1e6, 1e6).astype(np.int64)
    if kind == "bool":
        return np.nan_to_num(X) > 0
    if kind == "complex":
        return X.astype(np.complex128)
    if kind == "object":
        out = X.astype(object)
        if out.size:
            out.flat[0] = draw(st.sampled_from(["a", None, "1.5", b"x"]))
        return out
    if kind == "list":
        return X.tolist()
    return X


@settings(max_examples=100)
@given(
    X=tables(),
    observation=st.sampled_from(["gaussian", "student_t", "bernoulli", "poisson"]),
    param=st.sampled_from(["K", "num_samples", "latent_dim", "batch_size", "epochs", None]),
    value=st.integers(-2, 2),
)
def test_estimator_fit_transform_gives_finite_imputations_or_a_clear_error(
    X: Any, observation: str, param: str | None, value: int
) -> None:
    count_example("estimator: X shapes/dtypes/NaN/inf/all-missing, bad parameters")
    params: dict[str, Any] = {**TINY_IMPUTER, "observation": observation}
    if param is not None:
        params[param] = value
    imputer = MissIWAEImputer(**params, random_state=0)
    filled = outcome(lambda: imputer.fit_transform(X), (ValueError, TypeError))
    if filled is None:
        return
    draws = imputer.sample(X, n_imputations=2)
    if filled.dtype == object:  # a column of strings: a categorical column, labels come back
        original = np.asarray(X, dtype=object)
        observed = ~pd.isna(original)
        assert filled.shape == original.shape and not pd.isna(filled).any()
        assert (filled[observed] == original[observed]).all() and not pd.isna(draws).any()
        return
    original = np.asarray(X, dtype=np.float64)
    observed = ~np.isnan(original)
    assert filled.shape == original.shape and np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[observed], original[observed])
    assert np.isfinite(draws).all()


# Column dtypes of a generated DataFrame: (name, numpy / pandas dtype, values it draws from).
_BIG = 2**53
_FRAME_COLUMNS = {
    "float64": st.one_of(st.floats(-1e6, 1e6), st.just(np.nan)),
    "float32": st.one_of(st.floats(-1e3, 1e3, width=32), st.just(np.nan)),
    "int64": st.one_of(
        # The big ones first: hypothesis favours a one_of's first branch.
        st.integers(_BIG - 3, _BIG + 3),
        st.integers(2**62, 2**63 - 1),
        st.integers(-100, 100),
    ),
    "Int64": st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 20), st.none()),
    "uint8": st.integers(0, 255),
    "bool": st.booleans(),
    "boolean": st.one_of(st.booleans(), st.none()),
}


@st.composite
def frames(draw: st.DrawFn) -> Any:
    """A small DataFrame: 3-8 rows, 1-4 columns of the dtypes above (holes: NaN / pd.NA), an
    index that is not 0..N-1."""
    import pandas as pd

    num_rows = draw(st.integers(3, 8))
    dtypes = draw(st.lists(st.sampled_from(sorted(_FRAME_COLUMNS)), min_size=1, max_size=4))
    columns = {
        f"c{j}_{dtype}": pd.array(
            draw(st.lists(_FRAME_COLUMNS[dtype], min_size=num_rows, max_size=num_rows)), dtype
        )
        for j, dtype in enumerate(dtypes)
    }
    return pd.DataFrame(columns, index=np.arange(num_rows) * 7 + 3)


@settings(max_examples=60, deadline=None)
@given(frame=frames())
def test_estimator_keeps_dataframe_dtypes_and_observed_cells_or_names_the_column(frame: Any) -> None:
    """pandas output: X's dtypes, index and every observed cell exactly (as Python objects), no
    hole left; array output: float64 equal to X where observed, or an error naming a column."""
    count_example("estimator: DataFrames of int64 near 2**53 / Int64 / bool / float32 columns")
    imputer = MissIWAEImputer(**TINY_IMPUTER, random_state=0).set_output(transform="pandas")
    out = outcome(lambda: imputer.fit(frame).transform(frame), (ValueError, TypeError))
    if out is None:
        return
    assert list(out.dtypes) == list(frame.dtypes) and out.index.equals(frame.index)
    assert not out.isna().any().any()
    for j in range(frame.shape[1]):
        observed = frame.iloc[:, j].notna().to_numpy()
        assert out.iloc[:, j][observed].tolist() == frame.iloc[:, j][observed].tolist()
    floats = outcome(lambda: imputer.set_output(transform="default").transform(frame), (ValueError,))
    if floats is None:  # only an integer float64 cannot hold, with the column named
        return
    assert floats.dtype == np.float64 and np.isfinite(floats).all()
    original = frame.astype("float64").to_numpy(na_value=np.nan)
    observed = ~np.isnan(original)
    np.testing.assert_array_equal(floats[observed], original[observed])


# ------------------------------------------------------------------------------- config loader

_VALID_YAML = "train:\n  K: 5\n  epochs: 1\nmodel:\n  hidden: [8, 8]\n  latent_dim: 2\n"


@settings(max_examples=150)
@given(
    content=st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60),
        st.sampled_from(["data: 2020-01-01\n", "- 1\n- 2\n", "train: [1]\n", "1: {2: 3}\n", "? [a]\n: 1\n"]),
        st.tuples(st.integers(0, len(_VALID_YAML)), st.text(max_size=4)).map(
            lambda cut: _VALID_YAML[: cut[0]] + cut[1]
        ),
    ),
    suffix=st.sampled_from([".yaml", ".json", ""]),
    overrides=st.lists(
        st.one_of(st.text(max_size=12), st.sampled_from(["train.K=[", "train.K=0", "=1", "a.b.c=2"])),
        max_size=2,
    ),
)
def test_config_files_and_overrides_load_or_raise_config_error(
    content: bytes | str, suffix: str, overrides: list[str], tmp_path: Path
) -> None:
    count_example("config loader: corrupt/truncated YAML and JSON files, bad overrides")
    path = tmp_path / f"config{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())

    def load() -> RunConfig:
        return RunConfig.from_dict(apply_overrides(load_config_file(path), overrides))

    outcome(load, (ConfigError,))


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def empty_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no_data")


def run_cli(argv: list[str]) -> tuple[int, str]:
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = cli_main(argv)
    return code, stderr.getvalue()


@settings(max_examples=100, suppress_health_check=FIXTURES)
@given(
    content=st.one_of(
        st.text(max_size=40),
        st.tuples(st.integers(0, len(_VALID_YAML)), st.text(max_size=4)).map(
            lambda cut: _VALID_YAML[: cut[0]] + cut[1]
        ),
    ),
    overrides=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "train.K=0",
                    "train.K=-1",
                    "impute.num_samples=0",
                    "train.kk=5",
                    "model.hidden=[0]",
                    "train.learning_rate=.inf",
                    "data.missing_rate=2",
                    "train.device=gpu9",
                    "data.num_train=99999999",
                    "train.K=[",
                    "model=3",
                    "train.epochs=1",
                ]
            ),
            st.text(max_size=10),
        ),
        max_size=3,
    ),
    out=st.sampled_from(["fresh", "file", "under_file"]),
    command=st.sampled_from(["train", "evaluate", "impute"]),
)
def test_cli_reports_every_bad_input_as_a_one_line_error_never_a_traceback(
    content: str, overrides: list[str], out: str, command: str, tmp_path: Path, empty_data_dir: Path
) -> None:
    """Valid settings end at the empty data directory (exit 2 too), so no example trains."""
    count_example("CLI: corrupt config files, bad --set values, unusable --out/--checkpoint")
    config = tmp_path / "config.yaml"
    config.write_text(content)
    regular = tmp_path / "a_file"
    regular.write_text("not a directory")
    target = {"fresh": tmp_path / "out", "file": regular, "under_file": regular / "out"}[out]
    if command == "train":
        argv = ["train", "--config", str(config), "--out", str(target), "--no-progress"]
    else:
        argv = [command, "--checkpoint", str(target)]
    argv += ["--data-dir", str(empty_data_dir)]
    if overrides:
        argv += ["--set", *overrides]
    code, stderr = run_cli(argv)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "error:" in stderr, stderr


# ------------------------------------------------------------------------------- data files


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


_VALID_IDX = [
    _idx(0x801, (6,), bytes([1, 2, 3, 4, 5, 6])),
    _idx(0x803, (2, 28, 28), bytes(range(256)) * 6 + bytes(2 * 784 - 1536)),
]
_AMAT_ROW = " ".join("01"[(i * 7) % 3 == 0] for i in range(784))
_VALID_AMAT = f"{_AMAT_ROW}\n{_AMAT_ROW}\n".encode()
_VALID_LABELS = b"# mnist_index label index_certain\n12 3 1\n7 0 1\n"


@st.composite
def corrupted(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` truncated, with bytes overwritten, or with junk appended."""
    data = bytearray(valid)
    how = draw(st.sampled_from(["truncate", "overwrite", "append", "all"]))
    if how in ("overwrite", "all"):
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if how in ("append", "all"):
        data += draw(st.binary(min_size=1, max_size=8))
    if how in ("truncate", "all"):
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return bytes(data)


@settings(max_examples=200, suppress_health_check=FIXTURES)
@given(
    kind=st.sampled_from(["idx_labels", "idx_images", "amat", "labels"]),
    gzipped=st.booleans(),
    data=st.data(),
)
def test_corrupt_idx_amat_and_label_files_raise_data_error_naming_the_file(
    kind: str, gzipped: bool, data: st.DataObject, tmp_path: Path
) -> None:
    count_example("data files: truncated/corrupt IDX, .amat, label files (plain and gzip)")
    valid = {
        "idx_labels": _VALID_IDX[0],
        "idx_images": _VALID_IDX[1],
        "amat": _VALID_AMAT,
        "labels": _VALID_LABELS,
    }[kind]
    raw = data.draw(corrupted(valid))
    if gzipped and data.draw(st.booleans()):
        raw = gzip.compress(raw)
        raw = raw[: data.draw(st.integers(0, len(raw)))]  # a truncated archive, sometimes
    elif gzipped:
        raw = data.draw(corrupted(gzip.compress(valid)))  # a corrupt archive
    path = tmp_path / (f"file-{kind}" + (".gz" if gzipped else ""))
    path.write_bytes(raw)
    reader: Callable[[Any], Any] = {
        "idx_labels": read_idx,
        "idx_images": read_idx,
        "amat": read_amat,
        "labels": read_binarized_label_file,
    }[kind]
    try:
        result = reader(path)
    except DataError as error:
        assert_clear_error(error, (DataError,))
        assert path.name in str(error)
        return
    # Parsed: the corruption left a well-formed file, and the result is consistent with it.
    if kind.startswith("idx"):
        assert result.dtype == np.uint8 and result.ndim in (1, 3)
    elif kind == "amat":
        assert result.shape[1] == 784 and set(np.unique(result)) <= {0, 1}
    else:
        assert ((result.label >= 0) & (result.label <= 9)).all()


# -------------------------------------------------------------------------------- checkpoints

_MODELS = st.builds(
    lambda latent, hidden, observation, imputation, features: ModelConfig(
        num_features=features,
        latent_dim=latent,
        hidden=hidden,
        observation=observation,
        imputation=imputation,
    ),
    latent=st.integers(1, 3),
    hidden=st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple),
    observation=st.sampled_from(["bernoulli", "gaussian", "student_t"]),
    imputation=st.sampled_from(["zero", "learned"]),
    features=st.sampled_from([4, 5]),
)


@settings(max_examples=100, suppress_health_check=FIXTURES)
@given(written=_MODELS, claimed=_MODELS)
def test_a_checkpoint_of_another_model_configuration_is_refused_by_name(
    written: ModelConfig, claimed: ModelConfig, tmp_path: Path
) -> None:
    count_example("checkpoints: weights of another model configuration")
    directory = tmp_path / "ckpt"
    model = MissIWAE.from_config(written)
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(directory, model, optimizer, TrainConfig(epochs=1), [])
    (directory / "config.json").write_text(json.dumps({"model": to_dict(claimed)}))
    expected = MissIWAE.from_config(claimed).state_dict()
    fits = expected.keys() == model.state_dict().keys() and all(
        expected[k].shape == v.shape for k, v in model.state_dict().items()
    )
    loaded = outcome(lambda: load_model(directory), (ValueError,))
    assert (loaded is not None) == fits
    if loaded is None:
        with pytest.raises(ValueError, match="another model configuration"):
            load_model(directory)
        # Resuming training into the claimed model fails the same way, before any epoch runs.
        other = MissIWAE.from_config(claimed)
        x = torch.zeros(2, claimed.num_features)
        with pytest.raises(ValueError, match="another model configuration"):
            train(
                other,
                x,
                torch.ones_like(x, dtype=torch.bool),
                TrainConfig(epochs=2),
                checkpoint_dir=directory,
                progress=False,
            )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["model", "data", "train", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The three files of a tiny CLI checkpoint (weights, model config, run config), as bytes."""
    from missiwae.cli import RUN_CONFIG_FILE

    directory = tmp_path_factory.mktemp("cli_checkpoint")
    run_config = RunConfig.from_dict({"model": {"hidden": [4], "latent_dim": 2}, "train": {"epochs": 1}})
    model = MissIWAE.from_config(run_config.model)
    save_checkpoint(directory, model, torch.optim.Adam(model.parameters()), run_config.train, [])
    (directory / RUN_CONFIG_FILE).write_text(json.dumps(run_config.to_dict()))
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


@settings(max_examples=100, suppress_health_check=FIXTURES)
@given(data=st.data(), command=st.sampled_from(["evaluate", "impute"]))
def test_cli_reports_a_corrupt_checkpoint_as_a_one_line_error(
    data: st.DataObject,
    command: str,
    checkpoint_files: dict[str, bytes],
    tmp_path: Path,
    empty_data_dir: Path,
) -> None:
    """One of the checkpoint's files truncated, overwritten in places or extended; an intact
    checkpoint would end at the empty data directory, so every example exits 2."""
    count_example("CLI: truncated/corrupt checkpoint files (model.pt, config.json, run_config.json)")
    directory = tmp_path / "checkpoint"
    directory.mkdir(exist_ok=True)
    victim = data.draw(st.sampled_from(sorted(checkpoint_files)))
    for name, content in checkpoint_files.items():
        if name != victim:
            (directory / name).write_bytes(content)
        elif name.endswith(".json") and data.draw(st.booleans()):  # valid JSON, wrong shape
            (directory / name).write_text(json.dumps(data.draw(_JSON)))
        else:
            (directory / name).write_bytes(data.draw(corrupted(content)))
    code, stderr = run_cli([command, "--checkpoint", str(directory), "--data-dir", str(empty_data_dir)])
    assert code == 2, stderr
    assert "Traceback" not in stderr and "error:" in stderr, stderr
