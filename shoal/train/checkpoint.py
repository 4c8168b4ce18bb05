"""Checkpoints, final weights, and the `Agent` that acts from saved weights (`shoal eval`)."""

from __future__ import annotations

import importlib.metadata
import pickle
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
# The layout of checkpoint.pt and model.pt. Raise it when a change makes new files unreadable
# by an older Shoal; files without the key were written before it existed and are format 1.
FORMAT = 2
# The oldest format this Shoal still reads (load_file and learner_state translate older keys).
OLDEST_FORMAT = 1
REQUIRED_KEYS = ("model", "config", "observation_space", "action_space")
# The space the observation rows were flattened from (an image Box, a Dict), which decides the
# policy's encoder; only in files whose policy had one that differs from the rows' flat Box.
# Files without it rebuild the policy from the flat Box, as the Shoal that wrote them did.
STRUCTURED_KEY = "structured_observation_space"


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one this Shoal can read: the message says why."""


def shoal_version() -> str:
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
    if isinstance(space, gymnasium.spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(space.shape)}
    if isinstance(space, gymnasium.spaces.Dict):
        # A list of pairs: rebuilt in this order, which is the order of the flat row.
        return {"type": "Dict", "spaces": [[key, describe_space(sub)] for key, sub in space.spaces.items()]}
    if isinstance(space, gymnasium.spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe_space(sub) for sub in space.spaces]}
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
    if kind == "MultiBinary":
        return gymnasium.spaces.MultiBinary(data["shape"])
    if kind == "Dict":
        return gymnasium.spaces.Dict([(key, build_space(sub)) for key, sub in data["spaces"]])
    if kind == "Tuple":
        return gymnasium.spaces.Tuple([build_space(sub) for sub in data["spaces"]])
    raise ValueError(f"unknown space type {kind!r} in checkpoint")


def model_payload(
    policy: Policy, cfg: Config, obs_space: gymnasium.Space, act_space: gymnasium.Space
) -> dict:
    payload = {
        "format": FORMAT,
        "shoal_version": shoal_version(),
        "model": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "config": cfg.to_dict(),
        "observation_space": describe_space(obs_space),
        "action_space": describe_space(act_space),
    }
    structured = getattr(policy, "structured_space", obs_space)
    if structured != obs_space:
        payload[STRUCTURED_KEY] = describe_space(structured)
    return payload


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
    """A checkpoint.pt or model.pt, its weights named as the current policy names them.

    Raises CheckpointError for a file that is not a Shoal checkpoint (random bytes, empty,
    truncated, another program's file) or one written by a Shoal that this one cannot read.
    """
    data = _torch_load(Path(path))
    if not isinstance(data, dict) or not all(key in data for key in REQUIRED_KEYS):
        missing = ", ".join(k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data)
        raise CheckpointError(f"{path} is not a Shoal checkpoint (it has no {missing})")
    check_format(path, data)
    data["model"] = {
        ("aux_head." + k[len(LEGACY_HEAD_PREFIX) :] if k.startswith(LEGACY_HEAD_PREFIX) else k): v
        for k, v in data["model"].items()
    }
    return data


# What torch.load raises for a file that is no checkpoint: its weights-only unpickler fails on
# arbitrary bytes with any of these (IndexError: "pop from empty list", a stack it never filled).
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError)
UNREADABLE += (IndexError, KeyError)


def _torch_load(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except UNREADABLE as e:
        # torch's own messages run to many lines, with advice (weights_only=False) that does not apply.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        if isinstance(e, EOFError) or path.stat().st_size == 0:
            reason = "the file is empty or cut short"
        elif isinstance(e, pickle.UnpicklingError):
            reason = "it is not a file torch.save wrote, or it holds more than tensors and plain data"
        raise CheckpointError(f"{path} is not a Shoal checkpoint (torch cannot read it: {reason})") from None


def written_by(data: dict[str, Any]) -> str:
    """Which Shoal wrote a checkpoint, for messages: its version, or its format when it has none."""
    version = data.get("shoal_version")
    format_ = data.get("format", 1)
    known = isinstance(version, str) and version != "unknown"
    who = f"Shoal {version}" if known else "Shoal version not recorded"
    return f"{who}, checkpoint format {format_}"


def check_format(path: str | Path, data: dict[str, Any]) -> None:
    """Refuse a checkpoint whose format this Shoal does not read, naming who wrote it."""
    format_ = data.get("format", 1)
    if not isinstance(format_, int) or isinstance(format_, bool):
        raise CheckpointError(f"{path} is not a Shoal checkpoint (its format is {format_!r})")
    if format_ > FORMAT:
        raise CheckpointError(
            f"{path} was written by a newer Shoal ({written_by(data)}); this is Shoal {shoal_version()}, "
            f"which reads checkpoint formats {OLDEST_FORMAT} to {FORMAT}: upgrade Shoal to load it"
        )
    if format_ < OLDEST_FORMAT:
        raise CheckpointError(
            f"{path} was written by an older Shoal ({written_by(data)}); this is Shoal {shoal_version()}, "
            f"which reads checkpoint formats {OLDEST_FORMAT} to {FORMAT}"
        )


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
    try:
        config = from_dict(data["config"])
        obs_space = build_space(data["observation_space"])
        act_space = build_space(data["action_space"])
        structured = build_space(data[STRUCTURED_KEY]) if STRUCTURED_KEY in data else None
        aux_head = make_estimator(config.train, config.policy.hidden_size).aux_head
        policy = make_policy(obs_space, act_space, config.policy, aux_head, structured)
        policy.load_state_dict(data["model"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        # A config or weights this Shoal cannot rebuild: most likely another version wrote them.
        reason = " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__
        raise CheckpointError(
            f"{file} ({written_by(data)}) does not fit this Shoal {shoal_version()}: {reason}"
        ) from None
    return Agent(policy, config, obs_space, act_space, device)
