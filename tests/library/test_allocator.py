"""missiwae.allocator: freed tensor memory is reused instead of being page-faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from missiwae import allocator

# Each child process runs missIWAE training steps (MLP, K = 50, batch 64) and reports the minor
# page faults of 50 steps once warm (15 steps): every fault is a page of freed memory that glibc
# gave back to the OS and a later step had to map, fault in and zero again. Measured (6 runs of
# each): the default refaults 2 000 to 12 000 pages in most steps, 84 000 to 222 000 in all; with
# the memory retained, nearly every step faults none (7 to 2 700 in all). Fewer steps were not
# enough: after 5 warm-up steps the retained heap was still growing, and in 25 steps the default
# once refaulted in only one step (7 300 pages), which says nothing about either setting.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from missiwae.allocator import retain_freed_memory
    from missiwae.config import ModelConfig
    from missiwae.model import MissIWAE
    from missiwae.train_step import make_optimizer
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    torch.manual_seed(0)
    model = MissIWAE.from_config(ModelConfig(architecture="mlp"))
    optimizer = make_optimizer(model, 1e-3)
    x = (torch.rand(64, 784) < 0.5).float()
    mask = torch.rand(64, 784) < 0.5
    def step():
        loss = -model.bound(x, mask, 50).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(15):  # the heap grows to its working size during the first steps
        step()
    before = faults()
    for _ in range(50):
        step()
    print(json.dumps({"applied": applied, "faults": faults() - before}))
    """
)


def _child(mode: str, **env: str) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


glibc_only = pytest.mark.skipif(allocator._glibc_mallopt() is None, reason="mallopt is glibc's")


@glibc_only
def test_retained_memory_stops_a_training_step_from_page_faulting_its_tensors_in_again():
    default = _child("default")
    retained = _child("retain")
    assert retained["applied"] is True
    assert default["faults"] > 20_000
    assert retained["faults"] < 0.25 * default["faults"]


@glibc_only
def test_the_opt_out_variable_leaves_the_allocator_as_it_was():
    opted_out = _child("retain", MISSIWAE_RETAIN_FREED_MEMORY="0")
    assert opted_out["applied"] is False
    assert opted_out["faults"] > 20_000


def test_thresholds_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        allocator.retain_freed_memory(mmap_threshold=0)


def test_retain_freed_memory_reports_false_off_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory() is False


# A child that imports the library with mallopt replaced by a recorder (so nothing is really
# changed and the check runs off glibc too), trains a missIWAE model and a classifier, and
# reports the calls made before and after it asks for the setting itself.
_RECORDING_CHILD = textwrap.dedent(
    """
    import json
    import missiwae
    from missiwae import allocator
    calls = []
    def recording_mallopt():
        def mallopt(parameter, value):
            calls.append([parameter, value])
            return 1
        return mallopt
    allocator._glibc_mallopt = recording_mallopt
    import numpy as np
    import torch
    from missiwae.classifier import ClassifierConfig, train_classifier
    from missiwae.config import ModelConfig, TrainConfig
    x = (torch.rand(8, 4) < 0.5).float()
    model = missiwae.MissIWAE.from_config(
        ModelConfig(architecture="mlp", num_features=4, hidden=(3,), latent_dim=2)
    )
    missiwae.train(model, x, torch.rand(8, 4) < 0.5, TrainConfig(epochs=1, batch_size=4, K=2), progress=False)
    images = np.random.default_rng(0).random((12, 784), dtype=np.float32)
    labels = np.arange(12) % 10
    config = ClassifierConfig(channels=(2, 2), hidden=4, epochs=1, batch_size=4, num_threads=1)
    train_classifier(images, labels, images[:4], labels[:4], config)
    by_library = list(calls)
    asked = missiwae.retain_freed_memory()
    print(json.dumps({"by_library": by_library, "asked": asked, "after_asking": calls[len(by_library):]}))
    """
)


def test_training_leaves_the_allocator_alone_unless_the_caller_asks():
    completed = subprocess.run(
        [sys.executable, "-c", _RECORDING_CHILD],
        env={**os.environ, allocator.OPT_OUT_VARIABLE: "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["by_library"] == [], "import missiwae + train(...) / train_classifier(...) called mallopt"
    # The recorder works: the same process records the caller's own opt-in.
    assert report["asked"] is True
    assert report["after_asking"] == [
        [allocator._M_MMAP_THRESHOLD, allocator.DEFAULT_MMAP_THRESHOLD],
        [allocator._M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD],
    ]


def test_the_command_line_opts_in(monkeypatch, tmp_path, capsys):
    from missiwae.cli import main

    calls: list[tuple[int, int]] = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 1

    def recording_mallopt():
        return mallopt

    monkeypatch.setenv(allocator.OPT_OUT_VARIABLE, "1")
    monkeypatch.setattr(allocator, "_glibc_mallopt", recording_mallopt)
    monkeypatch.setattr(allocator, "_applied", None)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nowhere")]) == 2  # fails after opting in
    assert "nowhere" in capsys.readouterr().err
    assert calls == [
        (allocator._M_MMAP_THRESHOLD, allocator.DEFAULT_MMAP_THRESHOLD),
        (allocator._M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD),
    ]
