"""Learning-rate schedules and optimizer construction."""

import math
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch

from shoal.policy import Policy
from shoal.train.optim import KL_MIN_FACTOR, kl_adapted, lr_factor, make_optimizer


def train_cfg(**kw):
    base = dict(
        optimizer="adam",
        learning_rate=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        muon_momentum=0.95,
        muon_adam_lr_ratio=1.0,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def policy():
    torch.manual_seed(0)
    return Policy(
        gymnasium.spaces.Box(-1, 1, (4,), np.float32),
        gymnasium.spaces.Discrete(2),
        8,
        lstm=True,
        num_layers=2,
    )


def test_constant_linear_cosine():
    assert lr_factor(0.7, "constant") == 1.0
    assert lr_factor(0.0, "linear") == 1.0
    assert lr_factor(0.25, "linear") == pytest.approx(0.75)
    assert lr_factor(1.0, "linear", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(0.5, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.5, "cosine", min_lr_ratio=0.2) == pytest.approx(0.6)
    assert lr_factor(1.0, "cosine", min_lr_ratio=0.2) == pytest.approx(0.2)
    assert lr_factor(0.25, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup():
    assert lr_factor(0.0, "cosine", warmup_fraction=0.1) == 0.0
    assert lr_factor(0.05, "cosine", warmup_fraction=0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, "cosine", warmup_fraction=0.1) == pytest.approx(1.0)
    # Decay spans what is left after the warmup.
    assert lr_factor(0.55, "linear", warmup_fraction=0.1) == pytest.approx(0.5)


def test_kl_controller():
    # Above 2x the target: 1.5x smaller; below half of it: 1.5x larger, up to the schedule.
    assert kl_adapted(1.0, 0.05, 0.02) == pytest.approx(1 / 1.5)
    assert kl_adapted(0.5, 0.005, 0.02) == pytest.approx(0.75)
    assert kl_adapted(0.9, 0.005, 0.02) == 1.0
    # Within [target / 2, 2 * target] it holds.
    assert kl_adapted(0.3, 0.02, 0.02) == 0.3
    assert kl_adapted(0.3, 0.039, 0.02) == 0.3
    # A floor, also for a non-finite KL.
    assert kl_adapted(KL_MIN_FACTOR, 1.0, 0.02) == KL_MIN_FACTOR
    assert kl_adapted(1.0, float("nan"), 0.02) == KL_MIN_FACTOR
    with pytest.raises(ValueError, match="target KL must be positive"):
        kl_adapted(1.0, 0.01, 0.0)


def test_schedule_errors():
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        lr_factor(0.1, "step")
    with pytest.raises(ValueError, match="warmup"):
        lr_factor(0.1, "linear", warmup_fraction=1.0)


@pytest.mark.parametrize("name,kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family(name, kind):
    p = policy()
    opt = make_optimizer(p, train_cfg(optimizer=name, weight_decay=0.01, beta1=0.8))
    assert len(opt.optimizers) == 1 and type(opt.optimizers[0]) is kind
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.999) and group["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(p.parameters()))


def test_muon_takes_hidden_matrices_only():
    p = policy()
    opt = make_optimizer(p, train_cfg(optimizer="muon", muon_adam_lr_ratio=0.1))
    muon, adam = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    hidden = {id(param) for _, param in p.parameter_groups()["hidden"]}
    assert {id(q) for q in muon.param_groups[0]["params"]} == hidden
    assert all(id(q) not in hidden for q in adam.param_groups[0]["params"])
    assert adam.param_groups[0]["lr"] == pytest.approx(1e-3)
    before = [q.detach().clone() for q in p.parameters()]
    obs = torch.randn(4, 4)
    # A non-zero state so that the recurrent matrix gets a gradient too.
    logits, values, _ = p.step(obs, (torch.randn(4, 8), torch.randn(4, 8)))
    (logits.sum() + values.sum()).backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, p.parameters(), strict=True))


def test_set_lr_factor_scales_each_group_from_its_base():
    opt = make_optimizer(policy(), train_cfg(optimizer="muon", muon_adam_lr_ratio=0.5))
    opt.set_lr_factor(0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-3, 2.5e-3])


def test_optimizer_errors():
    with pytest.raises(ValueError, match="'adam', 'adamw' or 'muon'"):
        make_optimizer(policy(), train_cfg(optimizer="sgd"))
    with pytest.raises(ValueError, match="positive"):
        make_optimizer(policy(), train_cfg(learning_rate=0.0))
