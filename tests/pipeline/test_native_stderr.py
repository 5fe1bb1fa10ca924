"""Ray's C++ lines on descriptor 2 (pipelines.native_stderr): its noise goes to the log file,
real errors and everything else reach the console unchanged and undelayed, even from a
process that is killed."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from pipelines.native_stderr import filter_stream, is_ray_noise
from tests.conftest import REPO

# Ray 2.60's line, as the driver of any Ray Data actor pool prints it (ray-project/ray#57733).
ACTOR_POOL_NOISE = (
    b"[2026-12-02 22:31:08,083 E 3267 3267] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(A))' and ID: '87b0913c' has constructor arguments in the object store "
    b"and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    b"actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.\n"
)
WARNING_LINE = b"[2026-12-02 22:31:09,001 W 3267 3301] raylet_client.cc:77: slow heartbeat\n"
REAL_ERROR = b"[2026-12-02 22:31:09,500 E 3267 3267] core_worker.cc:901: Failed to connect to GCS\n"


class Chunks(io.BufferedIOBase):
    """A pipe that delivers `chunks` one read at a time; records what the console held when
    each read began (what the filter had passed on by then)."""

    def __init__(self, chunks: list[bytes], console: io.BytesIO):
        self.chunks = list(chunks)
        self.console = console
        self.seen_at_read: list[bytes] = []

    def read1(self, size: int = -1) -> bytes:
        self.seen_at_read.append(self.console.getvalue())
        return self.chunks.pop(0) if self.chunks else b""


def test_ray_noise_is_below_error_or_a_known_harmless_error_and_nothing_else() -> None:
    assert is_ray_noise(ACTOR_POOL_NOISE)
    assert is_ray_noise(WARNING_LINE)
    assert not is_ray_noise(REAL_ERROR)
    assert not is_ray_noise(b"[2026-12-02 22:31:09,500 F 3267 3267] logging.cc:1: Check failed\n")
    assert not is_ray_noise(b"[1/4] ingest    started: MNIST -> Parquet shards\n")
    assert not is_ray_noise(b"Traceback (most recent call last):\n")


def test_noise_goes_to_the_log_and_everything_else_to_the_console_byte_for_byte() -> None:
    console, log = io.BytesIO(), io.BytesIO()
    stream = [
        ACTOR_POOL_NOISE,
        b"[bracketed, but not Ray's]\n",
        WARNING_LINE,
        REAL_ERROR,
        b"\rimpute rows  40%",
        b"\rimpute rows 100%\n",
        b"[2026-12-02 22:3",  # a Ray line cut by the end of the stream: passed on, not lost
    ]
    filter_stream(Chunks(stream, console), console, log)
    assert log.getvalue() == ACTOR_POOL_NOISE + WARNING_LINE
    assert console.getvalue() == (
        b"[bracketed, but not Ray's]\n"
        + REAL_ERROR
        + b"\rimpute rows  40%\rimpute rows 100%\n[2026-12-02 22:3"
    )


def test_a_line_split_across_reads_is_judged_whole_and_a_bar_is_not_held_back() -> None:
    console, log = io.BytesIO(), io.BytesIO()
    half = len(ACTOR_POOL_NOISE) // 2
    source = Chunks([ACTOR_POOL_NOISE[:half], ACTOR_POOL_NOISE[half:], b"\rtrain epochs 1/3", b"\n"], console)
    filter_stream(source, console, log)
    assert log.getvalue() == ACTOR_POOL_NOISE
    assert source.seen_at_read[3] == b"\rtrain epochs 1/3"  # on the console before its newline came
    assert console.getvalue() == b"\rtrain epochs 1/3\n"


def test_a_killed_process_still_shows_what_it_wrote_in_the_block_and_hides_the_noise(tmp_path: Path) -> None:
    """Native writes to descriptor 2 and Python's own stderr, then SIGKILL: nothing that reached
    the pipe is lost, the noise is in the log file."""
    log = tmp_path / "ray.log"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pipelines.native_stderr import divert_native_stderr
        with divert_native_stderr({str(log)!r}):
            os.write(2, {ACTOR_POOL_NOISE!r})
            os.write(2, {REAL_ERROR!r})
            print("python's own stderr line", file=sys.stderr)
            os.write(2, b"a crash's last words\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == -9
    assert ACTOR_POOL_NOISE not in done.stderr
    for line in (REAL_ERROR, b"python's own stderr line\n", b"a crash's last words\n"):
        assert line in done.stderr, done.stderr
    assert log.read_bytes() == ACTOR_POOL_NOISE


def test_descriptor_2_and_sys_stderr_are_put_back_after_the_block(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from pipelines.native_stderr import divert_native_stderr
        before = (sys.stderr, os.fstat(2).st_ino)
        with divert_native_stderr({str(tmp_path / "ray.log")!r}):
            assert sys.stderr is not before[0] and os.fstat(2).st_ino != before[1]
        assert (sys.stderr, os.fstat(2).st_ino) == before
        os.write(2, {ACTOR_POOL_NOISE!r})  # after the block: unfiltered
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ACTOR_POOL_NOISE
