"""One Adam step on −mean L_K over a minibatch, run eagerly or replayed from a CUDA graph.

At the paper's batch of 64 rows a GPU step of the convolutional DLVM is a few hundred small
kernels, each launched from Python: the GPU finishes each before the CPU has launched the next,
so the step is bound by launch latency, not arithmetic (benchmarks/README.md, batch 64 on an
H200). A CUDA graph records the step's kernels once — forward, backward and the fused Adam
update — and replays them with one launch per step. The step is the same computation:

- The minibatch is gathered inside the graph from the whole (N, D) training set on the device,
  by row indices copied into a static (B,) buffer, so replaying needs no input copies.
- ε ~ N(0, I) comes from the training's own CUDA generator, registered with the graph: each
  replay advances its Philox offset as the eager step would, so the same seed gives the same
  draws in both modes.
- Adam keeps its step counter on the device (`capturable=True`), as a replayed update must.
- The bound's sum is returned as a device tensor and never read back inside an epoch: a read
  would make the CPU wait for the GPU at every step.

A graph holds one batch size: minibatches of another size (the last of an epoch) run eagerly
with the same parameters, optimiser state and generator. The first `WARMUP_STEPS` steps run
eagerly too, on a side stream as CUDA graph capture requires (cuDNN's autotuner and the
allocator settle there), and they are real training steps.
"""

from __future__ import annotations

import torch

from missiwae.model import MissIWAE

WARMUP_STEPS = 3


def make_optimizer(
    model: torch.nn.Module, learning_rate: float, *, capturable: bool = False
) -> torch.optim.Adam:
    """Adam over every parameter of `model`, as every training path of this project builds it.

    The fused implementation updates all parameters in one kernel instead of a dozen small
    ones per parameter tensor: a third of the time of the default on CPU, where the optimiser
    step was 15% of a K = 1 MLP step (benchmarks/README.md). Same update rule. `capturable`
    keeps the step counter on the device, which a CUDA-graph replay of the update needs.
    """
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True, capturable=capturable)


def ascend(optimizer: torch.optim.Optimizer, bound: torch.Tensor) -> None:
    """One optimiser step up the mean of `bound` (B,) (down the loss −mean L_K): the update of
    every training path, the one-process loop (`TrainStep`) and each Ray Train worker."""
    loss = -bound.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class TrainStep:
    """Adam on −mean L_K of the rows `index` of (x, mask) (N, D); `cuda_graph` replays the step
    of `batch_size` rows from a CUDA graph (x on a CUDA device, `optimizer` capturable)."""

    def __init__(
        self,
        model: MissIWAE,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        mask: torch.Tensor,
        K: int,
        generator: torch.Generator | None = None,
        *,
        cuda_graph: bool = False,
        batch_size: int | None = None,
    ):
        self.model, self.optimizer, self.x, self.mask = model, optimizer, x, mask
        self.K, self.generator = K, generator
        self.cuda_graph, self.batch_size = cuda_graph, batch_size
        if cuda_graph:
            check_capturable(x, optimizer, generator, batch_size)
        self.eager_steps = 0  # full-size steps run eagerly before the capture
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_index: torch.Tensor | None = None
        self._static_sum: torch.Tensor | None = None

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """One step on the rows `index` (B,) on x's device; returns Σ_rows L_K, 0-dim, detached."""
        if not self.cuda_graph or index.numel() != self.batch_size:
            return self._step(index)
        if self._graph is None:
            if self.eager_steps < WARMUP_STEPS:
                self.eager_steps += 1
                return self._on_side_stream(index)
            self._capture(index)
        assert self._graph is not None and self._static_index is not None and self._static_sum is not None
        self._static_index.copy_(index)
        self._graph.replay()
        # The next replay overwrites the static sum: hand out a copy, made in stream order.
        return self._static_sum.clone()

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def _step(self, index: torch.Tensor) -> torch.Tensor:
        bound = self.model.bound(self.x[index], self.mask[index], self.K, self.generator, validate=False)
        ascend(self.optimizer, bound)
        return bound.detach().sum()

    def _on_side_stream(self, index: torch.Tensor) -> torch.Tensor:
        side = torch.cuda.Stream(device=self.x.device)
        side.wait_stream(torch.cuda.current_stream(self.x.device))
        with torch.cuda.stream(side):
            total = self._step(index)
        torch.cuda.current_stream(self.x.device).wait_stream(side)
        return total

    def _capture(self, index: torch.Tensor) -> None:
        """Record one step on the static index buffer. Capture runs nothing: the replay that
        follows is the step of `index`."""
        self._static_index = index.clone()
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        # Gradients are made inside the graph's memory pool and rewritten by every replay.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self._static_sum = self._step(self._static_index)
        self._graph = graph


def check_capturable(
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    batch_size: int | None,
) -> None:
    """The conditions of a captured step, each a ValueError that names what to change."""
    if x.device.type != "cuda":
        raise ValueError(f"train.cuda_graph needs a CUDA device; the training data is on {x.device}")
    if generator is not None and generator.device.type != "cuda":
        raise ValueError("train.cuda_graph needs the sampling generator on the CUDA device")
    if batch_size is None or batch_size < 1:
        raise ValueError("train.cuda_graph needs the batch size the graph is captured for")
    if not all(group.get("capturable", False) for group in optimizer.param_groups):
        raise ValueError(
            "train.cuda_graph needs a capturable optimiser (make_optimizer(..., capturable=True))"
        )


__all__ = ["WARMUP_STEPS", "TrainStep", "ascend", "check_capturable", "make_optimizer"]
