"""The adaptive-horizon advantage (shoal/train/horizon.py) against hand-written references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from shoal.core.config import ConfigError, load_config
from shoal.train import train
from shoal.train.advantage import make_estimator
from shoal.train.horizon import (
    MIN_STD,
    HorizonHead,
    bootstrap_tail,
    choose_horizon,
    gaussian_nll,
    horizon_advantages,
    lag_targets,
    split_head,
)
from tests.test_advantage import filled_buffer
from tests.test_trainer import assert_same_metrics, config


def reference_targets(rewards, dones, truncated, lags):
    """A step-by-step walk over each (t, k): what the reward k steps after step t is known to be."""
    agents, steps = rewards.shape
    targets = np.zeros((agents, steps, lags), np.float32)
    valid = np.zeros((agents, steps, lags), bool)
    for a in range(agents):
        for t in range(steps):
            for k in range(lags):
                status = "open"
                for j in range(t, t + k):
                    if j >= steps:
                        status = "unknown"
                        break
                    if dones[a, j]:
                        status = "truncated" if truncated[a, j] else "terminal"
                        break
                if status == "terminal":
                    valid[a, t, k] = True
                elif status == "open" and t + k < steps:
                    targets[a, t, k] = rewards[a, t + k]
                    valid[a, t, k] = True
    return targets, valid


def random_stream(agents=3, steps=24, seed=0, p_done=0.15):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(agents, steps)).astype(np.float32)
    dones = rng.random((agents, steps)) < p_done
    truncated = dones & (rng.random((agents, steps)) < 0.4)
    return rewards, dones, truncated


def as_tensors(*arrays):
    return [torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in arrays]


def test_lag_targets_hand_example():
    # One agent: rewards 1..6, a terminal at step 1, a truncation at step 3.
    rewards = np.array([[1, 2, 3, 4, 5, 6]], np.float32)
    dones = np.array([[0, 1, 0, 1, 0, 0]], np.float32)
    truncated = np.array([[0, 0, 0, 1, 0, 0]], np.float32)
    targets, valid = lag_targets(*as_tensors(rewards, dones, truncated), lags=3)
    # Step 0: r0, r1, then the episode has ended (terminal): a known 0.
    assert targets[0, 0].tolist() == [1, 2, 0] and valid[0, 0].tolist() == [True, True, True]
    # Step 1 is the terminal step: its own reward, then zeros.
    assert targets[0, 1].tolist() == [2, 0, 0] and valid[0, 1].all()
    # Step 2: r2, r3, then a truncation: unknown.
    assert targets[0, 2].tolist()[:2] == [3, 4] and valid[0, 2].tolist() == [True, True, False]
    # Step 4: r4, r5, then past the rollout: unknown.
    assert targets[0, 4].tolist()[:2] == [5, 6] and valid[0, 4].tolist() == [True, True, False]
    assert valid[0, 5].tolist() == [True, False, False]


@pytest.mark.parametrize("seed", range(4))
def test_lag_targets_match_the_step_by_step_reference(seed):
    rewards, dones, truncated = random_stream(seed=seed)
    targets, valid = lag_targets(*as_tensors(rewards, dones, truncated), lags=10)
    ref_targets, ref_valid = reference_targets(rewards, dones, truncated, 10)
    np.testing.assert_array_equal(valid.numpy(), ref_valid)
    np.testing.assert_allclose(targets.numpy() * ref_valid, ref_targets, rtol=0, atol=0)


def test_rewards_never_leak_across_episode_ends():
    rewards, dones, truncated = random_stream(agents=4, steps=40, seed=5, p_done=0.1)
    lags = 16
    r, d, tr = as_tensors(rewards, dones, truncated)
    targets, valid = lag_targets(r, d, tr, lags)
    mean = torch.randn(4, 40, lags)
    weights = torch.rand(lags)
    adv = horizon_advantages(targets, valid, mean, weights, 0.97, lags)
    # Change every reward after each agent's first episode end: nothing of the first episode moves.
    changed = r.clone()
    for a in range(4):
        ends = np.flatnonzero(dones[a])
        if len(ends):
            changed[a, ends[0] + 1 :] += 100.0
    targets2, valid2 = lag_targets(changed, d, tr, lags)
    adv2 = horizon_advantages(targets2, valid2, mean, weights, 0.97, lags)
    for a in range(4):
        ends = np.flatnonzero(dones[a])
        first = ends[0] + 1 if len(ends) else 40
        assert torch.equal(targets[a, :first], targets2[a, :first])
        assert torch.equal(valid[a, :first], valid2[a, :first])
        assert torch.equal(adv[a, :first], adv2[a, :first])


def test_perfect_critic_gives_zero_advantage():
    # Deterministic rewards: a critic that predicts every known lag exactly leaves no surprise.
    rewards, dones, truncated = random_stream(agents=3, steps=30, seed=2)
    targets, valid = lag_targets(*as_tensors(rewards, dones, truncated), lags=12)
    adv = horizon_advantages(targets, valid, targets.clone(), torch.ones(12), 0.99, 12)
    assert adv.abs().max() == 0
    ratio = torch.rand(3, 30) * 2
    adv = horizon_advantages(targets, valid, targets.clone(), torch.ones(12), 0.99, 12, ratio, 1.0, 1.0)
    assert adv.abs().max() == 0


def test_advantage_matches_a_direct_sum_with_vtrace_clips():
    rewards, dones, truncated = random_stream(agents=2, steps=20, seed=3)
    lags, horizon, gamma, rho_clip, c_clip = 8, 6, 0.9, 0.8, 1.2
    targets, valid = lag_targets(*as_tensors(rewards, dones, truncated), lags)
    mean = torch.randn(2, 20, lags)
    weights = torch.rand(lags)
    ratio = torch.rand(2, 20) * 2
    got = horizon_advantages(targets, valid, mean, weights, gamma, horizon, ratio, rho_clip, c_clip)
    plain = horizon_advantages(targets, valid, mean, weights, gamma, horizon)
    for a in range(2):
        for t in range(20):
            expected, expected_plain, trace = 0.0, 0.0, 1.0
            for k in range(horizon):
                if k > 0:
                    trace *= min(c_clip, float(ratio[a, t + k])) if t + k < 20 else 1.0
                if valid[a, t, k]:
                    surprise = float(targets[a, t, k] - mean[a, t, k])
                    expected += gamma**k * float(weights[k]) * trace * surprise
                    expected_plain += gamma**k * float(weights[k]) * surprise
            expected *= min(rho_clip, float(ratio[a, t]))
            assert math.isclose(float(got[a, t]), expected, rel_tol=1e-5, abs_tol=1e-5)
            assert math.isclose(float(plain[a, t]), expected_plain, rel_tol=1e-5, abs_tol=1e-5)


def test_choose_horizon_stops_at_the_first_noisy_lag():
    agents, steps, lags = 4, 200, 32
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(agents, steps, lags, generator=gen)
    valid = torch.ones(agents, steps, lags, dtype=torch.bool)
    std = torch.full((agents, steps, lags), 0.3)
    std[..., 11:] = 1.0  # lags from 11 on: no better than the unconditioned spread (~1)
    stats = choose_horizon(std, torch.zeros_like(targets), targets, valid, 4, lags, trained_lags=lags)
    assert stats.horizon == 11
    # Precision share 1 / (1 + sigma_hat^2 / sigma_bar^2): 1 / 1.09 where predicted, 1/2 at noise.
    assert torch.allclose(stats.weights[:11], torch.tensor(1 / 1.09), atol=0.02)
    assert torch.allclose(stats.weights[11:], torch.tensor(0.5), atol=0.03)
    # Never below the minimum, and only trained lags can end it.
    assert choose_horizon(std, torch.zeros_like(targets), targets, valid, 16, lags, lags).horizon == 16
    assert choose_horizon(std, torch.zeros_like(targets), targets, valid, 4, lags, 8).horizon == 8


@pytest.mark.parametrize("predictable", [4, 9])
def test_horizon_settles_at_the_predictable_lags_of_a_synthetic_stream(predictable):
    """Rewards are iid +-1; the observation shows the next `predictable` of them. A critic trained
    by the Gaussian likelihood predicts those lags and nothing after: the horizon lands there."""
    torch.manual_seed(0)
    lags, agents, steps = 24, 16, 128
    head = nn.Sequential(nn.Linear(predictable, 64), nn.Tanh(), nn.Linear(64, 2 * lags))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    no_end = torch.zeros(agents, steps)

    def stream():
        rewards = torch.randint(0, 2, (agents, steps + predictable)).float() * 2 - 1
        obs = rewards.unfold(1, predictable, 1)[:, :steps]  # obs_t = r_t .. r_{t+p-1}
        return rewards[:, :steps], obs

    for _ in range(400):
        rewards, obs = stream()
        targets, valid = lag_targets(rewards, no_end, no_end, lags)
        mean, std = split_head(head(obs))
        loss = gaussian_nll(mean, std, targets, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rewards, obs = stream()
    targets, valid = lag_targets(rewards, no_end, no_end, lags)
    with torch.no_grad():
        mean, std = split_head(head(obs))
    stats = choose_horizon(std, mean, targets, valid, 1, lags, trained_lags=lags)
    assert stats.horizon == predictable
    assert (stats.predicted_std[:predictable] < 0.2).all()
    assert stats.explained > 0.9


def test_gaussian_nll_ignores_invalid_entries_and_split_head_floors_the_std():
    mean, std = split_head(torch.tensor([[0.0, -50.0]]))
    assert float(std) >= MIN_STD * (1 - 1e-6)
    targets = torch.tensor([[1.0, 123.0]])
    m, s = torch.zeros(1, 2), torch.ones(1, 2)
    valid = torch.tensor([[True, False]])
    assert math.isclose(float(gaussian_nll(m, s, targets, valid)), 0.5)
    # A mean over every valid (step, lag) entry.
    both = torch.ones(2, 2, dtype=torch.bool)
    assert math.isclose(float(gaussian_nll(torch.zeros(2, 2), torch.ones(2, 2), torch.ones(2, 2), both)), 0.5)
    # beta-NLL: each term times the detached variance; the mean's gradient is then a squared error's.
    s2 = torch.full((1, 2), 2.0)
    plain = 0.5 / 4 + math.log(2)
    assert math.isclose(float(gaussian_nll(m, s2, targets, valid)), 4 * plain, rel_tol=1e-6)
    assert math.isclose(float(gaussian_nll(m, s2, targets, valid, beta=0)), plain, rel_tol=1e-6)
    mean = torch.zeros(1, 2, requires_grad=True)
    gaussian_nll(mean, s2, targets, valid).backward()
    assert math.isclose(float(mean.grad[0, 0]), -1.0)


def test_adaptive_horizon_trains_and_resumes_exactly(tmp_path):
    flags = [
        "--train.advantage", "adaptive_horizon",
        "--train.min-horizon", "4",
        "--train.max-horizon", "32",
        "--train.horizon-margin", "4",
        "--train.deterministic", "true",
        "--policy.lstm", "true",
        "--train.checkpoint-interval", "2",
        "--train.total-steps", "1536",
        "--train.vtrace", "true",
        "--train.prio-alpha", "0.5",
    ]
    whole = train(config(tmp_path, "cartpole", *flags, name="whole"))
    horizons = [m["horizon"] for m in whole.history]
    assert all(4 <= h <= 32 for h in horizons)
    assert all(math.isfinite(m["value_loss"]) for m in whole.history)
    first = train(config(tmp_path, "cartpole", *flags, name="split"), on_epoch=lambda m: m["epoch"] < 2)
    rest = train(config(tmp_path, "cartpole", *flags, "--run.resume", str(first.run_dir), name="x"))
    assert_same_metrics(whole.history, rest.history)


def test_adaptive_horizon_learns_memory(tmp_path):
    cfg = config(
        tmp_path, "memory",
        "--train.advantage", "adaptive_horizon",
        "--train.min-horizon", "4",
        "--train.max-horizon", "16",
        "--env.options.length", "3",
        "--env.options.num_symbols", "2",
        "--env.num-envs", "32",
        "--train.batch-size", "1024",
        "--train.minibatch-size", "256",
        "--train.total-steps", "16384",
        "--policy.hidden-size", "32",
        "--train.learning-rate", "3e-3",
        "--train.lr-schedule", "constant",
        "--train.update-epochs", "2",
        "--train.gamma", "0.9",
    )
    assert train(cfg).metrics["score_100"] > 0.9


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train.min-horizon", "0"], "min_horizon"),
        (["--train.min-horizon", "40", "--train.max-horizon", "32"], "min_horizon"),
        (["--train.horizon-margin", "-1"], "horizon_margin"),
    ],
)
def test_adaptive_horizon_config_errors(tmp_path, flags, message):
    cfg = config(tmp_path, "cartpole", "--train.advantage", "adaptive_horizon", *flags)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train.min-horizon", "0"], "min_horizon"),
        (["--train.min-horizon", "40", "--train.max-horizon", "32"], "min_horizon"),
        (["--train.horizon-margin", "-1"], "horizon_margin"),
    ],
)
def test_the_estimator_checks_its_own_keys(flags, message):
    cfg = load_config("cartpole", ["--train.advantage", "adaptive_horizon", *flags]).train
    with pytest.raises(ConfigError, match=message):
        make_estimator(cfg, 16)
    # The same keys mean nothing to GAE.
    cfg.advantage = "gae"
    make_estimator(cfg, 16)


def test_unknown_advantage_is_a_config_error():
    with pytest.raises(ConfigError, match="advantage"):
        load_config("cartpole", ["--train.advantage", "td"])


def test_bootstrap_tail_fills_lags_past_the_rollout_from_the_last_state():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    dones = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    targets, valid = lag_targets(rewards, dones, torch.zeros_like(dones), lags=3)
    last_mean = torch.tensor([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    filled, known = bootstrap_tail(targets, valid, dones, last_mean)
    # Agent 0, step 3 (the last): lags 1 and 2 are mu_1 and mu_2 of the last state.
    assert filled[0, 3].tolist() == [4.0, 11.0, 12.0] and known[0, 3].all()
    # Step 2: r2, r3, then mu_1(s_3).
    assert filled[0, 2].tolist() == [3.0, 4.0, 11.0]
    # Agent 1 ended at step 1 (terminal): step 0's later lags stay known zeros, nothing bootstrapped.
    assert filled[1, 0].tolist() == [1.0, 1.0, 0.0]
    # Its second episode is still running at the end: bootstrapped like agent 0.
    assert filled[1, 3].tolist() == [1.0, 21.0, 22.0]
    # The critic's own loss targets are untouched.
    assert not valid[0, 3, 1:].any()


def test_horizon_head_computes_only_the_first_lags_and_starts_small():
    torch.manual_seed(0)
    head = HorizonHead(8, 5)
    assert torch.equal(head.bias, torch.zeros(10))
    # Orthogonal with gain 0.01: the 10 x 8 weight has orthogonal columns of norm 0.01.
    torch.testing.assert_close(head.weight.T @ head.weight, 1e-4 * torch.eye(8), rtol=0, atol=1e-9)
    with torch.no_grad():
        head.bias.copy_(torch.randn(10))
    features = torch.randn(3, 4, 8)
    full = head(features, 5)
    assert full.shape == (3, 4, 10)
    torch.testing.assert_close(full, features @ head.weight.T + head.bias)
    part = head(features, 2)
    # Means of lags 0-1, then their std parameters.
    torch.testing.assert_close(part, torch.cat([full[..., :2], full[..., 5:7]], dim=-1))
    for lags in (0, 6):
        with pytest.raises(ValueError, match="lags"):
            head(features, lags)
    with pytest.raises(ValueError):
        HorizonHead(8, 0)


def horizon_estimator(*flags):
    base = ["--train.advantage", "adaptive_horizon", "--train.min-horizon", "4"]
    return make_estimator(load_config("cartpole", [*base, "--train.horizon-margin", "4", *flags]).train, 16)


def stub_forward(buf, calls):
    """The learner's buffer pass, with zero features (so the head predicts its bias)."""

    @torch.no_grad()
    def forward(head):
        out = head(torch.zeros(buf.num_segments, buf.horizon, 16))
        calls.append(out.shape[-1] // 2)
        return [out[: buf.num_segments // 2], out[buf.num_segments // 2 :]]

    return forward


def test_horizon_estimator_warns_once_and_caps_the_lags_at_the_rollout(capsys):
    est = horizon_estimator("--train.max-horizon", "100")
    buf = filled_buffer(steps=64)
    calls = []
    for _ in range(2):
        advantages, returns = est.prepare(buf, stub_forward(buf, calls))
        assert advantages.shape == (4, 64) and returns is buf.values
    assert capsys.readouterr().err.count("train.max_horizon (100) is more than the rollout's 64 steps") == 1
    assert est.lags == 64
    # The first prediction covers the starting horizon plus its margin.
    assert calls[0] == 4 + 4
    assert 4 <= est.horizon <= 64 and est.trained == min(64, est.horizon + 4)


def test_a_restored_horizon_sets_the_first_update_lags():
    est = horizon_estimator("--train.max-horizon", "32")
    est.load_state_dict({"horizon": 12})
    buf = filled_buffer(steps=64)
    calls = []
    est.prepare(buf, stub_forward(buf, calls))
    assert calls == [12 + 4]
    assert est.state_dict() == {"horizon": est.horizon}
    # A checkpoint of a GAE run has no horizon to restore.
    est.load_state_dict({})
    assert est.state_dict() == {"horizon": est.horizon}
