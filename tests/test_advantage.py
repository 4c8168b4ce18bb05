"""Advantage estimators against plain-Python references."""

import numpy as np
import pytest
import torch

from shoal.train.advantage import gae, vtrace_advantages


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
