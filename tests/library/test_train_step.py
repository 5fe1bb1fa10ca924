"""The training step replayed from a CUDA graph: the same training as the eager step.

On CPU only the refusals can be checked; the equality tests run where CUDA is (the lent GPU
machine runs this file, see benchmarks/gpu_device.sh)."""

from __future__ import annotations

import pytest
import torch

from missiwae.config import ConfigError, ModelConfig, TrainConfig
from missiwae.model import MissIWAE, make_generator
from missiwae.train_step import WARMUP_STEPS, TrainStep, make_optimizer
from missiwae.training import train
from tests.library.test_training import _data

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _conv_model() -> MissIWAE:
    torch.manual_seed(0)
    return MissIWAE.from_config(
        ModelConfig(architecture="conv", conv_channels=(4, 8, 8), latent_dim=6, observation="bernoulli")
    )


def test_a_cuda_graph_step_is_refused_off_cuda_with_the_reason():
    x, mask = _data()
    model = _conv_model()
    optimizer = make_optimizer(model, 1e-3)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TrainStep(model, optimizer, x, mask, 2, None, cuda_graph=True, batch_size=32)


def test_the_config_refuses_a_cuda_graph_off_cuda():
    with pytest.raises(ConfigError, match=r"cuda_graph needs train\.device cuda"):
        TrainConfig(device="cpu", cuda_graph=True)


def test_the_pipeline_refuses_a_cuda_graph_for_its_ray_train_workers():
    from pipelines.config import PipelineConfig

    with pytest.raises(ConfigError, match="Ray Train workers run their DDP steps eagerly"):
        PipelineConfig.from_dict({"train": {"device": "cuda", "cuda_graph": True}})


def test_the_eager_step_returns_the_minibatch_bound_sum_on_the_device():
    x, mask = _data(rows=40)
    x = x.masked_fill(~mask, float("nan"))
    model = _conv_model()
    step = TrainStep(model, make_optimizer(model, 1e-3), x, mask, 3, make_generator(1))
    index = torch.arange(16)
    reference = _conv_model()
    expected = reference.bound(x[index], mask[index], 3, make_generator(1)).sum()
    total = step(index)
    assert total.shape == () and total.device == x.device and not total.requires_grad
    assert torch.allclose(total, expected.detach())
    assert not torch.equal(
        next(model.decoder.parameters()), next(reference.decoder.parameters())
    )  # it stepped


def _train_on_cuda(cuda_graph: bool, epochs: int = 2) -> tuple[list[float], MissIWAE]:
    x, mask = _data(rows=300)  # batches of 64: four full ones and one of 44, every epoch
    x = x.masked_fill(~mask, float("nan"))
    model = _conv_model()
    config = TrainConfig(K=5, batch_size=64, epochs=epochs, seed=3, device="cuda", cuda_graph=cuda_graph)
    history = train(model, x, mask, config, progress=False)
    return [entry.train_bound for entry in history], model


@cuda
def test_a_captured_training_gives_the_numbers_of_the_eager_one_from_the_same_seed(monkeypatch):
    # The comparison is of the capture, not of cuDNN's choice of kernels between two runs.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    eager_bounds, eager = _train_on_cuda(False, epochs=3)
    graph_bounds, graphed = _train_on_cuda(True, epochs=3)
    assert graph_bounds == pytest.approx(eager_bounds, rel=1e-5)
    for name, value in eager.state_dict().items():
        assert torch.allclose(graphed.state_dict()[name], value, rtol=1e-4, atol=1e-5), name


@cuda
def test_the_step_replays_after_the_warmup_and_runs_other_batch_sizes_eagerly():
    x, mask = _data(rows=300)
    x, mask = x.masked_fill(~mask, float("nan")).cuda(), mask.cuda()
    model = _conv_model().cuda()
    optimizer = make_optimizer(model, 1e-3, capturable=True)
    step = TrainStep(model, optimizer, x, mask, 5, make_generator(0, "cuda"), cuda_graph=True, batch_size=64)
    full = torch.arange(64, device="cuda")
    for _ in range(WARMUP_STEPS):
        step(full)
    assert not step.captured
    first = step(full)
    assert step.captured
    before = next(model.decoder.parameters()).detach().clone()
    second = step(full)
    assert not torch.equal(next(model.decoder.parameters()), before)  # a replay updates the weights
    assert not torch.equal(first, second)  # and its result is a copy, not the static buffer
    step(torch.arange(44, device="cuda"))  # another size: eager, with the same state
    assert torch.isfinite(step(full))
