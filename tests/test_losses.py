"""PPO loss terms on hand-made inputs."""

import math

import pytest
import torch

from shoal.train.losses import normalize_advantages, ppo_loss


def terms_for(ratios, advantages, clip=0.2, new_v=None, old_v=None, returns=None, vf_clip=0.0):
    ratios = torch.tensor(ratios, dtype=torch.float64)
    old = torch.zeros_like(ratios)
    new = ratios.log().clone().requires_grad_(True)
    n = len(ratios)
    new_v = torch.zeros(n, dtype=torch.float64) if new_v is None else torch.tensor(new_v, dtype=torch.float64)
    old_v = torch.zeros(n, dtype=torch.float64) if old_v is None else torch.tensor(old_v, dtype=torch.float64)
    returns = (
        torch.zeros(n, dtype=torch.float64) if returns is None else torch.tensor(returns, dtype=torch.float64)
    )
    adv = torch.tensor(advantages, dtype=torch.float64)
    terms = ppo_loss(
        new, old, adv, new_v, old_v, returns, torch.zeros(n, dtype=torch.float64), clip, vf_clip, 0.5, 0.0
    )
    return terms, new


def test_policy_loss_clipping_by_hand():
    # ratio 0.5, A=+1: min(0.5, 0.8) = 0.5 -> loss -0.5
    # ratio 1.5, A=+1: min(1.5, 1.2) = 1.2 -> loss -1.2
    # ratio 0.5, A=-1: min(-0.5, -0.8) = -0.8 -> loss 0.8
    # ratio 1.5, A=-1: min(-1.5, -1.2) = -1.5 -> loss 1.5
    terms, _ = terms_for([0.5, 1.5, 0.5, 1.5], [1.0, 1.0, -1.0, -1.0])
    assert terms.policy_loss.item() == pytest.approx((-0.5 - 1.2 + 0.8 + 1.5) / 4)
    assert terms.clip_fraction.item() == pytest.approx(1.0)
    terms, _ = terms_for([1.1, 0.9, 1.5, 1.0], [1.0, 1.0, 1.0, 1.0])
    assert terms.clip_fraction.item() == pytest.approx(0.25)


def test_clipped_samples_get_no_gradient():
    terms, new = terms_for([1.5, 1.1, 0.5, 0.9], [1.0, 1.0, -1.0, -1.0])
    terms.policy_loss.backward()
    grad = new.grad
    # Outside the clip range in the direction the advantage pushes: zero gradient.
    assert grad[0].item() == 0.0 and grad[2].item() == 0.0
    # Inside: d(-A r)/d log r / n = -A r / n.
    assert grad[1].item() == pytest.approx(-1.1 / 4)
    assert grad[3].item() == pytest.approx(0.9 / 4)


def test_value_loss_clipping_by_hand():
    # new 1, old 0, target 2, clip 0.5: unclipped (1-2)^2 = 1, clipped (0.5-2)^2 = 2.25 -> 2.25
    # new 1, old 0, target 0: unclipped 1, clipped 0.25 -> 1
    terms, _ = terms_for(
        [1.0, 1.0], [0.0, 0.0], new_v=[1.0, 1.0], old_v=[0.0, 0.0], returns=[2.0, 0.0], vf_clip=0.5
    )
    assert terms.value_loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)
    terms, _ = terms_for([1.0, 1.0], [0.0, 0.0], new_v=[1.0, 1.0], old_v=[0.0, 0.0], returns=[2.0, 0.0])
    assert terms.value_loss.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_total_loss_and_kl():
    new = torch.log(torch.tensor([2.0, 0.5]))
    old = torch.zeros(2)
    adv = torch.tensor([1.0, 1.0])
    v = torch.tensor([1.0, 3.0])
    terms = ppo_loss(
        new,
        old,
        adv,
        v,
        v,
        torch.tensor([0.0, 1.0]),
        torch.tensor([0.3, 0.5]),
        clip_coef=10.0,
        vf_clip_coef=0.0,
        vf_coef=0.5,
        ent_coef=0.1,
    )
    policy = -(2.0 + 0.5) / 2
    value = 0.5 * (1.0 + 4.0) / 2
    assert terms.loss.item() == pytest.approx(policy + 0.5 * value - 0.1 * 0.4)
    kl = ((2.0 - 1 - math.log(2.0)) + (0.5 - 1 - math.log(0.5))) / 2
    assert terms.approx_kl.item() == pytest.approx(kl, rel=1e-6)


def test_normalize_advantages():
    adv = torch.tensor([1.0, 2.0, 3.0, 6.0])
    out = normalize_advantages(adv)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)


def test_normalize_advantages_across_processes_uses_the_whole_minibatch():
    # Two processes hold parts a and b of one minibatch; all_sum adds b's moments to a's, as
    # the sum over the ranks would. a's part must come out as in the normalized whole.
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(64, generator=gen) * 3 + 1, torch.randn(40, generator=gen) - 2
    b64 = b.double()
    b_moments = torch.stack([b64.new_tensor(b.numel()), b64.sum(), b64.square().sum()])
    out = normalize_advantages(a, all_sum=lambda moments: moments + b_moments)
    whole = normalize_advantages(torch.cat([a, b]))
    torch.testing.assert_close(out, whole[:64], rtol=1e-5, atol=1e-6)
    # One process: all_sum is the identity and the result is the plain normalization.
    torch.testing.assert_close(normalize_advantages(a, all_sum=lambda m: m), normalize_advantages(a))
