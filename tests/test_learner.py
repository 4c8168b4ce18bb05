"""The learner's handling of a minibatch's advantages, against hand-computed values."""

import dataclasses

import gymnasium
import numpy as np
import torch

import shoal.train.learner as learner_module
from shoal.core.config import load_config
from shoal.policy import Policy
from shoal.train.advantage import make_estimator
from shoal.train.learner import Learner
from shoal.train.optim import make_optimizer
from shoal.train.rollout import RolloutBuffer

# Two agents, four steps, segments of two steps: segments 0, 1 are agent 0's, 2, 3 agent 1's.
ADVANTAGES = torch.tensor([[1.0, 1.0, 9.0, 9.0], [1.0, 5.0, 9.0, 9.0]])
SAMPLED = torch.tensor([0, 2])
WEIGHTS = torch.tensor([0.5, 2.0])


def minibatch_advantages(monkeypatch, norm_adv: bool) -> torch.Tensor:
    """The advantages the PPO loss gets for the first minibatch when prioritized sampling draws
    segments 0 and 2 with importance weights 0.5 and 2."""
    cfg = load_config("cartpole", ["--train.prio-alpha", "0.5"]).train
    cfg.batch_size, cfg.bptt_horizon, cfg.minibatch_size, cfg.max_minibatch_size = 8, 2, 4, 4
    cfg.update_epochs, cfg.norm_adv = 1, norm_adv
    buf = RolloutBuffer(2, 4, 2, 4, np.float32, 1, False, 8, torch.device("cpu"))
    estimator = make_estimator(cfg, 8)
    targets = (ADVANTAGES, ADVANTAGES + buf.values)
    monkeypatch.setattr(estimator, "prepare", lambda buffer, forward: targets)
    monkeypatch.setattr(learner_module, "prioritized_sample", lambda *args, **kwargs: (SAMPLED, WEIGHTS))
    seen = []
    real_loss = learner_module.ppo_loss

    def recording_loss(new_log_prob, old_log_prob, advantages, *rest):
        seen.append(advantages.detach().clone())
        return real_loss(new_log_prob, old_log_prob, advantages, *rest)

    monkeypatch.setattr(learner_module, "ppo_loss", recording_loss)
    torch.manual_seed(0)
    policy = Policy(gymnasium.spaces.Box(-1, 1, (4,), np.float32), gymnasium.spaces.Discrete(2), 8)
    Learner(policy, make_optimizer(policy, cfg), buf, cfg, estimator, 10).learn()
    return seen[0]


def test_importance_weights_multiply_the_normalized_advantages(monkeypatch):
    # Sampled segments [1, 1] and [1, 5]: mean 2, std (n - 1) 2, so normalized [-0.5, -0.5] and
    # [-0.5, 1.5]; then the weights 0.5 and 2.
    expected = torch.tensor([[-0.25, -0.25], [-1.0, 3.0]])
    assert torch.allclose(minibatch_advantages(monkeypatch, norm_adv=True), expected, atol=1e-6)


def test_importance_weights_without_normalization(monkeypatch):
    expected = torch.tensor([[0.5, 0.5], [2.0, 10.0]])
    assert torch.equal(minibatch_advantages(monkeypatch, norm_adv=False), expected)


def learning_rates_with_kl(
    monkeypatch, kl: float, target_kl: float, epochs: int = 3
) -> tuple[list[float], Learner]:
    """The learning rate of every optimizer step when each minibatch reports an approx KL of
    `kl` (two minibatches per pass, `epochs` passes, a constant schedule)."""
    cfg = load_config("cartpole", ["--train.target-kl", str(target_kl)]).train
    cfg.batch_size, cfg.bptt_horizon, cfg.minibatch_size, cfg.max_minibatch_size = 8, 2, 4, 4
    cfg.update_epochs, cfg.lr_schedule, cfg.learning_rate = epochs, "constant", 1e-3
    buf = RolloutBuffer(2, 4, 2, 4, np.float32, 1, False, 8, torch.device("cpu"))
    real_loss = learner_module.ppo_loss

    def fixed_kl_loss(*args):
        return dataclasses.replace(real_loss(*args), approx_kl=torch.tensor(kl))

    monkeypatch.setattr(learner_module, "ppo_loss", fixed_kl_loss)
    torch.manual_seed(0)
    policy = Policy(gymnasium.spaces.Box(-1, 1, (4,), np.float32), gymnasium.spaces.Discrete(2), 8)
    optimizers = make_optimizer(policy, cfg)
    rates = []
    real_step = optimizers.step

    def recording_step():
        rates.append(optimizers.param_groups[0]["lr"])
        real_step()

    monkeypatch.setattr(optimizers, "step", recording_step)
    learner = Learner(policy, optimizers, buf, cfg, make_estimator(cfg, 8), 10)
    learner.learn()
    return rates, learner


def test_kl_above_twice_the_target_shrinks_the_rate_after_each_pass(monkeypatch):
    rates, learner = learning_rates_with_kl(monkeypatch, kl=0.05, target_kl=0.01)
    expected = [1e-3, 1e-3, 1e-3 / 1.5, 1e-3 / 1.5, 1e-3 / 1.5**2, 1e-3 / 1.5**2]
    assert np.allclose(rates, expected, rtol=1e-9)
    assert learner.kl_factor == 1 / 1.5**3
    # The factor is part of the learner's checkpointed state.
    other = learning_rates_with_kl(monkeypatch, kl=0.01, target_kl=0.01, epochs=1)[1]
    other.load_state_dict(learner.state_dict())
    assert other.kl_factor == learner.kl_factor


def test_kl_within_the_band_keeps_the_rate_and_below_it_never_exceeds_the_schedule(monkeypatch):
    for kl in (0.006, 0.019, 0.001):
        rates, learner = learning_rates_with_kl(monkeypatch, kl=kl, target_kl=0.01)
        assert rates == [1e-3] * 6
        assert learner.kl_factor == 1.0


def test_target_kl_off_leaves_the_schedule_alone(monkeypatch):
    rates, learner = learning_rates_with_kl(monkeypatch, kl=10.0, target_kl=0.0)
    assert rates == [1e-3] * 6
    assert learner.kl_factor == 1.0
