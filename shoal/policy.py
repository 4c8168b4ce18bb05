"""The actor-critic policy: an encoder (MLP, or a CNN for images), optional LSTM core, actor and
critic heads.

Layers are kept in separate, named modules so that a parametrization (muP) can address them:
``encoder.input`` (observation -> hidden), ``encoder.hidden[i]`` and the LSTM (hidden matrices),
``actor`` and ``critic`` (heads). :meth:`Policy.parameter_groups` returns them by role. Image
observations (``policy.encoder``; shoal.encoders) go through a CNN instead of the MLP encoder:
its first convolution is the input layer, the other layers are hidden.

An optional auxiliary head (``aux_head``, built by whoever needs it, e.g. a research advantage
estimator) is held as a submodule so that it is saved, optimized, broadcast and compiled with
the policy; it reads the features that :meth:`Policy.forward_sequence` returns on request, and
counts as a head for muP. The policy knows nothing of what it predicts.

Rollouts call :meth:`Policy.step` with one observation per agent and the agents' recurrent
state; training calls :meth:`Policy.forward_sequence` on segments of ``T`` steps, resetting the
LSTM state wherever an episode starts inside a segment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shoal.core.config import ConfigError, PolicyConfig
from shoal.encoders import VECTOR_WIDTH, ConvEncoder, EncoderChoice, choose_encoder
from shoal.mup import apply_mup

# (count, mean, variance) of a batch -> those of the batch merged with others (data parallel).
StatsCombine = Callable[[int, torch.Tensor, torch.Tensor], tuple[int, torch.Tensor, torch.Tensor]]


@dataclass
class ActionSpec:
    """What the heads must produce for an action space."""

    kind: str  # "discrete" (Discrete and MultiDiscrete) or "continuous" (Box)
    nvec: tuple[int, ...]  # categories per action dimension (discrete)
    dims: int  # action dimensions
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    @property
    def logits_size(self) -> int:
        return sum(self.nvec) if self.kind == "discrete" else self.dims


def action_spec(space: gymnasium.Space) -> ActionSpec:
    if isinstance(space, gymnasium.spaces.Discrete):
        return ActionSpec("discrete", (int(space.n),), 1)
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        nvec = tuple(int(n) for n in np.asarray(space.nvec).reshape(-1))
        return ActionSpec("discrete", nvec, len(nvec))
    if isinstance(space, gymnasium.spaces.Box):
        dims = int(np.prod(space.shape))
        return ActionSpec("continuous", (), dims, space.low.reshape(-1), space.high.reshape(-1))
    raise TypeError(
        f"the policy supports Discrete, MultiDiscrete and Box action spaces, got {type(space).__name__}"
    )


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh; on CPU as 2 sigmoid(2x) - 1, which is several times faster there than torch.tanh
    (equal to within 2e-7). On GPUs, where each extra kernel costs a launch, plain tanh."""
    if x.is_cuda:
        return torch.tanh(x)
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": fast_tanh}


OBS_NORM_CLIP = 5.0
OBS_NORM_EPS = 1e-2


def uint8_scale(space: gymnasium.spaces.Box) -> float:
    """The factor that brings uint8 observations (pixels, grids) to [0, 1], so activations are
    O(1): 1 / the space's largest bound (255 for pixels, 4 for a grid of 5 cell codes); 1 for
    other dtypes."""
    if space.dtype != np.uint8:
        return 1.0
    high = float(np.max(space.high)) if space.high.size else 255.0
    return 1.0 / high if 0.0 < high <= 255.0 else 1.0 / 255.0


class Encoder(nn.Module):
    """Observation -> features: ``input`` layer then ``num_layers - 1`` hidden layers.

    With ``obs_norm`` each observation feature is standardized with running statistics (see
    :meth:`update_obs_stats`) and clipped to +-OBS_NORM_CLIP. Why: Adam and Muon move each
    input weight by about the learning rate per step, so a feature that must be read to a
    small fraction of its range (Breakout's ball and paddle x, next to 108 brick flags that
    are nearly always 1) takes thousands of updates to matter; standardized features do not.
    """

    # Names (relative to this module) of the layers that read observations: muP's input role.
    input_prefixes = ("input.",)

    def __init__(
        self,
        obs_size: int,
        hidden_size: int,
        num_layers: int,
        obs_scale: float,
        activation: str = "gelu",
        obs_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"policy.num_layers must be at least 1, got {num_layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"policy.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        self.obs_scale = obs_scale
        self.obs_norm = obs_norm
        if obs_norm:
            # Buffers, so that checkpoints and load_agent carry the statistics.
            self.register_buffer("obs_mean", torch.zeros(obs_size))
            self.register_buffer("obs_var", torch.ones(obs_size))
            self.register_buffer("obs_count", torch.zeros((), dtype=torch.float64))
        self.input = nn.Linear(obs_size, hidden_size)
        self.hidden = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers - 1))

    def init_weights(self) -> None:
        for layer in [self.input, *self.hidden]:
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(self.input.weight.dtype)
        if self.obs_scale != 1.0:
            x = x * self.obs_scale
        if self.obs_norm:
            x = (x - self.obs_mean) * torch.rsqrt(self.obs_var + OBS_NORM_EPS)
            x = x.clamp(-OBS_NORM_CLIP, OBS_NORM_CLIP)
        x = self.activation(self.input(x))
        for layer in self.hidden:
            x = self.activation(layer(x))
        return x

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor, combine: StatsCombine | None = None) -> None:
        """Merge a batch of observations ``[..., obs_size]`` into the running mean and variance
        (Chan et al.'s parallel update, so every observation seen weighs the same).

        `combine` maps this batch's (count, mean, variance) to those of a larger batch: data-
        parallel ranks pass one that merges all ranks' batches, so their statistics stay equal.
        """
        if not self.obs_norm:
            return
        x = obs.reshape(-1, obs.shape[-1]).float()
        if self.obs_scale != 1.0:
            x = x * self.obs_scale
        n = x.shape[0]
        batch_var, batch_mean = torch.var_mean(x, dim=0, correction=0)
        if combine is not None:
            # Every rank takes part, also one with an empty batch.
            n, batch_mean, batch_var = combine(n, batch_mean, batch_var)
        if n == 0:
            return
        count = float(self.obs_count)
        total = count + n
        delta = batch_mean - self.obs_mean
        if count == 0:
            mean, var = batch_mean, batch_var
        else:
            mean = self.obs_mean + delta * (n / total)
            var = (self.obs_var * count + batch_var * n + delta.pow(2) * (count * n / total)) / total
        self.obs_mean.copy_(mean)
        self.obs_var.copy_(var)
        self.obs_count.fill_(total)


class LSTMWeights(nn.Module):
    """The parameters of a one-layer LSTM, named and ordered as in ``torch.nn.LSTM``
    (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``), so checkpoints and
    optimizer states are the same as with ``nn.LSTM``. The policy computes the cell itself
    (:meth:`Policy._cell`, :meth:`Policy._lstm_sequence`); why not keep ``nn.LSTM``: reading its
    weights breaks a torch.compile graph, and the compiled hand-written cell trains faster on a
    CPU than ``nn.LSTM`` does."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        # nn.LSTM's own initialization, so that a seed draws the same numbers as it did with it.
        bound = 1.0 / math.sqrt(hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)


class Policy(nn.Module):
    """Actor-critic network for flat observation rows and a Discrete/MultiDiscrete/Box action."""

    def __init__(
        self,
        observation_space: gymnasium.spaces.Box,
        action_space: gymnasium.Space,
        hidden_size: int = 128,
        lstm: bool = True,
        num_layers: int = 1,
        activation: str = "gelu",
        obs_norm: bool = False,
        aux_head: nn.Module | None = None,
        encoder: str = "auto",
        structured_space: gymnasium.Space | None = None,
    ) -> None:
        """`aux_head`: an auxiliary head on the features (see the module docstring), already
        initialized; None for none.

        `observation_space` is the Box of the rows the policy reads (flattened to
        ``[N, obs_size]``). `structured_space` is the space they were flattened from
        (shoal.emulation.structured_observation_space: an image Box, a Dict holding one, ...);
        None when it is `observation_space` itself. `encoder` is policy.encoder
        (shoal.encoders.choose_encoder); :attr:`encoder_name` is what it resolved to.
        """
        super().__init__()
        if not isinstance(observation_space, gymnasium.spaces.Box):
            raise TypeError(
                f"the policy expects a Box observation space, got {type(observation_space).__name__}"
            )
        self.obs_size = int(np.prod(observation_space.shape))
        self.structured_space = observation_space if structured_space is None else structured_space
        self.spec = action_spec(action_space)
        self.hidden_size = hidden_size
        self.use_lstm = lstm
        choice = choose_encoder(encoder, self.structured_space, self.obs_size, obs_norm)
        self.encoder_name = choice.name
        if choice.name == "mlp":
            obs_scale = uint8_scale(observation_space)
            self.encoder = Encoder(self.obs_size, hidden_size, num_layers, obs_scale, activation, obs_norm)
        else:
            self.encoder = conv_encoder(choice, observation_space, hidden_size, activation, obs_norm)
        self.lstm = LSTMWeights(hidden_size, hidden_size) if lstm else None
        self.actor = nn.Linear(hidden_size, self.spec.logits_size)
        self.critic = nn.Linear(hidden_size, 1)
        # Registered after the critic, so its parameters come last in the parameter order that
        # optimizer states and checkpoints are indexed by, after every parameter a policy
        # without it has.
        self.aux_head = aux_head
        if self.spec.kind == "continuous":
            self.log_std = nn.Parameter(torch.zeros(self.spec.dims))
        else:
            self.register_parameter("log_std", None)
        self._init_weights()

    def _init_weights(self) -> None:
        self.encoder.init_weights()
        if self.lstm is not None:
            for name, param in self.lstm.named_parameters():
                if "weight" in name:
                    nn.init.orthogonal_(param)
                else:
                    nn.init.zeros_(param)
        # Small actor init keeps the first policy near uniform (high entropy).
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    # ---- parameter roles (optimizers, muP) ----

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by role: "input" (the layers that read observations: the MLP's first
        layer, a CNN's first convolution), "hidden" (hidden matrices and the other convolutions'
        kernels), "output" (heads, the auxiliary head's matrices included), "other" (biases and
        log-std)."""
        inputs = tuple(f"encoder.{prefix}" for prefix in self.encoder.input_prefixes)
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            "input": [],
            "hidden": [],
            "output": [],
            "other": [],
        }
        for name, param in self.named_parameters():
            if param.ndim < 2:
                groups["other"].append((name, param))
            elif name.startswith(inputs):
                groups["input"].append((name, param))
            elif name.startswith(("actor.", "critic.", "aux_head.")):
                groups["output"].append((name, param))
            else:
                groups["hidden"].append((name, param))
        return groups

    # ---- recurrent state ----

    def initial_state(
        self, batch: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (h, c) for `batch` agents; empty tensors when the policy has no LSTM."""
        size = self.hidden_size if self.use_lstm else 0
        return (torch.zeros(batch, size, device=device), torch.zeros(batch, size, device=device))

    def _cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One LSTM step with the weights of self.lstm, computed exactly as in _lstm_sequence so
        # that rollout and training agree.
        lstm = self.lstm
        gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
        return _lstm_update(gates + F.linear(h.to(gates.dtype), lstm.weight_hh_l0), c)

    # ---- forward passes ----

    def step(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step for a batch of agents: (logits or mean, value [B], new state)."""
        x = self.encoder(obs)
        if self.use_lstm:
            h, c = self._cell(x, *state)
            state = (h, c)
            x = h
        logits, value = self._heads(x)
        return logits, value, state

    def forward_sequence(
        self,
        obs: torch.Tensor,
        starts: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        features: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Segments ``obs [B, T, ...]`` -> (logits [B, T, K], values [B, T]).

        ``starts [B, T]`` is 1 where an observation begins a new episode: the LSTM state is
        zeroed before that step. ``state`` is each segment's state before its first step
        (zeros when None); a start flag at t=0 zeroes it too. With ``features`` a third output
        is what the heads read (the encoder's or the LSTM's output), ``[B, T, hidden]``, for
        the auxiliary head.
        """
        batch, horizon = obs.shape[:2]
        x = self.encoder(obs.reshape(batch * horizon, -1))
        if self.use_lstm:
            x = self._lstm_sequence(x.view(batch, horizon, -1), starts, state)
            x = x.reshape(batch * horizon, -1)
        logits, values = self._heads(x)
        logits, values = logits.view(batch, horizon, -1), values.view(batch, horizon)
        if features:
            return logits, values, x.view(batch, horizon, -1)
        return logits, values

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor output, value) of features ``x [N, hidden]``, in float32 also under autocast.

        Why: with gamma near 1 values reach ~100, where bfloat16's spacing (0.25-0.5) is as
        large as a clipped reward, and the stored values feed the advantages, the value loss and
        the truncation bootstrap; the log-probabilities of the actor's output enter the PPO
        ratio. The heads are one small matmul each, so float32 costs little; the encoder and
        the LSTM keep running under autocast.
        """
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return self.actor(x), self.critic(x).squeeze(-1)
        with torch.autocast(device_type, enabled=False):
            x = x.float()
            return self.actor(x), self.critic(x).squeeze(-1)

    def _lstm_sequence(
        self, x: torch.Tensor, starts: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        batch, horizon, hidden = x.shape
        lstm = self.lstm
        if state is None:
            h = x.new_zeros(batch, hidden, dtype=torch.float32)
            c = x.new_zeros(batch, hidden, dtype=torch.float32)
        else:
            h, c = state[0].float(), state[1].float()
        # The input projection of every step is one large matmul; only the recurrent part loops.
        # Time-major so that unbind gives each step's slice and its backward is one stack
        # (indexing [:, t] would materialize a full-size gradient per step).
        gates_x = F.linear(x.transpose(0, 1), lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
        keep = (1.0 - starts.float()).t().unsqueeze(-1).unbind(0)
        w_hh = lstm.weight_hh_l0
        outputs = []
        for t, gates_t in enumerate(gates_x.unbind(0)):
            h = h * keep[t]
            c = c * keep[t]
            h, c = _lstm_update(gates_t + F.linear(h.to(gates_t.dtype), w_hh), c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def update_obs_stats(self, obs: torch.Tensor, combine: StatsCombine | None = None) -> None:
        """Fold a batch of observations into the input normalization (no-op without obs_norm);
        see Encoder.update_obs_stats for `combine`."""
        self.encoder.update_obs_stats(obs, combine)

    def value(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Value of `obs` given the agents' state, without advancing any state."""
        return self.step(obs, state)[1]


def conv_encoder(
    choice: EncoderChoice,
    observation_space: gymnasium.spaces.Box,
    hidden_size: int,
    activation: str,
    obs_norm: bool,
) -> ConvEncoder:
    """The CNN encoder of `choice`, with an MLP encoder for the vector part of a Dict observation
    (standardized by policy.obs_norm; scaled like the MLP's input when the rows are uint8)."""
    assert choice.image is not None
    vector = None
    if choice.vector_columns:
        columns = list(choice.vector_columns)
        low = np.asarray(observation_space.low).reshape(-1)[columns]
        high = np.asarray(observation_space.high).reshape(-1)[columns]
        part = gymnasium.spaces.Box(low, high, dtype=observation_space.dtype)
        vector = Encoder(len(columns), VECTOR_WIDTH, 1, uint8_scale(part), activation, obs_norm)
    return ConvEncoder(choice, hidden_size, uint8_scale(choice.image.space), vector, VECTOR_WIDTH)


def _lstm_update(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The cell state is kept in float32 even under bfloat16 autocast: it integrates over the
    # whole episode and low precision there drifts.
    i, f, g, o = gates.float().chunk(4, dim=1)
    c = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * fast_tanh(g)
    h = torch.sigmoid(o) * fast_tanh(c)
    return h, c


# ---- action distributions (hand-written: torch.distributions' checks cost more than the math) ----


def sample_categorical(log_p: torch.Tensor) -> torch.Tensor:
    """One index per row of log-probabilities ``[B, K]`` -> ``[B, 1]``.

    argmax(p / E) with E ~ Exp(1) draws index k with probability p_k. This is what
    ``torch.multinomial(p, 1)`` computes, without its check of the probabilities, which reads
    them back to the host: that would stall the GPU every step and cannot be captured in a CUDA
    graph (train.cuda_graph).
    """
    probs = log_p.exp()
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)


def sample_actions(
    policy: Policy, logits: torch.Tensor, deterministic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(actions [B, dims], log-probabilities [B]) from head outputs [B, K]."""
    spec = policy.spec
    logits = logits.float()
    if spec.kind == "continuous":
        mean = logits
        actions = mean if deterministic else mean + torch.randn_like(mean) * policy.log_std.float().exp()
        return actions, gaussian_log_prob(policy, mean, actions)
    if len(spec.nvec) == 1:
        log_p = torch.log_softmax(logits, dim=-1)
        actions = log_p.argmax(dim=-1, keepdim=True) if deterministic else sample_categorical(log_p)
        return actions, log_p.gather(-1, actions).squeeze(-1)
    actions_list, log_prob = [], 0.0
    for part in logits.split(spec.nvec, dim=-1):
        log_p = torch.log_softmax(part, dim=-1)
        a = log_p.argmax(dim=-1, keepdim=True) if deterministic else sample_categorical(log_p)
        actions_list.append(a)
        log_prob = log_prob + log_p.gather(-1, a).squeeze(-1)
    return torch.cat(actions_list, dim=-1), log_prob


def gaussian_log_prob(policy: Policy, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    log_std = policy.log_std.float()
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def evaluate_actions(
    policy: Policy, logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, entropies) of `actions [..., dims]` under head outputs [..., K]."""
    spec = policy.spec
    logits = logits.float()
    if spec.kind == "continuous":
        log_prob = gaussian_log_prob(policy, logits, actions)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + policy.log_std.float()).sum().expand_as(log_prob)
        return log_prob, entropy
    log_prob, entropy = 0.0, 0.0
    for d, part in enumerate(logits.split(spec.nvec, dim=-1)):
        log_p = torch.log_softmax(part, dim=-1)
        log_prob = log_prob + log_p.gather(-1, actions[..., d : d + 1].long()).squeeze(-1)
        entropy = entropy - (log_p.exp() * log_p).sum(-1)
    return log_prob, entropy


def resolve_encoder(
    policy_cfg: PolicyConfig,
    observation_space: gymnasium.spaces.Box,
    structured_space: gymnasium.Space | None = None,
) -> EncoderChoice:
    """What policy.encoder resolves to for rows of `observation_space` flattened from
    `structured_space` (None: not flattened); ConfigError when it cannot read them, or when
    another policy key does not go with it."""
    structured = observation_space if structured_space is None else structured_space
    obs_size = int(np.prod(observation_space.shape))
    obs_norm = getattr(policy_cfg, "obs_norm", False)
    choice = choose_encoder(getattr(policy_cfg, "encoder", "auto"), structured, obs_size, obs_norm)
    if choice.name != "mlp" and getattr(policy_cfg, "parametrization", "standard") == "mup":
        raise ConfigError(
            "policy.parametrization = 'mup' is for the MLP encoder (its rules know its input, hidden "
            f"and output matrices), but policy.encoder resolved to {choice.name!r} for image "
            "observations: set policy.parametrization = 'standard', or policy.encoder = 'mlp'"
        )
    return choice


def make_policy(
    observation_space: gymnasium.Space,
    action_space: gymnasium.Space,
    policy_cfg: PolicyConfig,
    aux_head: nn.Module | None = None,
    structured_space: gymnasium.Space | None = None,
) -> Policy:
    """Build the policy a `PolicyConfig` describes, holding `aux_head` (see :class:`Policy`), for
    rows of `observation_space` flattened from `structured_space` (None: not flattened).

    Under muP the auxiliary head is rescaled with the other heads.
    """
    resolve_encoder(policy_cfg, observation_space, structured_space)
    policy = Policy(
        observation_space,
        action_space,
        hidden_size=policy_cfg.hidden_size,
        lstm=policy_cfg.lstm,
        num_layers=policy_cfg.num_layers,
        activation=policy_cfg.activation,
        obs_norm=getattr(policy_cfg, "obs_norm", False),
        aux_head=aux_head,
        encoder=getattr(policy_cfg, "encoder", "auto"),
        structured_space=structured_space,
    )
    if getattr(policy_cfg, "parametrization", "standard") == "mup":
        apply_mup(policy, policy_cfg.base_width)
    return policy
