"""Advantage estimators against plain-Python references, and the estimator interface the
learner uses (both estimators through the same Learner)."""

import math

import gymnasium
import numpy as np
import pytest
import torch

from shoal.core.config import ConfigError, load_config
from shoal.policy import Policy
from shoal.train.advantage import GAEEstimator, explained_variance, gae, make_estimator, vtrace_advantages
from shoal.train.horizon import HorizonEstimator, HorizonHead
from shoal.train.learner import Learner
from shoal.train.optim import make_optimizer
from shoal.train.rollout import RolloutBuffer


def random_rollout(agents=3, steps=17, seed=0, done_p=0.15):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(agents, steps, generator=g)
    rewards = torch.randn(agents, steps, generator=g)
    dones = (torch.rand(agents, steps, generator=g) < done_p).float()
    next_value = torch.randn(agents, generator=g)
    ratio = torch.exp(0.5 * torch.randn(agents, steps, generator=g))
    return values, rewards, dones, next_value, ratio


def gae_reference(values, rewards, dones, next_value, gamma, lam):
    values, rewards, dones, next_value = (x.double().numpy() for x in (values, rewards, dones, next_value))
    agents, steps = values.shape
    out = np.zeros((agents, steps))
    for a in range(agents):
        running = 0.0
        for t in reversed(range(steps)):
            nxt = next_value[a] if t == steps - 1 else values[a, t + 1]
            nonterminal = 1.0 - dones[a, t]
            delta = rewards[a, t] + gamma * nxt * nonterminal - values[a, t]
            running = delta + gamma * lam * nonterminal * running
            out[a, t] = running
    return out


def vtrace_reference(values, rewards, dones, next_value, ratio, gamma, rho_clip, c_clip):
    """v_s - V(x_s) = sum_{t>=s} gamma^(t-s) (prod_{s<=i<t} c_i) rho_t delta_t, within an episode
    (the definition of Espeholt et al., 2018), summed term by term."""
    values, rewards, dones, next_value, ratio = (
        x.double().numpy() for x in (values, rewards, dones, next_value, ratio)
    )
    agents, steps = values.shape
    out = np.zeros((agents, steps))
    for a in range(agents):
        for s in range(steps):
            total, trace = 0.0, 1.0
            for t in range(s, steps):
                nxt = next_value[a] if t == steps - 1 else values[a, t + 1]
                rho = min(ratio[a, t], rho_clip)
                delta = rewards[a, t] + gamma * nxt * (1 - dones[a, t]) - values[a, t]
                total += gamma ** (t - s) * trace * rho * delta
                if dones[a, t]:
                    break
                trace *= min(ratio[a, t], c_clip)
            out[a, s] = total
    return out


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.98, 0.8)])
def test_gae_matches_python_loop(gamma, lam):
    values, rewards, dones, next_value, _ = random_rollout()
    got = gae(values, rewards, dones, next_value, gamma, lam)
    np.testing.assert_allclose(
        got.numpy(), gae_reference(values, rewards, dones, next_value, gamma, lam), rtol=1e-5, atol=1e-5
    )


def test_gae_lambda_zero_is_one_step_td_error():
    values, rewards, dones, next_value, _ = random_rollout(seed=3)
    got = gae(values, rewards, dones, next_value, 0.9, 0.0)
    nxt = torch.cat([values[:, 1:], next_value[:, None]], 1)
    expected = rewards + 0.9 * nxt * (1 - dones) - values
    torch.testing.assert_close(got, expected)


def test_no_credit_crosses_an_episode_end():
    values, rewards, dones, next_value, _ = random_rollout(agents=1, steps=10, seed=1, done_p=0.0)
    dones[0, 4] = 1.0
    before = gae(values, rewards, dones, next_value, 0.99, 0.95)
    rewards[0, 5:] += 100.0
    next_value += 50.0
    after = gae(values, rewards, dones, next_value, 0.99, 0.95)
    torch.testing.assert_close(before[0, :5], after[0, :5])
    assert not torch.allclose(before[0, 5:], after[0, 5:])


def test_vtrace_on_policy_equals_gae():
    values, rewards, dones, next_value, _ = random_rollout(seed=2)
    ones = torch.ones_like(values)
    for lam in (0.95, 1.0):
        got = vtrace_advantages(values, rewards, dones, next_value, ones, 0.97, lam, 1.0, 1.0)
        torch.testing.assert_close(got, gae(values, rewards, dones, next_value, 0.97, lam))
    # Clips above 1 do nothing on-policy.
    got = vtrace_advantages(values, rewards, dones, next_value, ones, 0.97, 0.9, 2.0, 3.0)
    torch.testing.assert_close(got, gae(values, rewards, dones, next_value, 0.97, 0.9))


@pytest.mark.parametrize("rho_clip,c_clip", [(1.0, 1.0), (0.79, 2.88), (100.0, 100.0)])
def test_vtrace_lambda_one_matches_definition(rho_clip, c_clip):
    values, rewards, dones, next_value, ratio = random_rollout(seed=4)
    got = vtrace_advantages(values, rewards, dones, next_value, ratio, 0.95, 1.0, rho_clip, c_clip)
    expected = vtrace_reference(values, rewards, dones, next_value, ratio, 0.95, rho_clip, c_clip)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_vtrace_clipping_caps_large_ratios():
    values, rewards, dones, next_value, _ = random_rollout(seed=5)
    big = torch.full_like(values, 5.0)
    capped = vtrace_advantages(values, rewards, dones, next_value, big, 0.99, 0.9, 1.0, 1.0)
    torch.testing.assert_close(capped, gae(values, rewards, dones, next_value, 0.99, 0.9))
    # A ratio below the clip is used as is: halving every ratio with lambda 0 halves the TD errors.
    half = torch.full_like(values, 0.5)
    got = vtrace_advantages(values, rewards, dones, next_value, half, 0.99, 0.0, 1.0, 1.0)
    torch.testing.assert_close(got, 0.5 * gae(values, rewards, dones, next_value, 0.99, 0.0))


# ---- the estimator interface ----


def train_cfg(*flags):
    cfg = load_config("cartpole", list(flags)).train
    cfg.batch_size, cfg.bptt_horizon, cfg.minibatch_size, cfg.max_minibatch_size = 256, 8, 64, 32
    cfg.update_epochs = 2
    cfg.min_horizon, cfg.max_horizon, cfg.horizon_margin = 4, 16, 4
    return cfg


def filled_buffer(seed=0, agents=4, steps=64, horizon=8, hidden=16):
    buf = RolloutBuffer(agents, steps, horizon, 4, np.float32, 1, False, hidden, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    buf.obs.copy_(torch.randn(buf.obs.shape, generator=g))
    buf.actions.copy_(torch.randint(0, 2, buf.actions.shape, generator=g))
    buf.rewards.copy_(torch.randn(buf.rewards.shape, generator=g))
    done = torch.rand(buf.dones.shape, generator=g) < 0.1
    buf.dones.copy_(done.float())
    buf.truncated.copy_((done & (torch.rand(buf.dones.shape, generator=g) < 0.5)).float())
    buf.log_probs.fill_(math.log(0.5))
    buf.values.copy_(torch.randn(buf.values.shape, generator=g))
    buf.next_value.copy_(torch.randn(buf.next_value.shape, generator=g))
    return buf


def learner_for(cfg, estimator, buf, seed=0):
    torch.manual_seed(seed)
    space = gymnasium.spaces.Box(-1, 1, (4,), np.float32)
    policy = Policy(space, gymnasium.spaces.Discrete(2), 16, lstm=True, aux_head=estimator.aux_head)
    return Learner(policy, make_optimizer(policy, cfg), buf, cfg, estimator, 10)


def test_make_estimator_chooses_by_config():
    gae_est = make_estimator(train_cfg(), 16)
    assert isinstance(gae_est, GAEEstimator)
    assert gae_est.aux_head is None and gae_est.bootstrap_truncation and not gae_est.uses_ratios
    horizon = make_estimator(train_cfg("--train.advantage", "adaptive_horizon", "--train.vtrace", "true"), 16)
    assert isinstance(horizon, HorizonEstimator)
    assert isinstance(horizon.aux_head, HorizonHead) and horizon.aux_head.max_lags == 16
    assert not horizon.bootstrap_truncation and horizon.uses_ratios and horizon.value_coef == 0.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train.gamma", "1.5"], "train.gamma"),
        (["--train.gae-lambda", "-0.1"], "train.gae_lambda"),
        (["--train.vtrace", "true", "--train.vtrace-rho-clip", "0"], "vtrace_rho_clip"),
        (["--train.vtrace", "true", "--train.vtrace-c-clip", "-1"], "vtrace_c_clip"),
        (["--train.advantage", "adaptive_horizon", "--train.gamma", "2"], "train.gamma"),
    ],
)
def test_estimator_config_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        make_estimator(load_config("cartpole", flags).train, 16)


def test_unknown_estimator_name_is_a_config_error():
    cfg = train_cfg()
    cfg.advantage = "td"  # set past the config's own check, as code could
    with pytest.raises(ConfigError, match="train.advantage"):
        make_estimator(cfg, 16)


@pytest.mark.parametrize("vtrace", [False, True])
def test_gae_estimator_targets_follow_the_buffer_ratios(vtrace):
    cfg = train_cfg("--train.vtrace", str(vtrace).lower(), "--train.vtrace-c-clip", "0.8")
    buf = filled_buffer()

    def expected():
        if not vtrace:
            return gae(buf.values, buf.rewards, buf.dones, buf.next_value, cfg.gamma, cfg.gae_lambda)
        return vtrace_advantages(
            buf.values, buf.rewards, buf.dones, buf.next_value, buf.ratio, cfg.gamma, cfg.gae_lambda, 1.0, 0.8
        )

    est = make_estimator(cfg, 16)
    advantages, returns = est.prepare(buf, forward=None)
    torch.testing.assert_close(advantages, expected())
    torch.testing.assert_close(returns, expected() + buf.values)
    assert est.stats() == {"explained_variance": explained_variance(buf.values, returns)}
    buf.ratio.copy_(torch.rand(buf.ratio.shape, generator=torch.Generator().manual_seed(1)) * 2)
    refreshed, refreshed_returns = est.refresh()
    torch.testing.assert_close(refreshed, expected())
    torch.testing.assert_close(refreshed_returns, expected() + buf.values)
    assert vtrace == (not torch.equal(refreshed, advantages))


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(torch.zeros(4), returns) == 0.0
    assert math.isnan(explained_variance(returns, torch.ones(4)))


@pytest.mark.parametrize("advantage", ["gae", "adaptive_horizon"])
@pytest.mark.parametrize("extra", [[], ["--train.vtrace", "true", "--train.prio-alpha", "0.5"]])
def test_both_estimators_train_through_the_same_learner(advantage, extra):
    cfg = train_cfg("--train.advantage", advantage, *extra)
    est = make_estimator(cfg, 16)
    buf = filled_buffer()
    learner = learner_for(cfg, est, buf)
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    stats = learner.learn()
    assert list(stats)[:1] == ["explained_variance"]
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"} <= set(stats)
    assert ("horizon" in stats) == (advantage == "adaptive_horizon")
    assert all(math.isfinite(v) for k, v in stats.items() if k != "explained_variance")
    assert learner.update == cfg.update_epochs * 4
    after = learner.policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # GAE trains the scalar critic; the adaptive horizon trains its own head instead.
    assert ("critic.weight" in changed) == (advantage == "gae")
    assert ("aux_head.weight" in changed) == (advantage == "adaptive_horizon")
    assert "actor.weight" in changed
    # Ratios are recorded only when the estimator reads them.
    assert bool((buf.ratio != 1).any()) == est.uses_ratios


def test_the_learner_needs_the_policy_to_hold_the_estimators_head():
    cfg = train_cfg("--train.advantage", "adaptive_horizon")
    space = gymnasium.spaces.Box(-1, 1, (4,), np.float32)
    policy = Policy(space, gymnasium.spaces.Discrete(2), 16, lstm=True)
    with pytest.raises(ValueError, match="estimator's head"):
        Learner(policy, make_optimizer(policy, cfg), filled_buffer(), cfg, make_estimator(cfg, 16), 10)


def test_learner_state_dict_holds_the_update_count_and_the_estimator_state():
    cfg = train_cfg("--train.advantage", "adaptive_horizon")
    learner = learner_for(cfg, make_estimator(cfg, 16), filled_buffer())
    learner.learn()
    state = learner.state_dict()
    assert state == {
        "update": learner.update,
        "kl_factor": 1.0,
        "estimator": {"horizon": learner.estimator.horizon},
    }
    fresh = learner_for(cfg, make_estimator(cfg, 16), filled_buffer())
    # A checkpoint from before train.target_kl has no kl_factor: the schedule's rate, as then.
    fresh.load_state_dict({"update": 5, "estimator": {"horizon": 7}})
    assert fresh.update == 5 and fresh.estimator.horizon == 7 and fresh.kl_factor == 1.0
    gae_cfg = train_cfg()
    gae_learner = learner_for(gae_cfg, make_estimator(gae_cfg, 16), filled_buffer())
    assert gae_learner.state_dict() == {"update": 0, "kl_factor": 1.0, "estimator": {}}
    gae_learner.load_state_dict({"update": 3})
    assert gae_learner.update == 3


def test_learner_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        cfg = train_cfg("--train.advantage", "adaptive_horizon", "--train.prio-alpha", "0.5")
        torch.manual_seed(0)  # the head's init draws from it
        learner = learner_for(cfg, make_estimator(cfg, 16), filled_buffer())
        torch.manual_seed(3)
        stats = [learner.learn() for _ in range(2)]
        runs.append((stats, torch.cat([p.detach().flatten() for p in learner.policy.parameters()])))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
