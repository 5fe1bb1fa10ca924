"""Property-based bad input for the pipeline layer (hypothesis): the pipeline config loader and
the Parquet shards the stages read. Same contract as tests/library/test_bad_input.py: a clear
error raised from this project's code, or a documented result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from missiwae.config import ConfigError, RunConfig, to_dict
from missiwae.mnist_files import DataError
from pipelines.config import PipelineConfig
from tests.conftest import count_example
from tests.library.test_bad_input import FIXTURES, assert_clear_error, corrupted, outcome

_KEYS = sorted(
    {key for section in to_dict(PipelineConfig()).values() if isinstance(section, dict) for key in section}
)
_SECTIONS = [name for name, value in to_dict(PipelineConfig()).items() if isinstance(value, dict)]


def _misspell(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.upper(), word[:-1], word + "s", word.replace("_", "-"), f" {word}"])


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["mlp", "conv", "zero", "oracle", "bernoulli", "gaussian", "cpu", "cuda:x", "1e-3"]),
)
_VALUES = st.one_of(
    _SCALARS, st.lists(_SCALARS, max_size=3), st.dictionaries(st.text(max_size=3), _SCALARS, max_size=2)
)
_SECTION = st.dictionaries(
    st.one_of(st.sampled_from(_KEYS).flatmap(_misspell), st.text(max_size=5)), _VALUES, max_size=3
)


@settings(max_examples=200)
@given(
    values=st.dictionaries(
        st.one_of(st.sampled_from([*_SECTIONS, "run_dir"]).flatmap(_misspell), st.integers(0, 3)),
        st.one_of(_SECTION, _VALUES),
        max_size=4,
    ),
    pipeline=st.booleans(),
)
def test_config_from_dict_refuses_unknown_keys_and_bad_values_by_name(
    values: dict[Any, Any], pipeline: bool
) -> None:
    count_example("config loader: unknown/misspelled keys, ill-typed and out-of-range values")
    cls: Any = PipelineConfig if pipeline else RunConfig
    config = outcome(lambda: cls.from_dict(values), (ConfigError,))
    if config is not None:  # accepted: it round-trips, and every float setting is finite
        assert cls.from_dict(config.to_dict()) == config
        assert "nan" not in json.dumps(config.to_dict()).lower().replace("nan_", "")


@pytest.fixture(scope="module")
def parquet_shard(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One shard in the ingest layout (row_id, split, label, pixels, mask), as bytes."""
    from tests.pipeline.test_pipeline_impute import ingest_table

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 2, (4, 784)).astype(np.uint8)
    table = ingest_table(np.arange(4), np.arange(4) % 10, pixels, rng.random((4, 784)) > 0.5)
    path = tmp_path_factory.mktemp("shard") / "part.parquet"
    pq.write_table(table, path)
    return path.read_bytes()


@settings(max_examples=100, suppress_health_check=FIXTURES)
@given(data=st.data(), reader=st.sampled_from(["impute_inputs", "imputed_dataset"]))
def test_corrupt_parquet_shards_raise_data_error_naming_the_file(
    data: st.DataObject, reader: str, parquet_shard: bytes, tmp_path: Path
) -> None:
    from pipelines.classify import read_imputed
    from pipelines.impute import read_inputs

    count_example("data files: truncated/corrupt Parquet shards")
    raw = data.draw(corrupted(parquet_shard))
    path = tmp_path / "part-00000.parquet"
    path.write_bytes(raw)
    read: Callable[[], Any] = (
        (lambda: read_inputs([path])) if reader == "impute_inputs" else (lambda: read_imputed(path, "shard"))
    )
    try:
        result = read()
    except (DataError, ValueError) as error:
        assert_clear_error(error, (DataError, ValueError))
        assert path.name in str(error) or "'shard'" in str(error)
        return
    assert all(len(part) == 4 for part in result)  # the damage missed everything that is read
