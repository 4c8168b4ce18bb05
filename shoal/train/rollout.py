"""Collecting experience into a preallocated buffer.

The buffer is agent-major, ``[agents, steps]``: each agent's steps of one epoch are contiguous,
so ``[agents, segments, horizon]`` views it as ``agents * segments`` BPTT segments without a
copy. Rollout writes one column per step with in-place copies.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import gymnasium
import numpy as np
import torch

from shoal.policy import Policy, sample_actions
from shoal.train.normalize import RewardScaler


class EnvError(RuntimeError):
    """The env failed while training stepped it: its step raised, or it returned NaN or infinite
    observations or rewards. The message names the env, and the env index and step."""


@dataclass
class PhaseTimes:
    """Seconds a rollout spent per phase since the last reset."""

    env: float = 0.0
    inference: float = 0.0
    copy: float = 0.0

    def reset(self) -> None:
        self.env = self.inference = self.copy = 0.0


def torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    return torch.uint8 if np.dtype(np_dtype) == np.uint8 else torch.float32


class RolloutBuffer:
    """One epoch of experience for `num_agents` agents times `steps` steps, cut into segments of
    `horizon` steps (the loop's validation made sure `horizon` divides `steps`)."""

    def __init__(
        self,
        num_agents: int,
        steps: int,
        horizon: int,
        obs_size: int,
        obs_dtype: np.dtype,
        action_dims: int,
        continuous: bool,
        state_size: int,
        device: torch.device,
    ) -> None:
        self.num_agents, self.steps, self.horizon = num_agents, steps, horizon
        self.segments_per_agent = steps // horizon
        self.num_segments = num_agents * self.segments_per_agent
        a, s = num_agents, steps

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.obs = zeros(a, s, obs_size, dtype=torch_dtype(obs_dtype))
        self.actions = zeros(a, s, action_dims, dtype=torch.float32 if continuous else torch.int64)
        self.log_probs = zeros(a, s)
        self.values = zeros(a, s)
        self.rewards = zeros(a, s)
        self.dones = zeros(a, s)
        # 1 where the episode was cut by a time limit (also 1 in dones): the adaptive-horizon
        # advantage treats the rewards after it as unknown rather than as zero.
        self.truncated = zeros(a, s)
        # Latest pi_new / pi_old per step, for V-trace; 1 until a minibatch trains on the step.
        self.ratio = torch.ones(a, s, device=device)
        # Recurrent state before each segment's first step.
        self.state_h = zeros(a, self.segments_per_agent, state_size)
        self.state_c = zeros(a, self.segments_per_agent, state_size)
        self.next_value = zeros(a)

    def segment_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """[agents, steps, ...] -> [segments, horizon, ...] (a view)."""
        return tensor.view(self.num_segments, self.horizon, *tensor.shape[2:])

    def segment_starts(self) -> torch.Tensor:
        """[segments, horizon]: 1 where an observation begins a new episode inside a segment.

        At t = 0 the stored segment state already had its reset applied, so it is 0 there.
        """
        starts = torch.zeros_like(self.dones)
        starts[:, 1:] = self.dones[:, :-1]
        starts = self.segment_view(starts)
        starts[:, 0] = 0
        return starts


@dataclass
class Collector:
    """Steps the env with the policy and fills a RolloutBuffer; keeps the agents' state."""

    env: object
    policy: Policy
    buffer: RolloutBuffer
    device: torch.device
    gamma: float
    autocast: contextlib.AbstractContextManager | None = None
    # The policy's step (policy.step, or a compiled version of it).
    step_fn: object = None
    # Rewards are clamped to [-reward_clip, reward_clip] as they are stored (0 = no clamp).
    reward_clip: float = 0.0
    # Add gamma * V(final obs) to the last reward of a truncated episode; an estimator without a
    # scalar value (the adaptive horizon) masks what follows a truncation instead.
    bootstrap_truncation: bool = True
    # Divides the rewards by the return's running std (train.reward_scale), before reward_clip.
    reward_scaler: RewardScaler | None = None
    # Check every step's observations and rewards for NaN and infinity (user envs; the native
    # envs are trusted, and checking their large batches would cost steps/s).
    check_finite: bool = False
    # For messages: which env this is.
    env_name: str = "env"
    times: PhaseTimes = field(default_factory=PhaseTimes)

    def __post_init__(self) -> None:
        env = self.env
        n = env.num_agents
        space = env.single_action_space
        self.continuous = isinstance(space, gymnasium.spaces.Box)
        if self.continuous:
            self.actions_np = np.zeros((n, self.policy.spec.dims), dtype=np.float32)
            self.low = torch.as_tensor(space.low.reshape(-1), dtype=torch.float32, device=self.device)
            self.high = torch.as_tensor(space.high.reshape(-1), dtype=torch.float32, device=self.device)
        elif isinstance(space, gymnasium.spaces.Discrete):
            self.actions_np = np.zeros(n, dtype=np.int32)
        else:
            self.actions_np = np.zeros((n, self.policy.spec.dims), dtype=np.int32)
        self.done_np = np.zeros(n, dtype=np.bool_)
        self.on_cuda = self.device.type == "cuda"
        # Env steps taken by this Collector, for error messages.
        self.steps_taken = 0
        obs_dtype = torch_dtype(env.single_observation_space.dtype)
        self.obs_dev = torch.zeros(n, self.buffer.obs.shape[-1], dtype=obs_dtype, device=self.device)
        if self.on_cuda:
            # Page-locked staging, so that each step moves its data in one asynchronous copy per
            # direction: observations up; rewards, dones and truncations up together; actions
            # down. Every step waits for its actions, so a staging buffer is never rewritten
            # while a copy from it is still in flight.
            self.obs_pinned = torch.zeros(self.obs_dev.shape, dtype=obs_dtype).pin_memory()
            self.step_pinned = torch.zeros(n, 3).pin_memory()
            self.step_dev = torch.zeros(n, 3, device=self.device)
            actions_dtype = self.buffer.actions.dtype
            self.actions_pinned = torch.zeros(self.actions_np.shape, dtype=actions_dtype).pin_memory()
        if self.step_fn is None:
            self.step_fn = self.policy.step
        # The inference step of every env step; shoal.train.cuda_graph may replace it with a
        # replay of a captured graph of `infer`.
        self.act_fn = self.infer
        self.reset_state()

    def reset_state(self) -> None:
        self.state = self.policy.initial_state(self.env.num_agents, self.device)

    def _autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return self.autocast() if cache else self.autocast(cache_enabled=False)

    def infer(self, obs: torch.Tensor, state: tuple, autocast_cache: bool = True) -> tuple:
        """(actions, log_prob, value, new_state) for a batch of observations."""
        with self._autocast(autocast_cache):
            logits, value, new_state = self.step_fn(obs, state)
            actions, log_prob = sample_actions(self.policy, logits)
        return actions, log_prob, value, new_state

    def _load_obs(self, obs_np: np.ndarray) -> torch.Tensor:
        obs = torch.from_numpy(obs_np)
        if self.on_cuda:
            self.obs_pinned.copy_(obs)
            self.obs_dev.copy_(self.obs_pinned, non_blocking=True)
            return self.obs_dev
        return obs

    def _actions_to_env(self, actions: torch.Tensor) -> None:
        """Write sampled actions into the env's action array."""
        if self.on_cuda:
            staging = self.actions_pinned
            staging.copy_(actions.reshape(staging.shape), non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            actions = staging
        np.copyto(self.actions_np, actions.numpy().reshape(self.actions_np.shape), casting="unsafe")

    def _load_step(
        self, rewards: np.ndarray, done: np.ndarray, truncations: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, dones, truncations) of one step as float tensors on the device."""
        if not self.on_cuda:
            return torch.from_numpy(rewards), torch.from_numpy(done), torch.from_numpy(truncations)
        view = self.step_pinned.numpy()
        view[:, 0] = rewards
        view[:, 1] = done
        view[:, 2] = truncations
        target = self.step_dev
        target.copy_(self.step_pinned, non_blocking=True)
        return target[:, 0], target[:, 1], target[:, 2]

    @torch.inference_mode()
    def collect(self, obs_np: np.ndarray) -> np.ndarray:
        """Fill the buffer for one epoch starting from observations `obs_np`; return the last ones."""
        buf, policy = self.buffer, self.policy
        times = self.times
        clock = time.perf_counter
        horizon = buf.horizon
        has_state = policy.use_lstm
        for t in range(buf.steps):
            t0 = clock()
            obs = self._load_obs(obs_np)
            if has_state and t % horizon == 0:
                k = t // horizon
                buf.state_h[:, k].copy_(self.state[0])
                buf.state_c[:, k].copy_(self.state[1])
            t1 = clock()
            actions, log_prob, value, new_state = self.act_fn(obs, self.state)
            t2 = clock()
            self._store_action(t, obs, actions, log_prob, value)
            t3 = clock()
            obs_np, rewards, terminals, truncations = self._env_step()
            t4 = clock()
            self._store_step(t, rewards, terminals, truncations, new_state)
            t5 = clock()
            times.copy += (t1 - t0) + (t3 - t2) + (t5 - t4)
            times.inference += t2 - t1
            times.env += t4 - t3
        t0 = clock()
        with self._autocast():
            buf.next_value.copy_(policy.value(self._load_obs(obs_np), self.state))
        times.inference += clock() - t0
        return obs_np

    def _env_step(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """env.step with the actions written; EnvError naming the env when it raises or returns
        non-finite values."""
        try:
            obs, rewards, terminals, truncations, _ = self.env.step(self.actions_np)
        except Exception as e:
            notes = "".join(f" ({note})" for note in getattr(e, "__notes__", ()))
            first = (str(e).strip().splitlines() or [""])[0]
            raise EnvError(
                f"env '{self.env_name}' raised {type(e).__name__} in step {self.steps_taken + 1} "
                f"of this run's stepping: {first}{notes}"
            ) from e
        self.steps_taken += 1
        if self.check_finite:
            self._check_finite(obs, rewards)
        return obs, rewards, terminals, truncations

    def _check_finite(self, obs: np.ndarray, rewards: np.ndarray) -> None:
        for what, values in (("rewards", rewards), ("observations", obs)):
            if values.dtype.kind != "f":
                continue
            finite = np.isfinite(values)
            if finite.all():
                continue
            rows = np.flatnonzero(~finite.reshape(values.shape[0], -1).all(axis=1))
            agents = self.env.agents_per_env
            where = ", ".join(
                f"env index {r // agents}" + (f" agent {r % agents}" if agents > 1 else "") for r in rows[:5]
            )
            more = ", ..." if len(rows) > 5 else ""
            raise EnvError(
                f"env '{self.env_name}' returned NaN or infinite {what} at step {self.steps_taken} of "
                f"this run's stepping ({where}{more}); the run folder keeps what was written before it"
            )

    def _store_action(
        self, t: int, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Store step t's inputs and outputs of the policy; hand the actions to the env."""
        buf = self.buffer
        buf.obs[:, t].copy_(obs)
        buf.actions[:, t].copy_(actions)
        buf.log_probs[:, t].copy_(log_prob)
        buf.values[:, t].copy_(value)
        if self.continuous:
            # The buffer keeps the sampled action; the env gets it inside its bounds.
            actions = torch.max(torch.min(actions, self.high), self.low)
        self._actions_to_env(actions)

    def _store_step(
        self, t: int, rewards: np.ndarray, terminals: np.ndarray, truncations: np.ndarray, new_state: tuple
    ) -> None:
        """Store what step t's env step returned, and carry the recurrent state past it."""
        buf = self.buffer
        np.logical_or(terminals, truncations, out=self.done_np)
        rewards_t, done_t, truncated_t = self._load_step(rewards, self.done_np, truncations)
        buf.rewards[:, t].copy_(rewards_t)
        if self.reward_scaler is not None:
            self.reward_scaler.scale_(buf.rewards[:, t], done_t)
        if self.reward_clip > 0:
            # Before the truncation bootstrap: gamma * V(final obs) is a value, not a reward.
            buf.rewards[:, t].clamp_(-self.reward_clip, self.reward_clip)
        buf.dones[:, t].copy_(done_t)
        buf.truncated[:, t].copy_(truncated_t)
        if self.bootstrap_truncation and truncations.any():
            self._bootstrap_truncated(t, truncations, new_state)
        if self.policy.use_lstm:
            done = done_t.unsqueeze(1).bool()  # as is on the CPU; from float staging on CUDA
            new_state[0].masked_fill_(done, 0.0)
            new_state[1].masked_fill_(done, 0.0)
            self.state = new_state

    def _bootstrap_truncated(self, t: int, truncations: np.ndarray, state: tuple) -> None:
        """A truncated episode is not terminal: its last reward gains gamma * V(final obs),
        valued with the agent's state before the reset."""
        rows = np.flatnonzero(truncations)
        idx = torch.from_numpy(rows).to(self.device)
        final_obs = torch.from_numpy(self.env.final_observations[rows]).to(self.device)
        sub_state = (state[0][idx], state[1][idx])
        with self._autocast():
            value = self.policy.value(final_obs, sub_state).float()
        self.buffer.rewards[idx, t] += self.gamma * value
