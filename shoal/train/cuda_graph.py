"""The rollout's inference step captured as a CUDA graph (``train.cuda_graph``).

Why: at a few thousand agents per step the policy's forward and the action sampling are two
dozen small kernels, and on a GPU launching them from Python costs more than running them.
Replaying a captured graph launches them all at once.

A graph reads and writes fixed memory. `GraphedAct` keeps, per batch size, static tensors for
the observations and the recurrent state; a call copies its inputs there (nothing when they
are already there), replays, and returns the static outputs. The new state is written back
into the static state, so a caller that keeps the returned state as its own (the Collector)
copies nothing the next step. The outputs are overwritten by the next replay of the same
batch size; callers copy what they keep before that.

The parameters are read from their own storage at every replay, so the optimizer's in-place
updates and ``load_state_dict`` reach the graph. Autocast runs with its weight cache off
(a cached cast copy would be frozen into the graph). Sampling draws from the CUDA generator's
graph-safe Philox stream: every replay draws new numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

Act = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, ...]]


class _Captured:
    def __init__(self, act: Act, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.obs = obs.clone()
        self.h, self.c = state[0].clone(), state[1].clone()
        # Warm-up on a side stream (cuBLAS handles, autotuning, lazy inits) before capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                act(self.obs, (self.h.clone(), self.c.clone()))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            actions, log_prob, value, (h, c) = act(self.obs, (self.h, self.c))
            # In the graph, after every read of the old state: the next replay starts from it.
            self.h.copy_(h)
            self.c.copy_(c)
        self.outputs = (actions, log_prob, value)


class GraphedAct:
    """``act(obs, state) -> (actions, log_prob, value, new_state)`` replayed from CUDA graphs,
    one captured per batch size on first use."""

    def __init__(self, act: Act) -> None:
        self.act = act
        self.graphs: dict[int, _Captured] = {}

    def __call__(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, ...]:
        batch = obs.shape[0]
        captured = self.graphs.get(batch)
        if captured is None:
            captured = self.graphs[batch] = _Captured(self.act, obs, state)
        for static, given in ((captured.obs, obs), (captured.h, state[0]), (captured.c, state[1])):
            if given.data_ptr() != static.data_ptr():
                static.copy_(given)
        captured.graph.replay()
        return (*captured.outputs, (captured.h, captured.c))


def use_cuda_graph(collector: Any) -> None:
    """Make a shoal.train.rollout.Collector replay its inference step from CUDA graphs
    (train.cuda_graph); a collector on the CPU is left as it is."""
    if collector.device.type != "cuda":
        return
    # A cached autocast copy of the weights would be frozen into the graph.
    collector.act_fn = GraphedAct(functools.partial(collector.infer, autocast_cache=False))
