"""The training loop end to end on tiny native envs: metrics, files, determinism, resume (also
from checkpoints of older versions), truncation bootstrapping, gradient accumulation, and
learning on the diagnostic envs."""

import json
import math

import gymnasium
import numpy as np
import pytest
import torch

from shoal.core.config import ConfigError, load_config
from shoal.policy import Policy
from shoal.train import load_agent, train
from shoal.train.advantage import make_estimator
from shoal.train.learner import Learner, prioritized_sample
from shoal.train.optim import make_optimizer
from shoal.train.rollout import Collector, RolloutBuffer

CONTRACT_KEYS = [
    "epoch",
    "agent_steps",
    "wall_time",
    "sps",
    "score",
    "episode_return",
    "episode_length",
    "episodes",
    "learning_rate",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "time_env",
    "time_inference",
    "time_copy",
    "time_learn",
    "time_other",
]
TIME_KEYS = {
    "wall_time",
    "sps",
    "time_env",
    "time_inference",
    "time_copy",
    "time_learn",
    "time_other",
    "time_to_target",
}


def config(tmp_path, env="cartpole", *flags, name="run"):
    base = [
        "--run.dir",
        str(tmp_path),
        "--run.name",
        name,
        "--run.quiet",
        "true",
        "--run.log-interval",
        "1000",
        "--env.num-envs",
        "8",
        "--env.num-threads",
        "1",
        "--train.torch-threads",
        "1",
        "--train.batch-size",
        "256",
        "--train.bptt-horizon",
        "8",
        "--train.minibatch-size",
        "128",
        "--train.total-steps",
        "1024",
        "--policy.hidden-size",
        "16",
        "--train.device",
        "cpu",
    ]
    return load_config(env, base + list(flags))


def comparable(history):
    return [{k: v for k, v in m.items() if k not in TIME_KEYS} for m in history]


def assert_same_metrics(a, b):
    assert len(a) == len(b)
    for x, y in zip(comparable(a), comparable(b), strict=True):
        assert x.keys() == y.keys()
        for key in x:
            same = x[key] == y[key] or (
                isinstance(x[key], float) and math.isnan(x[key]) and math.isnan(y[key])
            )
            assert same, f"epoch {x['epoch']}: {key} differs: {x[key]} vs {y[key]}"


def test_run_writes_metrics_and_files(tmp_path):
    cfg = config(tmp_path)
    result = train(cfg)
    assert len(result.history) == 4 and result.metrics["agent_steps"] == 1024
    for key in CONTRACT_KEYS:
        assert key in result.metrics, key
    run = result.run_dir
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    assert (run / "checkpoint.pt").exists() and (run / "model.pt").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    # Episodes of CartPole end within 1024 steps of a random policy.
    assert result.metrics["episodes"] > 0 and result.metrics["score"] > 0
    assert result.metrics["learning_rate"] < cfg.train.learning_rate  # cosine has decayed


def test_on_epoch_false_stops(tmp_path):
    result = train(config(tmp_path), on_epoch=lambda m: m["epoch"] < 2)
    assert [m["epoch"] for m in result.history] == [1, 2]


def test_deterministic_runs_are_identical(tmp_path):
    flags = ["--train.deterministic", "true", "--policy.lstm", "true", "--train.update-epochs", "2"]
    a = train(config(tmp_path, "cartpole", *flags, name="a"))
    b = train(config(tmp_path, "cartpole", *flags, name="b"))
    assert_same_metrics(a.history, b.history)
    c = train(config(tmp_path, "cartpole", *flags, "--train.seed", "7", name="c"))
    assert comparable(a.history) != comparable(c.history)


def test_resume_equals_uninterrupted(tmp_path):
    flags = [
        "--train.deterministic",
        "true",
        "--policy.lstm",
        "true",
        "--train.checkpoint-interval",
        "2",
        "--train.total-steps",
        "1536",
        "--train.vtrace",
        "true",
        "--train.prio-alpha",
        "0.8",
        "--train.prio-beta0",
        "0.2",
        "--train.optimizer",
        "muon",
        # The running observation statistics must be restored too.
        "--policy.obs-norm",
        "true",
        "--train.reward-clip",
        "0.5",
    ]
    whole = train(config(tmp_path, "cartpole", *flags, name="whole"))
    first = train(config(tmp_path, "cartpole", *flags, name="split"), on_epoch=lambda m: m["epoch"] < 2)
    assert len(first.history) == 2
    rest = train(config(tmp_path, "cartpole", *flags, "--run.resume", str(first.run_dir), name="ignored"))
    assert rest.run_dir == first.run_dir
    assert_same_metrics(whole.history, rest.history)
    lines = (rest.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def as_legacy_checkpoint(path):
    """Rewrite a checkpoint as versions before the "learner" key wrote it: the update count and
    the adaptive horizon at the top level, the policy's auxiliary head named "horizon"."""
    data = torch.load(path, weights_only=True)
    del data["learner"]
    # Nor did they record a format or version (format 1).
    del data["format"], data["shoal_version"]
    data["model"] = {k.replace("aux_head.", "horizon.", 1): v for k, v in data["model"].items()}
    torch.save(data, path)
    return data


@pytest.mark.parametrize("advantage", ["gae", "adaptive_horizon"])
def test_resume_from_a_legacy_checkpoint_equals_uninterrupted(tmp_path, advantage):
    flags = [
        "--train.deterministic", "true",
        "--policy.lstm", "true",
        "--train.checkpoint-interval", "2",
        "--train.total-steps", "1536",
        "--train.advantage", advantage,
        "--train.min-horizon", "4",
        "--train.max-horizon", "16",
    ]  # fmt: skip
    whole_cfg = config(tmp_path, "cartpole", *flags, name="whole")
    per_epoch = whole_cfg.train.update_epochs * (whole_cfg.train.batch_size // whole_cfg.train.minibatch_size)
    whole = train(whole_cfg)
    first = train(config(tmp_path, "cartpole", *flags, name="split"), on_epoch=lambda m: m["epoch"] < 2)
    legacy = as_legacy_checkpoint(first.run_dir / "checkpoint.pt")
    assert legacy["update"] == 2 * per_epoch and (legacy["horizon"] is None) == (advantage == "gae")
    assert any(k.startswith("horizon.") for k in legacy["model"]) == (advantage == "adaptive_horizon")
    rest = train(config(tmp_path, "cartpole", *flags, "--run.resume", str(first.run_dir), name="x"))
    assert_same_metrics(whole.history, rest.history)
    saved = torch.load(rest.run_dir / "checkpoint.pt", weights_only=True)
    assert saved["learner"]["update"] == saved["update"] == 6 * per_epoch
    if advantage == "adaptive_horizon":
        assert saved["learner"]["estimator"]["horizon"] == saved["horizon"] == whole.metrics["horizon"]
        # A model.pt of an older version loads too.
        model = torch.load(rest.run_dir / "model.pt", weights_only=True)
        model["model"] = {k.replace("aux_head.", "horizon.", 1): v for k, v in model["model"].items()}
        torch.save(model, rest.run_dir / "model.pt")
        assert load_agent(rest.run_dir / "model.pt").act(np.zeros((2, 4), np.float32)).shape == (2,)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size \(250\) must be a multiple of num_agents"):
        train(config(tmp_path, "cartpole", "--train.batch-size", "250"))
    with pytest.raises(ConfigError, match="minibatch_size"):
        train(config(tmp_path, "cartpole", "--train.minibatch-size", "100"))
    with pytest.raises(ConfigError, match="total_steps must be positive"):
        train(config(tmp_path, "cartpole", "--train.total-steps", "0"))
    with pytest.raises(ConfigError, match=r"max_minibatch_size \(4\) must be at least train.bptt_horizon"):
        train(config(tmp_path, "cartpole", "--train.max-minibatch-size", "4"))
    with pytest.raises(ConfigError, match=r"train.target_kl must be >= 0 \(0 = off\), got -0.01"):
        train(config(tmp_path, "cartpole", "--train.target-kl", "-0.01"))
    with pytest.raises(ConfigError, match="torch_threads must be >= 0"):
        train(config(tmp_path, "cartpole", "--train.torch-threads", "-1"))
    with pytest.raises(ConfigError, match="cuda"):
        if torch.cuda.is_available():
            raise ConfigError("cuda present: nothing to check")
        train(config(tmp_path, "cartpole", "--train.device", "cuda"))


def test_load_agent_acts_in_env_format(tmp_path):
    result = train(config(tmp_path, "cartpole", "--policy.lstm", "true"))
    agent = load_agent(result.run_dir)
    assert agent.config.policy.hidden_size == 16
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    actions = agent.act(obs, deterministic=True)
    assert actions.shape == (5,) and actions.dtype == np.int32 and set(actions) <= {0, 1}
    agent.reset(np.array([True, False, False, False, False]))
    agent.reset()
    again = agent.act(obs, deterministic=True)
    np.testing.assert_array_equal(actions, again)
    with pytest.raises(ValueError, match=r"shape \[num_agents, 4\]"):
        agent.act(np.zeros((5, 3), np.float32))


class TruncatingEnv:
    """Two agents; agent 0's episode is truncated after step 2 with a known final observation."""

    num_agents = 2
    single_observation_space = gymnasium.spaces.Box(-5.0, 5.0, (3,), np.float32)
    single_action_space = gymnasium.spaces.Discrete(2)

    def __init__(self):
        self.t = 0
        self.final_observations = np.zeros((2, 3), np.float32)

    def obs(self):
        return np.stack([np.full(3, 0.1 * self.t + i, np.float32) for i in range(2)])

    def step(self, actions):
        self.t += 1
        truncations = np.array([self.t == 3, False])
        if truncations[0]:
            self.final_observations[0] = 4.0
        rewards = np.array([1.0, 2.0], np.float32)
        return self.obs(), rewards, np.zeros(2, bool), truncations, []


def test_truncation_bootstraps_from_final_observation_with_pre_reset_state():
    torch.manual_seed(0)
    env = TruncatingEnv()
    policy = Policy(env.single_observation_space, env.single_action_space, 8, lstm=True)
    buffer = RolloutBuffer(2, 4, 4, 3, np.float32, 1, False, 8, torch.device("cpu"))
    collector = Collector(env, policy, buffer, torch.device("cpu"), gamma=0.9)
    collector.collect(env.obs())
    with torch.no_grad():
        state = policy.initial_state(1)
        for t in range(3):
            _, _, state = policy.step(buffer.obs[0:1, t], state)
        final_value = policy.value(torch.full((1, 3), 4.0), state)
    assert buffer.rewards[0, 2].item() == pytest.approx(1.0 + 0.9 * final_value.item(), rel=1e-5)
    assert buffer.rewards[0, 1].item() == 1.0 and buffer.rewards[1, 2].item() == 2.0
    assert buffer.dones[0].tolist() == [0.0, 0.0, 1.0, 0.0] and buffer.dones[1].sum() == 0
    # The state was reset after the truncation: step 3 of agent 0 starts from zeros.
    assert buffer.segment_starts()[0].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_reward_clip_clamps_rewards_but_not_the_truncation_bootstrap():
    torch.manual_seed(0)
    env = TruncatingEnv()
    policy = Policy(env.single_observation_space, env.single_action_space, 8, lstm=True)
    buffer = RolloutBuffer(2, 4, 4, 3, np.float32, 1, False, 8, torch.device("cpu"))
    collector = Collector(env, policy, buffer, torch.device("cpu"), gamma=0.9, reward_clip=1.5)
    collector.collect(env.obs())
    with torch.no_grad():
        state = policy.initial_state(1)
        for t in range(3):
            _, _, state = policy.step(buffer.obs[0:1, t], state)
        final_value = policy.value(torch.full((1, 3), 4.0), state)
    # Agent 1's reward of 2 is clamped; agent 0's bootstrapped value is added after the clamp.
    assert buffer.rewards[1].tolist() == [1.5] * 4
    assert buffer.rewards[0, 2].item() == pytest.approx(1.0 + 0.9 * final_value.item(), rel=1e-5)


def test_prioritized_sampling_weights():
    torch.manual_seed(0)
    adv = torch.ones(4, 2)
    adv[3] = 9.0
    counts = torch.zeros(4)
    for _ in range(400):
        idx, weights = prioritized_sample(adv, 1, alpha=1.0, beta=0.5)
        counts[idx] += 1
    probs = torch.tensor([1, 1, 1, 9]) / 12.0
    assert counts[3] / 400 == pytest.approx(0.75, abs=0.07)
    idx, weights = prioritized_sample(adv, 4, alpha=1.0, beta=0.5)
    torch.testing.assert_close(weights, (4 * probs[idx]).pow(-0.5))
    idx, weights = prioritized_sample(adv, 4, alpha=0.0, beta=1.0)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(weights, torch.ones(4))


def test_gradient_accumulation_matches_one_big_minibatch(tmp_path):
    cfg = config(
        tmp_path,
        "cartpole",
        "--policy.lstm",
        "true",
        "--train.minibatch-size",
        "256",
        "--train.max-grad-norm",
        "0",
    )
    params = []
    for max_mb in (256, 64):
        cfg.train.max_minibatch_size = max_mb
        torch.manual_seed(0)
        obs_space = gymnasium.spaces.Box(-1, 1, (4,), np.float32)
        policy = Policy(obs_space, gymnasium.spaces.Discrete(2), 16, lstm=True)
        buffer = RolloutBuffer(8, 32, 8, 4, np.float32, 1, False, 16, torch.device("cpu"))
        g = torch.Generator().manual_seed(1)
        buffer.obs.copy_(torch.randn(buffer.obs.shape, generator=g))
        buffer.actions.copy_(torch.randint(0, 2, buffer.actions.shape, generator=g))
        buffer.rewards.copy_(torch.randn(buffer.rewards.shape, generator=g))
        buffer.dones.copy_((torch.rand(buffer.dones.shape, generator=g) < 0.1).float())
        buffer.log_probs.fill_(math.log(0.5))
        estimator = make_estimator(cfg.train, 16)
        learner = Learner(policy, make_optimizer(policy, cfg.train), buffer, cfg.train, estimator, 10)
        learner.learn()
        params.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-6)


def test_bandit_learns_the_best_arm(tmp_path):
    cfg = config(
        tmp_path,
        "bandit",
        "--env.options.best_arm",
        "2",
        "--env.num-envs",
        "16",
        "--train.bptt-horizon",
        "1",
        "--train.minibatch-size",
        "64",
        "--train.total-steps",
        "4096",
        "--policy.lstm",
        "false",
        "--train.learning-rate",
        "1e-2",
        "--train.lr-schedule",
        "constant",
    )
    result = train(cfg)
    assert result.metrics["score_100"] > 0.9
    agent = load_agent(result.run_dir)
    assert (agent.act(np.ones((4, 1), np.float32), deterministic=True) == 2).all()


@pytest.mark.parametrize("lstm", [True, False])
def test_memory_needs_the_lstm(tmp_path, lstm):
    cfg = config(
        tmp_path,
        "memory",
        "--env.options.length",
        "3",
        "--env.options.num_symbols",
        "2",
        "--env.num-envs",
        "32",
        "--train.batch-size",
        "1024",
        "--train.minibatch-size",
        "256",
        "--train.total-steps",
        "16384",
        "--policy.hidden-size",
        "32",
        "--train.learning-rate",
        "3e-3",
        "--train.lr-schedule",
        "constant",
        "--train.update-epochs",
        "2",
        "--train.gamma",
        "0.9",
        "--policy.lstm",
        str(lstm).lower(),
    )
    score = train(cfg).metrics["score_100"]
    # Without memory the flagged observation is the same whatever the cue: at best 1/2.
    if lstm:
        assert score > 0.9
    else:
        assert score < 0.7


def test_serial_backend_trains(tmp_path):
    cfg = config(tmp_path, "cartpole", "--env.backend", "serial", "--env.num-workers", "2")
    result = train(cfg)
    assert result.metrics["agent_steps"] == 1024 and result.metrics["episodes"] > 0


def test_return_100_is_the_return_where_the_score_differs(tmp_path):
    # One-point Pong: an episode scores 1 (won) or 0 (lost) and returns +1 or -1, so over the
    # same episodes the mean return is 2 * the mean score - 1.
    result = train(
        config(tmp_path, "pong", "--env.options.points_to_win", "1", "--env.options.frameskip", "8")
    )
    for m in result.history:
        if m["episodes"] > 0:
            assert m["return_100"] == pytest.approx(2 * m["score_100"] - 1)
    assert any(m["episodes"] > 0 for m in result.history)
