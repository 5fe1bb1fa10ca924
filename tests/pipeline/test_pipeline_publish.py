"""The shard format's readers and the stage-output mechanism, without a Ray job."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines.publish import MANIFEST, Publisher, file_sha256, fingerprint, hash_files
from pipelines.shards import batch_matrix, read_shards, shard_table, tensor_matrix
from pipelines.storage import OutputError


def test_fingerprint_is_canonical_json_sha256() -> None:
    import hashlib

    payload = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert fingerprint(payload) == expected == fingerprint(dict(reversed(payload.items())))


def test_file_hashes_see_bytes_and_names(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"abc")
    two.write_bytes(b"abc")
    assert file_sha256(one) == file_sha256(two)  # bytes only
    assert hash_files([one]) != hash_files([two])  # the name counts too
    assert hash_files([one, two]) != hash_files([two, one])


def test_a_staged_output_appears_whole_with_its_manifest_written_last(tmp_path: Path) -> None:
    out = Publisher(tmp_path / "root", ".test.lock", "the output {!r}")
    with out.locked():
        assert out.reusable(out.root / "x" / MANIFEST, "f1", lambda m: True) is None
        with out.stage("x") as staged:
            (staged.path / "data.txt").write_text("1")
            staged.manifest = {"fingerprint": "f1"}
        assert sorted(p.name for p in (out.root / "x").iterdir()) == [MANIFEST, "data.txt"]
        assert out.reusable(out.root / "x" / MANIFEST, "f1", lambda m: True) == {"fingerprint": "f1"}
        assert out.reusable(out.root / "x" / MANIFEST, "f2", lambda m: True) is None
        assert out.reusable(out.root / "x" / MANIFEST, "f1", lambda m: False) is None
        assert not list(out.area.iterdir())  # the replaced and the staged folders are gone


def test_a_failed_stage_leaves_the_previous_output_and_no_staging(tmp_path: Path) -> None:
    out = Publisher(tmp_path / "root", ".test.lock", "the output {!r}")
    with out.stage("x") as staged:
        (staged.path / "old.txt").write_text("old")
    with (
        pytest.raises(OutputError, match=r"writing the output .x. under .* \(No space left"),
        out.stage("x") as staged,
    ):
        (staged.path / "half.txt").write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in (out.root / "x").iterdir()] == ["old.txt"]
    assert not list(out.area.iterdir())


def test_sweep_removes_only_the_named_outputs_leftovers(tmp_path: Path) -> None:
    out = Publisher(tmp_path, ".lock", "{!r}", area=tmp_path, prefix=".tmp-")
    for name in (".tmp-train-1", ".tmp-old-train-2", ".tmp-valid-3", "train"):
        (tmp_path / name).mkdir()
    out.sweep(["train"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-valid-3", "train"]
    out.sweep()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_shards_take_their_width_from_the_data_and_read_back_sorted(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((5, 7)).astype(np.float32)  # a 7-column table, not 784 pixels
    mask = rng.random((5, 7)) > 0.5
    table = shard_table(
        "train", np.arange(5.0), pixels, mask, source_row=np.arange(5) * 2, values=pixels * 2.0
    )
    assert table.column_names == ["row_id", "split", "label", "source_row", "pixels", "mask", "values"]
    pq.write_table(table.slice(3), tmp_path / "a.parquet")  # rows 3, 4 first
    pq.write_table(table.slice(0, 3), tmp_path / "b.parquet")
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    back = read_shards(files, ["row_id", "pixels", "mask"])
    np.testing.assert_array_equal(back.column("row_id").to_numpy(), np.arange(5))
    np.testing.assert_array_equal(tensor_matrix(back.column("pixels"), np.float32), pixels)
    np.testing.assert_array_equal(tensor_matrix(back.column("mask"), np.bool_, name="mask"), mask)
    unsorted = read_shards(files, ["row_id"], order_by=None)
    np.testing.assert_array_equal(unsorted.column("row_id").to_numpy(), [3, 4, 0, 1, 2])
    assert batch_matrix(np.empty(0, dtype=object), np.float32).shape[0] == 0


def test_tensor_matrix_names_what_is_wrong() -> None:
    ragged = pa.chunked_array([pa.array([[1.0, 2.0], [3.0]])])
    with pytest.raises(ValueError, match="dataset 'd': pixels rows of different lengths"):
        tensor_matrix(ragged, np.float32, what="dataset 'd'")
    with pytest.raises(ValueError, match="the pixels column has null entries"):
        tensor_matrix(pa.chunked_array([pa.array([[1.0], None])]), np.float32)
    with pytest.raises(ValueError, match="unsupported pixels type"):
        tensor_matrix(pa.chunked_array([pa.array([["a"]])]), np.float32)
