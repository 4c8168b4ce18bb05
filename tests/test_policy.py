"""Policy: LSTM training path vs rollout path, resets, spaces, distributions, the auxiliary head,
float32 heads under bfloat16 autocast."""

import functools

import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shoal.core.config import PolicyConfig
from shoal.policy import Policy, evaluate_actions, make_policy, sample_actions
from shoal.train.rollout import Collector, RolloutBuffer

BOX = gymnasium.spaces.Box(-1.0, 1.0, (5,), np.float32)


def make(action_space=None, lstm=True, hidden=16, layers=2, obs_space=BOX, seed=0, aux_head=None):
    torch.manual_seed(seed)
    return Policy(
        obs_space, action_space or gymnasium.spaces.Discrete(3), hidden, lstm=lstm, num_layers=layers,
        aux_head=aux_head,
    )


def test_manual_lstm_equals_torch_lstm():
    policy = make()
    x = torch.randn(4, 9, 16)
    starts = torch.zeros(4, 9)
    ours = policy._lstm_sequence(x, starts, None)
    torch_lstm = torch.nn.LSTM(16, 16)
    torch_lstm.load_state_dict(policy.lstm.state_dict())
    reference, _ = torch_lstm(x.transpose(0, 1))
    torch.testing.assert_close(ours, reference.transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_resets_inside_a_segment_equal_separate_sequences():
    policy = make()
    lengths = [3, 5, 2]
    pieces = [torch.randn(1, n, 5) for n in lengths]
    joined = torch.cat(pieces, dim=1)
    starts = torch.zeros(1, sum(lengths))
    starts[0, 3] = starts[0, 8] = 1.0
    initial = (torch.randn(1, 16), torch.randn(1, 16))
    logits, values = policy.forward_sequence(joined, starts, initial)
    at = 0
    for i, piece in enumerate(pieces):
        # The first piece continues the given state; later ones start from zeros.
        state = initial if i == 0 else None
        ref_logits, ref_values = policy.forward_sequence(piece, torch.zeros(1, piece.shape[1]), state)
        n = piece.shape[1]
        torch.testing.assert_close(logits[:, at : at + n], ref_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values[:, at : at + n], ref_values, rtol=1e-5, atol=1e-6)
        at += n


def test_rollout_steps_equal_training_forward():
    policy = make()
    obs = torch.randn(3, 7, 5)
    starts = (torch.rand(3, 7) < 0.3).float()
    starts[:, 0] = 0
    state0 = (torch.randn(3, 16), torch.randn(3, 16))
    logits, values = policy.forward_sequence(obs, starts, state0)
    state = state0
    for t in range(7):
        keep = (1 - starts[:, t]).unsqueeze(1)
        state = (state[0] * keep, state[1] * keep)
        step_logits, step_values, state = policy.step(obs[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(step_values, values[:, t], rtol=1e-5, atol=1e-6)


def test_mlp_policy_has_no_state_and_ignores_starts():
    policy = make(lstm=False)
    obs = torch.randn(2, 4, 5)
    a, _ = policy.forward_sequence(obs, torch.zeros(2, 4))
    b, _ = policy.forward_sequence(obs, torch.ones(2, 4))
    torch.testing.assert_close(a, b)
    assert policy.initial_state(3)[0].shape == (3, 0)


def test_uint8_observations_are_scaled():
    u8 = gymnasium.spaces.Box(0, 255, (5,), np.uint8)
    p8 = make(lstm=False, obs_space=u8)
    pf = make(lstm=False)
    pf.load_state_dict(p8.state_dict())
    raw = torch.randint(0, 256, (4, 5), dtype=torch.uint8)
    a = p8.step(raw, p8.initial_state(4))[0]
    b = pf.step(raw.float() / 255.0, pf.initial_state(4))[0]
    torch.testing.assert_close(a, b)


def test_discrete_log_probs_and_entropy_match_torch_distributions():
    policy = make(lstm=False)
    logits = torch.randn(6, 3)
    actions, log_prob = sample_actions(policy, logits)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(log_prob, dist.log_prob(actions[:, 0]))
    lp, ent = evaluate_actions(policy, logits, actions)
    torch.testing.assert_close(lp, log_prob)
    torch.testing.assert_close(ent, dist.entropy())
    greedy, _ = sample_actions(policy, logits, deterministic=True)
    assert torch.equal(greedy[:, 0], logits.argmax(-1))


def test_multidiscrete_is_a_product_of_categoricals():
    policy = make(gymnasium.spaces.MultiDiscrete([2, 4, 3]), lstm=False)
    assert policy.actor.out_features == 9
    logits = torch.randn(5, 9)
    actions, log_prob = sample_actions(policy, logits)
    assert actions.shape == (5, 3)
    expected_lp, expected_ent = 0.0, 0.0
    for d, part in enumerate(logits.split([2, 4, 3], dim=-1)):
        dist = torch.distributions.Categorical(logits=part)
        expected_lp = expected_lp + dist.log_prob(actions[:, d])
        expected_ent = expected_ent + dist.entropy()
    torch.testing.assert_close(log_prob, expected_lp)
    lp, ent = evaluate_actions(policy, logits, actions)
    torch.testing.assert_close(lp, expected_lp)
    torch.testing.assert_close(ent, expected_ent)


def test_box_actions_are_gaussian_with_state_independent_log_std():
    policy = make(gymnasium.spaces.Box(-2.0, 2.0, (2,), np.float32), lstm=False)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([0.3, -0.5]))
    mean = torch.randn(4, 2)
    actions, log_prob = sample_actions(policy, mean)
    dist = torch.distributions.Normal(mean, policy.log_std.exp())
    torch.testing.assert_close(log_prob, dist.log_prob(actions).sum(-1))
    lp, ent = evaluate_actions(policy, mean, actions)
    torch.testing.assert_close(lp, log_prob)
    torch.testing.assert_close(ent, dist.entropy().sum(-1))


def test_parameter_groups_name_the_roles():
    groups = make(layers=3).parameter_groups()
    names = {role: [n for n, _ in params] for role, params in groups.items()}
    assert names["input"] == ["encoder.input.weight"]
    assert set(names["hidden"]) == {
        "encoder.hidden.0.weight",
        "encoder.hidden.1.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
    }
    assert set(names["output"]) == {"actor.weight", "critic.weight"}
    assert all(p.ndim == 1 for _, p in groups["other"])


@pytest.mark.parametrize("lstm", [False, True])
def test_features_are_what_the_heads_read(lstm):
    policy = make(lstm=lstm)
    obs = torch.randn(3, 6, 5)
    starts = (torch.rand(3, 6) < 0.3).float()
    state = (torch.randn(3, 16), torch.randn(3, 16)) if lstm else None
    logits, values = policy.forward_sequence(obs, starts, state)
    f_logits, f_values, features = policy.forward_sequence(obs, starts, state, features=True)
    assert features.shape == (3, 6, 16)
    assert torch.equal(f_logits, logits) and torch.equal(f_values, values)
    torch.testing.assert_close(policy.actor(features), logits)
    torch.testing.assert_close(policy.critic(features).squeeze(-1), values)
    # Gradients flow from the features into the encoder (and the LSTM).
    features.square().sum().backward()
    assert policy.encoder.input.weight.grad.abs().sum() > 0


def test_aux_head_is_part_of_the_policy_but_not_of_its_init():
    head = nn.Linear(16, 6)
    policy = make(aux_head=head, action_space=gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32))
    assert policy.aux_head is head
    # Saved, trained and grouped with the heads.
    assert {"aux_head.weight", "aux_head.bias"} <= set(policy.state_dict())
    assert any(p is head.weight for p in policy.parameters())
    groups = {role: [n for n, _ in params] for role, params in policy.parameter_groups().items()}
    assert "aux_head.weight" in groups["output"] and "aux_head.bias" in groups["other"]
    # Last in the parameter order, after the critic (optimizer state and checkpoints).
    names = [n for n, _ in policy.named_parameters()]
    assert names[-4:] == ["critic.weight", "critic.bias", "aux_head.weight", "aux_head.bias"]
    # Built outside: the policy neither re-initializes it nor draws random numbers for it, so
    # the other weights are those of the same seed without an auxiliary head.
    before = head.weight.detach().clone()
    again = make(aux_head=head, action_space=gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32))
    assert torch.equal(again.aux_head.weight.detach(), before)
    plain = make(action_space=gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32))
    plain_state = plain.state_dict()
    assert plain.aux_head is None and not any(k.startswith("aux_head.") for k in plain_state)
    for name, value in policy.state_dict().items():
        if not name.startswith("aux_head."):
            assert torch.equal(value, plain_state[name]), name


def test_make_policy_passes_the_aux_head_on():
    cfg = PolicyConfig(hidden_size=16, num_layers=1, lstm=False)
    head = nn.Linear(16, 4)
    assert make_policy(BOX, gymnasium.spaces.Discrete(3), cfg, aux_head=head).aux_head is head
    assert make_policy(BOX, gymnasium.spaces.Discrete(3), cfg).aux_head is None


def test_unsupported_spaces_are_rejected():
    with pytest.raises(TypeError, match="Discrete, MultiDiscrete and Box"):
        make(gymnasium.spaces.Text(5))
    with pytest.raises(ValueError, match="num_layers"):
        make(layers=0)


def test_obs_norm_statistics_match_all_observations_seen():
    torch.manual_seed(0)
    policy = Policy(BOX, gymnasium.spaces.Discrete(3), 16, lstm=False, obs_norm=True)
    obs = torch.randn(2, 50, BOX.shape[0]) * torch.linspace(0.1, 5.0, BOX.shape[0]) + 3.0
    policy.update_obs_stats(obs[0])
    policy.update_obs_stats(obs[1])
    var, mean = torch.var_mean(obs.reshape(-1, BOX.shape[0]), dim=0, correction=0)
    assert torch.allclose(policy.encoder.obs_mean, mean, atol=1e-5)
    assert torch.allclose(policy.encoder.obs_var, var, rtol=1e-4)
    assert {"encoder.obs_mean", "encoder.obs_var", "encoder.obs_count"} <= set(policy.state_dict())


def test_obs_norm_standardizes_and_clips_the_encoder_input():
    policy = Policy(BOX, gymnasium.spaces.Discrete(3), 16, lstm=False, obs_norm=True)
    # A feature that barely varies (like a brick flag) next to one that varies widely.
    obs = torch.zeros(1000, BOX.shape[0])
    obs[:, 0] = torch.linspace(-100.0, 100.0, 1000)
    obs[:999, 1] = 1.0
    policy.update_obs_stats(obs)
    seen = []
    policy.encoder.input.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    policy.step(obs, policy.initial_state(1000))
    x = seen[0]
    assert x[:, 0].std().item() == pytest.approx(1.0, rel=0.05)
    assert x[:, 1].abs().max().item() == pytest.approx(5.0)  # the rare 0 flag is clipped, not 30


def test_obs_norm_off_leaves_observations_alone():
    policy = Policy(BOX, gymnasium.spaces.Discrete(3), 16, lstm=False)
    policy.update_obs_stats(torch.randn(10, BOX.shape[0]))
    assert not any(name.startswith("encoder.obs_") for name in policy.state_dict())


def test_compiled_policy_equals_eager():
    # train.compile compiles these two methods; the results must be eager's within float
    # tolerance, gradients included (the LSTM's weights must not break the graph either).
    policy = make(hidden=8, layers=1)
    obs = torch.randn(3, 4, 5)
    starts = torch.zeros(3, 4)
    starts[1, 2] = 1.0
    state = (torch.randn(3, 8), torch.randn(3, 8))
    compiled_forward = torch.compile(policy.forward_sequence, fullgraph=True)
    compiled_step = torch.compile(policy.step, fullgraph=True)
    results = []
    for forward, step in ((policy.forward_sequence, policy.step), (compiled_forward, compiled_step)):
        policy.zero_grad()
        logits, values = forward(obs, starts, state)
        (logits.square().mean() + values.mean()).backward()
        grads = [p.grad.clone() for p in policy.parameters()]
        with torch.no_grad():
            step_out = step(obs[:, 0], state)
        results.append((logits, values, grads, step_out))
    (e_logits, e_values, e_grads, e_step), (c_logits, c_values, c_grads, c_step) = results
    torch.testing.assert_close(c_logits, e_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_values, e_values, rtol=1e-5, atol=1e-6)
    for compiled_grad, eager_grad in zip(c_grads, e_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
    for compiled_out, eager_out in zip(c_step[:2], e_step[:2], strict=True):
        torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-6)
    # The features an auxiliary head reads come out of the same graph.
    with torch.no_grad():
        eager_features = policy.forward_sequence(obs, starts, state, features=True)[2]
        compiled_features = compiled_forward(obs, starts, state, features=True)[2]
    torch.testing.assert_close(compiled_features, eager_features, rtol=1e-5, atol=1e-6)


# ---- float32 heads under bfloat16 autocast (train.precision = bfloat16) ----

CPU = torch.device("cpu")
BF16 = functools.partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16)


def large_head_policy(lstm: bool) -> Policy:
    """Values near 100, where bfloat16's spacing is 0.5, and logits a few units apart: bfloat16
    rounding of either is far above float32's."""
    policy = make(lstm=lstm)
    with torch.no_grad():
        policy.critic.bias.fill_(100.0)
        nn.init.orthogonal_(policy.actor.weight, 5.0)
    return policy


def record_features(policy: Policy) -> list[torch.Tensor]:
    """The features each call of the heads reads (the actor and the critic read the same)."""
    seen = []
    policy.critic.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    return seen


def float32_head(layer: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return F.linear(features.float(), layer.weight, layer.bias)


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 rounding only: bfloat16 rounding would be 0.1-0.25 at 100, 1e-2 on a log-prob.
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-5)


class TruncatingEnv:
    """Three agents; agent 0's episode is truncated at step 2, with a known final observation."""

    num_agents = 3
    single_observation_space = BOX
    single_action_space = gymnasium.spaces.Discrete(3)

    def __init__(self) -> None:
        self.t = 0
        self.final_observations = np.zeros((3, 5), np.float32)

    def obs(self) -> np.ndarray:
        return np.sin(np.arange(15, dtype=np.float32) + self.t).reshape(3, 5)

    def step(self, actions):
        self.t += 1
        truncations = np.array([self.t == 3, False, False])
        if truncations[0]:
            self.final_observations[0] = 0.5
        return self.obs(), np.ones(3, np.float32), np.zeros(3, bool), truncations, []


@pytest.mark.parametrize("lstm", [False, True])
def test_rollout_stores_float32_head_outputs_under_bfloat16(lstm):
    # The stored values, log-probabilities, truncation bootstrap and next value are the float32
    # heads' outputs on the features the policy computed under autocast.
    policy = large_head_policy(lstm)
    seen = record_features(policy)
    env = TruncatingEnv()
    buf = RolloutBuffer(3, 4, 4, 5, np.float32, 1, False, 16, CPU)
    Collector(env, policy, buf, CPU, gamma=0.9, autocast=BF16).collect(env.obs())
    calls = iter(seen)
    for t in range(4):
        features = next(calls)
        assert_float32_close(buf.values[:, t], float32_head(policy.critic, features).squeeze(-1))
        log_p = torch.log_softmax(float32_head(policy.actor, features), dim=-1)
        assert_float32_close(buf.log_probs[:, t], log_p.gather(-1, buf.actions[:, t]).squeeze(-1))
        if t == 2:
            final_value = float32_head(policy.critic, next(calls)).squeeze(-1)
            assert_float32_close(buf.rewards[0, t], 1.0 + 0.9 * final_value[0])
    assert_float32_close(buf.next_value, float32_head(policy.critic, next(calls)).squeeze(-1))


@pytest.mark.parametrize("lstm", [False, True])
def test_training_forward_heads_are_float32_under_bfloat16(lstm):
    policy = large_head_policy(lstm)
    seen = record_features(policy)
    obs = torch.randn(3, 6, 5)
    starts = (torch.rand(3, 6) < 0.3).float()
    state = (torch.randn(3, 16), torch.randn(3, 16)) if lstm else None
    with BF16():
        logits, values = policy.forward_sequence(obs, starts, state)
    assert_float32_close(values, float32_head(policy.critic, seen[0]).view(3, 6))
    assert_float32_close(logits, float32_head(policy.actor, seen[0]).view(3, 6, 3))
    # The encoder still learns through the float32 heads.
    (values.sum() + logits.square().sum()).backward()
    assert policy.encoder.input.weight.grad.abs().sum() > 0


def test_compiled_policy_heads_are_float32_under_bfloat16():
    # train.compile with train.precision = bfloat16: the compiled graphs keep the heads in float32.
    policy = large_head_policy(lstm=True)
    obs = torch.randn(3, 4, 5)
    starts = torch.zeros(3, 4)
    state = (torch.randn(3, 16), torch.randn(3, 16))
    compiled_forward = torch.compile(policy.forward_sequence, fullgraph=True)
    compiled_step = torch.compile(policy.step, fullgraph=True)
    with torch.no_grad(), BF16():
        logits, values, features = compiled_forward(obs, starts, state, features=True)
        step_logits, step_value, (h, _) = compiled_step(obs[:, 0], state)
    assert_float32_close(values, float32_head(policy.critic, features).squeeze(-1))
    assert_float32_close(logits, float32_head(policy.actor, features))
    # With an LSTM the step's features are its new hidden state.
    assert_float32_close(step_value, float32_head(policy.critic, h).squeeze(-1))
    assert_float32_close(step_logits, float32_head(policy.actor, h))


def test_uint8_observations_are_scaled_by_their_bounds_to_unit_range():
    from shoal.policy import uint8_scale

    grid = gymnasium.spaces.Box(0, 4, (121,), np.uint8)
    pixels = gymnasium.spaces.Box(0, 255, (84, 84, 1), np.uint8)
    floats = gymnasium.spaces.Box(-1.0, 1.0, (8,), np.float32)
    assert uint8_scale(grid) == 0.25
    assert uint8_scale(pixels) == 1.0 / 255.0
    assert uint8_scale(floats) == 1.0
    policy = Policy(grid, gymnasium.spaces.Discrete(4), hidden_size=8, lstm=False)
    assert policy.encoder.obs_scale == 0.25
