"""Checkpoints, final weights, and the `Agent` that acts from saved weights (`shoal eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from shoal.core.config import Config, from_dict
from shoal.core.fileio import write_atomic
from shoal.policy import Policy, make_policy, sample_actions
from shoal.train.advantage import make_estimator

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
# Files written before the policy's auxiliary head had its name keep it under this one.
LEGACY_HEAD_PREFIX = "horizon."


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write `obj` to a temp file in the same folder, then rename it over `path`."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


# ---- spaces as plain data (so checkpoints load with weights_only=True) ----


def describe_space(space: gymnasium.Space) -> dict[str, Any]:
    if isinstance(space, gymnasium.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in np.asarray(space.nvec).reshape(-1)]}
    if isinstance(space, gymnasium.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": np.asarray(space.low, dtype=np.float64).reshape(-1).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).reshape(-1).tolist(),
        }
    raise TypeError(f"cannot describe space {space!r}")


def build_space(data: dict[str, Any]) -> gymnasium.Space:
    kind = data["type"]
    if kind == "Discrete":
        return gymnasium.spaces.Discrete(data["n"])
    if kind == "MultiDiscrete":
        return gymnasium.spaces.MultiDiscrete(data["nvec"])
    if kind == "Box":
        shape = tuple(data["shape"])
        dtype = np.dtype(data["dtype"])
        low = np.asarray(data["low"]).reshape(shape).astype(dtype)
        high = np.asarray(data["high"]).reshape(shape).astype(dtype)
        return gymnasium.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    raise ValueError(f"unknown space type {kind!r} in checkpoint")


def model_payload(
    policy: Policy, cfg: Config, obs_space: gymnasium.Space, act_space: gymnasium.Space
) -> dict:
    return {
        "model": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "config": cfg.to_dict(),
        "observation_space": describe_space(obs_space),
        "action_space": describe_space(act_space),
    }


def resolve_checkpoint(path: str | Path, prefer: str = CHECKPOINT) -> Path:
    """A run folder -> its `prefer` file (or the other one); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, CHECKPOINT if prefer == MODEL else MODEL):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"run folder {path} has neither {MODEL} nor {CHECKPOINT}")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a run folder or a .pt file)")
    return path


def load_file(path: str | Path) -> dict:
    """A checkpoint.pt or model.pt, its weights named as the current policy names them."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "model" not in data or "config" not in data:
        raise ValueError(f"{path} is not a Shoal checkpoint (expected a dict with 'model' and 'config')")
    data["model"] = {
        ("aux_head." + k[len(LEGACY_HEAD_PREFIX) :] if k.startswith(LEGACY_HEAD_PREFIX) else k): v
        for k, v in data["model"].items()
    }
    return data


def learner_state(data: dict[str, Any]) -> dict[str, Any]:
    """The learner's state in a checkpoint, also in one written before it had a "learner" key
    (the update count and the adaptive horizon were kept at the top level then)."""
    if "learner" in data:
        return data["learner"]
    estimator = {} if data.get("horizon") is None else {"horizon": int(data["horizon"])}
    return {"update": int(data["update"]), "estimator": estimator}


# ---- acting from saved weights ----


class Agent:
    """A trained policy that acts on batches of observations and keeps its recurrent state.

    ``act(obs)`` takes ``[num_agents, obs_size]`` observations and returns actions in the
    env's format (int32 ``[N]`` for Discrete, ``[N, dims]`` for MultiDiscrete, float32
    ``[N, dims]`` clipped to the bounds for Box). Call ``reset(done_mask)`` after each env step
    so agents whose episode ended start the next one with a fresh state.
    """

    def __init__(
        self,
        policy: Policy,
        config: Config,
        observation_space: gymnasium.Space,
        action_space: gymnasium.Space,
        device: str | torch.device = "cpu",
    ) -> None:
        self.policy = policy.to(device).eval()
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()  # the state tensors come from act(), so they are inference tensors
    def reset(self, done_mask: np.ndarray | None = None) -> None:
        """Clear the recurrent state of agents where `done_mask` is True (all when None)."""
        if self._state is None:
            return
        if done_mask is None:
            self._state = None
            return
        mask = torch.as_tensor(np.asarray(done_mask, dtype=bool), device=self.device)
        if mask.shape[0] != self._state[0].shape[0]:
            raise ValueError(
                f"done_mask has {mask.shape[0]} rows, the agent tracks {self._state[0].shape[0]}"
            )
        for s in self._state:
            s.masked_fill_(mask.unsqueeze(1), 0.0)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim != 2 or obs.shape[1] != self.policy.obs_size:
            raise ValueError(
                f"act expects observations of shape [num_agents, {self.policy.obs_size}], got {obs.shape}"
            )
        n = obs.shape[0]
        if self._state is None or self._state[0].shape[0] != n:
            self._state = self.policy.initial_state(n, self.device)
        logits, _, self._state = self.policy.step(torch.as_tensor(obs, device=self.device), self._state)
        actions, _ = sample_actions(self.policy, logits, deterministic=deterministic)
        space = self.action_space
        if isinstance(space, gymnasium.spaces.Box):
            low = np.asarray(space.low, dtype=np.float32).reshape(-1)
            high = np.asarray(space.high, dtype=np.float32).reshape(-1)
            return np.clip(actions.float().cpu().numpy(), low, high)
        out = actions.cpu().numpy().astype(np.int32)
        return out[:, 0] if isinstance(space, gymnasium.spaces.Discrete) else out


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> Agent:
    """An Agent from a run folder, model.pt or checkpoint.pt."""
    file = resolve_checkpoint(path, prefer=MODEL)
    data = load_file(file)
    config = from_dict(data["config"])
    obs_space = build_space(data["observation_space"])
    act_space = build_space(data["action_space"])
    aux_head = make_estimator(config.train, config.policy.hidden_size).aux_head
    policy = make_policy(obs_space, act_space, config.policy, aux_head)
    try:
        policy.load_state_dict(data["model"])
    except RuntimeError as e:
        raise ValueError(f"weights in {file} do not fit the policy its config describes: {e}") from None
    return Agent(policy, config, obs_space, act_space, device)
