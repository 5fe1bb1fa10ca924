"""missiwae.atomic: whole file or none, synced before the rename, a plain file's mode."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from missiwae import atomic
from missiwae.atomic import (
    TEMP_PREFIX,
    UnsafeOutputError,
    atomic_file,
    check_output_path,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_027() -> Iterator[None]:
    """A umask other than the usual 022, so a hard-coded mode cannot pass by luck."""
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def test_each_writer_puts_the_whole_content_in_place(tmp_path: Path) -> None:
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "b.txt", "ι ≠ 0\n")
    write_json_atomic(tmp_path / "c.json", {"k": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "ι ≠ 0\n"
    assert (tmp_path / "c.json").read_text() == json.dumps({"k": [1, 2]}, indent=2)  # no final newline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_a_replaced_file_is_the_whole_new_one(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_then_fail(stream: object) -> None:
        stream.write(b"half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_the_temporary_is_a_sibling_with_the_sweepable_prefix(tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    with atomic_file(target) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(TEMP_PREFIX) and temporary.name.endswith("figure.png")
        assert not target.exists()  # nothing visible before the block succeeds
        temporary.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    assert TEMP_PREFIX == ".tmp-"  # pipelines.storage sweeps leftovers by this prefix


def test_new_files_get_the_mode_of_a_plain_open(tmp_path: Path, umask_027: None) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o640
    write_bytes_atomic(tmp_path / "atomic", b"x")
    with atomic_file(tmp_path / "by_path") as temporary:
        temporary.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "by_path").stat().st_mode) == expected


def test_the_file_is_synced_before_it_is_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync")
        real_fsync(descriptor)

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        events.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_text_atomic(tmp_path / "out.txt", "data")
    assert events[:2] == ["fsync", "replace"]


def test_a_stream_writer_keeps_the_name_it_was_given(tmp_path: Path) -> None:
    # np.savez appends .npz to a path lacking it; through a stream the target keeps its name.
    target = tmp_path / "arrays.bin"
    write_atomic(target, lambda stream: np.savez(stream, a=np.arange(3)))
    assert [p.name for p in tmp_path.iterdir()] == ["arrays.bin"]
    with np.load(target) as saved:
        np.testing.assert_array_equal(saved["a"], np.arange(3))


def _make_node(kind: str, path: Path) -> None:
    """Something that is not a regular file at `path` (a real device node only as root)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))  # the socket file stays after the socket is closed
    elif kind == "symlink":
        (path.parent / "link-target.txt").write_text("target")
        path.symlink_to(path.parent / "link-target.txt")
    elif kind == "dangling symlink":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "directory":
        path.mkdir()
    elif kind == "character device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    else:
        raise AssertionError(kind)


NODES = ("fifo", "socket", "symlink", "dangling symlink", "directory", "character device")


def _identity(path: Path) -> tuple[int, int, int]:
    """What must not change about a refused node: inode, type and mode, device numbers."""
    info = os.lstat(path)
    return info.st_ino, info.st_mode, info.st_rdev


@pytest.mark.parametrize("kind", NODES)
def test_every_writer_refuses_a_path_that_is_not_a_regular_file_and_leaves_it_untouched(
    tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "out"
    _make_node(kind, target)
    before = _identity(target)
    writers = {
        "bytes": lambda: write_bytes_atomic(target, b"x"),
        "json": lambda: write_json_atomic(target, {"k": 1}),
        "stream": lambda: write_atomic(target, lambda stream: stream.write(b"x")),
        "path": lambda: atomic_file(target).__enter__(),
    }
    for name, write in writers.items():
        with pytest.raises(UnsafeOutputError, match=f"refusing to write {target}: it exists and is") as error:
            write()
        assert isinstance(error.value, OSError), name  # reported as a file error by every caller
        assert _identity(target) == before, name
    if kind == "symlink":
        assert (tmp_path / "link-target.txt").read_text() == "target"  # not followed either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_a_node_that_appears_while_the_block_writes_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(UnsafeOutputError, match="a FIFO"), atomic_file(target) as temporary:
        temporary.write_bytes(b"weights")
        os.mkfifo(target)  # e.g. made by someone else during a long training epoch
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the temporary is gone


def test_check_output_path_accepts_a_new_name_and_a_regular_file(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("{}")
    assert check_output_path(str(tmp_path / "old.json")) == tmp_path / "old.json"
